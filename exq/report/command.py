"""The `exq report` command. Light at import (click and exq.api): `exq --version` imports it."""

from __future__ import annotations

from pathlib import Path

import click

from exq import api
from exq.clikit import JSON_OPTION, echo_json, paths_of

DEFAULT_OUTPUT = Path("exq-report.html")


@click.command()
@click.option("--submission", metavar="S", help="Only this submission (default: every one in the live state).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help=f"Where to write the HTML report (default: ./{DEFAULT_OUTPUT}).")
@click.option("--terminal", is_flag=True, help="Print a compact text timeline instead (for SSH sessions).")
@JSON_OPTION
@click.pass_context
def report(ctx: click.Context, submission: str | None, output: Path | None, terminal: bool, as_json: bool) -> None:
    """Write one self-contained HTML report: a timeline per GPU, per-phase stats, GPU utilisation.

    The file works offline (inline SVG and script). Hovering a bar shows the job, its params, outcome
    and reason.
    """
    import shutil
    import time

    from exq.report import html, timeline
    from exq.report import terminal as text

    data = timeline.build(api.status(paths_of(ctx)).state, submission, now=time.time())
    if as_json:
        echo_json(timeline.figures(data))
        return
    if terminal:
        for line in text.render(data, shutil.get_terminal_size((100, 24)).columns):
            click.echo(line)
        return
    path = output or DEFAULT_OUTPUT
    _write(path, html.render(data))
    click.echo(str(path))


def _write(path: Path, page: str) -> None:
    """Write the report, or say in one line why it cannot be written."""
    from exq.errors import ExqError, os_error_text

    try:
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise ExqError(f"cannot write the report: {os_error_text(exc)}") from None
