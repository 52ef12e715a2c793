"""How exq shows things in a terminal: rich tables for specs, status and GPUs.

Every string printed here is shown literally: `plain_console()` is the only Console exq prints with;
styles come from `rich.text.Text(..., style=...)`, never from markup in a string.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from exq.api import HostReport, StatusView
from exq.errors import NotFoundError, UsageError
from exq.gpus import GpuSnapshot
from exq.model.jobspec import SubmissionSpec
from exq.model.state import Job, JobStatus
from exq.model.summary import LISTED, listing_order
from exq.units import format_duration, format_size

STATUS_STYLE = {
    JobStatus.QUEUED: "cyan", JobStatus.RUNNING: "bold yellow", JobStatus.SUCCEEDED: "green",
    JobStatus.FAILED: "bold red", JobStatus.BLOCKED: "magenta", JobStatus.CANCELLED: "dim",
    JobStatus.UNKNOWN: "bold magenta",
}
_ORDER = list(JobStatus)


def plain_console(stderr: bool = False) -> Console:
    """A Console that prints every string literally: no markup (`[bold]`, `[/data/x]`), no `:emoji:` codes,
    no highlighting, and a message is never broken into lines. User text (job ids, cmds, reasons, paths,
    metrics) thus shows byte for byte."""
    return Console(stderr=stderr, markup=False, emoji=False, highlight=False, soft_wrap=True)


def spec_table(spec: SubmissionSpec, limit: int | None = None) -> Table:
    """The expanded jobs of a manifest (`exq validate`, `exq submit --dry-run`), the first `limit` of them."""
    more = f" (first {limit} shown; --all for every job)" if limit is not None and len(spec.jobs) > limit else ""
    table = Table(title=f"{spec.name}: {len(spec.jobs)} jobs in {len(spec.phases)} phase(s){more}",
                  title_justify="left")
    for column in ("job", "phase", "gpus", "after", "cmd"):
        table.add_column(column, overflow="fold")
    for job in spec.jobs[:limit]:
        res = job.resources
        gpus = str(res.gpus) + (f" x {format_size(res.gpu_memory)}" if res.gpu_memory else "")
        deps = ", ".join(job.deps[:3]) + (f" +{len(job.deps) - 3}" if len(job.deps) > 3 else "")
        table.add_row(job.id, job.phase, gpus, deps, job.cmd)
    return table


def phase_table(view: StatusView, shown: set[tuple[str, str]] | None = None) -> Table:
    """Progress and counts per submission and phase (of the `shown` (submission, phase) pairs, else all).

    The bar shows succeeded jobs in green, failed and blocked ones in red, cancelled ones dim and the rest
    (running, queued) as the bar's background: a phase with failures never looks done."""
    table = Table(title=_title(view), title_justify="left")
    table.add_column("submission", no_wrap=True)
    table.add_column("phase", no_wrap=True)
    table.add_column("progress", no_wrap=True)
    table.add_column("jobs")
    index = view.index
    names = {s.id: f"{s.id} {s.name}" for s in index.submissions}
    for group in index.phases:
        sub, phase, counts = group.submission, group.phase, Counter(group.counts)
        if shown is not None and (sub, phase) not in shown:
            continue
        total = sum(counts.values())
        done = sum(n for status, n in counts.items() if status.finished)
        progress = Table.grid(padding=(0, 1))
        progress.add_row(phase_bar(counts), f"{done}/{total}")
        summary = Text(" ").join(
            Text(f"{counts[s]} {s.value}", style=STATUS_STYLE[s]) for s in _ORDER if counts[s]
        )
        table.add_row(names.get(sub, sub), phase, progress, summary)
    return table


_BAR_PARTS = (
    ((JobStatus.SUCCEEDED,), "green"),
    ((JobStatus.FAILED, JobStatus.BLOCKED), "red"),
    ((JobStatus.CANCELLED,), "dim"),
    ((JobStatus.RUNNING, JobStatus.UNKNOWN, JobStatus.QUEUED), "grey23"),
)
"""The parts of a phase's bar, left to right, and their styles."""


def phase_bar(counts: Counter[JobStatus], width: int = 12) -> Text:
    """A bar of `width` cells split among the parts of `_BAR_PARTS`; each part with jobs gets a cell at least."""
    sizes = [sum(counts[s] for s in statuses) for statuses, _ in _BAR_PARTS]
    bar = Text()
    for (_, style), cells in zip(_BAR_PARTS, _cells(sizes, width), strict=True):
        bar.append("\u2501" * cells, style=style)
    return bar


