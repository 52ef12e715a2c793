"""Read the research documents (plan, tracker, workflow state) and edit the cells exq owns, atomically.

Tables are found by their header names (matched case-insensitively), not by position; every problem is a
DocumentError naming the file, the line and what is missing.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Mapping
from pathlib import Path

from exq.api import atomic_write
from exq.bridge import markdown as md
from exq.bridge.model import Block, Milestone, Plan, StageGate, Tracker, TrackerRow, WorkflowState
from exq.errors import InputFileError, InputProblem

PLAN_COLUMNS = ("Milestone", "Goal", "Runs", "Decision Gate")
TRACKER_COLUMNS = ("Run ID", "Milestone", "Status")
GATE_COLUMNS = ("Stage", "Gate Status")
GATE_STATUSES = ("Not Started", "In Progress", "Pass", "Fail", "Blocked")

_BOLD_FIELD = re.compile(r"\s*(?:[-*+]\s+)?\*\*(.+?)\*\*\s*:?\s*(.*)$")
_BULLET = re.compile(r"(\s*[-*+]\s+(?:\*\*)?([^:*\uff1a]+?)(?:\*\*)?\s*[:\uff1a]\s*(?:\*\*)?\s*)(.*?)\s*$")
_BLOCK = re.compile(r"block\s+(\d+)\s*(?:[:\uff1a.\-\u2014\u2013]\s*)?(.*)$", re.IGNORECASE)
_STAGE = re.compile(r"(?:stage\s*)?(\d+)\s*(?:[:\uff1a.\-\u2014\u2013)]\s*)?(.*)$", re.IGNORECASE)


class DocumentError(InputFileError):
    """A research document lacks something the bridge needs, or cannot be read or edited."""


def _error(path: str | Path, line: int | None, message: str) -> DocumentError:
    return DocumentError([InputProblem(str(path), line, None, "", message)])


def _quoted(names: tuple[str, ...] | list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _plain(cell: str) -> str:
    """A cell without surrounding bold/code markers."""
    return cell.strip().strip("*_`").strip()


def _split_id(cell: str) -> tuple[str, str]:
    """`M0: Sanity` -> (`M0`, `Sanity`); `M0` -> (`M0`, ``)."""
    head, _, title = cell.replace("\uff1a", ":").partition(":")
    return _plain(head), _plain(title)


def read_document(path: str | Path) -> str:
    """The file's text; DocumentError naming the file (and line) when it cannot be read or is not UTF-8."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise _error(path, None, f"cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise _error(path, line, "not UTF-8 text") from None


def write_document(path: str | Path, text: str) -> None:
    """Replace the file (a symlink's target) atomically, keeping its permission bits (new files: 0644)."""
    target = Path(os.path.realpath(path))
    mode = target.stat().st_mode & 0o7777 if target.exists() else 0o644
    atomic_write(target, text.encode("utf-8"), mode=mode)


def _find_table(
    path: str | Path, doc: md.Document, columns: tuple[str, ...], section: tuple[str, ...]
) -> md.Table:
    """The first table with `columns`, preferring one in the section whose heading contains `section`."""
    heading = doc.find_heading(*section) if section else None
    scoped = doc.tables_in(heading.line, doc.section_end(heading)) if heading else []
    for table in [*scoped, *doc.tables]:
        if not table.missing(columns):
            return table
    near = [t for t in scoped or doc.tables if t.column(columns[0]) is not None]
    if near:
        raise _error(path, near[0].line, f"table lacks column(s) {_quoted(near[0].missing(columns))}")
    where = f"under '{'#' * heading.level} {heading.text}' " if heading else ""
    raise _error(path, heading.line if heading else 1, f"no table {where}with columns {_quoted(columns)}")


