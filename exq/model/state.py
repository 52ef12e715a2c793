"""The queue's state: the documented model of `queue_state.json` (exported by `exq schema`).

Plain data only; no live handles (processes, connections). Events in `events.py` change it.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from exq.model.jobspec import Hook, JobSpec, Scalar
from exq.model.outcome import Outcome

STATE_VERSION = 1


class JobStatus(StrEnum):
    QUEUED = "queued"
    """Waiting for its dependencies, a free GPU, or the end of a retry backoff."""
    RUNNING = "running"
    UNKNOWN = "unknown"
    """Its host stopped answering; it may still be running there. Requeued after the host's lost_timeout."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    BLOCKED = "blocked"
    """A job it depends on failed or was cancelled; it will not run unless retried."""
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.BLOCKED, JobStatus.CANCELLED)


SupersededHow = Literal["killed", "finished", "gone"]
"""What became of an attempt given up as lost, found once its host answered again: still running there,
so killed; finished there (its result ignored); or not running there (never started, or vanished)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


class Attempt(_Model):
    """One launch of a job."""

    number: int = Field(description="1 for the first attempt.")
    host: str
    gpus: list[int] = Field(description="GPU indices on the host (CUDA_VISIBLE_DEVICES, PCI bus order).")
    gpu_uuids: list[str] = Field(default_factory=list)
    params: dict[str, Scalar] = Field(description="Params of this attempt (after any on_oom scaling).")
    cmd: str
    dir: str = Field(description="Attempt directory on the host: log, pid and exit files.")
    workdir: str | None = Field(None, description="Where the job ran, when not the manifest's workdir (sync).")
    log: str
    launched_at: float
    started_at: float | None = None
    pid: int | None = Field(None, description="Process group id of the job on its host.")
    ended_at: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    outcome: Outcome | None = None
    reason: str | None = Field(None, description="Why it ended as it did, e.g. 'CUDA out of memory'.")
    superseded: SupersededHow | None = Field(
        None, description="Given up as lost, then found when its host answered again: 'killed' (it still ran "
        "there), 'finished' (it had ended there; its result ignored) or 'gone' (not running there).")


class Progress(_Model):
    """What a running job last wrote to its EXQ_RESULT_FILE (e.g. by `exq.torch.report`).

    Read every few seconds while the job runs; advisory (not journaled), cleared when the attempt ends.
    """

    step: int | float | None = Field(None, description="The result's `step`, when a number.")
    total: int | float | None = Field(None, description="The result's `total`, when a number.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Every other key of the result.")
    updated_at: float = Field(description="When exq first read these values (old: the job stopped reporting).")

    @classmethod
    def from_result(cls, result: dict[str, Any], now: float, previous: Progress | None = None) -> Progress:
        """The progress a result file holds; keeps `previous.updated_at` when nothing changed."""
        step, total = (_number(result.get(name)) for name in ("step", "total"))
        metrics = {k: v for k, v in result.items() if k not in ("step", "total") or _number(v) is None}
        if previous is not None and (previous.step, previous.total, previous.metrics) == (step, total, metrics):
            return previous
        return cls(step=step, total=total, metrics=metrics, updated_at=now)

    @property
    def fraction(self) -> float | None:
        """step / total in [0, 1], when both are known and total is positive."""
        if self.step is None or not self.total or self.total <= 0:
            return None
        return min(1.0, max(0.0, self.step / self.total))


def _number(value: Any) -> int | float | None:
    """`value` when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


