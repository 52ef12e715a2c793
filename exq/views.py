"""How exq shows things in a terminal: rich tables for specs, status and GPUs.

Every string printed here is shown literally: `plain_console()` is the only Console exq prints with;
styles come from `rich.text.Text(..., style=...)`, never from markup in a string.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from exq.api import HostReport, StatusView
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


def phase_table(view: StatusView) -> Table:
    """Progress and counts per submission and phase."""
    table = Table(title=_title(view), title_justify="left")
    table.add_column("submission", no_wrap=True)
    table.add_column("phase", no_wrap=True)
    table.add_column("progress", no_wrap=True)
    table.add_column("jobs")
    index = view.index
    names = {s.id: f"{s.id} {s.name}" for s in index.submissions}
    for group in index.phases:
        sub, phase, counts = group.submission, group.phase, Counter(group.counts)
        total = sum(counts.values())
        done = sum(n for status, n in counts.items() if status.finished)
        progress = Table.grid(padding=(0, 1))
        progress.add_row(ProgressBar(total=total, completed=done, width=12), f"{done}/{total}")
        summary = Text(" ").join(
            Text(f"{counts[s]} {s.value}", style=STATUS_STYLE[s]) for s in _ORDER if counts[s]
        )
        table.add_row(names.get(sub, sub), phase, progress, summary)
    return table


def job_table(jobs: list[Job], limit: int | None = None) -> Table:
    table = Table(title_justify="left")
    table.add_column("job", no_wrap=True)
    for column in ("status", "try", "where", "time"):
        table.add_column(column, no_wrap=True)
    table.add_column("reason / result", overflow="fold")
    now = time.time()
    for job in jobs[:limit] if limit else jobs:
        attempt = job.current_attempt
        where = ""
        if attempt is not None:
            where = attempt.host + (":" + ",".join(map(str, attempt.gpus)) if attempt.gpus else "")
        elapsed = ""
        if attempt is not None and attempt.started_at:
            elapsed = format_duration((attempt.ended_at or now) - attempt.started_at)
        table.add_row(job.key, Text(job.status.value, style=STATUS_STYLE[job.status]),
                      str(len(job.attempts)), where, elapsed, _job_detail(job, now))
    return table


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


def status_renderable(view: StatusView, all_jobs: bool = False) -> Group:
    """Problems, the phase table, hook failures, pending submissions, then the jobs: every one with
    `all_jobs`, else the first LISTED active and recent ones (from the status index when it is current)."""
    listing = None if all_jobs else view.index.listing(time.time())
    if listing is None:  # every job, or the index cannot tell which recent ones are shown: the whole state
        view = view.with_state()
        if all_jobs:
            listing = sorted(view.state.jobs, key=listing_order), len(view.state.jobs)
        else:  # an index made from the state answers at the time it was made
            listing = view.index.listing(view.index.at) or ([], 0)
    jobs, count = listing
    parts: list[Table | Text] = [Text(f"exq: {problem}", style="bold red") for problem in view.problems]
    parts.append(phase_table(view))
    parts.extend(
        Text(f"submission {sub.id} ({sub.name}): on_job_end failed: {sub.hook_error}"
             + (f"; log: {view.paths.hook_log(sub.id)}" if view.paths else ""), style="red")
        for sub in view.index.submissions if sub.hook_error
    )
    parts.extend(
        Text(f"submission {item.id} ({item.spec.name}): {len(item.spec.jobs)} jobs waiting for a daemon to take them",
             style="yellow")
        for item in view.pending
    )
    if jobs:
        parts.append(job_table(jobs))
    if not all_jobs and count > LISTED:
        parts.append(Text(f"... {count - LISTED} more jobs (exq status --all)", style="dim"))
    return Group(*parts)


def run_summary(view: StatusView, jobs: list[Job]) -> Group:
    """What `exq run` prints at the end: the phases, then its jobs, those that did not succeed first; past
    LISTED jobs the rest are counted (a table of thousands of rows takes seconds to draw)."""
    listed = sorted(jobs, key=listing_order)[:LISTED] if len(jobs) > LISTED else jobs
    parts: list[Table | Text] = [phase_table(view), job_table(listed)]
    if len(jobs) > LISTED:
        parts.append(Text(f"... {len(jobs) - LISTED} more jobs (exq status --all)", style="dim"))
    return Group(*parts)


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
        gpus = ", ".join(f"{n}x{size}" for size, n in sizes.items()) or "none"
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