def load_plan(path: str | Path) -> Plan:
    """The plan's milestones (the Run Order table, in order) and experiment blocks."""
    doc = md.parse(read_document(path))
    problem = None
    for text in doc.lines:
        m = _BOLD_FIELD.match(text)
        if m and md.normalize(m.group(1)).rstrip(":") == "problem":
            problem = m.group(2).strip() or None
            break
    table = _find_table(path, doc, PLAN_COLUMNS, ("run order",))
    milestones: list[Milestone] = []
    seen: dict[str, int] = {}
    for row in table.rows:
        if not any(row.values):
            continue
        mid, title = _split_id(table.get(row, "Milestone"))
        if not mid:
            raise _error(path, row.line, "empty Milestone cell")
        if mid in seen:
            raise _error(path, row.line, f"milestone {mid} listed twice (first at line {seen[mid]})")
        seen[mid] = row.line
        get = table.get
        milestones.append(Milestone(mid, title, get(row, "Goal"), get(row, "Runs"), get(row, "Decision Gate"),
                                    row.line))
    return Plan(str(path), problem, milestones, _blocks(doc))


def _priority(value: str) -> str | None:
    upper = _plain(value).upper()
    if upper.startswith("MUST"):
        return "MUST-RUN"
    if upper.startswith("NICE"):
        return "NICE-TO-HAVE"
    return _plain(value) or None


def _blocks(doc: md.Document) -> list[Block]:
    blocks: list[Block] = []
    for heading in doc.headings:
        m = _BLOCK.match(heading.text)
        if not m:
            continue
        fields: dict[str, str] = {}
        for text in doc.lines[heading.line : doc.section_end(heading) - 1]:
            f = _BOLD_FIELD.match(text)
            if f:
                fields.setdefault(f.group(1).strip().rstrip(":\uff1a").strip(), f.group(2).strip())
        priority = next((_priority(v) for k, v in fields.items() if md.normalize(k) == "priority"), None)
        blocks.append(Block(int(m.group(1)), m.group(2).strip(), priority, fields, heading.line))
    return blocks


def _tracker_tables(path: str | Path, doc: md.Document) -> list[md.Table]:
    tables = [t for t in doc.tables if not t.missing(TRACKER_COLUMNS)]
    return tables or [_find_table(path, doc, TRACKER_COLUMNS, ())]


def _norm_priority(value: str) -> str:
    upper = _plain(value).upper()
    return "MUST" if upper.startswith("MUST") else "NICE" if upper.startswith("NICE") else upper


def load_tracker(path: str | Path) -> Tracker:
    """Every row of every table with Run ID, Milestone and Status columns, in file order."""
    rows: list[TrackerRow] = []
    seen: dict[str, int] = {}
    for table in _tracker_tables(path, md.parse(read_document(path))):
        col = table.column("System / Variant") or table.column("System/Variant") or table.column("System")
        for row in table.rows:
            if not any(row.values):
                continue
            run_id = _plain(table.get(row, "Run ID"))
            if not run_id:
                raise _error(path, row.line, "empty Run ID cell")
            if run_id in seen:
                raise _error(path, row.line, f"run {run_id} listed twice (first at line {seen[run_id]})")
            seen[run_id] = row.line
            system = row.values[col] if col is not None and col < len(row.values) else ""
            rows.append(TrackerRow(
                run_id=run_id, milestone=_split_id(table.get(row, "Milestone"))[0],
                purpose=table.get(row, "Purpose"), system=system,
                priority=_norm_priority(table.get(row, "Priority")), status=_plain(table.get(row, "Status")).upper(),
                notes=table.get(row, "Notes"), line=row.line, cells=table.cells(row)))
    return Tracker(str(path), rows)


def _snapshot(doc: md.Document) -> dict[str, tuple[int, str, str]]:
    """Current Snapshot bullets: normalised key -> (line, prefix up to the value, value)."""
    heading = doc.find_heading("current snapshot")
    if heading is None:
        return {}
    out: dict[str, tuple[int, str, str]] = {}
    for line in range(heading.line + 1, doc.section_end(heading)):
        m = _BULLET.match(doc.lines[line - 1])
        if m:
            out.setdefault(md.normalize(m.group(2)), (line, m.group(1), m.group(3)))
    return out


