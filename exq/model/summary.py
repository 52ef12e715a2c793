"""What `exq status` shows by default, small enough to keep in a file: `status_index.json`.

The store writes it next to each snapshot, stamped with the snapshot's seq and file identity, so a
reader can show the queue without loading every job: counts per submission and phase, the jobs the
default view lists, and when the recently succeeded ones drop out of it.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from exq.model.state import DaemonInfo, GpuView, HostView, Job, JobStatus, QueueState, Submission

if TYPE_CHECKING:
    from exq.model.events import Event

INDEX_VERSION = 1
RECENT = 3600.0
"""A succeeded job stays in the default view this long after it finished."""
LISTED = 50
"""Jobs the default view lists (the others are counted)."""
HELD = 2 * LISTED
"""Jobs the index holds of each kind (lasting, recent): the margin lets newer journal events move up to
LISTED of them out of the listing before the index can no longer tell which jobs come first."""
_RANK = {JobStatus.RUNNING: 0, JobStatus.UNKNOWN: 0, JobStatus.FAILED: 1, JobStatus.BLOCKED: 2, JobStatus.QUEUED: 3}
_LAST = 4
"""The rank of every other status (succeeded and cancelled jobs)."""


def listing_order(job: Job) -> tuple[int, int]:
    """Running first, then failed, blocked, queued, the rest; each in submission order."""
    return _RANK.get(job.status, _LAST), job.order


def fades(job: Job) -> bool:
    """Whether the job leaves the default view RECENT seconds after it finished (succeeded jobs)."""
    return job.status == JobStatus.SUCCEEDED and job.finished_at is not None


def shown(job: Job, now: float) -> bool:
    """Whether the default view lists the job at `now`."""
    return not fades(job) or now - (job.finished_at or 0.0) < RECENT


class PhaseCount(BaseModel):
    model_config = ConfigDict(extra="forbid")
    submission: str
    phase: str
    counts: dict[JobStatus, int]


class StatusIndex(BaseModel):
    """The default `exq status` view of one state (status_index.json)."""

    model_config = ConfigDict(extra="forbid")
    version: int = INDEX_VERSION
    seq: int = Field(description="The seq of the state (and snapshot) it summarises.")
    snapshot: tuple[int, int, int] = Field(
        (0, 0, 0), description="(size, mtime_ns, inode) of the queue_state.json written with it.")
    at: float = Field(description="When it was made: the recent jobs are those finished less than RECENT before.")
    paused: bool
    daemon: DaemonInfo | None
    simulated: bool = Field(description="Whether any GPU is simulated.")
    hosts: list[HostView] = Field(default_factory=list, description="The hosts as the daemon last saw them.")
    gpus: list[GpuView] = Field(default_factory=list, description="The GPUs as the daemon last saw them.")
    total: int = Field(description="Every job.")
    submissions: list[Submission]
    phases: list[PhaseCount] = Field(description="Job counts per status, per (submission, phase) in job order.")
    lasting: int = Field(description="Jobs shown whatever the time (all but the succeeded ones with finished_at).")
    listed: list[Job] = Field(description="The first HELD of the lasting jobs, in listing order.")
    recent: list[float] = Field(description="Sorted finished_at of the succeeded jobs still shown at `at`.")
    recent_jobs: list[Job] = Field(description="The first HELD of those, in submission order.")

    def listing(self, now: float) -> tuple[list[Job], int] | None:
        """The first LISTED jobs shown at `now`, and how many are shown; None when this index cannot tell."""
        if now < self.at:
            return None  # the clock went back: jobs it dropped may be shown again
        gone = bisect.bisect_right(self.recent, now - RECENT)
        still = len(self.recent) - gone
        recent = [job for job in self.recent_jobs if shown(job, now)]
        outranked = len(self.listed) >= LISTED and listing_order(self.listed[LISTED - 1])[0] < _LAST
        if not outranked and len(recent) < min(LISTED, still):
            return None  # some of the first recent jobs shown now are not in the index
        jobs = sorted(self.listed + recent, key=listing_order)[:LISTED]
        return jobs, self.lasting + still


def summarize(state: QueueState, now: float) -> StatusIndex:
    """The index of `state` at `now` (seq and counts from the state; `snapshot` left for the store to stamp)."""
    counts: dict[tuple[str, str, JobStatus], int] = {}
    lasting: list[Job] = []
    recent: list[Job] = []
    succeeded = JobStatus.SUCCEEDED
    for job in state.jobs:  # inlined: this runs after every snapshot, over every job
        key = (job.submission, job.phase, job.status)
        counts[key] = counts.get(key, 0) + 1
        if job.status != succeeded or job.finished_at is None:
            lasting.append(job)
        elif now - job.finished_at < RECENT:
            recent.append(job)
    groups: dict[tuple[str, str], dict[JobStatus, int]] = {}
    for (sub, phase, status), count in counts.items():  # phases in the order of their first job
        groups.setdefault((sub, phase), {})[status] = count
    return StatusIndex(
        seq=state.seq, at=now, paused=state.paused, daemon=state.daemon,
        simulated=any(gpu.simulated for gpu in state.gpus), hosts=state.hosts, gpus=state.gpus, total=len(state.jobs),
        submissions=state.submissions,
        phases=[PhaseCount(submission=sub, phase=phase, counts=by_status)
                for (sub, phase), by_status in groups.items()],
        lasting=len(lasting), listed=heapq.nsmallest(HELD, lasting, key=listing_order),
        recent=sorted(job.finished_at or 0.0 for job in recent),
        recent_jobs=heapq.nsmallest(HELD, recent, key=lambda job: job.order),
    )


def advance(index: StatusIndex, events: Sequence[Event]) -> StatusIndex | None:
    """The index after `events` (journaled after it, in order); None when they touch a job it does not hold, or
    when the jobs it holds no longer surely include the ones the default view lists.

    The real Ledger applies them to a state of the index's jobs alone. The jobs it does not hold are untouched,
    so they keep their place after the last one it lists (and, if succeeded, after its last recent one).
    """
    from exq.model.ledger import Ledger

    if any(event.type == "archived" for event in events):
        return None  # jobs it does not hold leave the state: its counts cannot follow
    known = {job.key: job.model_copy(deep=True) for job in [*index.listed, *index.recent_jobs]}
    before = {key: (job.status, job.finished_at, fades(job)) for key, job in known.items()}
    state = QueueState(seq=index.seq, paused=index.paused, daemon=index.daemon, jobs=list(known.values()),
                       submissions=[sub.model_copy() for sub in index.submissions])
    ledger, held = Ledger(state), len(state.jobs)
    try:
        for event in events:
            ledger.apply(event)
    except (KeyError, IndexError, ValueError, AttributeError):
        return None
    for offset, job in enumerate(state.jobs[held:]):  # submitted now: after every job, as the ledger orders them
        job.order = index.total + offset
    counted = _recount(index, state.jobs, before)
    pools = _pools(index, state.jobs)
    if counted is None or pools is None:
        return None
    phases, lasting, recent = counted
    return index.model_copy(update={
        "seq": state.seq, "paused": state.paused, "total": index.total + len(state.jobs) - held,
        "submissions": state.submissions, "lasting": lasting, "recent": recent, "phases": phases,
        "listed": heapq.nsmallest(HELD, pools[0], key=listing_order), "recent_jobs": pools[1][:HELD]})


_Before = dict[str, tuple[JobStatus, float | None, bool]]


def _recount(index: StatusIndex, jobs: list[Job], before: _Before) -> tuple[list[PhaseCount], int, list[float]] | None:
    """The index's counts, lasting count and recent times, moved by the jobs that changed from `before`."""
    phases = {(p.submission, p.phase): dict(p.counts) for p in index.phases}
    lasting, recent = index.lasting, list(index.recent)
    for job in jobs:
        old = before.get(job.key)
        if old == (job.status, job.finished_at, fades(job)):
            continue
        counts = phases.setdefault((job.submission, job.phase), {})
        if old is not None:
            counts[old[0]] -= 1
            if not counts[old[0]]:
                del counts[old[0]]
            if not old[2]:
                lasting -= 1
            else:  # it was one of the recent jobs: its time is among the recent ones
                at = bisect.bisect_left(recent, old[1] or 0.0)
                if at == len(recent) or recent[at] != old[1]:
                    return None
                del recent[at]
        counts[job.status] = counts.get(job.status, 0) + 1
        if not fades(job):
            lasting += 1
        elif index.at - (job.finished_at or 0.0) < RECENT:
            bisect.insort(recent, job.finished_at or 0.0)
    return [PhaseCount(submission=sub, phase=phase, counts=counts) for (sub, phase), counts in phases.items()], \
        lasting, recent


def _pools(index: StatusIndex, jobs: list[Job]) -> tuple[list[Job], list[Job]] | None:
    """The lasting jobs that surely hold the first LISTED of them, and the recent ones that are the first by order."""
    lasting = [job for job in jobs if not fades(job)]
    if index.lasting > len(index.listed):  # some it does not hold: each after its last listed job
        last = listing_order(index.listed[-1])
        lasting = [job for job in lasting if listing_order(job) <= last]
        if len(lasting) < LISTED:
            return None
    recent = sorted((job for job in jobs if fades(job) and index.at - (job.finished_at or 0.0) < RECENT),
                    key=lambda job: job.order)
    if len(index.recent) > len(index.recent_jobs):  # some it does not hold: each after its last recent job
        recent = [job for job in recent if job.order <= index.recent_jobs[-1].order]
    return lasting, recent
