"""Shell completion: `exq completion bash|zsh|fish` prints the script, and job ids, submissions and phases
complete from the queue of the state directory the command line names."""

from __future__ import annotations

from typing import Any

import click
from click.shell_completion import CompletionItem, get_completion_class

PROG = "exq"
COMPLETE_VAR = "_EXQ_COMPLETE"
"""The environment variable the shell's completion function sets (click's protocol)."""
SHELLS = ("bash", "zsh", "fish")


def _queue(ctx: click.Context) -> tuple[list[Any], list[str]]:
    """The jobs and phase names of the queue named by the command line being completed (none when it cannot
    be read: completion never prints an error into the user's shell)."""
    from exq import api
    from exq.errors import ExqError

    paths = api.state_paths(ctx.find_root().params.get("state_dir"))
    try:
        view = api.status(paths)
        phases = [*(p for sub in view.index.submissions for p in sub.phases),
                  *(p for item in view.pending for p in item.spec.phases)]
        return api.known_jobs(paths), phases
    except (ExqError, OSError, ValueError):
        return [], []


def complete_jobs(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Job keys (`SUB/ID`) that start with what was typed."""
    keys = dict.fromkeys(job.key for job in _queue(ctx)[0])
    return [CompletionItem(key) for key in keys if key.startswith(incomplete)]


def complete_submissions(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    subs = dict.fromkeys(job.submission for job in _queue(ctx)[0])
    return [CompletionItem(sub) for sub in subs if sub.startswith(incomplete)]


def complete_phases(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    phases = dict.fromkeys(_queue(ctx)[1])
    return [CompletionItem(phase) for phase in phases if phase.startswith(incomplete)]


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL. Load it with, for bash, `eval "$(exq completion bash)"` in
    ~/.bashrc; zsh: the same in ~/.zshrc; fish: `exq completion fish > ~/.config/fish/completions/exq.fish`."""
    cls = get_completion_class(shell)
    assert cls is not None  # every SHELLS entry is one click knows
    click.echo(cls(ctx.find_root().command, {}, PROG, COMPLETE_VAR).source())
