"""Shared fixtures: a private state dir, simulated GPUs, and the real `exq` CLI in subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sshhosts import ssh_hosts  # noqa: F401  (a fixture: real sshd servers as GPU hosts)

EXQ = [sys.executable, "-m", "exq"]


MISSING = "missing: "
"""How a test that cannot run for want of a package starts its skip reason (tests/setup.sh installs them all)."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI (CI=true), a test skipped for a missing package fails: the set-up should have installed it."""
    outcome = yield
    _fail_missing(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """The same for a whole module skipped at import."""
    outcome = yield
    _fail_missing(outcome.get_result())


def _fail_missing(report: pytest.TestReport | pytest.CollectReport) -> None:
    if report.skipped and os.environ.get("CI") == "true" and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if MISSING in reason:
            report.outcome = "failed"
            report.longrepr = f"skipped for a missing package, which tests/setup.sh installs: {reason}"


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll `predicate` until truthy (returned) or fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


class Exq:
    """Runs the real `exq` CLI against one state directory, with simulated GPUs."""

    def __init__(self, root: Path, gpus: str = "2x24GiB") -> None:
        self.root = root
        self.state_dir = root / "state"
        self.env = dict(os.environ, EXQ_STATE_DIR=str(self.state_dir), EXQ_SIMULATE_GPUS=gpus,
                        PYTHONUNBUFFERED="1")
        self.daemons: list[subprocess.Popen[bytes]] = []

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*EXQ, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"exq {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def manifest(self, text: str, name: str = "m.yaml") -> Path:
        path = self.root / name
        path.write_text(textwrap.dedent(text))
        return path

    def start_daemon(self, *args: str) -> subprocess.Popen[bytes]:
        with (self.root / f"daemon{len(self.daemons)}.log").open("wb") as log:
            proc = subprocess.Popen([*EXQ, "-v", "daemon", "--probe-interval", "0.5", *args], env=self.env,
                                    stdout=log, stderr=subprocess.STDOUT)
        self.daemons.append(proc)
        wait_until(lambda: (self.state_dir / "daemon.lock").exists() and self.state().get("daemon"), 20)
        return proc

    def state(self) -> dict[str, Any]:
        return json.loads(self("status", "--json").stdout)

    def jobs(self) -> dict[str, dict[str, Any]]:
        return {job["id"]: job for job in self.state()["jobs"]}

    def wait_finished(self, count: int, timeout: float = 60) -> dict[str, dict[str, Any]]:
        finished = {"succeeded", "failed", "blocked", "cancelled"}

        def done() -> dict[str, dict[str, Any]] | None:
            jobs = self.jobs()
            ok = len(jobs) >= count and all(j["status"] in finished for j in jobs.values())
            return jobs if ok else None

        result: dict[str, dict[str, Any]] = wait_until(done, timeout, 0.2)
        return result

    def stop_all(self) -> None:
        for proc in self.daemons:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


@pytest.fixture
def exq(tmp_path: Path) -> Iterator[Exq]:
    runner = Exq(tmp_path)
    yield runner
    runner.stop_all()
    _kill_leftover_jobs(runner.state_dir)


@pytest.fixture
def pgids() -> Iterator[list[int]]:
    """Process groups to SIGKILL after the test, whatever happened."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def _kill_leftover_jobs(state_dir: Path) -> None:
    """Kill any job process group a test left running (bounded; tests must not leak processes)."""
    for pid_file in state_dir.glob("jobs/*/*/*/pid"):
        try:
            pgid = int(pid_file.read_text().split()[1])
            os.killpg(pgid, signal.SIGKILL)
        except (ValueError, IndexError, ProcessLookupError, PermissionError, FileNotFoundError):
            continue
