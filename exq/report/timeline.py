"""What `exq report` shows, as plain data: lanes of attempt bars, per-phase stats and GPU utilisation.

Built from a `QueueState` alone (no HTML, no terminal); `html.py` and `terminal.py` draw it.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

from exq.errors import NotFoundError

if TYPE_CHECKING:
    from exq.api import Job, QueueState

CPU = None
"""The `gpu` of a host's CPU lane (jobs with `gpus: 0`)."""
FAILURES = frozenset({"failed", "timeout", "killed", "outputs_missing", "lost", "transient", "host_oom"})
"""Outcomes drawn as failures (OOM has a mark of its own)."""
TICK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
              172800, 604800)
"""Candidate spacings of the time axis' ticks, in seconds."""


IDLE_LANES_MAX = 64
"""A host's GPUs that ran nothing get a lane only when it has at most this many (a Slurm host reports its
slots, hundreds of them, as GPUs)."""

@dataclass(frozen=True)
class Bar:
    """One attempt on one lane (an attempt on two GPUs has a bar on each)."""

    job: str
    """The job's key, `SUBMISSION/ID`."""
    submission: str
    phase: str
    attempt: int
    host: str
    gpu: int | None
    start: float
    end: float
    outcome: str
    """The attempt's outcome, or `running` (or `ended` when none was recorded)."""
    reason: str
    params: str
    retried: bool
    """Another attempt of the job followed this one."""
    row: int = 0
    """Its row within the lane, when bars overlap (jobs sharing a GPU)."""

    @property
    def failed(self) -> bool:
        return self.outcome in FAILURES

    @property
    def oom(self) -> bool:
        return self.outcome == "oom"

    @property
    def tip(self) -> str:
        """The hover text: job, attempt, params, where, outcome and reason."""
        where = lane_name(self.host, self.gpu)
        lines = [f"{self.job} (phase {self.phase}, attempt {self.attempt})", f"params: {self.params or '-'}",
                 f"{where}, {_clock(self.start)} - {_clock(self.end)} ({format_duration(self.end - self.start)})",
                 f"outcome: {self.outcome}" + (" (retried)" if self.retried else "")]
        if self.reason:
            lines.append(f"reason: {self.reason}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Lane:
    """One GPU of a host (or the host's CPU lane) and the bars on it, in time order."""

    host: str
    gpu: int | None
    bars: list[Bar] = field(default_factory=list)
    busy: float = 0.0
    """Seconds of the period during which it had at least one exq job."""
    gaps: list[tuple[float, float]] = field(default_factory=list)
    """Idle stretches within the period."""

    @property
    def name(self) -> str:
        return lane_name(self.host, self.gpu)

    @property
    def rows(self) -> int:
        return 1 + max((b.row for b in self.bars), default=0)


@dataclass(frozen=True)
class PhaseStats:
    """One phase of one submission."""

    submission: str
    phase: str
    jobs: int
    succeeded: int
    failed: int
    blocked: int
    retries: int
    gpu_hours: float
    wait_p50: float | None
    wait_p90: float | None
    """Queue wait (first attempt's start minus submission), p50 and p90, in seconds; None before any start."""


@dataclass(frozen=True)
class Timeline:
    start: float
    end: float
    lanes: list[Lane]
    phases: list[PhaseStats]
    submissions: list[str]
    """The submissions shown: `ID name`."""
    ticks: list[tuple[float, str]]

    @property
    def span(self) -> float:
        return max(self.end - self.start, 1e-9)

    def utilisation(self, lane: Lane) -> float:
        """The share of the period `lane` had an exq job, in [0, 1]."""
        return min(1.0, lane.busy / self.span) if self.end > self.start else 0.0


def figures(timeline: Timeline) -> dict[str, object]:
    """The report's figures without the bars (`exq report --json`): the period, each lane's busy share, and
    the per-phase stats."""
    return {
        "start": timeline.start, "end": timeline.end, "submissions": timeline.submissions,
        "lanes": [{"host": lane.host, "gpu": lane.gpu, "attempts": len(lane.bars), "busy_seconds": lane.busy,
                   "utilisation": timeline.utilisation(lane)} for lane in timeline.lanes],
        "phases": [asdict(stats) for stats in timeline.phases],
    }


def lane_name(host: str, gpu: int | None) -> str:
    return f"{host} cpu" if gpu is CPU else f"{host} gpu{gpu}"


def build(state: QueueState, submission: str | None = None, now: float | None = None) -> Timeline:
    """The timeline of `submission` (default: every submission of the live state) as of `now`."""
    now = time.time() if now is None else now
    subs = state.submissions
    if submission is not None:
        subs = [s for s in subs if s.id == submission]
        if not subs:
            known = ", ".join(s.id for s in state.submissions) or "none"
            raise NotFoundError(f"no submission {submission!r} in the live state (submissions: {known})")
    shown = {s.id for s in subs}
    jobs = [j for j in state.jobs if j.submission in shown]
    bars = [bar for job in jobs for bar in _bars(job, now)]
    starts = [b.start for b in bars] + [s.submitted_at for s in subs]
    start = min(starts, default=now)
    end = max([b.end for b in bars] + [start], default=now)
    keys = {(b.host, b.gpu) for b in bars}
    if submission is None:  # idle GPUs too, of hosts with few enough to draw (not a batch system's slots)
        per_host = Counter(g.host for g in state.gpus)
        keys |= {(g.host, g.index) for g in state.gpus if per_host[g.host] <= IDLE_LANES_MAX}
    by_lane: dict[tuple[str, int | None], list[Bar]] = {}
    for bar in bars:
        by_lane.setdefault((bar.host, bar.gpu), []).append(bar)
    lanes = [_lane(host, gpu, by_lane.get((host, gpu), []), start, end) for host, gpu in sorted(keys, key=_lane_order)]
    phases = [_phase_stats(s.id, phase, [j for j in jobs if j.submission == s.id and j.phase == phase], now)
              for s in subs for phase in s.phases]
    return Timeline(start, end, lanes, phases, [f"{s.id} {s.name}" for s in subs], ticks(start, end))


def _lane_order(key: tuple[str, int | None]) -> tuple[bool, str, bool, int]:
    host, gpu = key
    return host != "local", host, gpu is CPU, gpu or 0


def _bars(job: Job, now: float) -> list[Bar]:
    """One bar per started attempt per GPU it held (one on the CPU lane for `gpus: 0`)."""
    params = ", ".join(f"{k}={v}" for k, v in job.params.items())
    last = len(job.attempts)
    out: list[Bar] = []
    for i, attempt in enumerate(job.attempts, 1):
        if attempt.started_at is None:
            continue
        end = attempt.ended_at if attempt.ended_at is not None else now
        outcome = attempt.outcome.value if attempt.outcome else "running" if attempt.ended_at is None else "ended"
        attempt_params = ", ".join(f"{k}={v}" for k, v in attempt.params.items()) or params
        lanes: list[int | None] = [*attempt.gpus] or [CPU]
        for gpu in lanes:
            out.append(Bar(job.key, job.submission, job.phase, attempt.number, attempt.host, gpu,
                           attempt.started_at, max(end, attempt.started_at), outcome, attempt.reason or "",
                           attempt_params, i < last))
    return out


def _lane(host: str, gpu: int | None, bars: list[Bar], start: float, end: float) -> Lane:
    """A lane: bars in time order, each in the first row free at its start; busy time and idle gaps."""
    placed: list[Bar] = []
    row_ends: list[float] = []
    for bar in sorted(bars, key=lambda b: (b.start, b.end)):
        row = next((r for r, e in enumerate(row_ends) if e <= bar.start), len(row_ends))
        if row == len(row_ends):
            row_ends.append(bar.end)
        row_ends[row] = bar.end
        placed.append(replace(bar, row=row))
    busy = merge((b.start, b.end) for b in placed)
    gaps, cursor = [], start
    for s, e in busy:
        if s > cursor:
            gaps.append((cursor, s))
        cursor = max(cursor, e)
    if end > cursor:
        gaps.append((cursor, end))
    return Lane(host, gpu, placed, sum(e - s for s, e in busy), gaps)


def merge(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The union of `intervals`, as sorted disjoint intervals."""
    out: list[tuple[float, float]] = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _phase_stats(submission: str, phase: str, jobs: list[Job], now: float) -> PhaseStats:
    waits = [j.attempts[0].launched_at - j.submitted_at for j in jobs if j.attempts]
    gpu_seconds = sum(((a.ended_at if a.ended_at is not None else now) - a.started_at) * len(a.gpus)
                      for j in jobs for a in j.attempts if a.started_at is not None)
    statuses = [j.status.value for j in jobs]
    return PhaseStats(submission, phase, len(jobs), statuses.count("succeeded"), statuses.count("failed"),
                      statuses.count("blocked"), sum(max(0, len(j.attempts) - 1) for j in jobs),
                      max(0.0, gpu_seconds) / 3600, percentile(waits, 50), percentile(waits, 90))


def percentile(values: Sequence[float], p: float) -> float | None:
    """The `p`th percentile of `values` (linear interpolation), or None when there are none."""
    if not values:
        return None
    ordered = sorted(max(0.0, v) for v in values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def ticks(start: float, end: float, target: int = 8) -> list[tuple[float, str]]:
    """About `target` round times between `start` and `end`, with their labels (local time)."""
    span = end - start
    if span <= 0:
        return [(start, _clock(start))]
    step = next((s for s in TICK_STEPS if span / s <= target), TICK_STEPS[-1])
    offset = time.localtime(start).tm_gmtoff
    first = math.ceil((start + offset) / step) * step - offset
    days = span >= 86400 or time.localtime(start).tm_yday != time.localtime(end).tm_yday
    out, t = [], float(first)
    while t <= end:
        out.append((t, time.strftime("%m-%d %H:%M" if days else "%H:%M:%S" if step < 60 else "%H:%M",
                                     time.localtime(t))))
        t += step
    return out


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def format_duration(seconds: float | None) -> str:
    """`42s`, `3m05s`, `2h10m`, or `-` for None."""
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{seconds:.2f}s" if seconds < 1 else f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
