"""`{key}` templates for job commands, ids and output globs.

Placeholders are parsed with `string.Formatter`: `{{`/`}}` are literal braces, a format spec is
allowed (`{lr:.0e}`), attribute/index access and conversions (`{a.b}`, `{a[0]}`, `{a!r}`) are not.
In a command every substituted value is shell-quoted; in an id or an output glob it is inserted raw.
"""

from __future__ import annotations

import re
import shlex
import string
from collections.abc import Mapping

from exq.errors import ExqError
from exq.queue.jobspec import Scalar

JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
"""What a job id must look like."""

_FORMATTER = string.Formatter()


class TemplateError(ExqError):
    """A template is malformed, names an unknown placeholder, or cannot format a value."""


def format_value(value: Scalar, spec: str = "") -> str:
    """`value` as text: booleans are `true`/`false`; `spec` is a format spec such as `.0e`."""
    shown: object = ("true" if value else "false") if isinstance(value, bool) else value
    try:
        return format(shown, spec)
    except (ValueError, TypeError) as exc:
        raise TemplateError(f"cannot format {value!r} with format spec {spec!r}: {exc}") from None


def _fields(template: str) -> list[tuple[str, str, str]]:
    """(literal, name, spec) triples of `template`; name is '' after the last placeholder."""
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as exc:
        hint = "write {{ and }} for literal braces"
        raise TemplateError(f"malformed template {template!r}: {exc} ({hint})") from None
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
        out.append((literal, name, spec or ""))
    return out


def placeholders(template: str) -> list[str]:
    """The distinct placeholder names of `template`, in order of first use."""
    names: list[str] = []
    for _, name, _ in _fields(template):
        if name and name not in names:
            names.append(name)
    return names


def unknown_placeholder_message(name: str, available: list[str]) -> str:
    """The message for a placeholder that is not a grid key, param or built-in name."""
    return f"unknown placeholder {{{name}}}; available: {', '.join(available) or '(none)'}"


def render(template: str, values: Mapping[str, Scalar], *, quote: bool) -> str:
    """`template` with each placeholder replaced by its value; shell-quoted when `quote`."""
    parts: list[str] = []
    for literal, name, spec in _fields(template):
        parts.append(literal)
        if not name:
            continue
        if name not in values:
            raise TemplateError(unknown_placeholder_message(name, list(values)))
        text = format_value(values[name], spec)
        parts.append(shlex.quote(text) if quote else text)
    return "".join(parts)


def render_cmd(template: str, params: Mapping[str, Scalar], *, job_id: str, phase: str) -> str:
    """A job's shell command: `template` with params, `{id}` and `{phase}`, each value shell-quoted."""
    return render(template, {**params, "phase": phase, "id": job_id}, quote=True)


def render_id(template: str, params: Mapping[str, Scalar], *, phase: str) -> str:
    """A job id from `template` (values inserted raw); raises TemplateError unless it is a valid id."""
    job_id = render(template, {**params, "phase": phase}, quote=False)
    if not JOB_ID_RE.match(job_id):
        shown = ", ".join(f"{k}={format_value(v)}" for k, v in params.items())
        raise TemplateError(
            f"id {job_id!r} of the job with {shown or 'no params'} is not a valid job id: expected "
            "1-200 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return job_id