def load_workflow(path: str | Path) -> WorkflowState:
    """The snapshot's current stage and edit permission, and the Stage Gates table."""
    doc = md.parse(read_document(path))
    snap = _snapshot(doc)
    stage: int | None = None
    if "current stage" in snap:
        line, _, value = snap["current stage"]
        m = re.match(r"\d+", _plain(value))
        if m is None:
            raise _error(path, line, f"Current Stage is not a stage number: {value!r}")
        stage = int(m.group())
    permission = _plain(snap.get("code edit permission", (0, "", ""))[2]) or None
    return WorkflowState(str(path), stage, permission, _gates(path, doc)[1])


def _gates(path: str | Path, doc: md.Document) -> tuple[md.Table, list[StageGate]]:
    table = _find_table(path, doc, GATE_COLUMNS, ("stage gates",))
    gates: list[StageGate] = []
    for row in table.rows:
        if not any(row.values):
            continue
        m = _STAGE.match(_plain(table.get(row, "Stage")))
        if m is None:
            raise _error(path, row.line, f"Stage cell does not start with a stage number: {table.get(row, 'Stage')!r}")
        gates.append(StageGate(int(m.group(1)), m.group(2).strip(), _plain(table.get(row, "Gate Status")),
                               table.get(row, "Evidence"), row.line))
    return table, gates


def update_tracker(path: str | Path, updates: Mapping[str, Mapping[str, str]]) -> bool:
    """Set cells of tracker rows by Run ID, e.g. `{"R001": {"Status": "DONE", "Notes": "acc 71.2"}}`.

    Only those cells change; the file is rewritten atomically, and only when something changed (returned).
    An unknown run or column is a DocumentError and nothing is written.
    """
    text = read_document(path)
    where: dict[str, tuple[md.Table, md.TableRow]] = {}
    tables = _tracker_tables(path, md.parse(text))
    for table in tables:
        for row in table.rows:
            where.setdefault(_plain(table.get(row, "Run ID")), (table, row))
    edited = text
    for run_id, cells in updates.items():
        if run_id not in where:
            raise _error(path, tables[0].line, f"no row with Run ID '{run_id}'")
        table, row = where[run_id]
        missing = table.missing(cells)
        if missing:
            raise _error(path, table.line, f"table lacks column(s) {_quoted(missing)} (run {run_id})")
        edited = md.set_cells(edited, table.line, row.line, cells)
    if edited == text:
        return False
    write_document(path, edited)
    return True


def set_gate(
    path: str | Path, stage: int, status: str, evidence: str | None = None, updated: str | None = None
) -> bool:
    """Set a stage's Gate Status (one of GATE_STATUSES, any case) and, when given, its Evidence.

    When a cell changed, the snapshot's `Last Updated` bullet, if present, becomes `updated` (default:
    today's date). Returns whether the file changed; it is rewritten atomically.
    """
    canonical = next((s for s in GATE_STATUSES if s.casefold() == status.strip().casefold()), None)
    if canonical is None:
        raise ValueError(f"gate status {status!r} is not one of {', '.join(GATE_STATUSES)}")
    text = read_document(path)
    doc = md.parse(text)
    table, gates = _gates(path, doc)
    gate = next((g for g in gates if g.stage == stage), None)
    if gate is None:
        raise _error(path, table.line, f"no gate row for stage {stage}")
    cells = {"Gate Status": canonical}
    if evidence is not None:
        if table.column("Evidence") is None:
            raise _error(path, table.line, "table lacks column 'Evidence'")
        cells["Evidence"] = evidence
    edited = md.set_cells(text, table.line, gate.line, cells)
    if edited == text:
        return False
    bullet = _snapshot(doc).get("last updated")
    if bullet is not None:
        line, prefix, _ = bullet
        stamp = updated or datetime.date.today().isoformat()
        edited = md.replace_line(edited, line, prefix + stamp)
    write_document(path, edited)
    return True
