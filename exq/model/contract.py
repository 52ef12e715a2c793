"""The job-side contract: what exq tells a job, and what a job may tell exq back.

A job reads its variables (below), may write a JSON object of metrics to its result file, and may exit
with OOM_EXIT_CODE to say it ran out of GPU memory. Each attempt lives in a directory of the runner's
files (below) on the job's host. `exq.torch` uses this module only.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

from exq.store.fsio import atomic_write

JOB_ID = "EXQ_JOB_ID"
SUBMISSION = "EXQ_SUBMISSION"
PHASE = "EXQ_PHASE"
ATTEMPT = "EXQ_ATTEMPT"
PARAMS = "EXQ_PARAMS"
"""This attempt's params (after any on_oom.scale), a JSON object."""
BASE_PARAMS = "EXQ_BASE_PARAMS"
"""The manifest's params of the job, a JSON object."""
RESULT_FILE = "EXQ_RESULT_FILE"
"""Where the job writes its metrics (a JSON object; `error` explains a failure)."""
GPU_MEMORY = "EXQ_GPU_MEMORY"
"""The job's expected peak GPU memory per GPU in bytes, when its manifest gives one."""
STATE_DIR = "EXQ_STATE_DIR"
"""The queue's state directory, on the daemon's own machine: a job there can query the queue."""

OOM_EXIT_CODE = 211
"""The exit status a job uses to say it ran out of GPU memory (exq.torch.oom_guard exits with it)."""

RESULT_NAME = "result.json"
"""The result file's name in the attempt directory."""
CLAIM, PID, EXIT, LOG = "claim", "pid", "exit", "log"
"""The runner's files in an attempt directory (see runner.sh)."""


def write_result(path: str | Path, data: bytes) -> None:
    """Replace the result file with `data` at once: a reader sees the old or the new, never half of it."""
    atomic_write(Path(path), data)


def result_path(attempt_dir: str) -> str:
    """The result file of the attempt in `attempt_dir` (a POSIX path on the attempt's host)."""
    return posixpath.join(attempt_dir, RESULT_NAME)