def _cells(sizes: list[int], width: int) -> list[int]:
    """`width` split in proportion to `sizes` (largest remainders first), each non-zero size one cell at least."""
    total = sum(sizes)
    if not total:
        return [0] * (len(sizes) - 1) + [width]
    exact = [n * width / total for n in sizes]
    cells = [max(int(x), 1 if n else 0) for n, x in zip(sizes, exact, strict=True)]
    while sum(cells) > width:
        cells[cells.index(max(cells))] -= 1
    by_remainder = sorted((i for i, n in enumerate(sizes) if n), key=lambda i: cells[i] - exact[i])
    for i in by_remainder[:max(0, width - sum(cells))]:
        cells[i] += 1
    return cells


def job_table(rows: list[list[Job]]) -> Table:
    """One row per entry of `rows`: a job, or (see `collapse`) jobs waiting for the same reason."""
    table = Table(title_justify="left")
    table.add_column("job", no_wrap=True)
    for column in ("status", "try", "where", "time"):
        table.add_column(column, no_wrap=True)
    table.add_column("reason / result", overflow="fold")
    now = time.time()
    for row in rows:
        job = row[0]
        status = Text(job.status.value, style=STATUS_STYLE[job.status])
        if len(row) > 1:
            table.add_row(f"{len(row)} jobs", status, "", "", "", _same_reason(row))
            continue
        attempt = job.current_attempt
        where = ""
        if attempt is not None:
            where = attempt.host + (":" + ",".join(map(str, attempt.gpus)) if attempt.gpus else "")
        elapsed = ""
        if attempt is not None and attempt.started_at:
            elapsed = format_duration((attempt.ended_at or now) - attempt.started_at)
        table.add_row(job.key, status, str(len(job.attempts)), where, elapsed, _job_detail(job, now))
    return table


NAMED = 3
"""The jobs a collapsed row names (the others are counted)."""


def collapse(jobs: list[Job]) -> list[list[Job]]:
    """`jobs` as table rows, in order: queued or blocked jobs with the same status and reason share one row, at
    the place of the first of them; every other job has a row of its own."""
    rows: list[list[Job]] = []
    same: dict[tuple[JobStatus, str], list[Job]] = {}
    for job in jobs:
        if job.status not in (JobStatus.QUEUED, JobStatus.BLOCKED) or not job.reason:
            rows.append([job])
        elif (key := (job.status, job.reason)) in same:
            same[key].append(job)
        else:
            same[key] = [job]
            rows.append(same[key])
    return rows


def _same_reason(jobs: list[Job]) -> str:
    """The shared reason of a collapsed row, then the first NAMED jobs."""
    names = ", ".join(job.key for job in jobs[:NAMED])
    more = f" and {len(jobs) - NAMED} more" if len(jobs) > NAMED else ""
    return f"{jobs[0].reason}; {names}{more}"


STALE_REPORT = 300.0
"""A running job whose reported values have not changed for this long says so in `exq status`."""


def _job_detail(job: Job, now: float) -> RenderableType:
    """Scaled params, then live progress (a bar and metrics), the result, or the reason."""
    parts = [f"{k} {job.spec.params[k]}->{v}" for k, v in job.params.items() if job.spec.params.get(k) != v]
    progress = job.progress if job.status == JobStatus.RUNNING else None
    if progress is not None:
        parts.append(_metrics_text(progress.metrics))
        if now - progress.updated_at >= STALE_REPORT:
            parts.append(f"no new report for {format_duration(now - progress.updated_at)}")
    elif job.reason:  # a failed job's reason says more than its metrics
        parts.append(job.reason)
    elif job.result:
        parts.append(_metrics_text(job.result))
    text = "; ".join(part for part in parts if part)
    if progress is None or progress.step is None:
        return text
    grid = Table.grid(padding=(0, 1))
    step = _number(progress.step)
    count = f"{step}/{_number(progress.total)}" if progress.total else f"step {step}"
    if progress.fraction is not None:
        grid.add_row(ProgressBar(total=1.0, completed=progress.fraction, width=12), count, text)
    else:
        grid.add_row(count, text)
    return grid


