"""systemd units for `exq daemon`: one template, rendered for this installation by `exq service install`.

The files shipped in systemd/ are this template rendered with the default paths (a test checks that
they match). Regenerate them with `python -c "import exq.service as s; s.write_shipped('systemd')"`.
"""

from __future__ import annotations

import getpass
import os
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import click

UNIT_NAME = "exq.service"
SHIPPED_EXEC = ("/usr/local/bin/exq",)
SHIPPED_USER = "exq"
SYSTEM_STATE_DIR = PurePosixPath("/var/lib/exq")

_TEMPLATE = """\
# exq: the GPU experiment queue daemon, as a {kind} service.{header}
#
# Type=notify: exq says READY=1 once it has recovered its state, re-attached the jobs that ran
# while it was down, and entered its loop; `systemctl status exq` shows its STATUS= line.
# KillMode=process: stop and restart signal only the daemon. On SIGTERM it drains (stops placing)
# and exits; running experiments keep running and the next start re-attaches them.

[Unit]
Description=exq GPU experiment queue daemon
{unit_deps}
[Service]
Type=notify
NotifyAccess=main
{user_lines}{environment}ExecStart={exec_start} daemon
KillMode=process
Restart=on-failure
TimeoutStopSec=60
WatchdogSec=60

[Install]
WantedBy={wanted_by}
"""

_RENDERED_HEADER = """
# Written by `exq service install` for this installation; run it again after moving exq."""

_SYSTEM_HEADER = """
# Install: `exq service install` renders this file for this machine (User=, ExecStart=, state dir).
# By hand: copy it to /etc/systemd/system/exq.service and edit the placeholders below:
#   User=      the account the daemon and its jobs run as ('exq' is a placeholder)
#   ExecStart= the exq executable ('/usr/local/bin/exq' is a placeholder; `which exq`)"""

_USER_HEADER = """
# Install: `exq service install --user` renders this file for this machine (ExecStart=).
# By hand: copy it to ~/.config/systemd/user/exq.service, set ExecStart= (`which exq`), then
# `loginctl enable-linger $USER` so it runs while you are logged out. State: the XDG default
# ($XDG_STATE_HOME/exq, else ~/.local/state/exq), the same directory `exq status` reads."""


@dataclass(frozen=True)
class RenderedUnit:
    text: str
    path: Path
    """Where the unit file goes."""
    commands: list[str]
    """The systemctl (and loginctl/journalctl) commands to run after writing it."""


def render_unit(
    exec_start: tuple[str, ...] | list[str],
    *,
    user: bool = False,
    user_name: str | None = None,
    state_dir: str | PurePosixPath | None = None,
    home: Path | None = None,
    config_home: Path | None = None,
    shipped: bool = False,
) -> RenderedUnit:
    """The unit text for `exec_start` (the exq command, without `daemon`), its path and the commands to run.

    A system unit (`user=False`) runs as `user_name` with `state_dir` (default /var/lib/exq, made
    by StateDirectory= when it lies under /var/lib). A user unit uses `state_dir` if given (written
    with %h when under `home`), else the XDG default that `exq` itself uses. `shipped`: the header
    comments of the files in systemd/ (how to install them by hand, which values are placeholders).
    """
    home = home or Path.home()
    environment = ""
    if user:
        if state_dir is not None:
            environment = _environment(_home_relative(PurePosixPath(state_dir), home))
        config = config_home or Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
        path = config / "systemd" / "user" / UNIT_NAME
        name = user_name or getpass.getuser()
        commands = ["systemctl --user daemon-reload", f"systemctl --user enable --now {UNIT_NAME}",
                    f"loginctl enable-linger {name}", "systemctl --user status exq",
                    "journalctl --user -u exq -f"]
        values = {"kind": "user", "header": _USER_HEADER if shipped else _RENDERED_HEADER,
                  "unit_deps": "", "user_lines": "", "wanted_by": "default.target"}
    else:
        state = PurePosixPath(state_dir) if state_dir is not None else SYSTEM_STATE_DIR
        user_lines = f"User={user_name or SHIPPED_USER}\n"
        if state.is_relative_to("/var/lib") and state != PurePosixPath("/var/lib"):
            user_lines += f"StateDirectory={state.relative_to('/var/lib')}\nStateDirectoryMode=0700\n"
        environment = _environment(_escape(str(state)))
        path = Path("/etc/systemd/system") / UNIT_NAME
        commands = ["systemctl daemon-reload", f"systemctl enable --now {UNIT_NAME}", "systemctl status exq",
                    "journalctl -u exq -f"]
        values = {"kind": "system", "header": _SYSTEM_HEADER if shipped else _RENDERED_HEADER,
                  "unit_deps": "Wants=network-online.target\nAfter=network-online.target\n",
                  "user_lines": user_lines, "wanted_by": "multi-user.target"}
    text = _TEMPLATE.format(exec_start=" ".join(_quote(arg) for arg in exec_start), environment=environment, **values)
    return RenderedUnit(text, path, commands)


