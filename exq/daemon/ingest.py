"""Ingest step: turn intake files into Submitted events, and apply control requests (cancel, retry, pause...)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from exq.daemon import control
from exq.daemon.context import Context
from exq.errors import ExqError
from exq.model.events import Submitted
from exq.model.state import Submission
from exq.store import intake

log = logging.getLogger("exq.scheduler")


def ingest(ctx: Context) -> None:
    """Turn intake files into Submitted events, then remove the files."""
    for path, item in intake.pending_intakes(ctx.store.paths):
        sub = intake_submission(item)
        if _ingested(ctx, sub):
            path.unlink(missing_ok=True)  # ingested before a crash removed the file
            continue
        if ctx.submission(sub.id) is not None:
            # The number was handed out twice (intake/.counter was set back by hand or a backup): keep both.
            number = 1 + max(int(s.id) for s in ctx.store.state.submissions if s.id.isdigit())
            intake.raise_counter(ctx.store.paths, number)
            log.error("submission number %s was already taken; ingesting %s as %d", sub.id, sub.name, number)
            sub = sub.model_copy(update={"id": str(number)})
        ctx.commit([Submitted(at=item.submitted_at, submission=sub, jobs=item.spec.jobs)])
        log.info("submission %s (%s): %d jobs", sub.id, sub.name, len(item.spec.jobs))
        path.unlink(missing_ok=True)


def _ingested(ctx: Context, sub: Submission) -> bool:
    """Whether this intake was already ingested (by its key; files written before keys: by time and name)."""
    if sub.key is not None:
        return sub.key in ctx.store.ledger.submission_keys
    existing = ctx.submission(sub.id)
    return existing is not None and (existing.submitted_at, existing.name) == (sub.submitted_at, sub.name)


def intake_submission(item: intake.Intake) -> Submission:
    spec = item.spec
    return Submission(id=item.id, key=item.key, name=spec.name, source=spec.source, submitted_at=item.submitted_at,
                      phases=list(spec.phases), jobs=len(spec.jobs), on_job_end=spec.on_job_end,
                      max_parallel=spec.max_parallel, phase_max_parallel=dict(spec.phase_max_parallel),
                      labels=list(spec.labels))


def apply_requests(ctx: Context, kill: Callable[[str], None]) -> None:
    """Apply the queued control requests, each durably before its reply; `kill` ends a job's attempt."""
    for path, req in intake.pending_requests(ctx.store.paths):
        try:
            plan = control.plan(ctx.store.ledger, req, time.time())
        except ExqError as exc:
            intake.reply(path, intake.ControlReply(ok=False, message=str(exc)))
            continue
        ctx.commit(plan.events)
        for key in plan.kill:
            kill(key)
        intake.reply(path, intake.ControlReply(ok=True, message=plan.message, affected=plan.affected))
