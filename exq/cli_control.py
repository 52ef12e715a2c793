"""The commands that change jobs or the queue through a control request: cancel, retry, restart, hold,
release, priority, pause, resume, clean. Each says what it affected (`--json`: ok, message and the job keys, or
the submission ids for clean)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from exq import api
from exq.cli_complete import complete_jobs
from exq.clikit import JSON_OPTION, console, echo_json, paths_of
from exq.errors import NotFoundError, UsageError

_SCOPE_OPTIONS = [
    click.option("--phase", "scope", flag_value="phase", help="TARGETS are phase names."),
    click.option("--submission", "scope", flag_value="submission", help="TARGETS are submission ids or names."),
    click.option("--label", "scope", flag_value="label", help="TARGETS are labels."),
    click.option("--all", "scope", flag_value="all", help="Every job in the queue."),
]


def _scoped(func: Callable[..., Any]) -> Callable[..., Any]:
    """TARGETS, the options saying what they name, and --json."""
    targets = click.argument("targets", nargs=-1, shell_complete=complete_jobs)
    for option in reversed([targets, *_SCOPE_OPTIONS, JSON_OPTION]):
        func = option(func)
    return func


def _control(ctx: click.Context, req: api.ControlRequest, as_json: bool) -> None:
    """Carry out `req` and say what it did; an unknown target exits 5."""
    reply = api.control(paths_of(ctx), req)
    if as_json:
        echo_json(reply.model_dump(mode="json"))
    if not reply.ok:
        raise NotFoundError(reply.message)
    if not as_json:
        console().print(reply.message)


def _request(op: str, targets: tuple[str, ...], scope: str | None, **fields: Any) -> api.ControlRequest:
    if not targets and scope != "all":
        raise UsageError("name at least one job (or use --phase/--submission/--label with names, or --all)")
    return api.ControlRequest(op=op, targets=list(targets), scope=scope or "job", **fields)


@click.command()
@_scoped
@click.pass_context
def cancel(ctx: click.Context, targets: tuple[str, ...], scope: str | None, as_json: bool) -> None:
    """Cancel jobs (queued ones at once; running ones are killed: SIGTERM, grace, SIGKILL)."""
    _control(ctx, _request("cancel", targets, scope), as_json)


@click.command()
@_scoped
@click.pass_context
def retry(ctx: click.Context, targets: tuple[str, ...], scope: str | None, as_json: bool) -> None:
    """Queue failed, blocked or cancelled jobs again (and the jobs blocked behind them)."""
    _control(ctx, _request("retry", targets, scope), as_json)


@click.command()
@_scoped
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Run with this param changed (repeatable); VALUE is read as YAML (1, 0.5, true, text).")
@click.pass_context
def restart(ctx: click.Context, targets: tuple[str, ...], scope: str | None, as_json: bool,
            settings: tuple[str, ...]) -> None:
    """Run ended jobs again (succeeded ones too), keeping the history of their attempts."""
    _control(ctx, _request("restart", targets, scope, params=_params(settings)), as_json)


def _params(settings: tuple[str, ...]) -> dict[str, api.Scalar]:
    """`--set KEY=VALUE` pairs as params: VALUE read as a YAML scalar."""
    import yaml

    params: dict[str, api.Scalar] = {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {setting!r}: expected KEY=VALUE")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        if not isinstance(value, str | int | float | bool):
            raise UsageError(f"--set {setting!r}: VALUE must be a number, true/false or text")
        params[key.strip()] = value
    return params


@click.command()
@_scoped
@click.pass_context
def hold(ctx: click.Context, targets: tuple[str, ...], scope: str | None, as_json: bool) -> None:
    """Keep queued jobs from starting until `exq release` (running and ended jobs are left as they are)."""
    _control(ctx, _request("hold", targets, scope), as_json)


@click.command()
@_scoped
@click.pass_context
def release(ctx: click.Context, targets: tuple[str, ...], scope: str | None, as_json: bool) -> None:
    """Let held jobs start again."""
    _control(ctx, _request("release", targets, scope), as_json)


@click.command()
@click.argument("value", metavar="PRIORITY", type=int)
@_scoped
@click.pass_context
def priority(ctx: click.Context, value: int, targets: tuple[str, ...], scope: str | None, as_json: bool) -> None:
    """Set the priority of jobs not ended yet: higher starts first (`exq priority 10 JOB...`)."""
    _control(ctx, _request("priority", targets, scope, priority=value), as_json)


@click.command()
@JSON_OPTION
@click.pass_context
def pause(ctx: click.Context, as_json: bool) -> None:
    """Stop placing new jobs; running jobs go on."""
    _control(ctx, api.ControlRequest(op="pause"), as_json)


@click.command()
@JSON_OPTION
@click.pass_context
def resume(ctx: click.Context, as_json: bool) -> None:
    """Place jobs again after `exq pause`."""
    _control(ctx, api.ControlRequest(op="resume"), as_json)


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    from exq.units import parse_duration

    try:
        return None if value is None else parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.option("--older-than", callback=_duration, metavar="DURATION",
              help="Only submissions whose last job finished at least this long ago (7d, 12h, 90m).")
@click.option("--submission", "submissions", multiple=True, metavar="S",
              help="Only submission S (an id or name; repeatable). One not finished is left alone.")
@click.option("--keep-logs", is_flag=True, help="Keep the attempt directories (logs, records) of the archived jobs.")
@JSON_OPTION
@click.pass_context
def clean(ctx: click.Context, older_than: float | None, submissions: tuple[str, ...], keep_logs: bool,
          as_json: bool) -> None:
    """Move finished submissions out of the queue into archive.jsonl (`exq status --archived` shows them) and
    delete their jobs' logs on this machine. An unknown submission exits 5."""
    scope = "submission" if submissions else "all"
    _control(ctx, api.ControlRequest(op="clean", targets=list(submissions), scope=scope, older_than=older_than,
                                     keep_logs=keep_logs), as_json)


COMMANDS = (cancel, retry, restart, hold, release, priority, pause, resume, clean)
