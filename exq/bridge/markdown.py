"""A small line-based Markdown reader (ATX headings, pipe tables) and a byte-preserving table editor.

Everything works on `str` and 1-based line numbers. Reading tolerates a BOM, CRLF endings, missing outer
pipes, extra or missing cells, alignment rows like `|---|:--:|` and escaped pipes `\\|`. Editing changes only
the bytes it is asked to change; every other byte of the text, line endings included, stays as it was.

Table columns are found by `header_key`: annotations in parentheses and trailing colons are ignored, and the
research documents' other names for a column (ALIASES: `Run` for `Run ID`, `状态` for `Status`, ...) count
as the column's own name, both in the table and in the name asked for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

BOM = "\ufeff"
_HEADING = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_ALIGN_CELL = re.compile(r":?-+:?")
_WRAPPERS = "*_` "
_ANNOTATION = re.compile(r"\s*[(\uff08][^()\uff08\uff09]*[)\uff09]")

ALIASES: dict[str, tuple[str, ...]] = {
    "Run ID": ("Run", "ID", "实验编号", "运行编号"),
    "Milestone": ("里程碑",),
    "Goal": ("目标",),
    "Runs": ("运行内容",),
    "Decision Gate": ("决策关卡", "Gate"),
    "Cost": ("预估耗时",),
    "Status": ("状态",),
    "Notes": ("备注",),
    "Command": ("Cmd", "命令"),
    "Depends On": ("Dependencies", "Deps", "依赖"),
    "Description": ("Task", "Purpose", "描述"),
    "System / Variant": ("System/Variant", "System", "Variant"),
    "Name": ("Stage Name", "名称"),
}
"""Column name -> the other names the research documents use for it (the one table of aliases)."""


def normalize(name: str) -> str:
    """Header/heading key for matching: case-folded, trimmed, bold/code markers dropped, spaces collapsed."""
    return " ".join(name.strip().strip(_WRAPPERS).casefold().split())


def unannotated(text: str) -> str:
    """`text` without annotations in parentheses (`Gate Status (`Pass` / `Fail`)` -> `Gate Status`), unless
    nothing else is left."""
    stripped = _ANNOTATION.sub("", text).strip()
    return stripped or text.strip()


def _bare_key(name: str) -> str:
    return normalize(normalize(unannotated(name)).rstrip(":\uff1a"))


_ALIAS_KEYS = {_bare_key(alias): _bare_key(name) for name, aliases in ALIASES.items() for alias in aliases}


def header_key(name: str) -> str:
    """A column's matching key: normalised, annotations and trailing colons dropped, aliases mapped to the
    column's canonical name (`Run`, `**Run ID:**` and `运行编号` all give `run id`)."""
    key = _bare_key(name)
    return _ALIAS_KEYS.get(key, key)


@dataclass(frozen=True)
class Heading:
    level: int
    text: str
    line: int


@dataclass(frozen=True)
class TableRow:
    line: int
    values: tuple[str, ...]
    """Every cell of the line in order, trimmed, `\\|` unescaped (extra cells beyond the header included)."""


@dataclass(frozen=True)
class Table:
    line: int
    """Line of the header row."""
    headers: tuple[str, ...]
    rows: tuple[TableRow, ...]
    end_line: int
    """Last line of the table (the alignment row when there are no rows)."""

    def column(self, name: str) -> int | None:
        """Index of the first header with `name`'s header_key (an alias or annotated name matches), or None."""
        key = header_key(name)
        return next((i for i, h in enumerate(self.headers) if header_key(h) == key), None)

    def missing(self, names: Iterable[str]) -> list[str]:
        return [n for n in names if self.column(n) is None]

    def get(self, row: TableRow, name: str) -> str:
        """The row's cell under header `name`; empty when the column or the cell is missing."""
        i = self.column(name)
        return row.values[i] if i is not None and i < len(row.values) else ""

    def cells(self, row: TableRow) -> dict[str, str]:
        """Every header (as written) to the row's cell, empty where the row is short."""
        return {h: (row.values[i] if i < len(row.values) else "") for i, h in enumerate(self.headers) if h}


