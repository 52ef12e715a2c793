"""`{key}` templates for job commands, ids and output globs.

Placeholders are parsed with `string.Formatter`: `{{`/`}}` are literal braces, a format spec is
allowed (`{lr:.0e}`), attribute/index access and conversions (`{a.b}`, `{a[0]}`, `{a!r}`) are not.
In an id or an output glob a value is inserted raw. In a command it is quoted for the shell quoting
context of its placeholder (bare, inside '...', inside "..."), so that the shell sees the value
itself whatever it holds; a placeholder where no quoting is safe (in `...`, ${...}, $((...)), a
comment, after a backslash or a `$`, in or after a here-document) is refused by `command_placeholders`.
"""

from __future__ import annotations

import enum
import functools
import re
import shlex
import string
from collections.abc import Mapping
from dataclasses import dataclass, field

from exq.errors import ExqError
from exq.model.jobspec import Scalar

JOB_ID_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,199}\Z")
"""What a job id must look like (`\\Z`: a trailing newline does not pass, as it would with `$`)."""
MAX_FORMAT_WIDTH = 1000
"""The largest width or precision a format spec may ask for (`{x:0>1000000000}` is refused)."""
MAX_RENDERED_BYTES = 64 * 1024
"""The longest rendered template (command, id, output glob), in UTF-8 bytes."""

_FORMATTER = string.Formatter()
_SHOWN_CHARS = 60


class TemplateError(ExqError):
    """A template is malformed, names an unknown placeholder, or cannot format a value."""


def clip(text: str, limit: int = _SHOWN_CHARS) -> str:
    """`repr(text)`, cut to about `limit` characters, for a message."""
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(text):,} characters)"


def _shown(text: str) -> str:
    """`text` as is when short and printable, else `clip(text)`."""
    return text if text.isprintable() and len(text) <= _SHOWN_CHARS else clip(text)


def format_value(value: Scalar, spec: str = "") -> str:
    """`value` as text: booleans are `true`/`false`; `spec` is a format spec such as `.0e`."""
    shown: object = ("true" if value else "false") if isinstance(value, bool) else value
    try:
        return format(shown, spec)
    except (ValueError, TypeError) as exc:
        raise TemplateError(f"cannot format {clip(str(value))} with format spec {spec!r}: {exc}") from None


def _check_spec(name: str, spec: str) -> None:
    """Refuse a format spec whose width or precision exceeds MAX_FORMAT_WIDTH (every number in a spec is one)."""
    for digits in re.findall(r"\d+", spec):
        if len(digits) > len(str(MAX_FORMAT_WIDTH)) or int(digits) > MAX_FORMAT_WIDTH:
            raise TemplateError(f"placeholder {{{name}:{clip(spec, 20)[1:-1]}}}: a width or precision above "
                                f"{MAX_FORMAT_WIDTH} is not allowed")


@functools.lru_cache(maxsize=256)
def _fields(template: str) -> tuple[tuple[str, str, str], ...]:
    """(literal, name, spec) triples of `template`; name is '' after the last placeholder."""
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as exc:
        hint = "write {{ and }} for literal braces"
        raise TemplateError(f"malformed template {clip(template)}: {exc} ({hint})") from None
    out: list[tuple[str, str, str]] = []
    for literal, name, spec, conversion in parsed:
        if name is None:
            out.append((literal, "", ""))
            continue
        if name == "":
            raise TemplateError("empty placeholder {} in template; name a key, e.g. {lr}")
        if "." in name or "[" in name:
            raise TemplateError(f"placeholder {{{name}}}: attribute and index access are not allowed")
        if conversion is not None:
            raise TemplateError(f"placeholder {{{name}!{conversion}}}: conversions are not allowed")
        if spec and "{" in spec:
            raise TemplateError(f"placeholder {{{name}:{spec}}}: nested placeholders in a format spec")
        _check_spec(name, spec or "")
        out.append((literal, name, spec or ""))
    return tuple(out)


def placeholders(template: str) -> list[str]:
    """The distinct placeholder names of `template`, in order of first use."""
    names: list[str] = []
    for _, name, _ in _fields(template):
        if name and name not in names:
            names.append(name)
    return names


def command_placeholders(template: str) -> list[str]:
    """`placeholders` of a shell command, refusing placeholders exq cannot quote and unterminated quotes."""
    names = placeholders(template)
    scan = _scan(template)
    problem = next((slot.refused for slot in scan.slots if slot.refused), scan.unterminated)
    if problem:
        raise TemplateError(problem)
    return names


def unknown_placeholder_message(name: str, available: list[str]) -> str:
    """The message for a placeholder that is not a grid key, param or built-in name."""
    return f"unknown placeholder {{{name}}}; available: {', '.join(available) or '(none)'}"


