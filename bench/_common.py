"""Helpers shared by the exq benchmarks: temporary state dirs, running the CLI, building big queues, stats.

Every wait here is bounded; every process started here is stopped by its own pid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from exq.model.events import Ended, Event, Launched, PausedSet, Started, Submitted
from exq.model.jobspec import JobSpec, SubmissionSpec
from exq.model.manifest import load_manifest
from exq.model.outcome import Outcome
from exq.model.state import Attempt, JobStatus, Submission, job_key
from exq.store.fsio import atomic_write
from exq.store.store import COUNTER_FILE, StatePaths, Store

PYTHON = sys.executable


# ----------------------------------------------------------------------------------------- stats


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def summary_ms(label: str, seconds: Sequence[float]) -> str:
    """One line: count, p50, p99, max (and min) of durations given in seconds, printed in ms."""
    ms = [s * 1000.0 for s in seconds]
    if not ms:
        return f"{label}: no samples"
    return (f"{label}: n={len(ms)}  p50={percentile(ms, 50):.1f} ms  p99={percentile(ms, 99):.1f} ms  "
            f"max={max(ms):.1f} ms  min={min(ms):.1f} ms")


def fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    return f"{n} B"


# ----------------------------------------------------------------------------- state dir + env


@contextlib.contextmanager
def temp_workspace(keep: bool = False, prefix: str = "exq-bench-", mode: int | None = None) -> Iterator[Path]:
    """A temporary directory (state dir, manifests, workdir), removed afterwards unless `keep`.

    `mode` (e.g. 0o777 for a workdir every SSH test host's user can use) puts it under /tmp.
    """
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp" if mode is not None else None))
    if mode is not None:
        root.chmod(mode)
    try:
        yield root
    finally:
        if keep:
            print(f"(kept {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)


def exq_env(state_dir: Path, gpus: str | None) -> dict[str, str]:
    """The environment for an exq subprocess: this state dir, these simulated GPUs (None: no GPUs at all)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXQ_")}
    env["EXQ_STATE_DIR"] = str(state_dir)
    if gpus:
        env["EXQ_SIMULATE_GPUS"] = gpus
    return env


def exq_cmd(*args: str) -> list[str]:
    return [PYTHON, "-m", "exq", *args]


@dataclass
class Timed:
    seconds: float
    returncode: int
    stdout: bytes
    stderr: bytes


def run_exq(args: Sequence[str], env: dict[str, str], timeout: float, *, capture: bool = False,
            check: bool = True, cwd: Path | None = None) -> Timed:
    """Run `python -m exq ARGS`, bounded by `timeout`; wall time measured around the whole process."""
    started = time.perf_counter()
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    proc = subprocess.run(exq_cmd(*args), env=env, cwd=cwd, stdout=out, stderr=subprocess.PIPE,
                          timeout=timeout, check=False)
    took = time.perf_counter() - started
    if check and proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"exq {' '.join(args)} exited {proc.returncode}:\n{tail}")
    return Timed(took, proc.returncode, proc.stdout or b"", proc.stderr or b"")


def time_exq(args: Sequence[str], env: dict[str, str], timeout: float, repeat: int) -> list[float]:
    """Wall times of `repeat` runs of `exq ARGS` (output discarded)."""
    return [run_exq(args, env, timeout).seconds for _ in range(repeat)]


# ------------------------------------------------------------------------------------- manifests