@dataclass(frozen=True)
class Document:
    lines: tuple[str, ...]
    headings: tuple[Heading, ...]
    tables: tuple[Table, ...]

    def find_heading(self, *keys: str, level: int | None = None) -> Heading | None:
        """First heading whose normalised text contains one of `keys` (normalised)."""
        wanted = [normalize(k) for k in keys]
        for h in self.headings:
            if (level is None or h.level == level) and any(k in normalize(h.text) for k in wanted):
                return h
        return None

    def section_end(self, heading: Heading) -> int:
        """Line after the last line of `heading`'s section (the next heading of the same or a higher level)."""
        after = (h.line for h in self.headings if h.line > heading.line and h.level <= heading.level)
        return next(after, len(self.lines) + 1)

    def tables_in(self, start: int, end: int) -> list[Table]:
        return [t for t in self.tables if start <= t.line < end]

    def enclosing(self, line: int) -> list[Heading]:
        """The headings whose sections hold `line`, outermost first (`#`, then `##`, ...)."""
        return [h for h in self.headings if h.line < line < self.section_end(h)]


def split_lines(text: str) -> list[str]:
    """Lines without their endings (`\\n` or `\\r\\n`), the BOM dropped from the first."""
    if text.startswith(BOM):
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _cell_spans(content: str) -> list[tuple[int, int]]:
    """(start, end) of each cell of a table line, between its pipes; outer pipes optional."""
    stripped = len(content) - len(content.lstrip())
    start = stripped + 1 if content[stripped : stripped + 1] == "|" else 0
    spans: list[tuple[int, int]] = []
    k = start
    while k < len(content):
        if content[k] == "\\":
            k += 2
            continue
        if content[k] == "|":
            spans.append((start, k))
            start = k + 1
        k += 1
    if content[start:].strip() or not spans:
        spans.append((start, len(content)))
    return spans


def _value(raw: str) -> str:
    return raw.strip().replace("\\|", "|")


def split_row(content: str) -> list[str]:
    """Cells of one table line, trimmed and unescaped."""
    return [_value(content[a:b]) for a, b in _cell_spans(content)]


def _has_pipe(line: str) -> bool:
    return "|" in line.replace("\\|", "")


def _is_align(line: str) -> bool:
    return _has_pipe(line) and all(_ALIGN_CELL.fullmatch(c) for c in split_row(line))


def parse(text: str) -> Document:
    """Headings and pipe tables of `text`, skipping fenced code blocks."""
    lines = split_lines(text)
    headings: list[Heading] = []
    tables: list[Table] = []
    fence: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _FENCE.match(line)
        if fence is not None or m:
            if m and (fence is None or (m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence))):
                fence = m.group(1) if fence is None else None
            i += 1
            continue
        h = _HEADING.match(line)
        if h:
            text_ = re.sub(r"(^|[ \t]+)#+$", "", h.group(2) or "").strip()
            headings.append(Heading(len(h.group(1)), text_, i + 1))
        elif _has_pipe(line) and i + 1 < len(lines) and _is_align(lines[i + 1]) and not _is_align(line):
            rows: list[TableRow] = []
            j = i + 2
            while j < len(lines) and lines[j].strip() and _has_pipe(lines[j]) and not _HEADING.match(lines[j]):
                rows.append(TableRow(j + 1, tuple(split_row(lines[j]))))
                j += 1
            tables.append(Table(i + 1, tuple(split_row(line)), tuple(rows), j))
            i = j
            continue
        i += 1
    return Document(tuple(lines), tuple(headings), tuple(tables))


# ---- editing -------------------------------------------------------------------------------------


def newline_of(text: str) -> str:
    """The text's line ending: that of its first line (`\\n` for a text without one)."""
    first = text.find("\n")
    return "\r\n" if first > 0 and text[first - 1] == "\r" else "\n"


def _bounds(text: str, line: int) -> tuple[int, int]:
    """(start, end) offsets of line `line`'s content, without its ending (and without a leading BOM)."""
    start = 1 if text.startswith(BOM) else 0
    for _ in range(line - 1):
        nl = text.find("\n", start)
        if nl < 0:
            raise ValueError(f"no line {line}")
        start = nl + 1
    end = text.find("\n", start)
    end = len(text) if end < 0 else end
    if end > start and text[end - 1] == "\r":
        end -= 1
    if start >= len(text) and line > 1:
        raise ValueError(f"no line {line}")
    return start, end


