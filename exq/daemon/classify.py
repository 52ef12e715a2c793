"""Decide how an attempt ended from what its host reported."""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence

from exq.model.contract import OOM_EXIT_CODE
from exq.model.outcome import Outcome
from exq.text import one_line
from exq.workers.base import AttemptReport

ERROR_CHARS = 300
"""A failed job's explanation (`error` in its result file, else its log's last meaningful line) is cut to
this many characters."""
PATTERN_CHARS = 100
"""A `retry.transient` pattern quoted in a reason is cut to this many characters."""


def _on_one_line(*parts: str) -> str:
    """A regex (for re.MULTILINE) matching at the start of a line holding every one of `parts`, in any
    order: lookaheads from the line's start keep the search linear in the log's length."""
    return "^" + "".join(f"(?=[^\\n]*(?:{part}))" for part in parts)


OOM_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("torch.cuda.OutOfMemoryError", re.compile(r"torch\.cuda\.OutOfMemoryError")),
    ("torch.OutOfMemoryError", re.compile(r"torch\.OutOfMemoryError")),
    ("'CUDA out of memory' in the log", re.compile(r"CUDA out of memory")),
    ("CUDA error: out of memory", re.compile(r"CUDA error: out of memory")),
    ("NCCL: Cuda failure 'out of memory'", re.compile(r"Cuda failure (?:\d+ )?'out of memory'")),
    ("HIP out of memory (hipErrorOutOfMemory)", re.compile(r"hipErrorOutOfMemory|HIP out of memory")),
    (  # before JAX's: TensorFlow logs RESOURCE_EXHAUSTED too
        "TensorFlow ResourceExhaustedError: OOM when allocating tensor",
        re.compile("OOM when allocating tensor|" + _on_one_line(
            "ResourceExhaustedError", "(?i:out of memory|failed to allocate memory)"), re.MULTILINE),
    ),
    (
        "JAX/XLA RESOURCE_EXHAUSTED: out of memory",
        re.compile(_on_one_line(
            "RESOURCE_EXHAUSTED:", "(?i:out of memory|(?:failed|error|attempting) (?:to )?allocat)"), re.MULTILINE),
    ),
    ("CUBLAS_STATUS_ALLOC_FAILED", re.compile(r"CUBLAS_STATUS_ALLOC_FAILED")),
    ("CUDNN_STATUS_ALLOC_FAILED", re.compile(r"CUDNN_STATUS_ALLOC_FAILED")),
    ("cudaErrorMemoryAllocation", re.compile(r"cudaErrorMemoryAllocation")),
    ("'out of memory' in a CUDA error", re.compile(_on_one_line("(?i:cuda)", "out of memory"), re.MULTILINE)),
)
"""(label, pattern) pairs that mark a GPU out-of-memory failure in a job's log, most specific first."""

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|[\x00-\x08\x0b-\x1f\x7f]")
"""Terminal escape sequences (colours) and control characters, dropped from a quoted log line."""
_CHATTER = re.compile(
    r"^(?:INFO|DEBUG)\b|\bNCCL INFO\b|^exq runner: "
    r"|^(?:CUDA kernel errors might be asynchronously|For debugging consider passing CUDA_LAUNCH_BLOCKING"
    r"|Compile with .TORCH_USE_CUDA_DSA.)"
)
"""Log lines that never explain a failure: INFO/DEBUG logging, NCCL's INFO lines, exq runner's own notes,
and the hints PyTorch prints after each CUDA error."""


def find_oom(log: str) -> str | None:
    """The label of the first OOM pattern found in `log`, if any."""
    for label, pattern in OOM_PATTERNS:
        if pattern.search(log):
            return label
    return None


def find_transient(log: str, patterns: Sequence[str]) -> str | None:
    """The first of `patterns` (regular expressions; ^ and $ match at each line) found in `log`, if any."""
    for pattern in patterns:
        if re.search(pattern, log, re.MULTILINE):
            return pattern
    return None


def last_line(log: str) -> str | None:
    """The log's last meaningful line, cut to ERROR_CHARS: not blank, not a progress bar (a line
    redrawn with '\\r'), not only punctuation, not chatter (see _CHATTER)."""
    for raw in reversed(log.split("\n")):
        line = raw.removesuffix("\r")
        if "\r" in line:
            continue
        line = _ANSI.sub("", line).strip()
        if any(c.isalnum() for c in line) and not _CHATTER.search(line):
            return one_line(line, ERROR_CHARS)
    return None


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def classify(
    report: AttemptReport, *, timed_out: bool = False, cancelled: bool = False, transient: Sequence[str] = ()
) -> tuple[Outcome, str]:
    """The outcome of an ended attempt and a short human reason.

    `transient`: the job's `retry.transient.match` patterns; a failure whose log tail matches one (and
    is not an OOM) is TRANSIENT.
    """
    record = report.record
    code = record.exit_code
    if cancelled:
        return Outcome.CANCELLED, "cancelled"
    if timed_out:  # exq ended it: the host's word on the kill (a Slurm CANCELLED) says less
        return Outcome.TIMEOUT, "timeout"
    if report.verdict is not None:
        return report.verdict
    if code is None:
        return Outcome.LOST, "runner vanished without recording an exit status"
    if code == OOM_EXIT_CODE:
        return Outcome.OOM, f"CUDA out of memory (exit code {OOM_EXIT_CODE})"
    if code == 0:
        if report.missing_outputs:
            return Outcome.OUTPUTS_MISSING, "outputs missing: " + ", ".join(report.missing_outputs)
        return Outcome.SUCCEEDED, "succeeded"
    label = find_oom(report.log_tail)
    if label is not None:
        return Outcome.OOM, f"CUDA out of memory ({label})"
    outcome, reason = _failure(report)
    pattern = find_transient(report.log_tail, transient)
    if pattern is not None:
        return Outcome.TRANSIENT, f"transient error (log matches '{one_line(pattern, PATTERN_CHARS)}'); {reason}"
    return outcome, reason


def _failure(report: AttemptReport) -> tuple[Outcome, str]:
    """KILLED (by a signal exq did not send) or FAILED (an exit code, with the job's explanation)."""
    record = report.record
    sig = record.signal
    if sig is not None and sig in signal.valid_signals():
        return Outcome.KILLED, f"killed by {signal_name(sig)}"
    return Outcome.FAILED, f"exit code {record.exit_code}" + _explanation(report)


def _explanation(report: AttemptReport) -> str:
    """`: <message>`: what the failed job wrote as {"error": "..."} in EXQ_RESULT_FILE, else the last
    meaningful line of its log (see last_line); empty when there is neither."""
    error = (report.result or {}).get("error")
    if isinstance(error, str) and error.strip():
        return ": " + one_line(error, ERROR_CHARS)
    line = last_line(report.log_tail)
    return "" if line is None else ": " + line