def grid_axes(n: int) -> dict[str, list[int]]:
    """Two grid axes whose product is n (as square as n allows), e.g. 10000 -> 100 x 100."""
    a = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return {"a": list(range(a)), "b": list(range(n // a))} if a > 1 else {"i": list(range(n))}


def write_manifest(path: Path, name: str, n: int, cmd: str = "true", gpus: int = 1, share: bool = False) -> Path:
    """A single-phase grid manifest of n jobs running `cmd` (YAML-quoted, so `true` stays a string)."""
    grid = "\n".join(f"  {key}: [{', '.join(map(str, values))}]" for key, values in grid_axes(n).items())
    path.write_text(
        f"name: {name}\nworkdir: .\ngpus: {gpus}\nshare: {'true' if share else 'false'}\n"
        f"grid:\n{grid}\ncmd: \"{cmd}\"\n",
        encoding="utf-8",
    )
    return path


# ---------------------------------------------------------------------------- big queue states


@dataclass
class BuiltState:
    jobs: int
    submissions: int
    succeeded: int
    seconds: float
    snapshot_bytes: int
    journal_bytes: int


def _done_events(spec_jobs: Sequence[JobSpec], submission: str, at: float, attempt_root: Path) -> list[Event]:
    """Launched/Started/Ended events that make each job a succeeded job with one (fake) attempt."""
    events: list[Event] = []
    for spec in spec_jobs:
        key = job_key(submission, spec.id)
        adir = attempt_root / submission / spec.id / "1"
        attempt = Attempt(number=1, host="local", gpus=[0], gpu_uuids=["SIM-GPU-0"], params=dict(spec.params),
                          cmd=spec.cmd, dir=str(adir), log=str(adir / "log"), launched_at=at)
        events.append(Launched(at=at, key=key, attempt=attempt))
        events.append(Started(at=at, key=key, number=1, pid=1, started_at=at + 0.01))
        events.append(Ended(at=at, key=key, number=1, ended_at=at + 0.02, exit_code=0, signal=None,
                            outcome=Outcome.SUCCEEDED, reason="exit 0", status=JobStatus.SUCCEEDED))
    return events


def build_state(state_dir: Path, workdir: Path, jobs: int, chunk: int = 10_000, *, succeeded: int = 0,
                paused: bool = False, gpus: int = 1) -> BuiltState:
    """A queue of `jobs` queued jobs (the first `succeeded` of them finished), built through the Store.

    The jobs come from a real `chunk`-job grid manifest (expanded once, reused for every submission, as
    when the same grid is submitted again); each chunk is one Submitted event, committed like the daemon
    would commit an ingested submission. The intake counter is set too, so the next `exq submit` gets a
    fresh submission number (the daemon would drop a submission whose number it has already ingested).
    Each job needs `gpus` GPUs (more than the simulated ones: queued jobs that never fit).
    """
    started = time.perf_counter()
    manifest = write_manifest(workdir / "prebuilt.yaml", "prebuilt", min(chunk, jobs), gpus=gpus)
    spec: SubmissionSpec = load_manifest(manifest)
    paths = StatePaths(state_dir)
    store = Store(paths).open()
    count = done = number = 0
    try:
        if paused:
            store.commit([PausedSet(at=time.time(), paused=True)])
        while count < jobs:
            number += 1
            part = spec.jobs[: min(chunk, jobs - count)]
            now = time.time()
            sub = Submission(id=str(number), name=spec.name, source=spec.source, submitted_at=now,
                             phases=list(spec.phases), jobs=len(part))
            store.commit([Submitted(at=now, submission=sub, jobs=list(part))])
            finish = part[: max(0, min(len(part), succeeded - done))]
            if finish:
                store.commit(_done_events(finish, sub.id, now, paths.jobs))
                done += len(finish)
            count += len(part)
    finally:
        store.close()  # writes the snapshot (and empties the journal once it passes 32 MiB)
    atomic_write(paths.intake / COUNTER_FILE, str(number).encode())
    return BuiltState(count, number, done, time.perf_counter() - started, file_size(paths.snapshot),
                      file_size(paths.journal))


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def file_version(path: Path) -> tuple[int, int] | None:
    """(inode, mtime_ns) of a file replaced atomically: changes on each rewrite."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


# ------------------------------------------------------------------------------------ the daemon


@dataclass
class Daemon:
    """`exq daemon` in a subprocess, its stderr lines timestamped as they arrive."""

    env: dict[str, str]
    args: Sequence[str] = ()
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    lines: list[tuple[float, str]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> Daemon:
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(exq_cmd("daemon", *self.args), env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._cond:
                self.lines.append((time.perf_counter(), raw.decode(errors="replace").rstrip()))
                self._cond.notify_all()

    def wait_line(self, needle: str, timeout: float) -> float:
        """perf_counter time at which a stderr line containing `needle` arrived (raises after `timeout`)."""
        deadline = time.perf_counter() + timeout
        with self._cond:
            while True:
                for at, line in self.lines:
                    if needle in line:
                        return at
                left = deadline - time.perf_counter()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None):
                    raise RuntimeError(f"daemon: no line with {needle!r} within {timeout:g}s; got:\n"
                                       + "\n".join(line for _, line in self.lines[-20:]))
                self._cond.wait(min(left, 0.1))

    def wait_file_change(self, path: Path, before: tuple[int, int] | None, timeout: float,
                         poll: float = 0.005) -> float:
        """perf_counter time at which `path` was first seen rewritten (raises after `timeout`)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if file_version(path) != before:
                return time.perf_counter()
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(poll)
        raise RuntimeError(f"daemon: {path.name} not rewritten within {timeout:g}s")

    def rss(self) -> int:
        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def stop(self, timeout: float = 60.0) -> float:
        """SIGTERM (drain), then wait up to `timeout` s; SIGKILL if it is still there. Returns seconds taken."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        started = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"warning: daemon {self.proc.pid} still running {timeout:g}s after SIGTERM; killing it")
            self.proc.kill()
            self.proc.wait(10)
        return time.perf_counter() - started

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------ reading back


def status_json(env: dict[str, str], timeout: float) -> tuple[dict[str, Any], float]:
    """`exq status --json`, parsed, and its wall time."""
    timed = run_exq(["status", "--json"], env, timeout, capture=True)
    data: dict[str, Any] = json.loads(timed.stdout)
    return data, timed.seconds


def journal_events(state_dir: Path) -> list[dict[str, Any]]:
    """The raw events still in journal.jsonl (all of them unless it was compacted past 32 MiB)."""
    try:
        lines = (state_dir / "journal.jsonl").read_bytes().splitlines()
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    return events


class FileWatch:
    """Notes (perf_counter) when `path` first exists, polling every `poll` s for at most `timeout` s."""

    def __init__(self, path: Path, timeout: float, poll: float = 0.002) -> None:
        self.path, self.timeout, self.poll = path, timeout, poll
        self.seen_at: float | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.perf_counter() + self.timeout
        while time.perf_counter() < deadline:
            if self.path.exists():
                self.seen_at = time.perf_counter()
                return
            time.sleep(self.poll)

    def wait(self) -> float:
        self._thread.join(self.timeout + 1)
        if self.seen_at is None:
            raise RuntimeError(f"{self.path} did not appear within {self.timeout:g}s")
        return self.seen_at


def add_run_options(parser: argparse.ArgumentParser, timeout: float, gpus: str | None = None) -> None:
    """The options every benchmark takes: simulated GPUs, a bound on each step, and --keep."""
    if gpus is not None:
        parser.add_argument("--gpus", default=gpus, help=f"EXQ_SIMULATE_GPUS (default {gpus})")
    parser.add_argument("--timeout", type=float, default=timeout,
                        help=f"bound on each step, seconds (default {timeout:.0f})")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
