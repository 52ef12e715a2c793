"""Journal events: every change to the queue is one of these, applied by `Ledger.apply`.

Events record decisions already made (the next status, the backoff, the scaled params), so replaying
the journal after a crash reproduces the state exactly, without re-deciding anything.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from exq.model.jobspec import JobSpec, Scalar
from exq.model.outcome import Outcome, RetryKind
from exq.model.state import Attempt, JobStatus, Submission, SupersededHow


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    seq: int = 0
    at: float


class Submitted(_Event):
    type: Literal["submitted"] = "submitted"
    submission: Submission
    jobs: list[JobSpec]


class Launched(_Event):
    """Recorded before the worker starts the attempt, so a crash never loses a launch."""

    type: Literal["launched"] = "launched"
    key: str
    attempt: Attempt


class Started(_Event):
    type: Literal["started"] = "started"
    key: str
    number: int
    pid: int | None
    started_at: float | None


class Ended(_Event):
    """An attempt ended, and what happens to the job next (retry, or its final status)."""

    type: Literal["ended"] = "ended"
    key: str
    number: int
    ended_at: float
    exit_code: int | None
    signal: int | None
    outcome: Outcome
    reason: str
    """Why this attempt ended as it did."""
    job_reason: str | None = None
    """Why the job stands where it does now, when that says more than `reason` (e.g. retries exhausted)."""
    result: dict[str, Any] | None = None
    status: JobStatus
    not_before: float | None = None
    retry_kind: RetryKind | None = None
    params: dict[str, Scalar] | None = None
    cmd: str | None = None


class Blocked(_Event):
    type: Literal["blocked"] = "blocked"
    keys: list[str]
    reason: str


class CancelRequested(_Event):
    """Queued jobs become cancelled at once; running ones are marked and killed."""

    type: Literal["cancel_requested"] = "cancel_requested"
    keys: list[str]


class Reset(_Event):
    """`exq retry` and `exq restart`: ended jobs are queued again, with their original params unless
    `params` gives a job's new ones (and `cmds` its command rendered with them). Attempts are kept."""

    type: Literal["reset"] = "reset"
    keys: list[str]
    params: dict[str, dict[str, Scalar]] = Field(default_factory=dict)
    cmds: dict[str, str] = Field(default_factory=dict)


class HoldSet(_Event):
    """`exq hold` / `exq release`: held jobs stay queued and are not placed."""

    type: Literal["hold"] = "hold"
    keys: list[str]
    held: bool


class PrioritySet(_Event):
    """`exq priority`: these jobs are placed by this priority from now on."""

    type: Literal["priority"] = "priority"
    keys: list[str]
    priority: int


class HostDown(_Event):
    """The host of these running jobs stopped answering: their status is unknown."""

    type: Literal["host_down"] = "host_down"
    host: str
    keys: list[str]


class HostUp(_Event):
    """The host answers again and these jobs still run there: re-attached."""

    type: Literal["host_up"] = "host_up"
    host: str
    keys: list[str]


class Superseded(_Event):
    """What exq found of an attempt it gave up as lost once its host answered again: the job was
    moved on, so a copy still running there was killed, and one that finished there is ignored."""

    type: Literal["superseded"] = "superseded"
    key: str
    number: int
    how: SupersededHow
    reason: str
    """The attempt's reason from now on (what it said, and what was found)."""


class PausedSet(_Event):
    type: Literal["paused"] = "paused"
    paused: bool


class HookRan(_Event):
    """A run of the submission's on_job_end hook finished; it saw every status change up to `covered`."""

    type: Literal["hook_ran"] = "hook_ran"
    submission: str
    covered: int
    ok: bool
    error: str | None = None


class Archived(_Event):
    """`exq clean`: these finished submissions (ids) and their jobs leave the state; archive.jsonl holds them."""

    type: Literal["archived"] = "archived"
    keys: list[str]


Event = Annotated[
    Submitted | Launched | Started | Ended | Blocked | CancelRequested | Reset | HostDown | HostUp | PausedSet
    | HookRan | Superseded | HoldSet | PrioritySet | Archived,
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
