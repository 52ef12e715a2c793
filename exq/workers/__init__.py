"""Workers run attempts on one host each: probe GPUs, launch, wait, kill, re-attach."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from exq.workers.base import AttemptReport, Capabilities, LaunchRequest, RunRecord, Worker

if TYPE_CHECKING:
    from exq.config import HostConfig

__all__ = ["WORKER_KINDS", "AttemptReport", "Capabilities", "LaunchRequest", "RunRecord", "Worker", "make_worker"]

WORKER_KINDS = {"ssh": "exq.workers.ssh", "slurm": "exq.workers.slurm"}
"""Each kind of configured host (`hosts.NAME.kind`) and the module whose `make_worker` serves it. A new
backend is a new module here; it is imported only when a host of its kind is configured."""


def make_worker(name: str, host: HostConfig, node_id: str) -> Worker:
    """The worker for configured host `name`; `node_id` names this daemon's directory there."""
    factory: Callable[[str, HostConfig, str], Worker] = importlib.import_module(WORKER_KINDS[host.kind]).make_worker
    return factory(name, host, node_id)