def render(template: str, values: Mapping[str, Scalar], *, quote: bool) -> str:
    """`template` with each placeholder replaced by its value; quoted for the shell when `quote`.

    Raises TemplateError when the result exceeds MAX_RENDERED_BYTES.
    """
    fields = _fields(template)
    slots = _scan(template).slots if quote else ()
    parts: list[str] = []
    size = 0
    for index, (literal, name, spec) in enumerate(fields):
        piece = literal
        if name:
            if name not in values:
                raise TemplateError(unknown_placeholder_message(name, list(values)))
            text = format_value(values[name], spec)
            piece += _quote(text, slots[index].quoting) if quote else text
        size += len(piece.encode("utf-8", "surrogatepass"))
        if size > MAX_RENDERED_BYTES:
            raise TemplateError(f"the rendered text is longer than {MAX_RENDERED_BYTES // 1024} KiB")
        parts.append(piece)
    return "".join(parts)


def render_cmd(template: str, params: Mapping[str, Scalar], *, job_id: str, phase: str) -> str:
    """A job's shell command: `template` with params, `{id}` and `{phase}`, each value quoted for the shell."""
    return render(template, {**params, "phase": phase, "id": job_id}, quote=True)


def render_id(template: str, params: Mapping[str, Scalar], *, phase: str) -> str:
    """A job id from `template` (values inserted raw); raises TemplateError unless it is a valid id."""
    job_id = render(template, {**params, "phase": phase}, quote=False)
    if not JOB_ID_RE.match(job_id):
        shown = ", ".join(f"{k}={_shown(format_value(v))}" for k, v in params.items())
        raise TemplateError(
            f"id {clip(job_id)} of the job with {shown or 'no params'} is not a valid job id: expected "
            "1-200 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return job_id


# ---------------------------------------------------------------- shell quoting by context


class Quoting(enum.Enum):
    """How the shell reads the text at a placeholder."""

    BARE = "bare"
    SINGLE = "single"
    DOUBLE = "double"


def _quote(text: str, quoting: Quoting) -> str:
    """`text` written so that, at a placeholder quoted as `quoting`, the shell reads exactly `text`."""
    if quoting is Quoting.SINGLE:
        return text.replace("'", "'\\''")
    if quoting is Quoting.DOUBLE:
        return re.sub(r'([\\"$`])', r"\\\1", text)
    if "=" in text:  # quoted even where shlex would not, so a value is never read as an assignment
        return "'" + text.replace("'", "'\\''") + "'"
    return shlex.quote(text)


@dataclass(frozen=True)
class _Slot:
    """What the shell does at one placeholder: its quoting, or why exq refuses to put a value there."""

    quoting: Quoting = Quoting.BARE
    refused: str | None = None


_REGIONS = {
    "backquote": "inside `...` (use $(...) instead)",
    "arith": "inside $((...)) (arithmetic)",
    "brace": "inside ${...}",
    "comment": "in a shell comment (after #)",
}
_WORD_BREAK = frozenset(" \t\n;&|()<>")


@dataclass
class _Context:
    kind: str
    """bare (top level, or inside $(...) when `subst`), single, double, or one of _REGIONS."""
    subst: bool = False
    depth: int = 0
    """Open parentheses (bare inside $(...), arith) or braces (brace) not yet closed."""


@dataclass
class _Scanner:
    """Follows sh's quoting through a command template's literal text, placeholder by placeholder."""

    stack: list[_Context] = field(default_factory=lambda: [_Context("bare")])
    unknown: str | None = None
    """Set once exq cannot tell the quoting any more (a here-document, $'...', case inside $(...))."""
    pending: str | None = None
    """The literal ended with a character that would combine with a value: an unquoted backslash or $."""
    previous: str = ""
    """The last character seen ('x' for a placeholder): whether a '#' starts a comment."""

    def feed(self, text: str) -> None:
        """Advance through literal `text`."""
        self.pending = None
        i = 0
        while i < len(text) and self.unknown is None:
            i = self._step(text, i)
            self.previous = text[min(i, len(text)) - 1]

    def slot(self, name: str) -> _Slot:
        """How the placeholder `{name}` is quoted here; the scanner then moves past it."""
        top, pending, self.previous = self.stack[-1], self.pending, "x"
        where = f"placeholder {{{name}}}"
        if self.unknown is not None:
            return _Slot(refused=f"{where}: exq cannot tell how the shell quotes it after {self.unknown}; "
                                 "put placeholders before it")
        if pending == "$":
            return _Slot(refused=f"{where} follows '$': write ${{{{{name}}}}} for the shell variable, or put "
                                 "something between them")
        if pending is not None:
            return _Slot(refused=f"{where} follows a backslash, which would escape the quoting of the value; "
                                 "remove the backslash (values are quoted for you)")
        if top.kind in _REGIONS:
            return _Slot(refused=f"{where} is {_REGIONS[top.kind]}, where exq cannot quote a value")
        return _Slot(Quoting(top.kind))

    def _step(self, text: str, i: int) -> int:
        """Handle the character at `i` in the current context; return the index after what it consumed."""
        kind = self.stack[-1].kind
        if kind == "single":
            return self._pop(i) if text[i] == "'" else i + 1
        if kind == "comment":
            return self._pop(i) if text[i] == "\n" else i + 1
        if text[i] == "\\":
            if i + 1 == len(text) and kind in ("bare", "double"):
                self.pending = "\\"
            return i + 2
        if kind == "backquote":
            return self._pop(i) if text[i] == "`" else i + 1
        if kind == "arith":
            return self._arith(text, i)
        if kind == "brace":
            return self._brace(text, i)
        if kind == "double" and text[i] == '"':
            return self._pop(i)
        return self._expansion(text, i) if text[i] in "$`" else self._bare(text, i) if kind == "bare" else i + 1

    def _expansion(self, text: str, i: int) -> int:
        """`$...` or a backquote, bare or inside double quotes."""
        if text[i] == "`":
            return self._push("backquote", i + 1)
        rest = text[i + 1:i + 3]
        if rest.startswith("(("):
            return self._push("arith", i + 3)
        if rest.startswith("("):
            self.stack.append(_Context("bare", subst=True))
            return i + 2
        if rest.startswith("{"):
            return self._push("brace", i + 2)
        if not rest:
            self.pending = "$"
        elif rest[0] == "'" and self.stack[-1].kind == "bare":
            self.unknown = "$'...'"
        elif rest[0] == '"' and self.stack[-1].kind == "bare":
            return self._push("double", i + 2)
        return i + 1

    def _bare(self, text: str, i: int) -> int:
        """An unquoted character: quotes, comments, here-documents, and the parentheses of $(...)."""
        c, top = text[i], self.stack[-1]
        word_start = self.previous == "" or self.previous in _WORD_BREAK
        if c == "'":
            return self._push("single", i + 1)
        if c == '"':
            return self._push("double", i + 1)
        if c == "#" and word_start:
            return self._push("comment", i + 1)
        if text.startswith("<<<", i):
            return i + 3
        if text.startswith("<<", i):
            self.unknown = "a here-document (<<)"
        elif top.subst and word_start and re.match(r"case\b", text[i:i + 5]):
            self.unknown = "'case' inside $(...)"
        elif top.subst and c == "(":
            top.depth += 1
        elif top.subst and c == ")":
            if top.depth == 0:
                return self._pop(i)
            top.depth -= 1
        return i + 1

    def _arith(self, text: str, i: int) -> int:
        top = self.stack[-1]
        if text[i] == "(":
            top.depth += 1
        elif text[i] == ")":
            if top.depth == 0:
                self.stack.pop()
                return i + 2
            top.depth -= 1
        return i + 1

    def _brace(self, text: str, i: int) -> int:
        top = self.stack[-1]
        if text[i] in "'\"`$":
            self.unknown = "quotes or expansions inside ${...}"
        elif text[i] == "{":
            top.depth += 1
        elif text[i] == "}":
            if top.depth == 0:
                return self._pop(i)
            top.depth -= 1
        return i + 1

    def _push(self, kind: str, after: int) -> int:
        self.stack.append(_Context(kind))
        return after

    def _pop(self, i: int) -> int:
        self.stack.pop()
        return i + 1


_OPENED = {"single": "a ' quote", "double": 'a " quote', "backquote": "a `", "arith": "$((", "brace": "${"}


@dataclass(frozen=True)
class _Scan:
    slots: tuple[_Slot, ...]
    """The quoting at each field of the template (a last field without a placeholder has a plain _Slot)."""
    unterminated: str | None
    """Why the shell would refuse the template for want of a closing quote or parenthesis, else None."""


@functools.lru_cache(maxsize=256)
def _scan(template: str) -> _Scan:
    """Follow the shell's quoting through `template`."""
    scanner = _Scanner()
    slots: list[_Slot] = []
    for literal, name, _ in _fields(template):
        scanner.feed(literal)
        slots.append(scanner.slot(name) if name else _Slot())
    still_open = [c for c in scanner.stack[1:] if c.kind != "comment"]
    unterminated = None
    if still_open and scanner.unknown is None:
        what = "$(" if still_open[-1].subst else _OPENED[still_open[-1].kind]
        unterminated = f"{what} is never closed; the shell would refuse the command"
    return _Scan(tuple(slots), unterminated)