def shipped_units() -> dict[str, str]:
    """The files of systemd/ (name -> text): the template with the placeholder paths."""
    return {
        "exq.service": render_unit(SHIPPED_EXEC, user_name=SHIPPED_USER, shipped=True).text,
        "exq-user.service": render_unit(SHIPPED_EXEC, user=True, shipped=True).text,
    }


def write_shipped(directory: str | Path) -> None:
    """Regenerate the shipped unit files after changing the template."""
    for name, text in shipped_units().items():
        (Path(directory) / name).write_text(text)


def exq_command() -> list[str]:
    """How to run this installation of exq: its `exq` script beside the interpreter, else `python -m exq`."""
    script = Path(sys.executable).parent / "exq"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "exq"]


def _environment(state_dir: str) -> str:
    return _quote(f"Environment=EXQ_STATE_DIR={state_dir}", prefix="Environment=") + "\n"


def _home_relative(path: PurePosixPath, home: Path) -> str:
    if path.is_relative_to(home):
        return "%h/" + _escape(str(path.relative_to(home)))
    return _escape(str(path))


def _escape(value: str) -> str:
    """Escape systemd specifiers ('%') in a value."""
    return value.replace("%", "%%")


def _quote(arg: str, prefix: str = "") -> str:
    """An ExecStart= word (or `prefix` + a quoted rest): '%' and '$' escaped, quoted when needed."""
    if not prefix:
        arg = _escape(arg).replace("$", "$$")
    rest = arg[len(prefix):]
    if rest and not any(c.isspace() or c in "\"'\\;" for c in rest):
        return arg
    escaped = rest.replace("\\", "\\\\").replace('"', '\\"')
    return f'{prefix}"{escaped}"' if prefix else f'"{escaped}"'


@click.group()
def service() -> None:
    """Run exq daemon as a systemd service (see README: "Running exq as a service on a GPU node")."""


@service.command()
@click.option("--user", "user_unit", is_flag=True, help="A user unit (~/.config/systemd/user), not a system one.")
@click.option("--dry-run", is_flag=True, help="Print the unit, its path and the commands; write nothing.")
@click.option("--user-name", metavar="NAME",
              help="System unit: the account exq and its jobs run as (default: $SUDO_USER, else you).")
@click.pass_context
def install(ctx: click.Context, user_unit: bool, dry_run: bool, user_name: str | None) -> None:
    """Write the exq.service unit for this installation and print the systemctl commands to start it.

    The state directory is exq's --state-dir / $EXQ_STATE_DIR when given, else /var/lib/exq for a
    system unit and the XDG default (~/.local/state/exq) for a user unit.
    """
    state_dir = ctx.find_root().params.get("state_dir") or None
    name = user_name or os.environ.get("SUDO_USER") or getpass.getuser()
    unit = render_unit(exq_command(), user=user_unit, user_name=name,
                       state_dir=PurePosixPath(os.path.abspath(state_dir)) if state_dir else None)
    if dry_run:
        click.echo(f"# {unit.path}")
        click.echo(unit.text)
    else:
        try:
            unit.path.parent.mkdir(parents=True, exist_ok=True)
            unit.path.write_text(unit.text)
        except PermissionError as exc:
            raise click.ClickException(f"cannot write {unit.path} ({exc.strerror}): run it with sudo, "
                                       "or use --user for a user unit") from exc
        click.echo(f"wrote {unit.path}")
    click.echo("then run:" if not dry_run else "# then run:")
    for command in unit.commands:
        click.echo(f"  {command}")
