"""EXPERIMENT_RESULTS.md: a section per milestone (`### M0: Sanity — PASSED`) with a table of its runs,
and the must-run count under `## Summary`.

Created when missing; otherwise only the verdict word of each milestone heading exq runs, the rows it adds, the
Status of its runs' rows, its own part (exq.bridge.owned) of their Key Metric, an empty System cell, and the
must-run count line change. Everything else, a person's words in those rows included, stays byte for byte.
"""

from __future__ import annotations

import re
from pathlib import Path

from exq.bridge import markdown as md
from exq.bridge.owned import exq_part, merge
from exq.bridge.progress import PASSED, PENDING, MilestoneProgress, PlanProgress, gate_word

COLUMNS = ("Run", "System", "Key Metric", "Status")
_VERDICT = re.compile(rf"\s*(?:\u2014|\u2013|-{{1,2}})\s*({PASSED}|FAILED|{PENDING})\s*$", re.IGNORECASE)
_COUNT = re.compile(r"(\s*[-*+]\s*)\[\s*\d+\s*/\s*\d+\s*\](.*)$")


def new_document(plan: str, date: str) -> str:
    """The skeleton of a results file for `plan` (a path relative to the results file)."""
    return (f"# Initial Experiment Results\n\n**Date**: {date}\n**Plan**: {plan}\n\n"
            "## Results by Milestone\n\n## Summary\n\n- [0/0] must-run experiments completed\n")


def update_results(text: str, progress: PlanProgress) -> str:
    """`text` (a results document) brought up to date with `progress`."""
    for milestone in progress.milestones:
        text = _milestone(text, milestone)
    done, total = progress.must_done
    return _count(text, f"[{done}/{total}] must-run experiments completed")


def _rows(milestone: MilestoneProgress) -> dict[str, dict[str, str]]:
    rows = {run.row.run_id: {"System": run.row.system, "Key Metric": merge("", run.summary or run.reason),
                             "Status": run.status} for run in milestone.runs}
    if milestone.gate is not None:
        gate = milestone.gate
        checks = (gate.result or {}).get("checks")
        detail = milestone.gate_reason or (f"{len(checks)} rule(s) met" if isinstance(checks, list) else "")
        rows[gate.id] = {"System": "metric gate", "Key Metric": merge("", detail), "Status": gate_word(gate)}
    return rows


def _milestone(text: str, milestone: MilestoneProgress) -> str:
    doc = md.parse(text)
    mid = milestone.milestone.id
    heading = next((h for h in doc.headings if h.level >= 2 and re.match(rf"{re.escape(mid)}\b", h.text)), None)
    if heading is None:
        title = f"{mid}: {milestone.milestone.title}" if milestone.milestone.title else mid
        body = [md.format_row(COLUMNS, {"Run": run, **cells}) for run, cells in _rows(milestone).items()]
        section = [f"### {title} \u2014 {milestone.verdict}", "", md.format_row(COLUMNS, {c: c for c in COLUMNS}),
                   "|" + "|".join("---" for _ in COLUMNS) + "|", *body]
        return _insert_section(text, doc, section)
    line = md.line_at(text, heading.line)
    found = _VERDICT.search(line)
    wanted = line[: found.start(1)] + milestone.verdict + line[found.end(1):] if found else \
        f"{line.rstrip()} \u2014 {milestone.verdict}"
    text = md.replace_line(text, heading.line, wanted)
    doc = md.parse(text)
    end = doc.section_end(heading)
    table = next((t for t in doc.tables_in(heading.line, end) if not t.missing(("Run", "Status"))), None)
    if table is None:
        return text  # a section someone rewrote without a table: leave it to them
    for run, cells in _rows(milestone).items():
        present = {k: v for k, v in cells.items() if table.column(k) is not None}
        row = next((r for r in table.rows if md.normalize(table.get(r, "Run")) == md.normalize(run)), None)
        if row is None:
            text = md.append_row(text, table.line, {"Run": run, **present})
        else:
            text = md.set_cells(text, table.line, row.line, _shared(table, row, present))
        table = next(t for t in md.parse(text).tables if t.line == table.line)
    return text


def _shared(table: md.Table, row: md.TableRow, cells: dict[str, str]) -> dict[str, str]:
    """`cells` for a row already in the table: a person's System stays, and so does their part of Key Metric."""
    out = dict(cells)
    if "System" in out and table.get(row, "System"):
        del out["System"]
    if "Key Metric" in out:
        out["Key Metric"] = merge(table.get(row, "Key Metric"), exq_part(out["Key Metric"]))
    return out


def _insert_section(text: str, doc: md.Document, section: list[str]) -> str:
    """`section` at the end of `## Results by Milestone` (before `## Summary` when there is no such heading)."""
    results = doc.find_heading("results by milestone")
    if results is not None:
        end = doc.section_end(results) - 1
    else:
        summary = doc.find_heading("summary")
        if summary is None:
            return md.append_section(text, "\n".join(section))
        end = summary.line - 1
    last = max((n for n in range(1, end + 1) if doc.lines[n - 1].strip()), default=0)
    trailer = [""] if last == end and end < len(doc.lines) else []
    return md.insert_lines(text, last, ["", *section, *trailer])


def _count(text: str, count: str) -> str:
    doc = md.parse(text)
    summary = doc.find_heading("summary")
    if summary is None:
        return md.append_section(text, f"## Summary\n\n- {count}")
    for number in range(summary.line + 1, doc.section_end(summary)):
        found = _COUNT.match(doc.lines[number - 1])
        if found and "must-run" in found.group(2):
            return md.replace_line(text, number, found.group(1) + count)
    return md.insert_lines(text, summary.line, ["", f"- {count}"])


def results_path(plan: Path) -> Path:
    """EXPERIMENT_RESULTS.md beside the plan."""
    return plan.parent / "EXPERIMENT_RESULTS.md"
