"""Read the research documents (plan, tracker, workflow state) and edit the cells exq owns, atomically.

Tables are found by their header names (markdown.header_key: case, annotations in parentheses, trailing
colons and the documents' aliases such as `Run` for `Run ID` do not matter), not by position; every problem
is a DocumentError naming the file, the line and what was looked for.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from exq.api import atomic_write
from exq.bridge import markdown as md
from exq.bridge.model import Block, Milestone, Plan, PlanRun, StageGate, Tracker, TrackerRow, WorkflowState
from exq.errors import InputFileError, InputProblem

PLAN_COLUMNS = ("Milestone", "Goal", "Runs", "Decision Gate")
TRACKER_COLUMNS = ("Run ID", "Status")
GATE_COLUMNS = ("Stage", "Gate Status")
GATE_STATUSES = ("Not Started", "In Progress", "Pass", "Fail", "Blocked")
RUN_ORDER_HEADINGS = ("run order", "运行顺序")
RUN_ORDER_FORMS = (
    "a table with columns 'Milestone', 'Goal', 'Runs', 'Decision Gate' (under '## Run Order'); "
    "the same with Chinese headers '里程碑', '目标', '运行内容', '决策关卡' (under '## 运行顺序'); "
    "or milestone headings like '### M0: Sanity', each with its own run table (under '## Run Order and Milestones')"
)
TRAINING_NAMES = ("training validation", "训练 验证")
"""Stage names meaning Training & Validation, as _name_key gives them."""

_BOLD_FIELD = re.compile(r"\s*(?:[-*+]\s+)?\*\*(.+?)\*\*\s*:?\s*(.*)$")
_BULLET = re.compile(r"(\s*[-*+]\s+(?:\*\*)?([^:*\uff1a]+?)(?:\*\*)?\s*[:\uff1a]\s*(?:\*\*)?\s*)(.*?)\s*$")
_BLOCK = re.compile(r"block\s+(\d+)\s*(?:[:\uff1a.\-\u2014\u2013]\s*)?(.*)$", re.IGNORECASE)
_STAGE = re.compile(r"(?:stage|阶段)?\s*(\d+)\s*(?:[:\uff1a.\-\u2014\u2013)]\s*)?(.*)$", re.IGNORECASE)
_MILESTONE = re.compile(
    r"\W*(?:milestone|里程碑)?\s*(M\d+)(?![\w.])\s*(?:[:\uff1a.\-\u2014\u2013*]+\s*)?(.*)$", re.IGNORECASE)
_RANGE_END = re.compile(r"(?:[/&,+~]|and|to)?\s*M\d+\W*", re.IGNORECASE)
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")
_LIST_SEPARATOR = re.compile(r"[,;\uff0c\uff1b\u3001\s]+|\band\b", re.IGNORECASE)
_NAME_JOINER = re.compile(r"&|/|与|和|\band\b")
_PARENTHESISED = re.compile(r"[(\uff08]([^()\uff08\uff09]*)[)\uff09]")
_WRAPPED = re.compile(r"([*_`]+)(.*?)([*_`]+)")
_NOTHING = ("", "\u2014", "\u2013", "-", "none", "n/a")
"""Cells that say "no value": empty, dashes, `none`, `n/a`."""


class DocumentError(InputFileError):
    """A research document lacks something the bridge needs, or cannot be read or edited."""


def _error(path: str | Path, line: int | None, message: str) -> DocumentError:
    return DocumentError([InputProblem(str(path), line, None, "", message)])


def _quoted(names: tuple[str, ...] | list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _looked_for(columns: tuple[str, ...]) -> str:
    """`'Run ID' (or 'Run', 'ID'), 'Status' (or '状态')`: the columns and their aliases, for messages."""
    return ", ".join(f"'{c}'" + (f" (or {_quoted(md.ALIASES[c])})" if c in md.ALIASES else "") for c in columns)


def _plain(cell: str) -> str:
    """A cell without surrounding bold/code markers."""
    return cell.strip().strip("*_`").strip()


def _split_id(cell: str) -> tuple[str, str]:
    """`M0: Sanity` -> (`M0`, `Sanity`); `M0` -> (`M0`, ``)."""
    head, _, title = cell.replace("\uff1a", ":").partition(":")
    return _plain(head), _plain(title)


def _uncode(cell: str) -> str:
    """The cell with code marks dropped: `` `python3 train.py` `` and ``` ``a `b` c`` ``` give their text."""
    return _CODE_SPAN.sub(lambda m: m.group(2).strip(), cell).strip()


def _nothing(text: str) -> bool:
    return _plain(text).casefold() in _NOTHING


def command_of(cell: str) -> str | None:
    """A Command cell's command without its code marks; None when the cell is empty or a dash."""
    text = _uncode(cell)
    return None if _nothing(text) else text


