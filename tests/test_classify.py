"""classify(): every outcome, in its order of precedence; OOM signatures on real-looking logs
(tests/data/logs); transient failures; the last meaningful log line in a failed job's reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from exq.daemon.classify import ERROR_CHARS, OOM_PATTERNS, classify, find_oom, find_transient, last_line
from exq.model.contract import OOM_EXIT_CODE
from exq.model.outcome import Outcome
from exq.workers.base import LOG_TAIL_BYTES, AttemptReport, RunRecord

LOGS = Path(__file__).parent / "data" / "logs"
TEARDOWN = "".join(f"[rank0]: shutting down dataloader worker {i}, releasing pinned buffers\n" for i in range(200))
"""About 13 KiB of output after the error, as a job's teardown prints it."""


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
        ("RuntimeError: CUDA error: out of memory", "CUDA error: out of memory"),
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
    assert classify(report(1, log)) == (Outcome.FAILED, f"exit code 1: {log.splitlines()[-1]}")


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


def fixture(name: str) -> str:
    return (LOGS / name).read_bytes().decode()


def tail(log: str) -> str:
    """What a worker reads of a log: its last LOG_TAIL_BYTES."""
    return log.encode()[-LOG_TAIL_BYTES:].decode(errors="replace")


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("oom_jax_resource_exhausted.log", "JAX/XLA RESOURCE_EXHAUSTED: out of memory"),
        ("oom_tensorflow_resource_exhausted.log", "TensorFlow ResourceExhaustedError: OOM when allocating tensor"),
        ("oom_cuda_error.log", "CUDA error: out of memory"),
        ("oom_nccl_cuda_failure.log", "NCCL: Cuda failure 'out of memory'"),
        ("oom_hip.log", "HIP out of memory (hipErrorOutOfMemory)"),
    ],
)
def test_oom_signatures_in_real_logs(name: str, label: str) -> None:
    log = fixture(name)
    assert find_oom(log) == label
    assert classify(report(1, log)) == (Outcome.OOM, f"CUDA out of memory ({label})")
    # Found too when many KiB of teardown output follow it, and whatever the job died of.
    long = tail(log + TEARDOWN * 3)
    assert len(long) > 32 * 1024 and classify(report(134, long)) == (Outcome.OOM, f"CUDA out of memory ({label})")


@pytest.mark.parametrize(
    ("name", "last"),
    [
        ("near_miss_host_memory_error.log", "numpy.core._exceptions._ArrayMemoryError: Unable to allocate 74.5 GiB "
                                            "for an array with shape (10000000000,) and data type int64"),
        ("near_miss_resource_exhausted_rate_limit.log",
         'ValueError: RESOURCE_EXHAUSTED: Error reading "params/encoder/layer_3/kernel" from '
         "gs://bucket/exp42/checkpoint_12000: rate limit exceeded, retry after 30s"),
        ("near_miss_memory_mention.log", "AssertionError: loss is nan at step 2000"),
    ],
)
def test_near_misses_in_real_logs_are_plain_failures(name: str, last: str) -> None:
    log = fixture(name)
    assert find_oom(log) is None
    assert classify(report(1, log)) == (Outcome.FAILED, f"exit code 1: {last}")


@pytest.mark.parametrize(
    "line",
    [
        "MemoryError",  # host RAM
        "RESOURCE_EXHAUSTED: rate limit exceeded for project 1234",
        "status = StatusCode.RESOURCE_EXHAUSTED details = 'Received message larger than max (5242880 vs. 4194304)'",
        "tensorflow.python.framework.errors_impl.ResourceExhaustedError: Quota exceeded for read requests",
        "peak GPU memory 23.1 GiB (cuda:0); memory fragmentation 4%",
        "hipMalloc: 24 GiB of memory available",
        "NCCL WARN Cuda failure 'invalid device ordinal'",
    ],
)
def test_near_miss_lines_are_not_oom(line: str) -> None:
    assert find_oom(f"step 10 loss 1.2\nTraceback (most recent call last):\n{line}\n{TEARDOWN}") is None