def _metrics_text(metrics: dict[str, Any], limit: int = 4) -> str:
    """The first `limit` metrics as `name=value` (floats to 4 significant digits), progress counters left out."""
    shown = [(k, v) for k, v in metrics.items() if k not in ("step", "total")][:limit]
    return " ".join(f"{k}={_number(v)}" for k, v in shown)


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class JobFilter:
    """The jobs `exq status` lists: those that match every criterion given (any of its values). A label matches
    the job's labels or its submission's; a host, that of the job's current attempt."""

    submissions: tuple[str, ...] = ()
    phases: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return any((self.submissions, self.phases, self.statuses, self.labels, self.hosts))

    def select(self, view: StatusView) -> list[Job]:
        """The matching jobs of the whole state, in its order. Raises UsageError for an unknown status,
        NotFoundError for a submission or phase that is not in the queue."""
        statuses = self._statuses()
        subs = self._submissions(view)
        self._check_phases(view, subs)
        return [job for job in view.state.jobs if job.submission in subs and self._matches(job, statuses, subs)]

    def _matches(self, job: Job, statuses: set[JobStatus], subs: dict[str, list[str]]) -> bool:
        """Whether `job` (of one of `subs`, the labels of each by id) matches the other criteria."""
        attempt = job.current_attempt
        labels = [*job.spec.labels, *subs[job.submission]]
        return ((not self.phases or job.phase in self.phases)
                and (not statuses or job.status in statuses)
                and (not self.labels or any(label in self.labels for label in labels))
                and (not self.hosts or (attempt is not None and attempt.host in self.hosts)))

    def _statuses(self) -> set[JobStatus]:
        known = {status.value: status for status in JobStatus}
        for value in self.statuses:
            if value not in known:
                raise UsageError(f"--status {value!r}: not a job status (one of {', '.join(known)})")
        return {known[value] for value in self.statuses}

    def _submissions(self, view: StatusView) -> dict[str, list[str]]:
        """The labels of each selected submission, by id (submissions not ingested yet included)."""
        subs = {sub.id: sub.labels for sub in view.state.submissions}
        subs.update({item.id: item.spec.labels for item in view.pending})
        for sub in self.submissions:
            if sub not in subs:
                raise NotFoundError(f"no submission {sub!r} in the queue")
        return {sub: subs[sub] for sub in self.submissions} if self.submissions else subs

    def _check_phases(self, view: StatusView, subs: dict[str, list[str]]) -> None:
        phases = {phase for sub in view.state.submissions if sub.id in subs for phase in sub.phases}
        phases.update(phase for item in view.pending if item.id in subs for phase in item.spec.phases)
        where = f"submission {', '.join(self.submissions)}" if self.submissions else "any submission"
        for phase in self.phases:
            if phase not in phases:
                raise NotFoundError(f"no phase {phase!r} in {where}")


def status_renderable(view: StatusView, all_jobs: bool = False, jobs_filter: JobFilter | None = None,
                      refreshed: float | None = None) -> RenderableType:
    """Problems, the phase table, hook failures, pending submissions, then the jobs.

    Without a filter, the jobs are every one with `all_jobs`, else the first LISTED active and recent ones (from
    the status index when it is current); with one, those that match (read from the whole state). Unless
    `all_jobs`, queued or blocked jobs waiting for the same reason share a row, and on a terminal the rows are
    cut to its height. `refreshed` (a time) is said first, for `--watch`.
    """
    if jobs_filter:
        view = view.with_state()
        matching = sorted(jobs_filter.select(view), key=listing_order)
        jobs, count = matching if all_jobs else matching[:LISTED], len(matching)
        shown: set[tuple[str, str]] | None = {(job.submission, job.phase) for job in matching}
    else:
        jobs, count = _listing(view, all_jobs)
        shown = None
    head: list[RenderableType] = []
    if refreshed is not None:
        head.append(Text(f"refreshed {time.strftime('%H:%M:%S', time.localtime(refreshed))}", style="dim"))
    head.extend(Text(f"exq: {problem}", style="bold red") for problem in view.problems)
    head.append(phase_table(view, shown))
    head.extend(
        Text(f"submission {sub.id} ({sub.name}): on_job_end failed: {sub.hook_error}"
             + (f"; log: {view.paths.hook_log(sub.id)}" if view.paths else ""), style="red")
        for sub in view.index.submissions if sub.hook_error
    )
    head.extend(
        Text(f"submission {item.id} ({item.spec.name}): {len(item.spec.jobs)} jobs waiting for a daemon to take them",
             style="yellow")
        for item in view.pending
    )
    if jobs_filter and not count:
        head.append(Text("no job matches", style="dim"))
    rows = [[job] for job in jobs] if all_jobs else collapse(jobs)
    return StatusScreen(head, rows, count, fit=not all_jobs)


