"""Decide how an attempt ended from what its host reported."""

from __future__ import annotations

import re
import signal

from exq.queue.outcome import OOM_EXIT_CODE, Outcome
from exq.queue.workers.base import AttemptReport
from exq.text import one_line

ERROR_CHARS = 300
"""A failed job's own explanation (`error` in its result file) is cut to this many characters."""

OOM_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("torch.cuda.OutOfMemoryError", re.compile(r"torch\.cuda\.OutOfMemoryError")),
    ("torch.OutOfMemoryError", re.compile(r"torch\.OutOfMemoryError")),
    ("'CUDA out of memory' in the log", re.compile(r"CUDA out of memory")),
    ("CUBLAS_STATUS_ALLOC_FAILED", re.compile(r"CUBLAS_STATUS_ALLOC_FAILED")),
    ("CUDNN_STATUS_ALLOC_FAILED", re.compile(r"CUDNN_STATUS_ALLOC_FAILED")),
    ("cudaErrorMemoryAllocation", re.compile(r"cudaErrorMemoryAllocation")),
    (
        "'out of memory' in a CUDA error",
        re.compile(r"(?i:cuda)[^\n]*out of memory|out of memory[^\n]*(?i:cuda)"),
    ),
)
"""(label, pattern) pairs that mark a CUDA out-of-memory failure in a job's log, most specific first."""


def find_oom(log: str) -> str | None:
    """The label of the first OOM pattern found in `log`, if any."""
    for label, pattern in OOM_PATTERNS:
        if pattern.search(log):
            return label
    return None


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def classify(
    report: AttemptReport, *, timed_out: bool = False, cancelled: bool = False
) -> tuple[Outcome, str]:
    """The outcome of an ended attempt and a short human reason."""
    record = report.record
    code = record.exit_code
    if cancelled:
        return Outcome.CANCELLED, "cancelled"
    if timed_out:
        return Outcome.TIMEOUT, "timeout"
    if code is None:
        return Outcome.LOST, "runner vanished without recording an exit status"
    if code == OOM_EXIT_CODE:
        return Outcome.OOM, f"CUDA out of memory (exit code {OOM_EXIT_CODE})"
    if code != 0:
        label = find_oom(report.log_tail)
        if label is not None:
            return Outcome.OOM, f"CUDA out of memory ({label})"
    if code == 0:
        if report.missing_outputs:
            return Outcome.OUTPUTS_MISSING, "outputs missing: " + ", ".join(report.missing_outputs)
        return Outcome.SUCCEEDED, "succeeded"
    sig = record.signal
    if sig is not None and sig in signal.valid_signals():
        return Outcome.KILLED, f"killed by {signal_name(sig)}"
    return Outcome.FAILED, f"exit code {code}" + _explanation(report)


def _explanation(report: AttemptReport) -> str:
    """`: <message>` when the failed job explained itself with {"error": "..."} in EXQ_RESULT_FILE."""
    error = (report.result or {}).get("error")
    if not isinstance(error, str) or not error.strip():
        return ""
    return ": " + one_line(error, ERROR_CHARS)
