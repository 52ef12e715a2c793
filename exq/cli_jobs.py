"""`exq add` (one job from a command line, no manifest) and `exq wait` (until jobs have ended)."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

import click

from exq import api
from exq.cli_complete import complete_jobs, complete_submissions
from exq.clikit import JSON_OPTION, STRICT_OPTION, check_fit, console, echo_json, err_console, paths_of
from exq.errors import ManifestError, UsageError

ADD_NAME = "job"
"""The id of an added job unless --name gives one (its key is then SUBMISSION/job)."""
WAIT_POLL = 0.5
"""Seconds between reads of the queue while `exq wait` waits."""
_OPTIONS = {"gpus": "--gpus", "gpu_memory": "--gpu-memory", "priority": "--priority", "id": "--name",
            "name": "--name", "hosts": "--host", "labels": "--label", "workdir": "--workdir", "cmd": "COMMAND",
            "after": "--after", "label_max_parallel": "--max-parallel"}
"""The option of `exq add` that sets each manifest field (to report an invalid value by its option)."""
EXIT_TIMEOUT = 124
"""`exq wait --timeout`: the jobs had not all ended (as timeout(1) exits)."""


def add_manifest(argv: tuple[str, ...], *, gpus: int | None, gpu_memory: str | None, after: list[str],
                 labels: tuple[str, ...], max_parallel: int | None, priority: int | None, name: str | None,
                 hosts: tuple[str, ...], workdir: Path) -> str:
    """The one-job manifest `exq add` submits (as YAML text): each option is one field, so an invalid value
    is reported by the field it sets. One argument is a shell command line; several are an argv, quoted so
    the job runs exactly them."""
    cmd = argv[0] if len(argv) == 1 else shlex.join(argv)
    fields: dict[str, object] = {"name": name or ADD_NAME, "id": name or ADD_NAME, "workdir": str(workdir),
                                 "cmd": cmd.replace("{", "{{").replace("}", "}}")}
    optional = {"gpus": gpus, "gpu_memory": gpu_memory, "priority": priority, "after": after,
                "labels": list(labels), "hosts": list(hosts),
                "label_max_parallel": {label: max_parallel for label in labels} if max_parallel else None}
    fields.update((key, value) for key, value in optional.items() if value not in (None, []))
    return "".join(f"{key}: {json.dumps(value)}\n" for key, value in fields.items())


@click.command(context_settings={"allow_interspersed_args": False})
@click.option("--gpus", type=click.IntRange(min=0), metavar="N", help="GPUs for the job (default 1; 0: none).")
@click.option("--gpu-memory", metavar="SIZE", help="Expected peak memory per GPU, e.g. 20GiB.")
@click.option("--after", multiple=True, metavar="JOB",
              help="Start only once JOB succeeded (repeatable): SUB/ID, ID, a submission number, or label:NAME.")
@click.option("--label", "labels", multiple=True, metavar="L", help="A label to find the job by (repeatable).")
@click.option("--max-parallel", type=click.IntRange(min=1), metavar="N",
              help="Start only while fewer than N jobs with its --label(s) run (like pueue's groups).")
@click.option("--priority", type=int, help="Higher starts first (default 0).")
@click.option("--name", metavar="ID", help=f"The job's id (default {ADD_NAME!r}; its key is SUBMISSION/ID).")
@click.option("--host", "hosts", multiple=True, metavar="H", help="Run only on host H (repeatable).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), help="Where it runs (default: here).")
@STRICT_OPTION
@JSON_OPTION
@click.argument("command", nargs=-1, required=True)
@click.pass_context
def add(ctx: click.Context, command: tuple[str, ...], gpus: int | None, gpu_memory: str | None,
        after: tuple[str, ...], labels: tuple[str, ...], max_parallel: int | None, priority: int | None,
        name: str | None,
        hosts: tuple[str, ...], workdir: Path | None, strict: bool, as_json: bool) -> None:
    """Queue one job running COMMAND, durably, like `exq submit` (`exq add -- python train.py --lr 0.1`).

    Several words are run exactly as given (an argv); a single quoted word is a shell command line
    (`exq add 'python train.py > out.txt'`)."""
    if max_parallel is not None and not labels:
        raise UsageError("--max-parallel N needs --label L: it limits the running jobs that have label L")
    paths = paths_of(ctx)
    upstream = [key for ref in after for key in api.resolve_ref(paths, ref)]
    text = add_manifest(command, gpus=gpus, gpu_memory=gpu_memory, after=upstream, labels=labels,
                        max_parallel=max_parallel, priority=priority, name=name, hosts=hosts,
                        workdir=(workdir or Path.cwd()).absolute())
    try:
        spec = api.parse_manifest(text, os.path.join(os.getcwd(), "exq add"))
    except ManifestError as exc:
        raise UsageError("\n".join(f"{_OPTIONS.get(p.field.split('.')[0], p.field)}: {p.message}"
                                   for p in exc.problems)) from None
    check_fit(paths, spec, strict)
    item = api.submit(paths, spec)
    key = f"{item.id}/{spec.jobs[0].id}"
    if as_json:
        echo_json({"submission": item.id, "jobs": [key]})
    else:
        console().print(f"added {key}")
    if not api.daemon_alive(paths):
        err_console().print("note: no exq daemon runs on this state dir; start `exq daemon` to run the jobs")


@click.command()
@click.argument("jobs", nargs=-1, shell_complete=complete_jobs)
@click.option("--submission", "submissions", multiple=True, metavar="S", shell_complete=complete_submissions,
              help="Every job of submission S.")
@click.option("--label", "labels", multiple=True, metavar="L", help="Every job with label L.")
@click.option("--timeout", type=click.FloatRange(min=0), metavar="SECONDS",
              help=f"Give up after this long (exit {EXIT_TIMEOUT}).")
@JSON_OPTION
@click.pass_context
def wait(ctx: click.Context, jobs: tuple[str, ...], submissions: tuple[str, ...], labels: tuple[str, ...],
         timeout: float | None, as_json: bool) -> None:
    """Wait until the jobs have ended (default: every job in the queue). Exit 0 when all succeeded, else 1,
    naming those that did not; JOB is SUB/ID or ID."""
    paths = paths_of(ctx)
    refs = [*jobs, *(f"{s}/*" for s in submissions), *(f"label:{label}" for label in labels)]
    keys = list(dict.fromkeys(key for ref in refs for key in api.resolve_ref(paths, ref)))
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        state = api.status(paths).state
        found = {job.key: job for job in state.jobs if not keys or job.key in keys}
        open_jobs = [key for key in keys if key not in found] + [k for k, j in found.items() if not j.status.finished]
        if not open_jobs or (deadline is not None and time.monotonic() >= deadline):
            break
        time.sleep(WAIT_POLL)
    _report_wait(list(found.values()), open_jobs, timeout, as_json)


def _report_wait(jobs: list[api.Job], open_jobs: list[str], timeout: float | None, as_json: bool) -> None:
    """Say which jobs did not succeed (or had not ended), and exit 0, 1 or EXIT_TIMEOUT."""
    failed = [job for job in jobs if job.status.finished and job.status != api.JobStatus.SUCCEEDED]
    if as_json:
        echo_json({"succeeded": [j.key for j in jobs if j.status == api.JobStatus.SUCCEEDED],
                   "not_succeeded": [{"job": j.key, "status": j.status.value, "reason": j.reason} for j in failed],
                   "not_ended": open_jobs})
    else:
        for job in failed:
            console().print(f"{job.key}: {job.status.value}" + (f": {job.reason}" if job.reason else ""))
        if open_jobs:
            err_console().print(f"exq wait: {len(open_jobs)} job(s) had not ended after {timeout or 0:g}s: "
                                + ", ".join(open_jobs[:10]) + (" ..." if len(open_jobs) > 10 else ""))
    if open_jobs:
        sys.exit(EXIT_TIMEOUT)
    if failed:
        sys.exit(1)


COMMANDS = (add, wait)
