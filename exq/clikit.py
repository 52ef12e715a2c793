"""What every CLI module shares: the consoles, the state directory of the command, JSON output."""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console

    from exq.api import StatePaths


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
