"""`exq clean`: which finished submissions leave the live state for the archive, and why others stay."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from exq.errors import NotFoundError
from exq.model.events import Archived
from exq.model.ledger import Ledger
from exq.model.state import Job, Submission, dep_key
from exq.store.archive import ArchivedSubmission
from exq.store.intake import ControlRequest
from exq.units import format_duration


@dataclass(frozen=True)
class Cleaning:
    """What a clean does: its event (None: nothing to archive), its message, the ids and the archive's lines."""

    event: Archived | None
    message: str
    ids: list[str]
    records: list[ArchivedSubmission]


def plan_clean(ledger: Ledger, req: ControlRequest, now: float, busy: Collection[str]) -> Cleaning:
    """Finished submissions (every one, or those `req.targets` name) archived: an Archived event and the archive's
    lines. Named ones left alone are listed in the message; an unknown one raises NotFoundError."""
    by_sub: dict[str, list[Job]] = {}
    for job in ledger.state.jobs:
        by_sub.setdefault(job.submission, []).append(job)
    named = req.scope != "all"
    subs, notes = _named_submissions(ledger, req.targets) if named else (list(ledger.state.submissions), [])
    chosen: dict[str, Submission] = {}
    for sub in subs:
        kept = _kept_because(ledger, sub, by_sub.get(sub.id, []), req, now, busy)
        if kept is None:
            chosen[sub.id] = sub
        elif named or kept[1]:
            notes.append(f"{sub.id} ({kept[0]})")
    notes.extend(_drop_depended_on(ledger, chosen))
    records = [ArchivedSubmission(archived_at=now, submission=sub, jobs=by_sub.get(sub.id, []))
               for sub in chosen.values()]
    ids = list(chosen)
    message = f"archived {len(ids)} submission(s) ({sum(len(r.jobs) for r in records)} jobs)"
    if notes:
        message += "; left alone: " + ", ".join(notes)
    return Cleaning(Archived(at=now, keys=ids) if ids else None, message, ids, records)


def _named_submissions(ledger: Ledger, targets: list[str]) -> tuple[list[Submission], list[str]]:
    """The submissions `targets` name (an id, else the newest of that name), and notes on those already archived."""
    found: dict[str, Submission] = {}
    notes: list[str] = []
    for target in targets:
        sub = ledger.submissions.get(target) or next(
            (s for s in reversed(ledger.state.submissions) if s.name == target), None)
        if sub is not None:
            found[sub.id] = sub
        elif target in ledger.state.archived:
            notes.append(f"{target} (already archived)")
        else:
            raise NotFoundError(f"no submission named {target!r} in the queue")
    return list(found.values()), notes


def _kept_because(ledger: Ledger, sub: Submission, jobs: list[Job], req: ControlRequest, now: float,
                  busy: Collection[str]) -> tuple[str, bool] | None:
    """Why `clean` leaves `sub` in the queue, and whether to say so when it was not named; None: it goes."""
    if not all(job.status.finished for job in jobs):
        return "not finished", False
    if sub.on_job_end is not None and sub.changes > sub.hook_covered:
        return "its on_job_end hook has not run yet", True
    if any(job.key in busy for job in jobs):
        return "the GPUs of a job are still being released", True
    if any(key in ledger.jobs and ledger.jobs[key].submission == sub.id for key, _ in ledger.unchecked_lost):
        return "an attempt given up as lost is not checked yet", True
    if req.older_than is not None:
        last = max((job.finished_at for job in jobs if job.finished_at is not None), default=sub.submitted_at)
        if now - last < req.older_than:
            return f"finished {format_duration(now - last)} ago", False
    return None


def _drop_depended_on(ledger: Ledger, chosen: dict[str, Submission]) -> list[str]:
    """Take out of `chosen` the submissions that jobs staying in the queue depend on; notes on them."""
    notes: list[str] = []
    changed = True
    while changed:
        changed = False
        for job in ledger.state.jobs:
            if job.submission in chosen:
                continue
            for dep in job.deps:
                upstream = ledger.jobs.get(dep_key(job.submission, dep))
                if upstream is not None and upstream.submission in chosen:
                    del chosen[upstream.submission]
                    notes.append(f"{upstream.submission} (jobs of submission {job.submission} depend on it)")
                    changed = True
    return notes
