"""One GPU probe interface with interchangeable backends (NVML, simulated; nvidia-smi for SSH hosts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class GpuProcess:
    """A process holding memory on a GPU."""

    pid: int
    used_memory: int
    pgid: int | None = None
    """Process group of `pid` on the GPU's host, when it could be read; exq jobs are told apart by it."""


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str
    name: str
    memory_total: int
    memory_used: int
    processes: tuple[GpuProcess, ...] = ()

    @property
    def memory_free(self) -> int:
        return max(0, self.memory_total - self.memory_used)


@dataclass(frozen=True)
class GpuSnapshot:
    """What one probe saw on one host."""

    backend: str
    """"nvml", "nvidia-smi", "simulated" or "none"."""
    gpus: tuple[GpuInfo, ...]
    taken_at: float
    message: str | None = None
    """Why there are no GPUs (e.g. no NVIDIA driver), or what is simulated."""
    extra: dict[str, str] = field(default_factory=dict)
    slots: bool = False
    """Its GPUs are slots of a host with its own queue (a Slurm partition): how many GPUs' worth of jobs it
    takes, not devices. Views list only the slots in use and count the rest."""

    @property
    def simulated(self) -> bool:
        return self.backend == "simulated"


class GpuProbe(Protocol):
    """Reads the GPUs of one host. `snapshot` may block briefly; callers run it in a thread."""

    backend: str
    job_env: dict[str, str]
    """Variables that mark a process as launched on this probe's host (used by the simulation)."""

    def snapshot(self) -> GpuSnapshot: ...

    def close(self) -> None: ...