# ---------------------------------------------------------------- a failed job's reason


PROGRESS = "".join(f"\r{p:3d}%|{'#' * (p // 10):<10}| {p}/100 [00:0{p // 20}<00:05]" for p in range(0, 101, 10))


def test_a_failed_jobs_reason_is_its_last_meaningful_line() -> None:
    log = ("Traceback (most recent call last):\n"
           '  File "/home/alice/train.py", line 41, in <module>\n'
           "    shard = load_shard(path)\n"
           "            ^^^^^^^^^^^^^^^^\n"
           "ValueError: bad data shard\n"
           "\n   \n"
           f"{PROGRESS}\n"
           "==========================================\n"
           "gpu1:4242:4250 [0] NCCL INFO comm 0x55d1 rank 0 nranks 2 - Destroy COMPLETE\n"
           "INFO:root:closing the data loader\n"
           "\x1b[0m\n"
           "exq runner: warning: process group 4242 of the job not found\n")
    assert last_line(log) == "ValueError: bad data shard"
    assert classify(report(3, log)) == (Outcome.FAILED, "exit code 3: ValueError: bad data shard")


def test_the_quoted_line_is_plain_text_and_bounded() -> None:
    assert last_line("\x1b[1;31mRuntimeError:\x1b[0m\tbad\x07 input\r\n") == "RuntimeError: bad input"
    long = last_line("ValueError: " + "x" * 5000 + "\n")
    assert long is not None and len(long) == ERROR_CHARS and long.endswith("\u2026")
    assert last_line("") is None and last_line("\n\n----\n" + PROGRESS) is None
    assert classify(report(2, "\n====\n")) == (Outcome.FAILED, "exit code 2")


def test_the_jobs_own_explanation_wins_over_its_log() -> None:
    failed = report(1, "ValueError: from the log\n")
    explained = AttemptReport(record=failed.record, log_tail=failed.log_tail, result={"error": "from the result"})
    assert classify(explained) == (Outcome.FAILED, "exit code 1: from the result")
    assert classify(failed) == (Outcome.FAILED, "exit code 1: ValueError: from the log")


# ---------------------------------------------------------------- transient failures


TRANSIENT = ["CUDA error: unknown error", r"NCCL WARN .* Connection reset", r"^Segmentation fault$"]


def test_a_failure_matching_a_transient_pattern_is_transient() -> None:
    log = ("step 3\nRuntimeError: CUDA error: unknown error\n"
           "CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below "
           "might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
           "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n\n")
    assert classify(report(1, log), transient=TRANSIENT) == (
        Outcome.TRANSIENT, "transient error (log matches 'CUDA error: unknown error'); "
                           "exit code 1: RuntimeError: CUDA error: unknown error")
    nccl = "gpu2:77:90 [1] NCCL WARN socketProgress: Connection reset by peer\n"
    assert classify(report(134, nccl), transient=TRANSIENT) == (
        Outcome.TRANSIENT, "transient error (log matches 'NCCL WARN .* Connection reset'); killed by SIGABRT")
    assert find_transient("a\nSegmentation fault\nb\n", TRANSIENT) == r"^Segmentation fault$"


def test_what_is_not_transient() -> None:
    log = "RuntimeError: CUDA error: unknown error\n"
    assert classify(report(1, log))[0] is Outcome.FAILED  # no patterns
    assert classify(report(1, "NCCL WARN\nConnection reset\n"), transient=TRANSIENT)[0] is Outcome.FAILED
    assert classify(report(0, log), transient=TRANSIENT)[0] is Outcome.SUCCEEDED
    assert classify(report(143, log), transient=TRANSIENT, timed_out=True)[0] is Outcome.TIMEOUT
    assert classify(report(None, log), transient=TRANSIENT)[0] is Outcome.LOST
    # An OOM takes precedence over a transient match.
    both = log + "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    oom = (Outcome.OOM, "CUDA out of memory (torch.OutOfMemoryError)")
    assert classify(report(1, both), transient=TRANSIENT) == oom
