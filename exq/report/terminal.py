"""The report as compact text, for SSH sessions: one line per lane, one character per time bucket."""

from __future__ import annotations

import re
import time

import click

from exq.report.timeline import Lane, Timeline, format_duration, merge

BUSY, PARTLY, IDLE, OOM, FAILED = "#", "+", ".", "O", "X"
LEGEND = (f"{BUSY} busy  {PARTLY} partly busy  {IDLE} idle  {OOM} OOM ended there  {FAILED} failure ended there")
STYLES = {BUSY: ("cyan", False), PARTLY: ("cyan", False), FAILED: ("red", True), OOM: ("magenta", True)}
"""Colour and boldness of each mark on a terminal."""
RUNS = re.compile(r"[#+]+|X+|O+")
SHARE_W = 5
"""Width of the utilisation column (` 100%`)."""


def render(timeline: Timeline, columns: int) -> list[str]:
    """The text report for a terminal `columns` wide (styled; click drops the styles when piped)."""
    label_w = max((len(lane.name) for lane in timeline.lanes), default=4)
    width = max(10, columns - label_w - 3 - SHARE_W)
    start, end = _clock(timeline.start), _clock(timeline.end)
    lines = [f"exq report: {_day(timeline.start)} {start} to {end} ({format_duration(timeline.end - timeline.start)});"
             f" submissions: {', '.join(timeline.submissions) or 'none'}"]
    lines.append(" " * (label_w + 2) + start + end.rjust(max(1, width - len(start))))
    if not timeline.lanes:
        lines.append("no attempt has started yet")
    for lane in timeline.lanes:
        busy = merge((b.start, b.end) for b in lane.bars)
        cells = _styled("".join(_cell(timeline, lane, busy, i, width) for i in range(width)))
        share = f"{timeline.utilisation(lane):.0%}".rjust(SHARE_W)
        lines.append(f"{lane.name.ljust(label_w)} |{cells}|{share}")
    lines.append(f"{LEGEND}  (1 char = {format_duration(timeline.span / width)})")
    lines.append("")
    lines.extend(phase_lines(timeline))
    return lines


def _styled(cells: str) -> str:
    """`cells` with each run of marks coloured (click drops the colours when output is piped)."""
    def colour(run: re.Match[str]) -> str:
        text = run.group()
        fg, bold = STYLES[text[0]]
        return click.style(text, fg=fg, bold=bold)

    return RUNS.sub(colour, cells)


def _cell(timeline: Timeline, lane: Lane, busy_spans: list[tuple[float, float]], i: int, width: int) -> str:
    """Bucket `i` of `lane`: a failure or OOM mark when an attempt ended in it, else how busy it was."""
    t0 = timeline.start + timeline.span * i / width
    t1 = timeline.start + timeline.span * (i + 1) / width
    last = i == width - 1
    ended = [b for b in lane.bars if t0 <= b.end < t1 or (last and b.end >= t0)]
    if any(b.failed for b in ended):
        return FAILED
    if any(b.oom for b in ended):
        return OOM
    busy = sum(max(0.0, min(e, t1) - max(s, t0)) for s, e in busy_spans)
    if busy <= 0 and not any(b.start <= t0 < b.end or t0 <= b.start < t1 for b in lane.bars):
        return IDLE
    return BUSY if busy >= (t1 - t0) / 2 else PARTLY


def phase_lines(timeline: Timeline) -> list[str]:
    """The per-phase stats as an aligned plain-text table."""
    rows = [["submission", "phase", "jobs", "succeeded", "failed", "blocked", "retries", "GPU-h", "wait p50",
             "wait p90"]]
    rows += [[p.submission, p.phase, str(p.jobs), str(p.succeeded), str(p.failed), str(p.blocked), str(p.retries),
              f"{p.gpu_hours:.3f}", format_duration(p.wait_p50), format_duration(p.wait_p90)]
             for p in timeline.phases]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            .rstrip() for r in rows]


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def _day(at: float) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(at))
