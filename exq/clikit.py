"""What every CLI module shares: the consoles, the state directory of the command, JSON output."""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console

    from exq.api import StatePaths, SubmissionSpec


@functools.cache
def console() -> Console:
    """stdout's console, made on first use: exq.views loads the state's models, which `exq --version` does not
    need."""
    from exq.views import plain_console

    return plain_console()


@functools.cache
def err_console() -> Console:
    """stderr's console, made on first use (as `console`)."""
    from exq.views import plain_console

    return plain_console(stderr=True)


def paths_of(ctx: click.Context) -> StatePaths:
    """The state directory the command works on (`--state-dir`, $EXQ_STATE_DIR or the default)."""
    paths: StatePaths = ctx.find_root().obj.paths
    return paths


def echo_json(value: Any) -> None:
    """`value` as indented JSON on stdout (what `--json` prints)."""
    click.echo(json.dumps(value, indent=2))


JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
STRICT_OPTION = click.option("--strict", is_flag=True,
                             help="Refuse the submission when some job could never run on the known hosts.")


def check_fit(paths: StatePaths, spec: SubmissionSpec, strict: bool) -> None:
    """Warn (on stderr) of jobs no known host could ever run; with `strict`, refuse them (exit 2)."""
    from exq import api
    from exq.errors import UsageError

    problems = api.fit_problems(paths, spec)
    for problem in problems:
        err_console().print(f"warning: {problem}")
    if problems and strict:
        raise UsageError("submission refused (--strict): some jobs could never run (see the warnings above)")
