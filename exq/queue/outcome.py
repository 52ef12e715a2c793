"""How an attempt ended, as the scheduler decides retries on it."""

from __future__ import annotations

from enum import StrEnum

OOM_EXIT_CODE = 211
"""Exit code reserved for a training script that reports a CUDA out-of-memory failure itself."""


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    OOM = "oom"
    TIMEOUT = "timeout"
    KILLED = "killed"
    """Killed by a signal exq did not send."""
    FAILED = "failed"
    """Non-zero exit code."""
    OUTPUTS_MISSING = "outputs_missing"
    LOST = "lost"
    """The runner vanished without recording an exit status."""
    CANCELLED = "cancelled"
