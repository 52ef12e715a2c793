"""Load YAML keeping the line and column of every node, and collect problems that point at them.

A path is a tuple of mapping keys and list indices from the document root, e.g.
`("phases", 1, "retry", "oom", "max")`, written `phases[1].retry.oom.max`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from exq.errors import ManifestError, ManifestProblem

Path = tuple[str | int, ...]
Pos = tuple[int, int]
"""1-based (line, column)."""


class YamlSyntaxError(Exception):
    """The text is not valid YAML (or uses a construct manifests do not allow)."""

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
    """Collects ManifestProblems for one manifest file, locating each path in the YAML."""

    source: str
    positions: Positions
    items: list[ManifestProblem] = field(default_factory=list)

    def add(self, path: Path, message: str, *, key: bool = False, parent: bool = False) -> None:
        """A problem at `path`: its value (its key when `key`; the enclosing mapping when `parent`)."""
        pos = self.positions.find(path[:-1] if parent else path, key=key)
        line, column = pos if pos is not None else (None, None)
        self.items.append(ManifestProblem(self.source, line, column, format_path(path), message))

    def error(self) -> ManifestError:
        """One ManifestError with every problem so far, in file order."""
        return ManifestError(sorted(self.items, key=lambda p: (p.line or 0, p.column or 0)))

    def raise_if_any(self) -> None:
        """Raise `error()` if there is any problem."""
        if self.items:
            raise self.error()
