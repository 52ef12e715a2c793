"""The report as one self-contained HTML file: inline CSS, SVG and script; no network, no external fonts.

Every value from the state goes through `_e` (HTML escaping, quotes included); the script holds no data.
"""

from __future__ import annotations

import time
from html import escape

from exq import __version__
from exq.report.timeline import Bar, Lane, Timeline, format_duration, lane_name

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
           "#86bcb6")
"""Phase colours, in phase order (cycled)."""
FAIL, OOM, RETRY = "#c62828", "#6a1b9a", "#212121"
LABEL_W, PLOT_W, RIGHT = 170, 1080, 20
ROW_H, LANE_GAP, TOP, AXIS_H = 16, 6, 8, 34
MIN_BAR = 1.5
"""The narrowest a bar is drawn, in pixels, so that a short attempt stays visible."""

CSS = """
body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:16px;color:#222;background:#fff}
h1{font-size:18px;margin:0 0 4px}h2{font-size:15px;margin:20px 0 6px}
.meta{color:#555;margin:0 0 10px}
table{border-collapse:collapse}th,td{padding:2px 8px;border-bottom:1px solid #e3e3e3;text-align:right}
th:first-child,td:first-child,th.l,td.l{text-align:left}th{background:#f4f4f4}
.legend span{display:inline-block;margin-right:14px}.sw{display:inline-block;width:12px;height:12px;
vertical-align:-2px;margin-right:4px;border:1px solid #0003}
.util{display:inline-block;width:160px;height:10px;background:#eee;vertical-align:middle}
.util i{display:block;height:100%;background:#4e79a7}
#tip{position:absolute;z-index:10;max-width:520px;padding:6px 8px;background:#222;color:#fff;border-radius:4px;
white-space:pre-line;pointer-events:none;font-size:12px}
svg text{font:11px system-ui,sans-serif;fill:#333}
rect.bar:hover{stroke:#000;stroke-width:2}
"""

SCRIPT = """
(function () {
  var tip = document.getElementById("tip");
  var bars = document.querySelectorAll("rect.bar");
  function show(e) {
    tip.textContent = this.getAttribute("data-tip");
    tip.hidden = false;
    tip.style.left = (e.pageX + 14) + "px";
    tip.style.top = (e.pageY + 14) + "px";
  }
  function hide() { tip.hidden = true; }
  for (var i = 0; i < bars.length; i++) {
    bars[i].addEventListener("mousemove", show);
    bars[i].addEventListener("mouseleave", hide);
  }
  document.documentElement.setAttribute("data-bars", String(bars.length));
})();
"""


def _e(value: object) -> str:
    """`value` as HTML text or attribute value: `<`, `>`, `&` and both quotes escaped."""
    return escape(str(value), quote=True)


