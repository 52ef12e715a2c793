"""YAML documents a user writes (manifests, the host config): load them keeping the line and column
of every node, validate them against a pydantic model, and report every problem at file:line:col.

A path is a tuple of mapping keys and list indices from the document root, e.g.
`("phases", 1, "retry", "oom", "max")`, written `phases[1].retry.oom.max`.
"""

from __future__ import annotations

import difflib
import re
import types
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from exq.errors import InputFileError, InputProblem

Path = tuple[str | int, ...]
Pos = tuple[int, int]
"""1-based (line, column)."""

MAX_DOCUMENT_BYTES = 8 * 1024 * 1024
"""A larger document is refused before it is parsed."""
MAX_DEPTH = 64
"""The deepest nesting of mappings and lists, aliases expanded."""
MAX_ALIASES = 1000
"""The most aliases (`*name`) one document may use."""
MAX_VALUES = 1_000_000
"""The most values (scalars, lists, mappings) one document may hold, aliases expanded ("billion laughs")."""
MAX_NUMBER_CHARS = 100
"""The longest number literal (a 5000-digit integer is refused, not converted)."""
MAX_STRING_BYTES = 64 * 1024
"""The longest string value or key, in UTF-8 bytes."""


class YamlSyntaxError(Exception):
    """The text is not valid YAML (or uses a construct exq's documents do not allow)."""

    def __init__(self, message: str, pos: Pos | None) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats without a dot, such as `1e-3`, and bounds what it composes:
    nesting depth, aliases, and the values the document expands to, all checked before anything is expanded."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.depth = 0
        self.aliases = 0
        self.composed = 0
        self.sizes: dict[int, int] = {}
        """id(node) -> the values it expands to (itself included), for every node composed so far."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
        alias = self.check_event(yaml.AliasEvent)
        if alias:
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise YamlSyntaxError(f"more than {MAX_ALIASES} aliases (*name)", _pos(mark))
        elif self.depth >= MAX_DEPTH:
            raise YamlSyntaxError(_TOO_DEEP, _pos(mark))
        self.depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        if alias and id(node) not in self.sizes:
            raise YamlSyntaxError("recursive aliases are not supported", _pos(mark))
        if node is not None and not alias:
            self._count(node)
        return node

    def _count(self, node: yaml.Node) -> None:
        """Record the values `node` expands to; refuse a document that holds or expands to too many."""
        self.composed += 1
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(self.sizes[id(item)] for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(self.sizes[id(key)] + self.sizes[id(value)] for key, value in node.value)
        self.sizes[id(node)] = size
        if max(size, self.composed) > MAX_VALUES:
            raise YamlSyntaxError(f"the document holds more than {MAX_VALUES:,} values (aliases expanded)",
                                  _pos(node.start_mark))


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@dataclass
class Positions:
    """Where each value (and each mapping key) of a loaded document is."""

    values: dict[Path, Pos] = field(default_factory=dict)
    keys: dict[Path, Pos] = field(default_factory=dict)

    def find(self, path: Path, *, key: bool = False) -> Pos | None:
        """The position of `path` (its key when `key`), else of its nearest located ancestor."""
        if key and path in self.keys:
            return self.keys[path]
        for end in range(len(path), -1, -1):
            pos = self.values.get(path[:end])
            if pos is not None:
                return pos
        return None


def format_path(path: Path) -> str:
    """`("phases", 1, "retry")` -> `phases[1].retry`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _pos(mark: yaml.Mark | None) -> Pos | None:
    return (mark.line + 1, mark.column + 1) if mark is not None else None


_TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_NOT_YAML_TEXT = re.compile("[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")
"""A character YAML text may not hold (as PyYAML's reader); lone surrogates included."""


def text_position(text: str, index: int) -> Pos:
    """The 1-based (line, column) of character `index` of `text`."""
    return text.count("\n", 0, index) + 1, index - text.rfind("\n", 0, index)


def _check_text(text: str) -> None:
    """Refuse a document over MAX_DOCUMENT_BYTES, or with a byte that is not UTF-8 or a character YAML forbids.

    Undecodable bytes are the lone surrogates `read_document` decoded them to (surrogateescape).
    """
    if len(text) > MAX_DOCUMENT_BYTES or len(encoded := text.encode("utf-8", "surrogatepass")) > MAX_DOCUMENT_BYTES:
        at = len(text) if len(text) > MAX_DOCUMENT_BYTES else len(encoded[:MAX_DOCUMENT_BYTES].decode(errors="ignore"))
        raise YamlSyntaxError(f"the document is larger than {MAX_DOCUMENT_BYTES // 2**20} MiB",
                              text_position(text, min(at, MAX_DOCUMENT_BYTES)))
    bad = _NOT_YAML_TEXT.search(text)
    if bad is None:
        return
    char = bad.group()
    if "\udc80" <= char <= "\udcff":
        message = f"not UTF-8 text: byte 0x{ord(char) - 0xDC00:02x}"
    else:
        message = f"character U+{ord(char):04X} is not allowed in YAML text"
    raise YamlSyntaxError(message, text_position(text, bad.start()))