def depends_on_of(cell: str) -> tuple[str, ...]:
    """The run IDs of a Depends On cell, split on commas, semicolons, spaces or `and`; `—`, `none`: ()."""
    ids = (_plain(part) for part in _LIST_SEPARATOR.split(_uncode(cell)))
    return tuple(dict.fromkeys(i for i in ids if not _nothing(i)))


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
    raise _error(path, heading.line if heading else 1, f"no table {where}with columns {_looked_for(columns)}")


# ---- bold fields, milestone headings and run tables (shared by the plan and the tracker) --------------


def _fields(doc: md.Document, heading: md.Heading) -> dict[str, str]:
    """The `**Name**: value` lines of a heading's section, by name as written (the first of each name)."""
    fields: dict[str, str] = {}
    for text in doc.lines[heading.line : doc.section_end(heading) - 1]:
        f = _BOLD_FIELD.match(text)
        if f:
            fields.setdefault(f.group(1).strip().rstrip(":\uff1a").strip(), f.group(2).strip())
    return fields


def _field(fields: Mapping[str, str], name: str) -> str:
    """The field called `name` or one of its aliases (`**Gate**` for Decision Gate); empty when missing."""
    key = md.header_key(name)
    return next((v for k, v in fields.items() if md.header_key(k) == key), "")


def _priority(value: str) -> str | None:
    upper = _plain(value).upper()
    if upper.startswith("MUST"):
        return "MUST-RUN"
    if upper.startswith("NICE"):
        return "NICE-TO-HAVE"
    return _plain(value) or None


def _milestone_heading(heading: md.Heading) -> tuple[str, str] | None:
    """(`M0`, `Sanity`) for `M0: Sanity`, `M0 — Sanity`, `Milestone M0: Sanity` or `🧪 M0`; None for other
    headings and for ranges like `M1-M2`."""
    m = _MILESTONE.match(heading.text)
    if m is None or _RANGE_END.fullmatch(m.group(2)):
        return None
    return m.group(1), _plain(m.group(2))


def _milestone_above(doc: md.Document, line: int) -> str | None:
    """The milestone named by the innermost heading whose section holds `line`, if any."""
    named = (_milestone_heading(h) for h in reversed(doc.enclosing(line)))
    return next((m[0] for m in named if m is not None), None)


@dataclass(frozen=True)
class _RunRow:
    """A row of a run table, with its Run ID and milestone told."""

    table: md.Table
    row: md.TableRow
    run_id: str
    milestone: str

    def get(self, column: str) -> str:
        return self.table.get(self.row, column)


def _run_rows(path: str | Path, doc: md.Document, tables: list[md.Table]) -> list[_RunRow]:
    """The non-empty rows of `tables`; the milestone is the Milestone cell, else the nearest heading above
    naming one. DocumentError for an empty or repeated Run ID, or a milestone that cannot be told."""
    rows: list[_RunRow] = []
    seen: dict[str, int] = {}
    for table in tables:
        above = _milestone_above(doc, table.line)
        for row in table.rows:
            if not any(row.values):
                continue
            run_id = _plain(table.get(row, "Run ID"))
            if not run_id:
                raise _error(path, row.line, "empty Run ID cell")
            if run_id in seen:
                raise _error(path, row.line, f"run {run_id} listed twice (first at line {seen[run_id]})")
            seen[run_id] = row.line
            milestone = _split_id(table.get(row, "Milestone"))[0] or above
            if not milestone:
                raise _error(path, row.line, f"cannot tell the milestone of run {run_id}: no Milestone cell, and "
                                             "no heading above names one (like '## M0: Sanity')")
            rows.append(_RunRow(table, row, run_id, milestone))
    return rows