def line_at(text: str, line: int) -> str:
    start, end = _bounds(text, line)
    return text[start:end]


def replace_line(text: str, line: int, content: str) -> str:
    """`text` with line `line`'s content replaced, its line ending kept."""
    start, end = _bounds(text, line)
    return text[:start] + content + text[end:]


def _clean(value: str) -> str:
    return " ".join(value.splitlines()).strip()


def format_cell(value: str) -> str:
    """A value as cell text: trimmed, line breaks become spaces, pipes are escaped."""
    return _clean(value).replace("|", "\\|")


def _set_span(content: str, span: tuple[int, int], value: str) -> str:
    """Replace one cell's text, keeping its leading space and, in a padded (aligned) cell, its width."""
    seg = content[span[0] : span[1]]
    body = seg.strip()
    lead = seg[: len(seg) - len(seg.lstrip())] if body else " "
    trail = len(seg) - len(seg.rstrip()) if body else max(len(seg) - 1, 1)
    pad = trail if trail <= 1 else max(len(seg) - len(lead) - len(value), 1)
    return content[: span[0]] + lead + value + " " * pad + content[span[1] :]


def set_cells(text: str, header_line: int, row_line: int, values: Mapping[str, str]) -> str:
    """`text` with the named cells of the row at `row_line` set (headers matched by header_key).

    Only those cells' bytes change; a short row first gets the empty cells it lacks. Setting a cell to
    the value it already holds changes nothing. Raises ValueError for an unknown header.
    """
    headers = [header_key(h) for h in split_row(line_at(text, header_line))]
    content = line_at(text, row_line)
    current = split_row(content)
    edits: dict[int, str] = {}
    for name, value in values.items():
        if header_key(name) not in headers:
            raise ValueError(f"no column {name!r} in the table at line {header_line}")
        col = headers.index(header_key(name))
        if (current[col] if col < len(current) else "") != _clean(value):
            edits[col] = format_cell(value)
    if not edits:
        return text
    spans = _cell_spans(content)
    if max(edits) >= len(spans):
        content = content.rstrip()
        if spans[-1][1] == len(content):
            content += " |"
        content += " |" * (max(edits) + 1 - len(spans))
        spans = _cell_spans(content)
    for col in sorted(edits, reverse=True):
        content = _set_span(content, spans[col], edits[col])
    return replace_line(text, row_line, content)


def format_row(headers: Iterable[str], values: Mapping[str, str]) -> str:
    """A table line with `values` (by header_key) under `headers`, empty cells elsewhere."""
    by_key = {header_key(k): v for k, v in values.items()}
    cells = [format_cell(by_key.get(header_key(h), "")) for h in headers]
    return "| " + " | ".join(cells) + " |"


def insert_lines(text: str, after_line: int, lines: Iterable[str]) -> str:
    """`text` with `lines` inserted after line `after_line` (0: at the top), in the text's line ending."""
    nl = newline_of(text)
    block = "".join(line + nl for line in lines)
    if after_line == 0:
        at = 1 if text.startswith(BOM) else 0
        return text[:at] + block + text[at:]
    _, end = _bounds(text, after_line)
    nl_at = text.find("\n", end)
    if nl_at < 0:
        return text + nl + block
    return text[: nl_at + 1] + block + text[nl_at + 1 :]


def append_row(text: str, header_line: int, values: Mapping[str, str]) -> str:
    """`text` with a row appended to the table whose header is at `header_line`."""
    table = next((t for t in parse(text).tables if t.line == header_line), None)
    if table is None:
        raise ValueError(f"no table at line {header_line}")
    return insert_lines(text, table.end_line, [format_row(table.headers, values)])


def append_section(text: str, section: str) -> str:
    """`text` with `section` appended after a blank line, in the text's line ending, ending with one."""
    nl = newline_of(text)
    body = nl.join(section.strip("\n").split("\n")) + nl
    if text in ("", BOM):
        return text + body
    if not text.endswith("\n"):
        text += nl
    if not text.endswith(nl + nl) and split_lines(text)[-1].strip():
        text += nl
    return text + body
