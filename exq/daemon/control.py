"""Turn control requests (cancel, retry, restart, hold, release, priority, pause, resume, clean) into events."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from exq.daemon.clean import plan_clean
from exq.errors import ExqError, NotFoundError
from exq.model.events import CancelRequested, Event, HoldSet, PausedSet, PrioritySet, Reset
from exq.model.jobspec import Scalar
from exq.model.ledger import Ledger
from exq.model.state import Job, JobStatus, dep_key
from exq.model.template import TemplateError, render_cmd
from exq.store.archive import ArchivedSubmission
from exq.store.intake import ControlRequest

RETRYABLE = (JobStatus.FAILED, JobStatus.BLOCKED, JobStatus.CANCELLED)
RESTARTABLE = (JobStatus.SUCCEEDED, *RETRYABLE)


@dataclass
class ControlPlan:
    events: list[Event] = field(default_factory=list)
    kill: list[str] = field(default_factory=list)
    """Keys of running jobs to kill."""
    message: str = ""
    affected: list[str] = field(default_factory=list)
    archive: list[ArchivedSubmission] = field(default_factory=list)
    """op clean: what to append to archive.jsonl before the events are committed."""


def resolve_jobs(ledger: Ledger, req: ControlRequest) -> list[Job]:
    """The jobs a request names. A bare job id means the newest submission that has it."""
    jobs = ledger.state.jobs
    if req.scope == "all":
        return list(jobs)
    found: list[Job] = []
    for target in req.targets:
        if req.scope == "label":
            matched = [j for j in jobs if target in j.spec.labels]
        elif req.scope == "submission":
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


def plan(ledger: Ledger, req: ControlRequest, now: float, busy: Collection[str] = ()) -> ControlPlan:
    """Events and kills that carry out `req`. Raises NotFoundError for an unknown target.

    `busy`: keys of jobs the writer still holds something of (their GPUs settling): `clean` leaves them."""
    if req.op == "clean":
        done = plan_clean(ledger, req, now, busy)
        return ControlPlan([done.event] if done.event else [], [], done.message, done.ids, done.records)
    if req.op in ("pause", "resume"):
        paused = req.op == "pause"
        word = "paused: no new jobs will be placed" if paused else "resumed"
        return ControlPlan([PausedSet(at=now, paused=paused)], message=word)
    jobs = list({j.key: j for j in resolve_jobs(ledger, req)}.values())
    if req.op == "cancel":
        targets = [j for j in jobs if not j.status.finished and not j.cancel_requested]
        keys = [j.key for j in targets]
        events: list[Event] = [CancelRequested(at=now, keys=keys)] if keys else []
        running = [j.key for j in targets if j.status == JobStatus.RUNNING]
        return ControlPlan(events, running, f"cancelled {len(keys)} job(s)", keys)
    if req.op in ("hold", "release"):
        held = req.op == "hold"
        keys = [j.key for j in jobs if j.held != held and not j.status.finished and j.status != JobStatus.RUNNING]
        word = "held" if held else "released"
        return ControlPlan([HoldSet(at=now, keys=keys, held=held)] if keys else [], [],
                           f"{word} {len(keys)} job(s)" + _skipped(len(jobs) - len(keys)), keys)
    if req.op == "priority":
        if req.priority is None:
            raise ExqError("priority: no priority given")
        keys = [j.key for j in jobs if j.priority != req.priority and not j.status.finished]
        return ControlPlan([PrioritySet(at=now, keys=keys, priority=req.priority)] if keys else [], [],
                           f"set priority {req.priority} on {len(keys)} job(s)", keys)
    if req.op == "restart":
        return _restart(ledger, jobs, req, now)
    targets = [j for j in jobs if j.status in RETRYABLE]
    keys = _with_blocked_dependants(ledger, [j.key for j in targets])
    events = [Reset(at=now, keys=keys)] if keys else []
    return ControlPlan(events, [], f"queued {len(keys)} job(s) again", keys)


def _skipped(count: int) -> str:
    return f" ({count} left as they are: running, ended or already so)" if count else ""


def _restart(ledger: Ledger, jobs: list[Job], req: ControlRequest, now: float) -> ControlPlan:
    """Ended jobs queued again (their attempts kept), with `req.params` set over their original params."""
    targets = [j for j in jobs if j.status in RESTARTABLE]
    params: dict[str, dict[str, Scalar]] = {}
    cmds: dict[str, str] = {}
    if req.params:
        for job in targets:
            unknown = sorted(set(req.params) - set(job.spec.params))
            if unknown:
                raise ExqError(f"job {job.key} has no param {unknown[0]!r}; its params: "
                               f"{', '.join(job.spec.params) or '(none)'}")
            params[job.key] = {**job.spec.params, **req.params}
            try:
                cmds[job.key] = render_cmd(job.spec.cmd_template, params[job.key], job_id=job.id, phase=job.phase)
            except TemplateError as exc:
                raise ExqError(f"job {job.key}: {exc}") from None
    keys = _with_blocked_dependants(ledger, [j.key for j in targets])
    events: list[Event] = [Reset(at=now, keys=keys, params=params, cmds=cmds)] if keys else []
    return ControlPlan(events, [], f"restarted {len(keys)} job(s)" + _skipped(len(jobs) - len(targets)), keys)


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
            if any(dep_key(job.submission, dep) in chosen for dep in job.deps):
                result.append(job.key)
                chosen.add(job.key)
                changed = True
    return result