# ---- the plan --------------------------------------------------------------------------------------


def load_plan(path: str | Path) -> Plan:
    """The plan's milestones (its Run Order, in order), the runs its run tables list, and its blocks."""
    doc = md.parse(read_document(path))
    problem = None
    for text in doc.lines:
        m = _BOLD_FIELD.match(text)
        if m and md.header_key(m.group(1)) == "problem":
            problem = m.group(2).strip() or None
            break
    section = doc.find_heading(*RUN_ORDER_HEADINGS)
    return Plan(str(path), problem, _milestones(path, doc, section), _blocks(doc), _plan_runs(path, doc, section))


def _span(doc: md.Document, section: md.Heading | None) -> tuple[int, int]:
    """First line and line after the last of `section`; the whole document when None."""
    return (section.line, doc.section_end(section)) if section else (1, len(doc.lines) + 1)


def _milestones(path: str | Path, doc: md.Document, section: md.Heading | None) -> list[Milestone]:
    """The Run Order: a milestone table, else milestone headings; in the run-order section, else anywhere."""
    for start, end in dict.fromkeys([_span(doc, section), _span(doc, None)]):
        table = next((t for t in doc.tables_in(start, end) if not t.missing(PLAN_COLUMNS)), None)
        if table is not None:
            return _table_milestones(path, doc, table)
        marks = [(h, named) for h in doc.headings if start <= h.line < end and (named := _milestone_heading(h))]
        if marks:
            return _heading_milestones(path, doc, marks)
    start, end = _span(doc, section)
    near = [t for t in doc.tables_in(start, end) or doc.tables if t.column("Milestone") is not None]
    if near:
        raise _error(path, near[0].line, f"table lacks column(s) {_quoted(near[0].missing(PLAN_COLUMNS))}")
    where = f" under '{'#' * section.level} {section.text}'" if section else ""
    raise _error(path, section.line if section else 1, f"no Run Order found{where}; looked for {RUN_ORDER_FORMS}")


def _table_milestones(path: str | Path, doc: md.Document, table: md.Table) -> list[Milestone]:
    """One milestone per Milestone cell, in table order (a table with a Run ID column repeats them)."""
    headings: dict[str, md.Heading] = {}
    for h in doc.headings:
        named = _milestone_heading(h)
        if named:
            headings.setdefault(named[0], h)
    repeats = table.column("Run ID") is not None
    milestones: list[Milestone] = []
    seen: dict[str, int] = {}
    for row in table.rows:
        if not any(row.values):
            continue
        mid, title = _split_id(table.get(row, "Milestone"))
        if not mid:
            raise _error(path, row.line, "empty Milestone cell")
        if mid in seen and not repeats:
            raise _error(path, row.line, f"milestone {mid} listed twice (first at line {seen[mid]})")
        if mid in seen:
            continue
        seen[mid] = row.line
        heading = headings.get(mid)
        priority = _priority(table.get(row, "Priority")) or (
            _priority(_field(_fields(doc, heading), "Priority")) if heading else None)
        get = table.get
        milestones.append(Milestone(mid, title, get(row, "Goal"), get(row, "Runs"), get(row, "Decision Gate"),
                                    row.line, priority))
    return milestones


def _heading_milestones(
    path: str | Path, doc: md.Document, marks: list[tuple[md.Heading, tuple[str, str]]]
) -> list[Milestone]:
    """One milestone per `### M0: Title` heading, its goal, gate and priority from its bold lines."""
    milestones: list[Milestone] = []
    seen: dict[str, int] = {}
    for heading, (mid, title) in marks:
        if mid in seen:
            raise _error(path, heading.line, f"milestone {mid} listed twice (first at line {seen[mid]})")
        seen[mid] = heading.line
        fields = _fields(doc, heading)
        milestones.append(Milestone(mid, title, _field(fields, "Goal"), _field(fields, "Runs"),
                                    _field(fields, "Decision Gate"), heading.line,
                                    _priority(_field(fields, "Priority"))))
    return milestones


