"""The NVML backend: this host's NVIDIA GPUs through nvidia-ml-py (imported lazily)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

from exq.errors import ExqError
from exq.gpus import GpuInfo, GpuProcess, GpuSnapshot


class NvmlUnavailableError(ExqError):
    """NVML could not be initialised (no driver, no library, no pynvml)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"NVML unavailable: {reason}")


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


class NvmlProbe:
    """A GpuProbe over NVML. Initialises NVML once; raises NvmlUnavailableError when it cannot."""

    backend = "nvml"

    def __init__(self) -> None:
        self.job_env: dict[str, str] = {}
        try:
            import pynvml
        except ImportError as exc:
            raise NvmlUnavailableError(f"pynvml (nvidia-ml-py) is not installed: {exc}") from None
        self._nvml: Any = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvmlUnavailableError(str(exc) or type(exc).__name__) from None
        except OSError as exc:
            raise NvmlUnavailableError(str(exc)) from None
        self._lock = threading.Lock()
        self._open = True
        try:
            self.driver_version = _text(pynvml.nvmlSystemGetDriverVersion())
        except pynvml.NVMLError:
            self.driver_version = "unknown"

    def snapshot(self) -> GpuSnapshot:
        nvml = self._nvml
        with self._lock:
            if not self._open:
                raise ExqError("NVML probe is closed")
            gpus: list[GpuInfo] = []
            extra = {"driver_version": self.driver_version}
            for index in range(nvml.nvmlDeviceGetCount()):
                try:
                    gpus.append(self._device(index))
                except nvml.NVMLError as exc:
                    extra[f"gpu{index}_error"] = str(exc)
            message = None
            if len(extra) > 1:
                message = "some GPUs could not be read: " + ", ".join(
                    f"{k.removesuffix('_error')}: {v}" for k, v in extra.items() if k.endswith("_error")
                )
            return GpuSnapshot(self.backend, tuple(gpus), time.time(), message, extra)

    def close(self) -> None:
        with self._lock:
            if self._open:
                self._open = False
                with contextlib.suppress(self._nvml.NVMLError):
                    self._nvml.nvmlShutdown()

    def _device(self, index: int) -> GpuInfo:
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        return GpuInfo(
            index=index,
            uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
            name=_text(nvml.nvmlDeviceGetName(handle)),
            memory_total=int(memory.total),
            memory_used=int(memory.used),
            processes=self._processes(handle),
        )

    def _processes(self, handle: Any) -> tuple[GpuProcess, ...]:
        """Compute and graphics processes on one GPU; a process listed twice counts once (its maximum)."""
        nvml = self._nvml
        used: dict[int, int] = {}
        for getter in (nvml.nvmlDeviceGetComputeRunningProcesses, nvml.nvmlDeviceGetGraphicsRunningProcesses):
            try:
                infos = getter(handle)
            except nvml.NVMLError:
                continue
            for info in infos:
                pid = int(info.pid)
                memory = int(info.usedGpuMemory or 0)
                used[pid] = max(used.get(pid, 0), memory)
        return tuple(GpuProcess(pid=pid, used_memory=memory, pgid=_pgid(pid)) for pid, memory in used.items())
