"""Dependency step: block the jobs behind a failure, and list the jobs ready to start."""

from __future__ import annotations

import time
from collections.abc import Iterator

from exq.daemon.context import Context
from exq.model.events import Blocked
from exq.model.state import Job, JobStatus, dep_key

_BLOCKING = (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.BLOCKED)
HELD = "held: not placed until `exq release`"
PAUSED = "waiting: the queue is paused (`exq resume`)"


def backoff_reason(job: Job, not_before: float) -> str:
    """A job in retry backoff: why its last attempt ended, and when it may start again."""
    attempt = job.current_attempt
    why = f"{attempt.reason}; " if attempt is not None and attempt.reason else ""
    return f"{why}retrying at {time.strftime('%H:%M:%S', time.localtime(not_before))} (backoff)"


def block_dependants(ctx: Context) -> None:
    """Queued jobs whose dependency failed, was cancelled or is blocked become blocked."""
    if not ctx.dirty:
        return
    jobs = ctx.store.ledger.jobs
    blocked: dict[str, str] = {}
    changed = True
    while changed:
        changed = False
        for job in ctx.store.ledger.queued.values():
            if not job.deps or job.key in blocked:
                continue
            for dep in job.deps:
                key = dep_key(job.submission, dep)
                upstream = jobs.get(key)
                if upstream is None or upstream.status in _BLOCKING or key in blocked:
                    state = "blocked" if key in blocked else upstream.status if upstream else "is not in the queue"
                    blocked[job.key] = f"dependency {dep} {state}"
                    changed = True
                    break
    by_reason: dict[str, list[str]] = {}
    for key, reason in blocked.items():
        by_reason.setdefault(reason, []).append(key)
    if by_reason:
        ctx.commit([Blocked(at=time.time(), keys=keys, reason=r) for r, keys in by_reason.items()])


def _unmet(upstream: Job | None) -> bool:
    return upstream is None or upstream.status != JobStatus.SUCCEEDED


class ReadyJobs:
    """The queued jobs in placement order (highest priority first, then submission order), each checked only
    when reached: those with upstream jobs still to succeed, or in backoff, are skipped (the first noted)."""

    def __init__(self, ctx: Context, now: float) -> None:
        self.ctx = ctx
        self.now = now
        self.next_ready_at: float | None = None
        """When the earliest backoff among the jobs passed so far ends (None: none)."""

    def __iter__(self) -> Iterator[Job]:
        jobs = self.ctx.store.ledger.jobs
        for job in self.ctx.store.ledger.queued_in_order():
            if job.deps:
                pending = sum(_unmet(jobs.get(dep_key(job.submission, d))) for d in job.deps)
                if pending:
                    self.ctx.note(job, f"waiting for {pending} upstream job(s)")
                    continue
            if job.held:
                self.ctx.note(job, HELD)
                continue
            if job.not_before is not None and job.not_before > self.now:
                if self.next_ready_at is None or job.not_before < self.next_ready_at:
                    self.next_ready_at = job.not_before
                self.ctx.note(job, backoff_reason(job, job.not_before))
                continue
            yield job
