"""Leaf field types for the YAML documents users write, each failing with a plain message."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field, PlainValidator

from exq.units import parse_duration, parse_size
from exq.yamldoc import show


def leaf(expected: str, ok: Callable[[Any], bool], convert: Callable[[Any], Any] = lambda v: v,
         accepts: Any = Any) -> PlainValidator:
    """A validator accepting values for which `ok` holds, else 'expected <expected>, got <value>'; `accepts`
    is the type its JSON Schema shows (`exq schema --manifest`, for editors)."""

    def check(value: Any) -> Any:
        if not ok(value):
            raise ValueError(f"expected {expected}, got {show(value)}")
        return convert(value)

    return PlainValidator(check, json_schema_input_type=accepts)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def units(parse: Callable[[Any], Any], positive: bool = False) -> PlainValidator:
    """A validator for sizes or durations written with units (see exq.units)."""
    def check(value: Any) -> Any:
        if not isinstance(value, str | int | float):
            raise ValueError(f"expected a size or duration such as 20GiB or 90s, got {show(value)}")
        parsed = parse(value)
        if positive and parsed <= 0:
            raise ValueError(f"expected a positive duration such as 90s or 2h30m, got {show(value)}")
        return parsed

    return PlainValidator(check, json_schema_input_type=str | int | float)


def _regex(value: Any) -> str:
    """`value` when it is a string that compiles as a Python regular expression not matching ''."""
    if not isinstance(value, str):
        raise ValueError(f"expected a regular expression (a string), got {show(value)}")
    try:
        pattern = re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {show(value)}: {exc}") from None
    if pattern.search("") is not None:
        raise ValueError(f"regular expression {show(value)} matches an empty text, so it would match any log")
    return value


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""POSIX: what a process's environment variable may be named."""
Str = Annotated[str, leaf("a string", lambda v: isinstance(v, str), accepts=str)]
Name = Annotated[str, leaf("a name of letters, digits, '.', '_' or '-' starting with a letter or digit",
                            lambda v: isinstance(v, str) and _NAME_RE.fullmatch(v) is not None,
                            accepts=Annotated[str, Field(pattern=f"^{_NAME_RE.pattern}$")])]
EnvName = Annotated[str, leaf("an environment variable name: letters, digits and '_', not starting with a digit",
                              lambda v: isinstance(v, str) and _ENV_NAME_RE.fullmatch(v) is not None,
                              accepts=Annotated[str, Field(pattern=f"^{_ENV_NAME_RE.pattern}$")])]
Int = Annotated[int, leaf("an integer", is_int, accepts=int)]
Count = Annotated[int, leaf("an integer >= 0", lambda v: is_int(v) and v >= 0, accepts=Annotated[int, Field(ge=0)])]
Bool = Annotated[bool, leaf("true or false", lambda v: isinstance(v, bool), accepts=bool)]
Factor = Annotated[float, leaf("a number >= 1", lambda v: is_num(v) and v >= 1, float,
                                accepts=Annotated[float, Field(ge=1)])]
Fraction = Annotated[float, leaf("a number between 0 and 1 (exclusive)",
                                  lambda v: is_num(v) and 0 < v < 1, float,
                                  accepts=Annotated[float, Field(gt=0, lt=1)])]
PositiveInt = Annotated[int, leaf("an integer >= 1", lambda v: is_int(v) and v >= 1,
                                 accepts=Annotated[int, Field(ge=1)])]
NonNegNumber = Annotated[float, leaf("a number >= 0", lambda v: is_num(v) and v >= 0,
                                     accepts=Annotated[float, Field(ge=0)])]
Size = Annotated[int, units(parse_size)]
Duration = Annotated[float, units(parse_duration)]
PosDuration = Annotated[float, units(parse_duration, positive=True)]
Regex = Annotated[str, PlainValidator(_regex, json_schema_input_type=str)]