def _plan_runs(path: str | Path, doc: md.Document, section: md.Heading | None) -> list[PlanRun]:
    """The rows of the plan's run tables: those with a Run ID column in the run-order section or under a
    milestone heading."""
    start, end = _span(doc, section)
    tables = [t for t in doc.tables if t.column("Run ID") is not None
              and ((section is not None and start <= t.line < end) or _milestone_above(doc, t.line))]
    return [PlanRun(r.run_id, r.milestone, r.get("Description") or r.get("Goal"), command_of(r.get("Command")),
                    depends_on_of(r.get("Depends On")), r.row.line, r.table.cells(r.row))
            for r in _run_rows(path, doc, tables)]


def _blocks(doc: md.Document) -> list[Block]:
    blocks: list[Block] = []
    for heading in doc.headings:
        m = _BLOCK.match(heading.text)
        if not m:
            continue
        fields = _fields(doc, heading)
        blocks.append(Block(int(m.group(1)), m.group(2).strip(), _priority(_field(fields, "Priority")), fields,
                            heading.line))
    return blocks


# ---- the tracker -----------------------------------------------------------------------------------


def _tracker_tables(path: str | Path, doc: md.Document) -> list[md.Table]:
    """Every table with a Run ID (or Run) and a Status column; DocumentError when there is none."""
    tables = [t for t in doc.tables if not t.missing(TRACKER_COLUMNS)]
    if tables:
        return tables
    near = next((t for t in doc.tables if t.column("Run ID") is not None), None)
    lacks = f"; this one lacks {_quoted(near.missing(TRACKER_COLUMNS))}" if near else ""
    raise _error(path, near.line if near else 1, f"no run table with columns {_looked_for(TRACKER_COLUMNS)}{lacks}")


def _norm_priority(value: str) -> str:
    upper = _plain(value).upper()
    return "MUST" if upper.startswith("MUST") else "NICE" if upper.startswith("NICE") else upper


def load_tracker(path: str | Path) -> Tracker:
    """Every row of every run table (Run ID and Status columns), in file order; Status as written."""
    doc = md.parse(read_document(path))
    rows = [TrackerRow(
        run_id=r.run_id, milestone=r.milestone, purpose=r.get("Purpose"), system=r.get("System / Variant"),
        priority=_norm_priority(r.get("Priority")), status=r.get("Status"), notes=r.get("Notes"), line=r.row.line,
        cells=r.table.cells(r.row), command=command_of(r.get("Command")), depends_on=depends_on_of(r.get("Depends On")))
        for r in _run_rows(path, doc, _tracker_tables(path, doc))]
    return Tracker(str(path), rows)


def update_tracker(path: str | Path, updates: Mapping[str, Mapping[str, str]]) -> bool:
    """Set cells of tracker rows by Run ID, e.g. `{"R001": {"Status": "DONE", "Notes": "acc 71.2"}}`.

    Columns are named as in any table (`Status` finds `状态`). Only those cells change; the file is rewritten
    atomically, and only when something changed (returned). An unknown run or column is a DocumentError and
    nothing is written.
    """
    text = read_document(path)
    doc = md.parse(text)
    tables = _tracker_tables(path, doc)
    where = {r.run_id: r for r in _run_rows(path, doc, tables)}
    edited = text
    for run_id, cells in updates.items():
        if run_id not in where:
            raise _error(path, tables[0].line, f"no row with Run ID '{run_id}'")
        table, row = where[run_id].table, where[run_id].row
        missing = table.missing(cells)
        if missing:
            raise _error(path, table.line, f"table lacks column(s) {_quoted(missing)} (run {run_id})")
        edited = md.set_cells(edited, table.line, row.line, cells)
    if edited == text:
        return False
    write_document(path, edited)
    return True


# ---- the workflow state ----------------------------------------------------------------------------


