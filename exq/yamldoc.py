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


class YamlSyntaxError(Exception):
    """The text is not valid YAML (or uses a construct exq's documents do not allow)."""

    def __init__(self, message: str, pos: Pos | None) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats without a dot, such as `1e-3`."""


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


class _Builder:
    """Turns a composed node tree into plain Python values, recording positions."""

    def __init__(self, loader: _Loader) -> None:
        self.loader = loader
        self.positions = Positions()
        self.active: set[int] = set()

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.positions.values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.ScalarNode):
            return self.loader.construct_object(node)
        if id(node) in self.active:
            raise YamlSyntaxError("recursive aliases are not supported", _pos(node.start_mark))
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
        finally:
            self.active.discard(id(node))
        raise YamlSyntaxError(f"unsupported YAML node {node.tag}", _pos(node.start_mark))

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[Any, Any]:
        self.loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        first: dict[Any, Pos] = {}
        for key_node, value_node in node.value:
            key_pos = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlSyntaxError("mapping keys must be plain scalars", key_pos)
            key = self.loader.construct_object(key_node)
            if key in first:
                raise YamlSyntaxError(f"duplicate key {key!r} (first at line {first[key][0]})", key_pos)
            first[key] = key_pos
            self.positions.keys[(*path, key)] = key_pos
            out[key] = self.build(value_node, (*path, key))
        return out


def load_yaml(text: str) -> tuple[Any, Positions]:
    """The single document in `text` as plain Python values, and where each value is.

    Raises YamlSyntaxError (with a position when known) on invalid YAML or duplicate keys.
    """
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


def show(value: Any) -> str:
    """A value as a message shows it."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return "null" if value is None else repr(value)


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


def read_document(source: str, what: str, error_type: type[InputFileError]) -> str:
    """The text of file `source`, or `error_type` saying plainly why it cannot be read."""
    try:
        with open(source, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        message = f"{what} file not found"
    except (OSError, UnicodeDecodeError) as exc:
        message = f"cannot read {what}: {exc}"
    raise error_type([InputProblem(source, None, None, "", message)])


def parse_document(
    model: type[M], text: str, source: str, error_type: type[InputFileError], top: str
) -> tuple[M, Problems]:
    """Validate YAML `text` against `model`; raise `error_type` with every problem at file:line:col.

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
        raise problems.error()
    try:
        return model.model_validate(data), problems
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            _report(model, error, data, problems)
        raise problems.error() from None