def text_problem(text: str) -> str | None:
    """Why `text` cannot be given to a process or stored (a NUL byte, not UTF-8, too long), else None."""
    if "\0" in text:
        return "contains a NUL byte (\\0), which no program can receive"
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        return f"contains {text[exc.start]!r}, a lone surrogate, which is not Unicode text"
    if size > MAX_STRING_BYTES:
        return f"is {size:,} bytes long; at most {MAX_STRING_BYTES // 1024} KiB"
    return None


class _Builder:
    """Turns a composed node tree into plain Python values, recording positions."""

    def __init__(self, loader: _Loader) -> None:
        self.loader = loader
        self.positions = Positions()

    def build(self, node: yaml.Node, path: Path) -> Any:
        pos = (node.start_mark.line + 1, node.start_mark.column + 1)
        self.positions.values[path] = pos
        if len(path) >= MAX_DEPTH:  # aliases can nest what the text does not
            raise YamlSyntaxError(_TOO_DEEP, pos)
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        raise YamlSyntaxError(f"unsupported YAML node {node.tag}", pos)

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        if node.tag in _NUMBER_TAGS and len(node.value) > MAX_NUMBER_CHARS:
            raise YamlSyntaxError(f"a number of more than {MAX_NUMBER_CHARS} characters", _pos(node.start_mark))
        try:
            return self.loader.construct_object(node)
        except ValueError as exc:  # e.g. a date 2024-13-45
            raise YamlSyntaxError(f"cannot read {node.value[:40]!r}: {exc}", _pos(node.start_mark)) from None

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[Any, Any]:
        self.loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        first: dict[Any, Pos] = {}
        for key_node, value_node in node.value:
            key_pos = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlSyntaxError("mapping keys must be plain scalars", key_pos)
            key = self._scalar(key_node)
            if key in first:
                raise YamlSyntaxError(f"duplicate key {key!r} (first at line {first[key][0]})", key_pos)
            first[key] = key_pos
            self.positions.keys[(*path, key)] = key_pos
            out[key] = self.build(value_node, (*path, key))
        return out


def load_yaml(text: str) -> tuple[Any, Positions]:
    """The single document in `text` as plain Python values, and where each value is.

    Raises YamlSyntaxError (with a position when known) on invalid YAML, duplicate keys, or a document
    over one of the limits above.
    """
    _check_text(text)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, Positions()
        builder = _Builder(loader)
        return builder.build(node, ()), builder.positions
    except yaml.MarkedYAMLError as exc:
        message = "; ".join(str(part) for part in (exc.context, exc.problem) if part)
        return_pos = _pos(exc.problem_mark) or _pos(exc.context_mark)
        raise YamlSyntaxError(message or "invalid YAML", return_pos) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(str(exc), None) from None
    finally:
        loader.dispose()


def _check_strings(value: Any, path: Path, problems: Problems) -> None:
    """Report every string (value or key) of `value` that `text_problem` refuses."""
    if isinstance(value, str):
        if (why := text_problem(value)) is not None:
            problems.add(path, why)
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and (why := text_problem(key)) is not None:
                problems.add((*path, key), f"key {why}", key=True)
            _check_strings(item, (*path, key), problems)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_strings(item, (*path, i), problems)


@dataclass
class Problems:
    """Collects the problems of one file, locating each path in the YAML."""

    source: str
    positions: Positions
    error_type: type[InputFileError] = InputFileError
    items: list[InputProblem] = field(default_factory=list)

    def add(self, path: Path, message: str, *, key: bool = False, parent: bool = False) -> None:
        """A problem at `path`: its value (its key when `key`; the enclosing mapping when `parent`)."""
        pos = self.positions.find(path[:-1] if parent else path, key=key)
        line, column = pos if pos is not None else (None, None)
        self.items.append(InputProblem(self.source, line, column, format_path(path), message))

    def error(self) -> InputFileError:
        """One error (of `error_type`) with every problem so far, in file order."""
        return self.error_type(sorted(self.items, key=lambda p: (p.line or 0, p.column or 0)))

    def raise_if_any(self) -> None:
        """Raise `error()` if there is any problem."""
        if self.items:
            raise self.error()