def render(timeline: Timeline, title: str = "exq report") -> str:
    """The whole report page."""
    colours = _colours(timeline)
    generated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    period = (f"{_clock(timeline.start)} to {_clock(timeline.end)} "
              f"({format_duration(timeline.end - timeline.start)})")
    subs = ", ".join(timeline.submissions) or "none"
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{_e(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">Period {_e(period)} &middot; submissions: {_e(subs)} &middot; '
        f"generated {_e(generated)} by exq {_e(__version__)}</p>",
        "<h2>Timeline</h2>", _legend(colours), _svg(timeline, colours),
        "<h2>Per phase</h2>", _phase_table(timeline),
        "<h2>GPU utilisation</h2>", _utilisation_table(timeline),
        '<div id="tip" role="tooltip" hidden></div>', f"<script>{SCRIPT}</script>", "</body>", "</html>",
    ]
    return "\n".join(parts) + "\n"


def _colours(timeline: Timeline) -> dict[tuple[str, str], str]:
    keys = [(p.submission, p.phase) for p in timeline.phases]
    return {key: PALETTE[i % len(PALETTE)] for i, key in enumerate(keys)}


def _legend(colours: dict[tuple[str, str], str]) -> str:
    items = [f'<span><i class="sw" style="background:{c}"></i>{_e(sub)}/{_e(phase)}</span>'
             for (sub, phase), c in colours.items()]
    items += [f'<span><i class="sw" style="background:repeating-linear-gradient(45deg,#999 0 2px,{OOM} 2px 4px)">'
              "</i>OOM (hatched)</span>",
              f'<span><i class="sw" style="background:#fff;border:2px solid {FAIL}"></i>failed (red outline, '
              "&#9650;)</span>",
              f'<span><i class="sw" style="background:{RETRY};border-radius:50%"></i>retried after this</span>',
              '<span><i class="sw" style="background:#fbe3e0"></i>idle</span>']
    return f'<p class="legend">{"".join(items)}</p>'


def _svg(timeline: Timeline, colours: dict[tuple[str, str], str]) -> str:
    heights = [lane.rows * ROW_H for lane in timeline.lanes]
    height = TOP + sum(h + LANE_GAP for h in heights) + AXIS_H
    width = LABEL_W + PLOT_W + RIGHT
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="timeline">', _defs()]
    y = TOP
    for lane, h in zip(timeline.lanes, heights, strict=True):
        out.append(_lane(timeline, lane, y, h, colours))
        y += h + LANE_GAP
    out.append(_axis(timeline, TOP, y))
    if not timeline.lanes:
        out.append(f'<text x="{LABEL_W}" y="{TOP + 12}">no attempt has started yet</text>')
    out.append("</svg>")
    return "\n".join(out)


def _defs() -> str:
    return ('<defs><pattern id="oom-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
            'patternTransform="rotate(45)"><rect width="6" height="6" fill="#ffffff" fill-opacity="0.15"/>'
            f'<line x1="0" y1="0" x2="0" y2="6" stroke="{OOM}" stroke-width="3"/></pattern></defs>')


def _x(timeline: Timeline, t: float) -> float:
    return LABEL_W + (t - timeline.start) / timeline.span * PLOT_W


def _lane(timeline: Timeline, lane: Lane, y: float, h: float, colours: dict[tuple[str, str], str]) -> str:
    gpu = "cpu" if lane.gpu is None else str(lane.gpu)
    share = f"{timeline.utilisation(lane):.0%}"
    out = [f'<g class="lane" data-host="{_e(lane.host)}" data-gpu="{gpu}" data-busy="{share}">',
           f'<text x="4" y="{y + min(h, ROW_H) / 2 + 4:.1f}">{_e(lane.name)} <tspan fill="#777">{share}</tspan>'
           "</text>",
           f'<rect class="lane-bg" x="{LABEL_W}" y="{y}" width="{PLOT_W}" height="{h}" fill="#f3f6f9"/>']
    for s, e in lane.gaps:
        w = max(0.0, (e - s) / timeline.span * PLOT_W)
        out.append(f'<rect class="gap" x="{_x(timeline, s):.2f}" y="{y}" width="{w:.2f}" height="{h}" '
                   f'fill="#fbe3e0"><title>idle {_e(format_duration(e - s))}</title></rect>')
    out += [_bar(timeline, bar, y, colours) for bar in lane.bars]
    out.append("</g>")
    return "\n".join(out)


def _bar(timeline: Timeline, bar: Bar, lane_y: float, colours: dict[tuple[str, str], str]) -> str:
    x = _x(timeline, bar.start)
    w = max(MIN_BAR, (bar.end - bar.start) / timeline.span * PLOT_W)
    y, h = lane_y + bar.row * ROW_H + 1, ROW_H - 2
    fill = colours.get((bar.submission, bar.phase), PALETTE[-1])
    stroke = (f' stroke="{FAIL}" stroke-width="2"' if bar.failed else f' stroke="{OOM}" stroke-width="1.5"'
              if bar.oom else ' stroke="#333" stroke-dasharray="3 2"' if bar.outcome == "running" else "")
    tip = _e(bar.tip)
    attrs = (f'class="bar" data-job="{_e(bar.job)}" data-attempt="{bar.attempt}" data-outcome="{_e(bar.outcome)}" '
             f'data-phase="{_e(bar.phase)}" data-retried="{str(bar.retried).lower()}" data-tip="{tip}"')
    out = [f'<rect {attrs} x="{x:.2f}" y="{y:.2f}" width="{w:.2f}" height="{h}" fill="{fill}"{stroke}>'
           f"<title>{tip}</title></rect>"]
    geometry = f'x="{x:.2f}" y="{y:.2f}" width="{w:.2f}" height="{h}"'
    if bar.oom:
        out.append(f'<rect class="mark oom" {geometry} fill="url(#oom-hatch)" pointer-events="none"/>')
    end = x + w
    if bar.failed:
        out.append(f'<path class="mark failed" d="M{end - 4:.2f},{y - 1:.2f}h8l-4,6z" fill="{FAIL}" '
                   'pointer-events="none"/>')
    if bar.retried:
        out.append(f'<circle class="mark retried" cx="{end:.2f}" cy="{y + h / 2:.2f}" r="2.5" fill="{RETRY}" '
                   'pointer-events="none"/>')
    return "".join(out)


def _axis(timeline: Timeline, top: float, bottom: float) -> str:
    out = [f'<g class="axis"><line x1="{LABEL_W}" y1="{bottom}" x2="{LABEL_W + PLOT_W}" y2="{bottom}" '
           'stroke="#666"/>']
    for t, label in timeline.ticks:
        x = _x(timeline, t)
        out.append(f'<line x1="{x:.2f}" y1="{top}" x2="{x:.2f}" y2="{bottom + 4}" stroke="#0002"/>'
                   f'<text x="{x:.2f}" y="{bottom + 16}" text-anchor="middle">{_e(label)}</text>')
    out.append(f'<text x="{LABEL_W + PLOT_W}" y="{bottom + 30}" text-anchor="end" fill="#777">time (local)</text>'
               "</g>")
    return "".join(out)


def _phase_table(timeline: Timeline) -> str:
    head = ("<tr><th>submission</th><th class=l>phase</th><th>jobs</th><th>succeeded</th><th>failed</th>"
            "<th>blocked</th><th>retries</th><th>GPU-hours</th><th>wait p50</th><th>wait p90</th></tr>")
    rows = [f'<tr class="phase" data-submission="{_e(p.submission)}" data-phase="{_e(p.phase)}">'
            f"<td>{_e(p.submission)}</td><td class=l>{_e(p.phase)}</td><td>{p.jobs}</td><td>{p.succeeded}</td>"
            f"<td>{p.failed}</td><td>{p.blocked}</td><td>{p.retries}</td><td>{p.gpu_hours:.3f}</td>"
            f"<td>{_e(format_duration(p.wait_p50))}</td><td>{_e(format_duration(p.wait_p90))}</td></tr>"
            for p in timeline.phases]
    return f'<table class="phases">{head}{"".join(rows)}</table>'


def _utilisation_table(timeline: Timeline) -> str:
    head = "<tr><th>GPU</th><th>busy</th><th>share of the period</th><th class=l></th></tr>"
    rows = []
    for lane in timeline.lanes:
        share = timeline.utilisation(lane)
        rows.append(f'<tr class="util-row" data-lane="{_e(lane_name(lane.host, lane.gpu))}"><td>{_e(lane.name)}</td>'
                    f"<td>{_e(format_duration(lane.busy))}</td><td>{share:.1%}</td>"
                    f'<td class=l><span class="util"><i style="width:{share * 100:.1f}%"></i></span></td></tr>')
    return f'<table class="utilisation">{head}{"".join(rows)}</table>'


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
