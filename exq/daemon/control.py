"""Turn control requests (cancel, retry, pause, resume) into journal events."""

from __future__ import annotations

from dataclasses import dataclass, field

from exq.errors import NotFoundError
from exq.model.events import CancelRequested, Event, PausedSet, Reset
from exq.model.ledger import Ledger
from exq.model.state import Job, JobStatus
from exq.store.intake import ControlRequest

RETRYABLE = (JobStatus.FAILED, JobStatus.BLOCKED, JobStatus.CANCELLED)


@dataclass
class ControlPlan:
    events: list[Event] = field(default_factory=list)
    kill: list[str] = field(default_factory=list)
    """Keys of running jobs to kill."""
    message: str = ""
    affected: list[str] = field(default_factory=list)


def resolve_jobs(ledger: Ledger, req: ControlRequest) -> list[Job]:
    """The jobs a request names. A bare job id means the newest submission that has it."""
    jobs = ledger.state.jobs
    if req.scope == "all":
        return list(jobs)
    found: list[Job] = []
    for target in req.targets:
        if req.scope == "submission":
            matched = [j for j in jobs if j.submission == target]
            if not matched:
                named = [s.id for s in ledger.state.submissions if s.name == target]
                matched = [j for j in jobs if named and j.submission == named[-1]]
        elif req.scope == "phase":
            subs = [req.submission] if req.submission else [
                s.id for s in reversed(ledger.state.submissions) if target in s.phases
            ][:1]
            matched = [j for j in jobs if j.phase == target and j.submission in subs]
        else:
            matched = _find_job(ledger, target)
        if not matched:
            raise NotFoundError(f"no {req.scope} named {target!r} in the queue")
        found.extend(matched)
    return found


def _find_job(ledger: Ledger, target: str) -> list[Job]:
    if "/" in target:
        job = ledger.jobs.get(target)
        return [job] if job else []
    candidates = [j for j in ledger.state.jobs if j.id == target]
    return candidates[-1:]


def plan(ledger: Ledger, req: ControlRequest, now: float) -> ControlPlan:
    """Events and kills that carry out `req`. Raises NotFoundError for an unknown target."""
    if req.op in ("pause", "resume"):
        paused = req.op == "pause"
        word = "paused: no new jobs will be placed" if paused else "resumed"
        return ControlPlan([PausedSet(at=now, paused=paused)], message=word)
    jobs = resolve_jobs(ledger, req)
    if req.op == "cancel":
        targets = [j for j in jobs if not j.status.finished and not j.cancel_requested]
        keys = [j.key for j in targets]
        events: list[Event] = [CancelRequested(at=now, keys=keys)] if keys else []
        running = [j.key for j in targets if j.status == JobStatus.RUNNING]
        return ControlPlan(events, running, f"cancelled {len(keys)} job(s)", keys)
    targets = [j for j in jobs if j.status in RETRYABLE]
    keys = _with_blocked_dependants(ledger, [j.key for j in targets])
    events = [Reset(at=now, keys=keys)] if keys else []
    return ControlPlan(events, [], f"queued {len(keys)} job(s) again", keys)


def _with_blocked_dependants(ledger: Ledger, keys: list[str]) -> list[str]:
    """`keys` plus every blocked job downstream of them, which a retry unblocks too."""
    result = list(dict.fromkeys(keys))
    chosen = set(result)
    changed = True
    while changed:
        changed = False
        for job in ledger.state.jobs:
            if job.key in chosen or job.status != JobStatus.BLOCKED:
                continue
            if any(f"{job.submission}/{dep}" in chosen for dep in job.deps):
                result.append(job.key)
                chosen.add(job.key)
                changed = True
    return result