def show(value: Any, limit: int = 60) -> str:
    """A value as a message shows it (a long one cut to about `limit` characters)."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    shown = "null" if value is None else repr(value)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(str(value)):,} characters)"


_EXPECTED = {
    "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
    "list_type": "a list", "string_type": "a string", "invalid_key": "string keys",
}


def _unwrap(tp: Any) -> Any:
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType) and type(None) in get_args(tp) and len(get_args(tp)) == 2:
            tp = next(a for a in get_args(tp) if a is not type(None))
        else:
            return tp


def _model_at(root: type[BaseModel], loc: Path) -> type[BaseModel] | None:
    """The model class that validates the mapping at `loc`."""
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        fields = tp.model_fields if isinstance(tp, type) and issubclass(tp, BaseModel) else {}
        if isinstance(part, str) and part in fields:
            tp = fields[part].annotation
        elif get_origin(tp) in (list, dict):
            tp = get_args(tp)[-1]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _unknown_field(root: type[BaseModel], loc: Path) -> str:
    name = str(loc[-1])
    model = _model_at(root, loc[:-1])
    fields = sorted(model.model_fields) if model else []
    close = difflib.get_close_matches(name, fields, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown field {name!r}{hint}; expected one of {', '.join(fields)}"


def _normalize(loc: tuple[int | str, ...], data: Any) -> Path:
    """`loc` as a path into `data`, dropping the index pydantic adds to a one-item shorthand."""
    path: list[str | int] = []
    for part in loc:
        if part == 0 and not isinstance(data, list):
            continue
        path.append(part)
        data = data.get(part) if isinstance(data, dict) else data[part] if isinstance(data, list) and \
            isinstance(part, int) and part < len(data) else None
    return tuple(path)


def _report(root: type[BaseModel], error: ErrorDetails, data: Any, problems: Problems) -> None:
    kind, loc = error["type"], tuple(error["loc"])
    if loc and loc[-1] == "[key]":
        path = _normalize(loc[:-1], data)
        problems.add(path, f"bad key: {error['msg'].removeprefix('Value error, ')}", key=True)
    elif kind == "missing":
        problems.add(_normalize(loc, data), f"missing required field {loc[-1]!r}", parent=True)
    elif kind == "extra_forbidden":
        problems.add(_normalize(loc, data), _unknown_field(root, loc), key=True)
    elif kind in _EXPECTED:
        problems.add(_normalize(loc, data), f"expected {_EXPECTED[kind]}, got {show(error['input'])}")
    else:
        problems.add(_normalize(loc, data), error["msg"].removeprefix("Value error, "))


M = TypeVar("M", bound=BaseModel)


def decode_document(data: bytes) -> str:
    """Document bytes as text; bytes that are not UTF-8 become lone surrogates, which `load_yaml` reports
    at their line and column."""
    return data.decode("utf-8", "surrogateescape")


def read_document(source: str, what: str, error_type: type[InputFileError]) -> str:
    """The text of file `source` (`decode_document`; at most one byte over MAX_DOCUMENT_BYTES is read), or
    `error_type` saying plainly why it cannot be read."""
    try:
        with open(source, "rb") as f:
            return decode_document(f.read(MAX_DOCUMENT_BYTES + 1))
    except FileNotFoundError:
        message = f"{what} file not found"
    except OSError as exc:
        message = f"cannot read {what}: {exc}"
    raise error_type([InputProblem(source, None, None, "", message)])


def parse_document(
    model: type[M], text: str, source: str, error_type: type[InputFileError], top: str
) -> tuple[M, Problems]:
    """Validate YAML `text` against `model`; raise `error_type` with every problem at file:line:col.

    Every string must pass `text_problem` (no NUL byte, UTF-8, at most MAX_STRING_BYTES) before the model
    sees it, so no value a process cannot receive is ever accepted.

    Returns the model and a Problems bound to the document, for checks that come after validation.
    """
    try:
        data, positions = load_yaml(text)
    except YamlSyntaxError as exc:
        line, column = exc.pos or (None, None)
        raise error_type([InputProblem(source, line, column, "", f"invalid YAML: {exc.message}")]) from None
    problems = Problems(source, positions, error_type)
    if not isinstance(data, dict):
        got = "an empty file" if data is None else show(data)
        problems.add((), f"expected {top}, got {got}")
        if data is None:  # nothing to point at: the document's start
            problems.items[-1].line, problems.items[-1].column = 1, 1
        raise problems.error()
    _check_strings(data, (), problems)
    problems.raise_if_any()
    try:
        return model.model_validate(data), problems
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            _report(model, error, data, problems)
        raise problems.error() from None
