"""Pick this host's GPU probe: simulated (EXQ_SIMULATE_GPUS), NVML, or none (CPU jobs only)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

from exq.gpus import GpuProbe, GpuSnapshot
from exq.gpus.nvml import NvmlProbe, NvmlUnavailableError
from exq.gpus.simulated import SimulatedProbe


class NoGpuProbe:
    """A host without usable GPUs: zero GPUs, and a message saying why."""

    backend = "none"

    def __init__(self, message: str) -> None:
        self.message = message
        self.job_env: dict[str, str] = {}

    def snapshot(self) -> GpuSnapshot:
        return GpuSnapshot(self.backend, (), time.time(), self.message)

    def close(self) -> None:
        pass


def no_driver_message(reason: str) -> str:
    return (
        f"no NVIDIA driver found (NVML: {reason}); only CPU jobs (gpus: 0) will run. "
        "Set EXQ_SIMULATE_GPUS=4x24GiB to simulate GPUs."
    )


def select_probe(environ: Mapping[str, str] | None = None, scope: str | None = None) -> GpuProbe:
    """The probe for this host. A bad EXQ_SIMULATE_GPUS spec raises ExqError.

    `scope` names the simulated machine (exq passes its state dir); real probes ignore it.
    """
    env = os.environ if environ is None else environ
    spec = env.get("EXQ_SIMULATE_GPUS", "").strip()
    if spec:
        return SimulatedProbe(spec, env.get("EXQ_SIMULATE_GPUS_LOAD") or None, scope)
    try:
        return NvmlProbe()
    except NvmlUnavailableError as exc:
        return NoGpuProbe(no_driver_message(exc.reason))