def _listing(view: StatusView, all_jobs: bool) -> tuple[list[Job], int]:
    """The jobs of the unfiltered view, and how many it shows in all."""
    listing = None if all_jobs else view.index.listing(time.time())
    if listing is not None:
        return listing
    view = view.with_state()  # every job, or the index cannot tell which recent ones are shown: the whole state
    if all_jobs:
        return sorted(view.state.jobs, key=listing_order), len(view.state.jobs)
    return view.index.listing(view.index.at) or ([], 0)  # an index made from the state answers at its time


WIDE = 1 << 16
"""The width a view is drawn at when not on a terminal: as wide as its content, so nothing is wrapped."""


class StatusScreen:
    """The status view: `head`, then a table of job `rows`, then how many of the `count` jobs it does not show.

    On a terminal, with `fit`, the rows are cut to what fits its height (one line left for the prompt, or for
    `--watch`'s cursor). Elsewhere (piped) it is drawn as wide as its content: no line is wrapped."""

    def __init__(self, head: list[RenderableType], rows: list[list[Job]], count: int, fit: bool) -> None:
        self.head, self.rows, self.count, self.fit = head, rows, count, fit

    def parts(self, shown: int) -> Group:
        """The view with the first `shown` rows."""
        parts = list(self.head)
        if shown:
            parts.append(job_table(self.rows[:shown]))
        hidden = self.count - sum(len(row) for row in self.rows[:shown])
        if hidden > 0:
            parts.append(Text(f"... {hidden} more jobs (exq status --all)", style="dim"))
        return Group(*parts)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if not options.is_terminal:
            yield from console.render(self.parts(len(self.rows)), options.update(max_width=WIDE))
            return
        if not self.fit:
            yield self.parts(len(self.rows))
            return
        options = options.update(height=None)
        budget = options.size.height - 1
        lines = console.render_lines(self.parts(0), options, pad=False, new_lines=True)
        low, high = 1, len(self.rows)
        while low <= high:  # the most rows that fit: the height grows with the rows
            middle = (low + high) // 2
            candidate = console.render_lines(self.parts(middle), options, pad=False, new_lines=True)
            if len(candidate) <= budget:
                lines, low = candidate, middle + 1
            else:
                high = middle - 1
        for line in lines:
            yield from line


def run_summary(view: StatusView, jobs: list[Job]) -> StatusScreen:
    """What `exq run` prints at the end: the phases, then its jobs, those that did not succeed first; past
    LISTED jobs the rest are counted (a table of thousands of rows takes seconds to draw). Not wrapped when
    piped."""
    listed = sorted(jobs, key=listing_order)[:LISTED] if len(jobs) > LISTED else jobs
    return StatusScreen([phase_table(view)], [[job] for job in listed], len(jobs), fit=False)


def gpu_table(host: str, snap: GpuSnapshot) -> Table:
    simulated = " (SIMULATED)" if snap.simulated else ""
    table = Table(title=f"{host}: {snap.backend}{simulated}", title_justify="left", caption=snap.message)
    for column in ("gpu", "name", "used", "total", "processes"):
        table.add_column(column)
    for gpu in snap.gpus:
        procs = ", ".join(f"{p.pid} ({format_size(p.used_memory)})" for p in gpu.processes)
        table.add_row(str(gpu.index), gpu.name, format_size(gpu.memory_used), format_size(gpu.memory_total), procs)
    return table


def hosts_table(reports: list[HostReport]) -> Table:
    table = Table(title="hosts", title_justify="left")
    for column in ("host", "state", "backend", "gpus", "note"):
        table.add_column(column, overflow="fold")
    for report in reports:
        snap = report.snapshot
        if snap is None:
            table.add_row(report.name, Text("unreachable", style="bold red"), "", "", report.error or "")
            continue
        sizes = Counter(format_size(g.memory_total) for g in snap.gpus)
        gpus = f"{len(snap.gpus)} slots" if snap.slots else ", ".join(f"{n}x{size}" for size, n in sizes.items())
        gpus = gpus or "none"
        backend = snap.backend + (" (SIMULATED)" if snap.simulated else "")
        table.add_row(report.name, Text("up", style="green"), backend, gpus, snap.message or "")
    return table


def _title(view: StatusView) -> str:
    index = view.index
    if view.daemon_alive and index.daemon:
        who = f"daemon pid {index.daemon.pid} on {index.daemon.hostname}"
    else:
        who = "no daemon running"
    paused = ", PAUSED" if index.paused else ""
    sim = " [SIMULATED GPUs]" if index.simulated else ""
    return f"exq: {who}{paused}; {index.total} jobs{sim}"
