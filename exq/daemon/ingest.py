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
from exq.store import archive, intake

log = logging.getLogger("exq.scheduler")


def ingest(ctx: Context) -> None:
    """Turn intake files into Submitted events, then remove the files."""
    for path, item in intake.pending_intakes(ctx.store.paths):
        sub = intake_submission(item)
        if _ingested(ctx, sub):
            path.unlink(missing_ok=True)  # ingested before a crash removed the file
            continue
        if ctx.submission(sub.id) is not None or sub.id in ctx.store.state.archived:
            # The number was handed out twice (intake/.counter was set back by hand or a backup): keep both.
            taken = [*(s.id for s in ctx.store.state.submissions), *ctx.store.state.archived]
            number = 1 + max(int(sub_id) for sub_id in taken if sub_id.isdigit())
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
    if sub.id in ctx.store.state.archived:
        return True  # written before keys, ingested and archived since
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
            plan = control.plan(ctx.store.ledger, req, time.time(), busy=ctx.reservations.keys())
        except ExqError as exc:
            intake.reply(path, intake.ControlReply(ok=False, message=str(exc)))
            continue
        if plan.archive:
            archive.append(ctx.store.paths, plan.archive)  # before the event: a crash between leaves a duplicate
        ctx.commit(plan.events)
        for key in plan.kill:
            kill(key)
        message = plan.message + (_drop_logs(ctx, plan.archive, req.keep_logs) if plan.archive else "")
        intake.reply(path, intake.ControlReply(ok=True, message=message, affected=plan.affected))


def _drop_logs(ctx: Context, records: list[archive.ArchivedSubmission], keep: bool) -> str:
    """Delete the attempt directories of archived jobs on the daemon's machine (not on SSH hosts); in words."""
    if keep:
        return "; logs kept"
    here: list[str] = []
    elsewhere: set[str] = set()
    for attempt in (a for record in records for job in record.jobs for a in job.attempts):
        if attempt.host == ctx.here:
            here.append(attempt.dir)
        else:
            elsewhere.add(attempt.host)
    note = f"; deleted the logs of {archive.delete_attempt_dirs(ctx.store.paths.jobs, here)} attempt(s)"
    if elsewhere:
        note += f"; nothing deleted on {', '.join(sorted(elsewhere))} (their logs stay there)"
    return note
