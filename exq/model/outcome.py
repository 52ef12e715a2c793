"""How an attempt ended, as the scheduler decides retries on it."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

RetryKind = Literal["oom", "transient", "failure", "lost"]
"""Which retry budget a retry counts against (`retry.oom`, `retry.transient`, ...)."""


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    OOM = "oom"
    TRANSIENT = "transient"
    """Failed (exit code or signal) with a log tail matching one of the job's `retry.transient.match`."""
    TIMEOUT = "timeout"
    HOST_OOM = "host_oom"
    """Ended for want of host memory (RAM), e.g. Slurm's OUT_OF_MEMORY: its memory limit was reached."""
    KILLED = "killed"
    """Killed by a signal exq did not send."""
    FAILED = "failed"
    """Non-zero exit code."""
    OUTPUTS_MISSING = "outputs_missing"
    LOST = "lost"
    """The runner vanished without recording an exit status."""
    PREEMPTED = "preempted"
    """Its host took the run back (Slurm preempted or requeued it): run again at once, counted against no
    retry budget, since the job did nothing wrong."""
    CANCELLED = "cancelled"
