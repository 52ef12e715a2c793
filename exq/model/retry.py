"""What happens to a job after an attempt ends: retry (with backoff, maybe scaled params) or finish."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from exq.model.jobspec import Scalar
from exq.model.outcome import Outcome, RetryKind
from exq.model.state import Job, JobStatus
from exq.model.template import render_cmd


@dataclass(frozen=True)
class NextStep:
    status: JobStatus
    reason: str
    not_before: float | None = None
    retry_kind: RetryKind | None = None
    params: dict[str, Scalar] | None = None
    cmd: str | None = None


def next_step(job: Job, outcome: Outcome, reason: str, now: float) -> NextStep:
    """Decide the job's next status from the outcome of its latest attempt and its retry policy."""
    if outcome == Outcome.SUCCEEDED:
        return NextStep(JobStatus.SUCCEEDED, reason)
    if outcome == Outcome.CANCELLED:
        return NextStep(JobStatus.CANCELLED, reason)
    if outcome == Outcome.PREEMPTED:
        return NextStep(JobStatus.QUEUED, reason, now)
    if outcome == Outcome.OOM:
        return _oom_step(job, reason, now)
    if outcome == Outcome.TRANSIENT:
        return _transient_step(job, reason, now)
    policy = job.spec.retry
    kind: Literal["failure", "lost"] = "lost" if outcome == Outcome.LOST else "failure"
    done, rule = (job.lost_retries, policy.lost) if kind == "lost" else (job.failure_retries, policy.failure)
    if done >= rule.max:
        suffix = f" (after {done} retries)" if done else ""
        return NextStep(JobStatus.FAILED, reason + suffix)
    return NextStep(JobStatus.QUEUED, reason, now + rule.backoff, kind)


def _oom_step(job: Job, reason: str, now: float) -> NextStep:
    """Retry per `retry.oom` (exponential backoff, maybe a scaled-down param), or give up."""
    rule = job.spec.retry.oom
    if job.oom_retries >= rule.max:
        return NextStep(JobStatus.FAILED, f"{reason}; gave up after {job.oom_retries} OOM retries")
    params, cmd = _scaled(job)
    return NextStep(JobStatus.QUEUED, reason, now + rule.delay(job.oom_retries + 1), "oom", params, cmd)


def _transient_step(job: Job, reason: str, now: float) -> NextStep:
    """Retry per `retry.transient` (counted apart from other failures), or give up."""
    rule = job.spec.retry.transient
    if job.transient_retries >= rule.max:
        return NextStep(JobStatus.FAILED, f"{reason}; gave up after {job.transient_retries} transient retries")
    return NextStep(JobStatus.QUEUED, reason, now + rule.backoff, "transient")


def _scaled(job: Job) -> tuple[dict[str, Scalar] | None, str | None]:
    """Params and cmd for the next OOM retry, when the manifest asks to scale a param down."""
    scale = job.spec.oom_scale
    if scale is None:
        return None, None
    current = job.params.get(scale.param)
    if isinstance(current, bool) or not isinstance(current, int | float):
        return None, None
    params = dict(job.params)
    params[scale.param] = scale.next_value(current)
    return params, render_cmd(job.spec.cmd_template, params, job_id=job.id, phase=job.phase)
