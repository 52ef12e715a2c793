"""GPU probes: the simulated backend with real processes, the NVML backend and the selection."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from exq.errors import ExqError
from exq.gpus import GpuProcess, GpuSnapshot
from exq.gpus.nvml import NvmlProbe, NvmlUnavailableError
from exq.gpus.select import NoGpuProbe, select_probe
from exq.gpus.simulated import SimulatedProbe, parse_gpu_spec

GiB = 1024**3


def _nvml_available() -> bool:
    try:
        NvmlProbe().close()
    except NvmlUnavailableError:
        return False
    return True


def _job_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXQ_", "CUDA_"))}
    env.update(extra)
    return env


def _procs(snap: GpuSnapshot, index: int, pgids: set[int]) -> list[GpuProcess]:
    """The processes on GPU `index` that belong to the given process groups."""
    return [p for p in snap.gpus[index].processes if p.pgid in pgids]


@pytest.fixture
def group() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by a test, each in its own session; killed with their groups afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def _spawn(group: list[subprocess.Popen[bytes]], script: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sh", "-c", script], env=env, start_new_session=True)
    group.append(proc)
    return proc


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_parse_spec() -> None:
    gpus = parse_gpu_spec("4x24GiB")
    assert [g.index for g in gpus] == [0, 1, 2, 3]
    assert {g.memory_total for g in gpus} == {24 * GiB}
    assert gpus[0].name == "Simulated GPU 0 (24GiB)"
    assert gpus[3].uuid == "SIM-GPU-3"
    mixed = parse_gpu_spec("2x24GiB, 1x80GiB")
    assert [g.memory_total for g in mixed] == [24 * GiB, 24 * GiB, 80 * GiB]
    assert mixed[2].name == "Simulated GPU 2 (80GiB)"
    assert [g.memory_total for g in parse_gpu_spec("16GiB")] == [16 * GiB]


@pytest.mark.parametrize(
    "spec", ["", "x", "4x", "0x24GiB", "4x0", "4xlots", "4x24GiB,", "4x24GiB,,1x8GiB", "-1x8GiB"]
)
def test_parse_spec_errors(spec: str) -> None:
    with pytest.raises(ExqError, match="EXQ_SIMULATE_GPUS"):
        parse_gpu_spec(spec)


def test_select_simulated_and_bad_spec() -> None:
    probe = select_probe({"EXQ_SIMULATE_GPUS": "2x8GiB"})
    assert probe.backend == "simulated"
    snap = probe.snapshot()
    assert snap.simulated and len(snap.gpus) == 2 and snap.gpus[1].memory_total == 8 * GiB
    assert snap.message is not None and "simulated" in snap.message
    with pytest.raises(ExqError, match=r"expected e\.g\. 4x24GiB"):
        select_probe({"EXQ_SIMULATE_GPUS": "four GPUs"})


def test_job_processes_counted_once_per_group(group: list[subprocess.Popen[bytes]]) -> None:
    probe = SimulatedProbe("3x24GiB")
    env = _job_env(EXQ_JOB_ID="job-a", CUDA_VISIBLE_DEVICES="1,2", EXQ_GPU_MEMORY="3GiB")
    # A group of three processes (sh and two sleeps) that all carry the job's environment.
    job = _spawn(group, "sleep 30 & sleep 30 & wait", env)
    other_env = _job_env(EXQ_JOB_ID="job-b", CUDA_VISIBLE_DEVICES="SIM-GPU-2,7", EXQ_GPU_MEMORY="bad")
    other = _spawn(group, "sleep 30", other_env)
    runner = _spawn(group, "sleep 30", {**env, "EXQ_RUNNER_CMD": "x"})
    ours = {job.pid, other.pid, runner.pid}

    def seen() -> bool:
        snap = probe.snapshot()
        return len(_procs(snap, 1, ours)) >= 1 and len(_procs(snap, 2, ours)) >= 2

    _wait_for(seen)
    time.sleep(0.1)  # let the sleeps of the job's group start too
    snap = probe.snapshot()
    assert _procs(snap, 0, ours) == []
    gpu1 = _procs(snap, 1, ours)
    assert [(p.pgid, p.used_memory) for p in gpu1] == [(job.pid, 3 * GiB)]
    assert os.getpgid(gpu1[0].pid) == job.pid
    gpu2 = sorted(_procs(snap, 2, ours), key=lambda p: p.pgid or 0)
    assert [(p.pgid, p.used_memory) for p in gpu2] == sorted([(job.pid, 3 * GiB), (other.pid, GiB)])
    assert [p.pid for p in gpu2 if p.pgid == other.pid] == [other.pid]
    assert snap.gpus[2].memory_used == sum(p.used_memory for p in snap.gpus[2].processes)
    assert snap.gpus[2].memory_free == 24 * GiB - snap.gpus[2].memory_used

    os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=5)
    _wait_for(lambda: not _procs(probe.snapshot(), 1, ours))
    assert [p.pgid for p in _procs(probe.snapshot(), 2, ours)] == [other.pid]


def test_foreign_load_file(tmp_path: Path) -> None:
    load = tmp_path / "load.json"
    probe = SimulatedProbe("2x24GiB", str(load))
    snap = probe.snapshot()
    assert all(not g.processes for g in snap.gpus)  # missing file: no load
    load.write_text(json.dumps({"0": "20GiB", "1": 1000, "9": "1GiB"}))
    snap = probe.snapshot()
    assert [p for p in snap.gpus[0].processes if p.pid == 0] == [GpuProcess(0, 20 * GiB, None)]
    assert snap.gpus[0].memory_used == 20 * GiB and snap.gpus[0].memory_free == 4 * GiB
    assert snap.gpus[1].memory_used == 1000
    load.write_text(json.dumps({"1": "2GiB"}))  # re-read at every snapshot
    snap = probe.snapshot()
    assert snap.gpus[0].memory_used == 0 and snap.gpus[1].memory_used == 2 * GiB
    load.write_text("{not json")
    snap = probe.snapshot()
    assert snap.gpus[1].memory_used == 0
    assert "load_error" in snap.extra and snap.message is not None and "ignoring foreign load" in snap.message


def test_select_load_from_environ(tmp_path: Path) -> None:
    load = tmp_path / "load.json"
    load.write_text('{"0": "1GiB"}')
    probe = select_probe({"EXQ_SIMULATE_GPUS": "1x8GiB", "EXQ_SIMULATE_GPUS_LOAD": str(load)})
    assert probe.snapshot().gpus[0].memory_used == GiB


def test_snapshot_counts_each_job_once_among_many_processes(group: list[subprocess.Popen[bytes]]) -> None:
    env = _job_env(EXQ_JOB_ID="many", CUDA_VISIBLE_DEVICES="0")
    for _ in range(5):
        _spawn(group, "for i in $(seq 40); do sleep 30 & done; wait", env)
    probe = SimulatedProbe("1x24GiB")
    _wait_for(lambda: len(_procs(probe.snapshot(), 0, {g.pid for g in group})) >= 5)
    assert len(_procs(probe.snapshot(), 0, {g.pid for g in group})) == 5


@pytest.mark.skipif(_nvml_available(), reason="an NVIDIA driver is present")
def test_nvml_without_driver_fails_cleanly() -> None:
    with pytest.raises(NvmlUnavailableError) as info:
        NvmlProbe()
    assert info.value.reason
    assert isinstance(info.value, ExqError)


@pytest.mark.skipif(_nvml_available(), reason="an NVIDIA driver is present")
def test_select_without_driver_gives_none() -> None:
    probe = select_probe({"PATH": os.environ.get("PATH", "")})
    assert isinstance(probe, NoGpuProbe) and probe.backend == "none"
    snap = probe.snapshot()
    assert snap.gpus == () and snap.backend == "none" and not snap.simulated
    assert snap.message is not None
    assert snap.message.startswith("no NVIDIA driver found (NVML: ")
    assert snap.message.endswith(
        "); only CPU jobs (gpus: 0) will run. Set EXQ_SIMULATE_GPUS=4x24GiB to simulate GPUs."
    )
    probe.close()


def test_select_empty_simulation_var_means_real() -> None:
    probe = select_probe({"EXQ_SIMULATE_GPUS": "  "})
    assert probe.backend in ("none", "nvml")
    probe.close()


def test_probe_in_subprocess_env_is_not_needed() -> None:
    """select_probe() reads os.environ by default."""
    code = "from exq.gpus.select import select_probe; print(select_probe().backend)"
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "EXQ_SIMULATE_GPUS": "1x1GiB"},
        capture_output=True, text=True, timeout=30, check=True,
    )
    assert out.stdout.strip() == "simulated"


def test_scoped_simulation_sees_only_its_own_machines_jobs(group: list[subprocess.Popen[bytes]]) -> None:
    mine = SimulatedProbe("1x24GiB", scope="/state/a")
    theirs = _spawn(group, "sleep 30", _job_env(EXQ_JOB_ID="x", CUDA_VISIBLE_DEVICES="0",
                                                 EXQ_SIMULATED_HOST="/state/b"))
    ours = _spawn(group, "sleep 30", _job_env(EXQ_JOB_ID="y", CUDA_VISIBLE_DEVICES="0", **mine.job_env))
    pgids = {theirs.pid, ours.pid}
    _wait_for(lambda: bool(_procs(mine.snapshot(), 0, pgids)))
    assert [p.pgid for p in _procs(mine.snapshot(), 0, pgids)] == [ours.pid]
    assert {p.pgid for p in _procs(SimulatedProbe("1x24GiB").snapshot(), 0, pgids)} == pgids
