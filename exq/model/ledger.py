"""The in-memory queue state with an index by job key, changed only by applying events."""

from __future__ import annotations

from collections.abc import Iterator

from exq.model.events import (
    Archived,
    Blocked,
    CancelRequested,
    Ended,
    Event,
    HoldSet,
    HookRan,
    HostDown,
    HostUp,
    Launched,
    PausedSet,
    PrioritySet,
    Reset,
    Started,
    Submitted,
    Superseded,
)
from exq.model.intern import SpecInterner
from exq.model.outcome import Outcome
from exq.model.state import Job, JobStatus, QueueState, Submission, job_key


class Ledger:
    """QueueState plus lookups; `apply` is the only way it changes."""

    def __init__(self, state: QueueState | None = None) -> None:
        self.state = state or QueueState()
        self.jobs: dict[str, Job] = {job.key: job for job in self.state.jobs}
        self.queued: dict[str, Job] = {key: j for key, j in self.jobs.items() if j.status == JobStatus.QUEUED}
        """Queued jobs in submission order: what placement scans, however many jobs have finished."""
        self.submissions: dict[str, Submission] = {sub.id: sub for sub in self.state.submissions}
        self.submission_keys: set[str] = {sub.key for sub in self.state.submissions if sub.key}
        self.submission_keys.update(key for key in self.state.archived.values() if key)
        """Keys of the ingested submissions: a replayed intake file with one of them is not ingested again."""
        self.unchecked_lost: dict[tuple[str, int], str] = {
            (job.key, a.number): a.host for job in self.state.jobs for a in job.attempts
            if a.outcome == Outcome.LOST and a.superseded is None}
        """Attempts given up as lost whose host was not checked since (job key, number -> host): a copy
        may still run there, so nothing is placed on that host until it is checked."""
        self._order: list[Job] = []
        self._order_head = 0
        self._order_stale = True
        """Whether a job joined the queue since `_order` was sorted (leaving it needs no sort)."""
        self._specs = SpecInterner()
        """New jobs of one phase share its phase-wide spec parts (loaded ones: see exq.store.loader)."""

    def job(self, key: str) -> Job:
        return self.jobs[key]

    def queued_in_order(self) -> Iterator[Job]:
        """The queued jobs, highest priority first, then submission order. The order is sorted again only
        after jobs joined the queue; jobs that left it are passed over, and dropped once at its head."""
        if self._order_stale:
            self._order = sorted(self.queued.values(), key=lambda j: (-j.priority, j.order))
            self._order_head, self._order_stale = 0, False
        order = self._order
        while self._order_head < len(order) and order[self._order_head].status != JobStatus.QUEUED:
            self._order_head += 1
        for index in range(self._order_head, len(order)):
            if (job := order[index]).status == JobStatus.QUEUED:
                yield job

    def apply(self, event: Event) -> None:
        """Apply one event (already given its seq) to the state."""
        self.state.seq = event.seq
        self.state.updated_at = event.at
        match event:
            case Submitted():
                self._submitted(event)
            case Launched():
                self._launched(event)
            case Started():
                self._started(event)
            case Ended():
                self._ended(event)
            case Blocked():
                self._mark(event.keys, JobStatus.BLOCKED, event.reason, finished_at=event.at)
            case CancelRequested():
                self._cancel_requested(event)
            case Reset():
                self._reset(event)
            case HoldSet() | PrioritySet() | PausedSet():
                self._set_control(event)
            case HostDown() | HostUp():
                self._host_changed(event)
            case HookRan() | Archived():
                self._submission_event(event)
            case Superseded():
                self._superseded(event)

    def _mark(self, keys: list[str], status: JobStatus, reason: str | None, finished_at: float | None = None) -> None:
        for key in keys:
            job = self.jobs[key]
            self._set_status(job, status)
            job.reason = reason
            if finished_at is not None:
                job.finished_at = finished_at

    def _host_changed(self, event: HostDown | HostUp) -> None:
        if isinstance(event, HostDown):
            self._mark(event.keys, JobStatus.UNKNOWN, f"host {event.host} is not answering")
        else:
            self._mark(event.keys, JobStatus.RUNNING, None)

    def _launched(self, event: Launched) -> None:
        job = self.jobs[event.key]
        self._set_status(job, JobStatus.RUNNING)
        job.attempts.append(event.attempt)
        job.host, job.gpus = event.attempt.host, list(event.attempt.gpus)
        job.params, job.cmd = dict(event.attempt.params), event.attempt.cmd
        job.log, job.reason, job.not_before, job.progress = event.attempt.log, None, None, None

    def _submitted(self, event: Submitted) -> None:
        sub = event.submission.model_copy()  # the ledger changes it; the event stays as journaled
        self.state.submissions.append(sub)
        self.submissions[sub.id] = sub
        if sub.key:
            self.submission_keys.add(sub.key)
        order = len(self.state.jobs)  # each job's order is its place in state.jobs (see _archived)
        for offset, spec in enumerate(event.jobs):
            spec = self._specs.share(sub.id, spec)
            job = Job(
                id=spec.id,
                submission=event.submission.id,
                phase=spec.phase,
                params=dict(spec.params),
                cmd=spec.cmd,
                priority=spec.priority,
                order=order + offset,
                deps=list(spec.deps),
                submitted_at=event.at,
                spec=spec,
            )
            self.state.jobs.append(job)
            self.jobs[job.key] = job
            self.queued[job.key] = job
        self._order_stale = True

    def _ended(self, event: Ended) -> None:
        job = self.jobs[event.key]
        attempt = job.attempts[event.number - 1]
        attempt.ended_at, attempt.exit_code, attempt.signal = event.ended_at, event.exit_code, event.signal
        attempt.outcome, attempt.reason = event.outcome, event.reason
        if event.outcome == Outcome.LOST:
            self.unchecked_lost[(job.key, attempt.number)] = attempt.host
        self._set_status(job, event.status)
        job.not_before, job.progress = event.not_before, None
        job.reason = None if event.status == JobStatus.SUCCEEDED else event.job_reason or event.reason
        if event.result is not None:
            job.result = event.result
        if event.retry_kind == "oom":
            job.oom_retries += 1
        elif event.retry_kind == "transient":
            job.transient_retries += 1
        elif event.retry_kind == "failure":
            job.failure_retries += 1
        elif event.retry_kind == "lost":
            job.lost_retries += 1
        if event.params is not None and event.cmd is not None:
            job.params, job.cmd = dict(event.params), event.cmd
        if event.status.finished:
            job.finished_at = event.ended_at

    def _cancel_requested(self, event: CancelRequested) -> None:
        for key in event.keys:
            job = self.jobs[key]
            if job.status in (JobStatus.RUNNING, JobStatus.UNKNOWN):
                job.cancel_requested = True
            elif not job.status.finished or job.status == JobStatus.BLOCKED:
                self._set_status(job, JobStatus.CANCELLED)
                job.reason, job.finished_at = "cancelled by user", event.at

    def _set_status(self, job: Job, status: JobStatus) -> None:
        """The one place a job's status changes; each real change is counted for its submission's hook."""
        if job.status != status:
            self.submissions[job.submission].changes += 1
        job.status = status
        if status == JobStatus.QUEUED:
            self._order_stale = self._order_stale or job.key not in self.queued
            self.queued[job.key] = job
        else:
            self.queued.pop(job.key, None)

    def _started(self, event: Started) -> None:
        job = self.jobs[event.key]
        attempt = job.attempts[event.number - 1]
        attempt.pid, attempt.started_at = event.pid, event.started_at
        if event.started_at is not None:
            job.reason = None  # no longer waiting in its host's own queue

    def _set_control(self, event: HoldSet | PrioritySet | PausedSet) -> None:
        """A pause or resume of the queue, or a hold, release or priority change of some jobs."""
        if isinstance(event, PausedSet):
            self.state.paused = event.paused
            return
        for job in (self.jobs[key] for key in event.keys):
            if isinstance(event, HoldSet):
                job.held = event.held
            else:
                job.priority = event.priority
        self._order_stale = self._order_stale or isinstance(event, PrioritySet)

    def _reset(self, event: Reset) -> None:
        for job in (self.jobs[key] for key in event.keys):
            self._set_status(job, JobStatus.QUEUED)
            job.reason, job.not_before, job.finished_at = None, None, None
            job.oom_retries = job.transient_retries = job.failure_retries = job.lost_retries = 0
            job.cancel_requested = False
            job.params = dict(event.params.get(job.key, job.spec.params))
            job.cmd = event.cmds.get(job.key, job.spec.cmd)

    def _submission_event(self, event: HookRan | Archived) -> None:
        """An on_job_end run finished, or `exq clean` archived submissions."""
        if isinstance(event, Archived):
            self._archived(event)
            return
        sub = self.submissions[event.submission]
        sub.hook_covered, sub.hook_error = event.covered, None if event.ok else event.error

    def _archived(self, event: Archived) -> None:
        """Remove these submissions and their jobs; their ids and keys stay known (never reused nor re-ingested).
        The remaining jobs are numbered again in the same order, so that each `order` stays its place."""
        gone = set(event.keys)
        for sub_id in event.keys:
            self.state.archived[sub_id] = self.submissions.pop(sub_id).key
        self.state.submissions[:] = [sub for sub in self.state.submissions if sub.id not in gone]
        kept: list[Job] = []
        for job in self.state.jobs:
            if job.submission in gone:
                self.jobs.pop(job.key, None)
                self.queued.pop(job.key, None)
            else:
                job.order = len(kept)
                kept.append(job)
        self.state.jobs[:] = kept
        self.unchecked_lost = {at: host for at, host in self.unchecked_lost.items() if at[0] in self.jobs}
        self._order_stale = True

    def _superseded(self, event: Superseded) -> None:
        """Record what became of an attempt given up as lost; its job is left as it is."""
        attempt = self.jobs[event.key].attempts[event.number - 1]
        attempt.superseded, attempt.reason = event.how, event.reason
        self.unchecked_lost.pop((event.key, event.number), None)


__all__ = ["Ledger", "job_key"]
