"""Simulated GPUs for tests and the CPU-only demo (EXQ_SIMULATE_GPUS=4x24GiB). Not real hardware.

A simulated GPU's used memory is the foreign load (EXQ_SIMULATE_GPUS_LOAD: a JSON file
`{"<gpu index>": <bytes or size>}`, re-read at every snapshot) plus the memory of simulated job
processes: live processes of this user whose environment has EXQ_JOB_ID and CUDA_VISIBLE_DEVICES,
each "holding" EXQ_GPU_MEMORY (default 1GiB) on every GPU it lists; a process group counts once.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass

import psutil

from exq.errors import ExqError
from exq.gpus import GpuInfo, GpuProcess, GpuSnapshot
from exq.units import format_size, parse_size

DEFAULT_JOB_MEMORY = 1024**3
_ITEM_RE = re.compile(r"^\s*(?:(\d+)\s*[xX*]\s*)?(\S+?)\s*$")
SCOPE_VARIABLE = "EXQ_SIMULATED_HOST"
_RUNNER_MARKER = "EXQ_RUNNER_CMD"
"""Runner processes carry the job's environment too, but hold no GPU memory: skip them."""


@dataclass(frozen=True)
class SimulatedGpu:
    index: int
    memory_total: int

    @property
    def name(self) -> str:
        return f"Simulated GPU {self.index} ({format_size(self.memory_total)})"

    @property
    def uuid(self) -> str:
        return f"SIM-GPU-{self.index}"


def parse_gpu_spec(spec: str) -> tuple[SimulatedGpu, ...]:
    """GPUs described by e.g. "4x24GiB" or "2x24GiB,1x80GiB" (a count of 1 may be left out)."""
    example = "expected e.g. 4x24GiB or 2x24GiB,1x80GiB"
    gpus: list[SimulatedGpu] = []
    for item in spec.split(","):
        match = _ITEM_RE.match(item)
        if not item.strip() or match is None:
            raise ExqError(f"EXQ_SIMULATE_GPUS: {example}, got {spec!r}")
        count = int(match.group(1) or "1")
        try:
            size = parse_size(match.group(2))
        except ValueError:
            raise ExqError(f"EXQ_SIMULATE_GPUS: bad memory size {match.group(2)!r}; {example}") from None
        if count < 1 or size < 1:
            raise ExqError(f"EXQ_SIMULATE_GPUS: count and memory must be positive in {item.strip()!r}")
        base = len(gpus)
        gpus.extend(SimulatedGpu(base + i, size) for i in range(count))
    return tuple(gpus)


def _job_gpus(env: dict[str, str], gpus: tuple[SimulatedGpu, ...]) -> list[int]:
    """Indexes of the simulated GPUs listed in the process's CUDA_VISIBLE_DEVICES (index or uuid)."""
    found: list[int] = []
    for entry in env.get("CUDA_VISIBLE_DEVICES", "").split(","):
        entry = entry.strip()
        index = int(entry) if entry.isdigit() else next((g.index for g in gpus if g.uuid == entry), -1)
        if 0 <= index < len(gpus) and index not in found:
            found.append(index)
    return found


def _job_memory(env: dict[str, str]) -> int:
    try:
        return parse_size(env["EXQ_GPU_MEMORY"])
    except (KeyError, ValueError):
        return DEFAULT_JOB_MEMORY


class SimulatedProbe:
    """A GpuProbe over simulated GPUs, clearly marked as such in every snapshot."""

    backend = "simulated"

    def __init__(self, spec: str, load_file: str | None = None, scope: str | None = None) -> None:
        """`scope` names one simulated machine (exq passes its state dir): only jobs launched with
        EXQ_SIMULATED_HOST=scope count, so simulations of separate state dirs never see each other."""
        self.spec = spec.strip()
        self.scope = scope
        self.job_env = {SCOPE_VARIABLE: scope} if scope else {}
        self.gpus = parse_gpu_spec(self.spec)
        self.load_file = load_file or None
        self._uid = os.getuid()

    def snapshot(self) -> GpuSnapshot:
        load, load_error = self._read_load()
        jobs = self._job_processes()
        infos = []
        for gpu in self.gpus:
            procs = list(jobs.get(gpu.index, []))
            if load.get(gpu.index):
                procs.append(GpuProcess(pid=0, used_memory=load[gpu.index], pgid=None))
            infos.append(
                GpuInfo(
                    index=gpu.index,
                    uuid=gpu.uuid,
                    name=gpu.name,
                    memory_total=gpu.memory_total,
                    memory_used=sum(p.used_memory for p in procs),
                    processes=tuple(procs),
                )
            )
        message = f"simulated GPUs (EXQ_SIMULATE_GPUS={self.spec}), not real hardware"
        extra = {"spec": self.spec}
        if load_error:
            message += f"; ignoring foreign load: {load_error}"
            extra["load_error"] = load_error
        return GpuSnapshot(self.backend, tuple(infos), time.time(), message, extra)

    def close(self) -> None:
        pass

    def _read_load(self) -> tuple[dict[int, int], str | None]:
        """Foreign load per GPU index from the load file; a missing file is no load."""
        if self.load_file is None:
            return {}, None
        try:
            with open(self.load_file, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}, None
        except (OSError, ValueError) as exc:
            return {}, f"{self.load_file}: {exc}"
        if not isinstance(data, dict):
            return {}, f"{self.load_file}: expected a JSON object such as {{\"0\": \"8GiB\"}}"
        load: dict[int, int] = {}
        try:
            for key, value in data.items():
                load[int(key)] = parse_size(value)
        except (TypeError, ValueError) as exc:
            return {}, f"{self.load_file}: {exc}"
        return load, None

    def _job_processes(self) -> dict[int, list[GpuProcess]]:
        """Simulated job processes per GPU index, one per process group."""
        per_gpu: dict[int, list[GpuProcess]] = {}
        seen: set[tuple[int, int]] = set()
        for proc in psutil.process_iter(["uids"]):
            try:
                uids = proc.info["uids"]
                if uids is None or uids.real != self._uid:
                    continue
                env = proc.environ()
                if "EXQ_JOB_ID" not in env or "CUDA_VISIBLE_DEVICES" not in env or _RUNNER_MARKER in env:
                    continue
                if self.scope is not None and env.get(SCOPE_VARIABLE) != self.scope:
                    continue
                pid = proc.pid
                pgid = os.getpgid(pid)
            except (psutil.Error, OSError):
                continue
            memory = _job_memory(env)
            for index in _job_gpus(env, self.gpus):
                if (index, pgid) in seen:
                    continue
                seen.add((index, pgid))
                per_gpu.setdefault(index, []).append(GpuProcess(pid=pid, used_memory=memory, pgid=pgid))
        return per_gpu