def _snapshot(doc: md.Document) -> dict[str, tuple[int, str, str]]:
    """Current Snapshot bullets: normalised key -> (line, prefix up to the value, value)."""
    heading = doc.find_heading("current snapshot", "当前快照")
    if heading is None:
        return {}
    out: dict[str, tuple[int, str, str]] = {}
    for line in range(heading.line + 1, doc.section_end(heading)):
        m = _BULLET.match(doc.lines[line - 1])
        if m:
            out.setdefault(md.normalize(m.group(2)), (line, m.group(1), m.group(3)))
    return out


def _name_key(name: str) -> str:
    """A stage name for comparing: case-folded, annotations dropped, `&`, `and`, `/`, `与`, `和` as spaces."""
    return " ".join(_NAME_JOINER.sub(" ", md.unannotated(name).casefold()).split())


def load_workflow(path: str | Path) -> WorkflowState:
    """The snapshot's current stage and edit permission, the Stage Gates rows (in order, repeats kept) and
    the number of the stage named Training & Validation (None when no stage is)."""
    doc = md.parse(read_document(path))
    snap = _snapshot(doc)
    stage: int | None = None
    if "current stage" in snap:
        line, _, value = snap["current stage"]
        m = _STAGE.match(_plain(value))
        if m is None:
            raise _error(path, line, f"Current Stage is not a stage number: {value!r}")
        stage = int(m.group(1))
    permission = _plain(snap.get("code edit permission", (0, "", ""))[2]) or None
    gates = _gates(path, doc)[1]
    training = next((g.stage for g in gates if _name_key(g.name) in TRAINING_NAMES), None)
    return WorkflowState(str(path), stage, permission, gates, training)


def _stage_name(text: str) -> str:
    """The name after a Stage cell's number: `Training & Validation` for it or for `(Training & Validation)`."""
    name = _plain(text)
    bare = _PARENTHESISED.fullmatch(name)
    return _plain(bare.group(1)) if bare else name


def _gates(path: str | Path, doc: md.Document) -> tuple[md.Table, list[StageGate]]:
    """The Stage Gates table and its rows; a stage's name follows its number or sits in a Name column."""
    table = _find_table(path, doc, GATE_COLUMNS, ("stage gates", "阶段关卡"))
    gates: list[StageGate] = []
    for row in table.rows:
        if not any(row.values):
            continue
        m = _STAGE.match(_plain(table.get(row, "Stage")))
        if m is None:
            raise _error(path, row.line, f"Stage cell does not start with a stage number: {table.get(row, 'Stage')!r}")
        name = _stage_name(m.group(2)) or _plain(table.get(row, "Name"))
        gates.append(StageGate(int(m.group(1)), name, _plain(table.get(row, "Gate Status")),
                               table.get(row, "Evidence"), row.line))
    return table, gates


def _styled(old: str, value: str) -> str:
    """`value` in the bold or code marks `old` is wrapped in (`` `Pass` `` makes `` `Fail` ``)."""
    m = _WRAPPED.fullmatch(old)
    wrapped = m is not None and m.group(1) == m.group(3)[::-1] and m.group(2).strip() != ""
    return f"{m.group(1)}{value}{m.group(3)}" if m is not None and wrapped else value


def set_gate(
    path: str | Path, stage: int, status: str, evidence: str | None = None, updated: str | None = None
) -> bool:
    """Set a stage's Gate Status (one of GATE_STATUSES, any case) and, when given, its Evidence, on the
    stage's last row; a status cell in backticks or bold stays so.

    When a cell changed, the snapshot's `Last Updated` bullet, if present, becomes `updated` (default:
    today's date). Returns whether the file changed; it is rewritten atomically.
    """
    canonical = next((s for s in GATE_STATUSES if s.casefold() == status.strip().casefold()), None)
    if canonical is None:
        raise ValueError(f"gate status {status!r} is not one of {', '.join(GATE_STATUSES)}")
    text = read_document(path)
    doc = md.parse(text)
    table, gates = _gates(path, doc)
    gate = next((g for g in reversed(gates) if g.stage == stage), None)
    if gate is None:
        raise _error(path, table.line, f"no gate row for stage {stage}")
    row = next(r for r in table.rows if r.line == gate.line)
    cells = {"Gate Status": _styled(table.get(row, "Gate Status"), canonical)}
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
