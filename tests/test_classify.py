"""classify(): every outcome, in its order of precedence."""

from __future__ import annotations

import pytest

from exq.queue.classify import OOM_PATTERNS, classify, find_oom
from exq.queue.outcome import OOM_EXIT_CODE, Outcome
from exq.queue.workers.base import AttemptReport, RunRecord


def report(code: int | None, log: str = "", missing: list[str] | None = None) -> AttemptReport:
    ended = None if code is None else 2.0
    record = RunRecord(claimed=True, runner_pid=10, pgid=11, started_at=1.0, ended_at=ended, exit_code=code)
    return AttemptReport(record=record, log_tail=log, result=None, missing_outputs=missing or [])


def test_success() -> None:
    assert classify(report(0, "epoch 1 done\n")) == (Outcome.SUCCEEDED, "succeeded")


def test_cancelled_and_timeout_come_first() -> None:
    assert classify(report(0), cancelled=True) == (Outcome.CANCELLED, "cancelled")
    assert classify(report(None), cancelled=True, timed_out=True)[0] is Outcome.CANCELLED
    assert classify(report(143), timed_out=True) == (Outcome.TIMEOUT, "timeout")
    assert classify(report(None), timed_out=True)[0] is Outcome.TIMEOUT


def test_lost() -> None:
    assert classify(report(None, "CUDA out of memory")) == (
        Outcome.LOST, "runner vanished without recording an exit status")


def test_oom_exit_code() -> None:
    assert classify(report(OOM_EXIT_CODE)) == (Outcome.OOM, f"CUDA out of memory (exit code {OOM_EXIT_CODE})")


@pytest.mark.parametrize(
    ("line", "label"),
    [
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "torch.OutOfMemoryError"),
        ("torch.cuda.OutOfMemoryError: CUDA out of memory.", "torch.cuda.OutOfMemoryError"),
        ("RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB", "'CUDA out of memory' in the log"),
        ("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate", "CUBLAS_STATUS_ALLOC_FAILED"),
        ("RuntimeError: cuDNN error: CUDNN_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED"),
        ("cudaErrorMemoryAllocation: out of memory", "cudaErrorMemoryAllocation"),
        ("RuntimeError: CUDA error: out of memory", "'out of memory' in a CUDA error"),
        ("jax: cuda allocator: out of memory", "'out of memory' in a CUDA error"),
    ],
)
def test_oom_in_log(line: str, label: str) -> None:
    log = f"step 10 loss 1.2\nTraceback (most recent call last):\n{line}\n"
    assert find_oom(log) == label
    assert classify(report(1, log)) == (Outcome.OOM, f"CUDA out of memory ({label})")
    # The same text in the log of a job that exited 0 is not an OOM: it succeeded.
    assert classify(report(0, log)) == (Outcome.SUCCEEDED, "succeeded")


@pytest.mark.parametrize(
    "log",
    [
        "MemoryError: out of memory\n",  # host memory, no CUDA on the line
        "cuda device 0 ready\nout of memory\n",  # CUDA and the phrase on different lines
        "CUDNN_STATUS_NOT_SUPPORTED\n",
        "cuda out of MEMORY warnings disabled\n",
    ],
)
def test_not_oom(log: str) -> None:
    assert find_oom(log) is None
    assert classify(report(1, log)) == (Outcome.FAILED, "exit code 1")


def test_oom_patterns_exported() -> None:
    assert all(label and pattern.pattern for label, pattern in OOM_PATTERNS)


def test_outputs_missing() -> None:
    expected = (Outcome.OUTPUTS_MISSING, "outputs missing: ckpt/*.pt")
    assert classify(report(0, missing=["ckpt/*.pt"])) == expected
    assert classify(report(0, missing=["a", "b/*"]))[1] == "outputs missing: a, b/*"
    assert classify(report(2, missing=["ckpt/*.pt"])) == (Outcome.FAILED, "exit code 2")


@pytest.mark.parametrize(
    ("code", "name"), [(137, "SIGKILL"), (143, "SIGTERM"), (139, "SIGSEGV"), (134, "SIGABRT")]
)
def test_killed_by_signal(code: int, name: str) -> None:
    assert classify(report(code)) == (Outcome.KILLED, f"killed by {name}")


def test_killed_by_unnamed_realtime_signal() -> None:
    outcome, reason = classify(report(128 + 40))
    assert outcome is Outcome.KILLED and reason in ("killed by signal 40", "killed by SIGRTMIN+6")


@pytest.mark.parametrize("code", [1, 2, 3, 127, 128, 255])
def test_failed(code: int) -> None:
    assert classify(report(code)) == (Outcome.FAILED, f"exit code {code}")


def test_signal_exit_with_oom_text_is_oom() -> None:
    assert classify(report(134, "CUDA out of memory\n"))[0] is Outcome.OOM


def test_a_failed_job_explains_itself_through_its_result_file() -> None:
    failed = report(1)
    explained = AttemptReport(record=failed.record, log_tail="", result={"error": "gate M0:\n  loss rose"})
    assert classify(explained) == (Outcome.FAILED, "exit code 1: gate M0: loss rose")
    long = AttemptReport(record=failed.record, log_tail="", result={"error": "x" * 1000})
    assert len(classify(long)[1]) < 320
    ignored = AttemptReport(record=failed.record, log_tail="", result={"error": 3})
    assert classify(ignored) == (Outcome.FAILED, "exit code 1")
