"""Workers run attempts on one host each: probe GPUs, launch, wait, kill, re-attach."""

from exq.workers.base import AttemptReport, Capabilities, LaunchRequest, RunRecord, Worker

__all__ = ["AttemptReport", "Capabilities", "LaunchRequest", "RunRecord", "Worker"]
