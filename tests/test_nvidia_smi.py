"""The nvidia-smi backend's probe command and parser: captured-style outputs, the command run by a
local /bin/sh against the fake nvidia-smi (a test double), and over SSH on a real sshd."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncssh
import pytest
from sshhosts import FAKE_NVIDIA_SMI, FOREIGN_PID, SshHosts

from exq.gpus import GpuSnapshot
from exq.gpus.nvidia_smi import MARKER, MISSING_MESSAGE, PROBE_COMMAND, parse_probe_output

MiB, GiB = 1024**2, 1024**3
UUID0 = "GPU-3b5d2f0e-8c1a-4d6e-9f7b-2a1c0e5d4b3a"
UUID1 = "GPU-a1f04c7d-55e2-6b09-1c3d-7e8f90a1b2c4"


def probe_output(gpus: str, apps: str = "", pgids: str = "", gpus_rc: int = 0, apps_rc: int = 0) -> str:
    """What PROBE_COMMAND prints on a host, around captured-style nvidia-smi tables."""
    return (f"{MARKER} gpus {gpus_rc}\n{gpus}\n{MARKER} apps {apps_rc}\n{apps}\n"
            f"{MARKER} pgids\n{pgids}\n{MARKER} end\n")


def test_parses_h100_tables_with_processes_and_pgids() -> None:
    text = probe_output(
        f"0, {UUID0}, NVIDIA H100 80GB HBM3, 81559, 30523\n1, {UUID1}, NVIDIA H100 80GB HBM3, 81559, 4\n",
        f"{UUID0}, 48213, 24000\n{UUID0}, 48377, 6000\n{UUID0}, 7001, 519\n",
        "48213 48213\n48377 48213\n",
    )
    snap = parse_probe_output(text, 123.0)
    assert (snap.backend, snap.taken_at, snap.message) == ("nvidia-smi", 123.0, None)
    gpu0, gpu1 = snap.gpus
    assert (gpu0.index, gpu0.uuid, gpu0.name) == (0, UUID0, "NVIDIA H100 80GB HBM3")
    assert (gpu0.memory_total, gpu0.memory_used) == (81559 * MiB, 30523 * MiB)
    assert [(p.pid, p.used_memory, p.pgid) for p in gpu0.processes] == [
        (48213, 24000 * MiB, 48213), (48377, 6000 * MiB, 48213), (7001, 519 * MiB, None)]
    assert (gpu1.index, gpu1.memory_used, gpu1.processes) == (1, 4 * MiB, ())


def test_tolerates_na_spaces_commas_in_names_and_crlf() -> None:
    text = probe_output(
        f"  0 ,  {UUID0} ,  NVIDIA GH200 480GB ,  97871 ,  [N/A]  \r\n"
        f"1, {UUID1}, Tesla K80, Rev 2, [Not Supported], 3\r\n",
        f"{UUID0}, 501, 2048\n{UUID0}, 502, [N/A]\n{UUID1}, 9, [Not Supported]\n",
    )
    gpu0, gpu1 = parse_probe_output(text, 0).gpus
    assert (gpu0.name, gpu0.memory_total) == ("NVIDIA GH200 480GB", 97871 * MiB)
    assert gpu0.memory_used == 2048 * MiB  # unknown: the sum of its processes
    assert [(p.pid, p.used_memory) for p in gpu0.processes] == [(501, 2048 * MiB), (502, 0)]
    assert (gpu1.name, gpu1.memory_total, gpu1.memory_used) == ("Tesla K80, Rev 2", 0, 3 * MiB)


def test_no_processes_and_no_running_processes_line() -> None:
    for apps in ("", "No running processes found"):
        snap = parse_probe_output(probe_output(f"0, {UUID0}, NVIDIA A100-SXM4-40GB, 40960, 4", apps), 0)
        assert snap.message is None and snap.gpus[0].processes == ()


@pytest.mark.parametrize(("said", "rc"), [
    ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
     "Make sure that the latest NVIDIA driver is installed and running.", 9),
    ("Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 550.127", 18),
    ("No devices were found", 6),
])
def test_nvidia_smi_failure_gives_no_gpus_and_its_words(said: str, rc: int) -> None:
    snap = parse_probe_output(probe_output(said, said, gpus_rc=rc, apps_rc=rc), 0)
    assert snap.gpus == ()
    assert snap.message is not None and f"exit {rc}" in snap.message and said.splitlines()[0] in snap.message


def test_missing_nvidia_smi_and_garbage() -> None:
    assert parse_probe_output(f"{MARKER} missing\n", 0).message == MISSING_MESSAGE
    snap = parse_probe_output("sh: 1: Syntax error: end of file unexpected\n", 0)
    assert snap.gpus == () and snap.message is not None and "Syntax error" in snap.message


def test_failed_process_list_keeps_gpus_and_says_so() -> None:
    snap = parse_probe_output(probe_output(f"0, {UUID0}, NVIDIA L4, 23034, 100", "Unknown Error", apps_rc=15), 0)
    assert len(snap.gpus) == 1 and snap.gpus[0].processes == ()
    assert snap.message is not None and "Unknown Error" in snap.message and snap.extra["apps_error"]


# PROBE_COMMAND run by a local /bin/sh, with a PATH holding only what it needs.

@pytest.fixture
def probe(tmp_path: Path) -> Iterator[Callable[..., GpuSnapshot]]:
    """Runs PROBE_COMMAND locally with the fake nvidia-smi (or none) on a minimal PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "cat", "timeout"):
        (bin_dir / tool).symlink_to(subprocess.check_output(["sh", "-c", f"command -v {tool}"], text=True).strip())
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_NVIDIA_SMI}" "$@"\n')
    smi.chmod(0o755)

    def run(gpus: str = "2x24GiB", installed: bool = True) -> GpuSnapshot:
        smi.chmod(0o755 if installed else 0o644)
        env = {"PATH": str(bin_dir), "EXQ_FAKE_GPUS": gpus, "EXQ_FAKE_GPUS_LOAD": str(tmp_path / "load.json")}
        proc = subprocess.run(["/bin/sh", "-c", PROBE_COMMAND], env=env, capture_output=True, text=True, timeout=30)
        assert (proc.returncode, proc.stderr) == (0, "")
        return parse_probe_output(proc.stdout, time.time())

    yield run