class Job(_Model):
    """One job: its spec, where it stands, and every attempt so far."""

    id: str
    submission: str
    phase: str
    status: JobStatus = JobStatus.QUEUED
    params: dict[str, Scalar] = Field(description="Params of the current or next attempt.")
    cmd: str = Field(description="Command of the current or next attempt.")
    priority: int = 0
    order: int = Field(description="Global submission order; ties in priority run in this order.")
    deps: list[str] = Field(default_factory=list)
    host: str | None = None
    gpus: list[int] = Field(default_factory=list)
    attempts: list[Attempt] = Field(default_factory=list)
    oom_retries: int = 0
    transient_retries: int = Field(0, description="Retries per retry.transient (not counted in failure_retries).")
    failure_retries: int = 0
    lost_retries: int = 0
    not_before: float | None = Field(None, description="Retry backoff: not placed before this time.")
    cancel_requested: bool = Field(False, description="Cancel asked while running; the attempt is being killed.")
    held: bool = Field(False, description="`exq hold`: stays queued, not placed, until `exq release`.")
    reason: str | None = Field(None, description="Why the job failed, is blocked, or is waiting.")
    log: str | None = Field(None, description="Log file of the latest attempt.")
    result: dict[str, Any] | None = Field(None, description="JSON the job wrote to EXQ_RESULT_FILE.")
    progress: Progress | None = Field(None, description="Live progress of the running attempt (from its result file).")
    submitted_at: float
    finished_at: float | None = None
    spec: JobSpec

    @property
    def key(self) -> str:
        """Unique key: job ids are unique within a submission."""
        return job_key(self.submission, self.id)

    @property
    def current_attempt(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None


def job_key(submission: str, job_id: str) -> str:
    return f"{submission}/{job_id}"


def dep_key(submission: str, dep: str) -> str:
    """The key of upstream job `dep` of a job of `submission`: an id of the same submission, or a key."""
    return dep if "/" in dep else job_key(submission, dep)


class Submission(_Model):
    id: str
    key: str | None = Field(None, description="Unique key `exq submit` gave it: it is ingested once, whatever happens.")
    name: str
    source: str
    submitted_at: float
    phases: list[str]
    jobs: int
    on_job_end: Hook | None = None
    changes: int = Field(0, description="How many times a job of it changed status (what on_job_end follows).")
    hook_covered: int = Field(0, description="The changes the last finished on_job_end run covered.")
    hook_error: str | None = Field(None, description="Why the last on_job_end run failed; null when it succeeded.")
    max_parallel: int | None = Field(None, description="At most this many of its jobs running at once (null: any).")
    phase_max_parallel: dict[str, int] = Field(
        default_factory=dict, description="Per phase name: at most this many of its jobs running at once.")
    labels: list[str] = Field(default_factory=list, description="Labels of the whole submission.")


class GpuView(_Model):
    """A GPU as the last probe saw it."""

    host: str
    index: int
    uuid: str
    name: str
    memory_total: int
    memory_used: int
    foreign_memory: int = Field(description="Memory held by processes exq did not launch.")
    reserved_memory: int = Field(description="Memory reserved by exq jobs placed here.")
    jobs: list[str] = Field(default_factory=list)
    simulated: bool


class HostView(_Model):
    name: str
    backend: str = Field(description="'nvml', 'nvidia-smi', 'simulated' or 'none'.")
    message: str | None = None
    probed_at: float | None = None
    up: bool = True
    down_since: float | None = Field(None, description="When the host stopped answering.")
    slots: int | None = Field(None, description="For a host with its own queue (a Slurm partition): how many GPUs' "
                                                "worth of jobs it takes; only the slots in use are listed in gpus.")
    error: str | None = None


class DaemonInfo(_Model):
    pid: int
    hostname: str
    started_at: float
    mode: Literal["daemon", "run"]
    draining: bool = False
    problem: str | None = Field(None, description="What keeps the daemon from working normally now (e.g. a full disk).")


class QueueState(_Model):
    """The whole queue, as written to queue_state.json."""

    version: int = STATE_VERSION
    seq: int = Field(0, description="Number of the last journal event included.")
    updated_at: float = 0.0
    paused: bool = False
    daemon: DaemonInfo | None = None
    hosts: list[HostView] = Field(default_factory=list)
    gpus: list[GpuView] = Field(default_factory=list)
    submissions: list[Submission] = Field(default_factory=list)
    jobs: list[Job] = Field(default_factory=list)
    archived: dict[str, str | None] = Field(
        default_factory=dict, description="Submissions `exq clean` moved to archive.jsonl: id -> key. Kept so "
        "that no id is handed out again and no intake file of them is ingested again.")
