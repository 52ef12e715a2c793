"""Workers run attempts on one host each: probe GPUs, launch, wait, kill, re-attach."""

from exq.queue.workers.base import AttemptReport, LaunchRequest, RunRecord, Worker

__all__ = ["AttemptReport", "LaunchRequest", "RunRecord", "Worker"]