@pytest.fixture
def jobs() -> Iterator[Callable[[dict[str, str]], int]]:
    """Starts `sleep` in a new session with the given environment; returns its pid (= pgid)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str]) -> int:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("EXQ_", "CUDA_"))}
        started.append(subprocess.Popen(["sleep", "60"], env=base | env, start_new_session=True))
        return started[-1].pid

    yield start
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def test_local_probe_sees_fake_gpus_jobs_and_foreign_load(
    probe: Callable[..., GpuSnapshot], jobs: Callable[[dict[str, str]], int], tmp_path: Path
) -> None:
    (tmp_path / "load.json").write_text('{"0": "5GiB"}')
    job = jobs({"EXQ_JOB_ID": "j1", "CUDA_VISIBLE_DEVICES": "1", "EXQ_GPU_MEMORY": "3GiB"})
    runner = jobs({"EXQ_JOB_ID": "j1", "CUDA_VISIBLE_DEVICES": "1", "EXQ_RUNNER_CMD": "x"})  # holds nothing
    snap = probe("2x24GiB")
    assert [(g.index, g.memory_total) for g in snap.gpus] == [(0, 24 * GiB), (1, 24 * GiB)]
    assert "test double" in snap.gpus[0].name
    # Only this test's processes are asserted on: other tests of this user may run beside it.
    seen = [(g.index, p.pid, p.used_memory, p.pgid) for g in snap.gpus for p in g.processes]
    assert (0, FOREIGN_PID, 5 * GiB, None) in seen
    assert [s for s in seen if s[3] in (job, runner)] == [(1, job, 3 * GiB, job)]
    assert snap.gpus[0].memory_used >= 5 * GiB and snap.gpus[1].memory_used >= 3 * GiB


def test_local_probe_without_nvidia_smi_or_driver(probe: Callable[..., GpuSnapshot]) -> None:
    missing = probe(installed=False)
    assert (missing.gpus, missing.message) == ((), MISSING_MESSAGE)
    no_driver = probe(gpus="")
    assert no_driver.gpus == () and no_driver.message is not None
    assert "exit 9" in no_driver.message and "couldn't communicate with the NVIDIA driver" in no_driver.message


def test_probe_over_ssh(ssh_hosts: Callable[[list[tuple[str, str]]], SshHosts]) -> None:
    hosts = ssh_hosts([("h1", "2x24GiB"), ("h2", "1x80GiB")])

    async def probe(name: str, prefix: str = "") -> GpuSnapshot:
        async with asyncssh.connect(name, config=[str(hosts.client_config)]) as conn:
            result = await conn.run(prefix + PROBE_COMMAND, check=True, timeout=20)
        assert isinstance(result.stdout, str)
        return parse_probe_output(result.stdout, time.time())

    async def main() -> None:
        h1, h2 = await asyncio.gather(probe("h1"), probe("h2"))
        assert [g.memory_total for g in h1.gpus] == [24 * GiB] * 2 and h1.message is None
        assert [g.memory_total for g in h2.gpus] == [80 * GiB]
        assert {g.uuid for g in h1.gpus}.isdisjoint(g.uuid for g in h2.gpus)
        assert (await probe("h1", "PATH=/nonexistent /bin/")).message == MISSING_MESSAGE  # /bin/sh -c
        failed = await probe("h2", "EXQ_FAKE_GPUS= ")
        assert failed.gpus == () and "NVIDIA driver" in (failed.message or "")

    asyncio.run(asyncio.wait_for(main(), 30))
