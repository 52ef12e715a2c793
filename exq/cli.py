"""The `exq` command line: thin commands over `exq.api`, one error boundary, meaningful exit codes."""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from exq import __version__, api
from exq.cli_complete import COMPLETE_VAR, PROG, complete_jobs, complete_phases, completion
from exq.clikit import JSON_OPTION, STRICT_OPTION, check_fit, console, echo_json, err_console, paths_of
from exq.errors import (
    DaemonRunningError,
    ExqError,
    InputFileError,
    NotFoundError,
    StateError,
    UsageError,
    os_error_text,
)
from exq.units import parse_size

if TYPE_CHECKING:
    from exq.bridge.compile import Compiled
    from exq.bridge.plan import Selection

EXIT_OK = 0
EXIT_ERROR = 1
"""An error (also an internal one), or (`run`, `hosts`, `doctor`, `plan gate`) something did not succeed."""
EXIT_JOBS_FAILED = EXIT_ERROR
EXIT_INTERRUPTED = 130
DEBUG_ENV = "EXQ_DEBUG"
"""Set to 1 to print the traceback of any error (as `-vv` does)."""
_Command = TypeVar("_Command", bound=Callable[..., Any])


class _Context:
    def __init__(self, state_dir: Path | None) -> None:
        self.paths = api.state_paths(state_dir)


class _ExqGroup(click.Group):
    """The `exq` group: an OSError about the state directory, from any command, becomes a StateError (exit 3)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OSError as exc:
            obj = ctx.obj
            error = _state_dir_error(obj.paths.root, exc) if isinstance(obj, _Context) else None
            if error is None:
                raise
            raise error from exc


def _state_dir_error(root: Path, exc: OSError) -> StateError | None:
    """A StateError naming the state directory when `exc` is about it, a file in it, or a directory above it."""
    if not isinstance(exc.filename, str | bytes | os.PathLike):
        return None
    path = Path(os.fsdecode(exc.filename)).absolute()
    if path == root:
        return StateError(f"state directory {root}: {exc.strerror or exc}")
    if root in path.parents or path in root.parents:
        return StateError(f"state directory {root}: {os_error_text(exc)}")
    return None


SECONDS = click.FloatRange(min=0, min_open=True)
"""A positive number of seconds (intervals, timeouts)."""


@click.group(cls=_ExqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--state-dir", type=click.Path(path_type=Path), envvar="EXQ_STATE_DIR",
              help="State directory (default: $XDG_STATE_HOME/exq or ~/.local/state/exq).")
@click.option("--host", metavar="NODE",
              help="Run the command on NODE over SSH (its daemon, its state); nothing listens on a port.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug, -vvv with SSH details).")
@click.version_option(__version__, prog_name="exq")
@click.pass_context
def cli(ctx: click.Context, state_dir: Path | None, host: str | None, verbose: int) -> None:
    """exq: a GPU experiment queue. Submit YAML manifests; the daemon places jobs on free GPUs.

    \b
    Exit codes:
      0    ok
      1    error; or a job did not succeed (run), a host is unreachable (hosts),
           a check failed (doctor, plan gate); or an internal error (a bug: -vv or
           EXQ_DEBUG=1 prints its traceback)
      2    invalid manifest, config or command line (a bad option value)
      3    unusable state directory (not a directory, not writable, wrong owner, corrupt)
      4    another daemon holds the state directory
      5    no such job, attempt, phase or submission
      6    a host could not be reached over SSH (--host, or logs of a job on that host)
      130  interrupted (Ctrl-C)
    With --host NODE, the exit code is that of exq on NODE, or 1, 2 or 6 from here.
    """
    if host is not None:  # main() takes a leading `--host NODE`; here it came after an option's value
        raise UsageError("--host NODE must come first: `exq --host NODE [OPTIONS] COMMAND ...`")
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(logging.DEBUG, level), format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("asyncssh").setLevel(logging.WARNING if verbose < 3 else logging.DEBUG)
    ctx.obj = _Context(state_dir)


def _paths(ctx: click.Context) -> api.StatePaths:
    return paths_of(ctx)


MAX_JOBS_OPTION = click.option("--max-jobs", type=click.IntRange(min=1), metavar="N",
                               help="Allow a manifest of up to N jobs (default: 100000).")


@cli.command()
@click.argument("manifest", type=click.Path(exists=False, dir_okay=False, path_type=Path))
@click.option("--all", "all_jobs", is_flag=True, help="List every job (default: the first 200).")
@MAX_JOBS_OPTION
@JSON_OPTION
def validate(manifest: Path, all_jobs: bool, max_jobs: int | None, as_json: bool) -> None:
    """Check MANIFEST and print the jobs it expands to; submit nothing."""
    spec = api.load_manifest(manifest, max_jobs=max_jobs)
    _print_spec(spec, all_jobs, as_json)
    _print_notes(spec)


def _print_spec(spec: api.SubmissionSpec, all_jobs: bool, as_json: bool = False) -> None:
    """The expanded jobs: a table (the first 200 unless `all_jobs`), or with `as_json` the whole spec."""
    if as_json:
        click.echo(spec.model_dump_json(indent=2))
        return
    from exq.views import spec_table

    console().print(spec_table(spec, limit=None if all_jobs else 200))


def _print_notes(spec: api.SubmissionSpec) -> None:
    """What the submitter should know about a valid manifest (on stderr)."""
    if (note := api.workdir_note(spec)) is not None:
        err_console().print(f"note: {note}")


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Print the expanded jobs and submit nothing.")
@click.option("--stdin-name", default="manifest.yaml", show_default=True,
              help="With MANIFEST '-' (read from stdin): its file name, for messages and a relative workdir.")
@MAX_JOBS_OPTION
@STRICT_OPTION
@JSON_OPTION
@click.pass_context
def submit(ctx: click.Context, manifest: Path, dry_run: bool, stdin_name: str, max_jobs: int | None,
           strict: bool, as_json: bool) -> None:
    """Submit MANIFEST ('-' for stdin) to the queue. Returns once the submission is durable."""
    if str(manifest) == "-":
        spec = api.parse_manifest(sys.stdin.read(), str(Path.cwd() / stdin_name), max_jobs=max_jobs)
    else:
        spec = api.load_manifest(manifest, max_jobs=max_jobs)
    if dry_run:
        _print_spec(spec, all_jobs=False, as_json=as_json)
        _print_notes(spec)
        return
    paths = _paths(ctx)
    check_fit(paths, spec, strict)
    item = api.submit(paths, spec)
    if as_json:
        echo_json({"submission": item.id, "jobs": [f"{item.id}/{job.id}" for job in spec.jobs]})
    else:
        console().print(f"submitted {len(spec.jobs)} job(s) as submission {item.id} ({spec.name})")
    _print_notes(spec)
    if not api.daemon_alive(paths):
        err_console().print("note: no exq daemon runs on this state dir; start `exq daemon` to run the jobs")


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@MAX_JOBS_OPTION
@JSON_OPTION
@click.pass_context
def run(ctx: click.Context, manifest: Path, max_jobs: int | None, as_json: bool) -> None:
    """Submit MANIFEST and schedule in this process until its jobs end (exit 1 if any did not succeed)."""
    paths = _paths(ctx)
    spec = api.load_manifest(manifest, max_jobs=max_jobs)
    if api.daemon_alive(paths):
        raise DaemonRunningError("an exq daemon runs on this state dir; use `exq submit` instead")
    check_fit(paths, spec, strict=False)
    item = api.submit(paths, spec)
    gpus = api.probe_gpus(paths)
    label = " (SIMULATED)" if gpus.simulated else ""
    err_console().print(f"exq run: submission {item.id}, {len(spec.jobs)} job(s); GPUs: {len(gpus.gpus)} "
                        f"via {gpus.backend}{label}" + (f" - {gpus.message}" if gpus.message else ""))
    _print_notes(spec)
    if logging.getLogger().level > logging.INFO:
        logging.getLogger("exq").setLevel(logging.INFO)

    def done(state: api.QueueState) -> bool:
        """Whether every job of this submission has ended (newest first: an unended one is found soon)."""
        mine = (j for j in reversed(state.jobs) if j.submission == item.id)
        first = next(mine, None)
        return first is not None and first.status.finished and all(j.status.finished for j in mine)

    state = api.serve(paths, until=done, mode="run")
    view = api.StatusView(state, [], False)
    from exq.views import run_summary

    mine = [j for j in state.jobs if j.submission == item.id]
    if as_json:
        echo_json({"submission": item.id, "jobs": [{"job": j.key, "status": j.status.value, "reason": j.reason}
                                                   for j in mine]})
    else:
        console().print(run_summary(view, mine))
    if not done(state):
        err_console().print("exq run: interrupted; running jobs keep running (`exq daemon` re-attaches them)")
        sys.exit(EXIT_JOBS_FAILED)
    if any(j.status != api.JobStatus.SUCCEEDED for j in mine):
        sys.exit(EXIT_JOBS_FAILED)


@cli.command()
@click.option("--foreign-threshold", type=parse_size, metavar="SIZE", default="500MiB", show_default=True,
              help="A GPU is not used while processes exq did not launch hold this much memory on it.")
@click.option("--probe-interval", type=SECONDS, default=2.0, show_default=True, help="Seconds between GPU probes.")
@click.option("--hook-timeout", type=SECONDS, default=120.0, show_default=True,
              help="Seconds a manifest's on_job_end hook may run before it is killed.")
@click.option("--progress-interval", type=SECONDS, default=3.0, show_default=True,
              help="Seconds between reads of running jobs' result files (live progress in exq status).")
@click.pass_context
def daemon(ctx: click.Context, foreign_threshold: int, probe_interval: float, hook_timeout: float,
           progress_interval: float) -> None:
    """Run the scheduler until SIGTERM (drain: stop placing, leave running jobs running, exit)."""
    if logging.getLogger().level > logging.INFO:
        logging.getLogger("exq").setLevel(logging.INFO)
    config = api.scheduler_config(api.load_config(), foreign_threshold=foreign_threshold,
                                  probe_interval=probe_interval, hook_timeout=hook_timeout,
                                  progress_interval=progress_interval)
    api.serve(_paths(ctx), config=config)


def _show_archived(paths: api.StatePaths, subs: tuple[str, ...], as_json: bool) -> None:
    """`exq status --archived`: the archived submissions (those SUB names by id or name) and their jobs."""
    from rich.text import Text

    from exq.views import job_table

    records = [r for r in api.archived(paths) if not subs or {r.submission.id, r.submission.name} & set(subs)]
    if as_json:
        echo_json({"archived": [record.model_dump(mode="json") for record in records]})
        return
    if not records:
        console().print("no archived submissions")
    for record in records:
        sub, when = record.submission, time.strftime("%Y-%m-%d %H:%M", time.localtime(record.archived_at))
        table = job_table([[job] for job in record.jobs])
        table.title = Text(f"submission {sub.id} {sub.name}: {len(record.jobs)} job(s), archived {when}")
        console().print(table)


@cli.command()
@click.argument("submissions", nargs=-1, metavar="[SUB]...")
@click.option("--phase", "phases", multiple=True, metavar="P", shell_complete=complete_phases,
              help="Only jobs of phase P (repeatable).")
@click.option("--status", "statuses", multiple=True, metavar="S",
              help="Only jobs in status S: queued, running, succeeded, failed, blocked, cancelled or unknown "
                   "(repeatable).")
@click.option("--label", "labels", multiple=True, metavar="L",
              help="Only jobs labelled L, or of a submission labelled L (repeatable).")
@click.option("--host", "hosts", multiple=True, metavar="H",
              help="Only jobs whose current attempt is on host H (repeatable).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the whole state as JSON (the queue_state.json schema); with filters, "
                   '{"jobs": [...]} of the matching jobs.')
@click.option("--watch", is_flag=True, help="Keep the view live until Ctrl-C.")
@click.option("--all", "all_jobs", is_flag=True, help="List every job, not only the active and recent ones.")
@click.option("--archived", is_flag=True, help="Show the submissions `exq clean` archived (of SUB, when named).")
@click.pass_context
def status(ctx: click.Context, submissions: tuple[str, ...], phases: tuple[str, ...], statuses: tuple[str, ...],
           labels: tuple[str, ...], hosts: tuple[str, ...], as_json: bool, watch: bool, all_jobs: bool,
           archived: bool) -> None:
    """Show submissions, phases and jobs: of the submissions SUB, when named, and matching every filter given."""
    from exq.views import JobFilter, status_renderable

    paths = _paths(ctx)
    jobs_filter = JobFilter(submissions, phases, statuses, labels, hosts)
    if archived:
        _show_archived(paths, submissions, as_json)
        return
    if as_json and jobs_filter:
        jobs = jobs_filter.select(api.status(paths).with_state())
        sys.stdout.write(json.dumps({"jobs": [job.model_dump(mode="json") for job in jobs]}) + "\n")
        return
    if as_json:
        sys.stdout.buffer.write(api.state_json(paths) + b"\n")
        return
    if not watch:
        console().print(status_renderable(api.status(paths), all_jobs, jobs_filter))
        return
    from rich.console import RenderableType
    from rich.live import Live

    def view() -> RenderableType:
        return status_renderable(api.status(paths), all_jobs, jobs_filter, refreshed=time.time())

    import signal
    import threading

    stop = threading.Event()  # Ctrl-C ends the view between two redraws, never in the middle of one
    signal.signal(signal.SIGINT, lambda _sig, _frame: stop.set())
    with Live(view(), console=console(), refresh_per_second=2) as live:
        while not stop.wait(1.0):
            live.update(view())


@cli.command()
@click.argument("job", shell_complete=complete_jobs)
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the job's attempt ends.")
@click.option("--attempt", type=click.IntRange(min=1), metavar="N",
              help="Attempt number, from 1 (default: the latest).")
@click.pass_context
def logs(ctx: click.Context, job: str, follow: bool, attempt: int | None) -> None:
    """Print the log of JOB (`ID` or `SUBMISSION/ID`). Exit 5 when there is no such job or attempt."""
    paths = _paths(ctx)
    found = api.find_job(api.status(paths).state, job)
    if follow and (found is None or not found.attempts):
        found = _wait_for_start(paths, found.key if found else api.resolve_ref(paths, job)[0])
    if found is None:
        raise NotFoundError(f"no job {job!r} in the queue")
    if not found.attempts:
        raise NotFoundError(f"job {found.key} has not started yet ({found.status.value})")
    chosen = found.attempts[-1] if attempt is None else next(
        (a for a in found.attempts if a.number == attempt), None)
    if chosen is None:
        count = len(found.attempts)
        raise NotFoundError(f"job {found.key} has no attempt {attempt}: it has {count} "
                            f"(--attempt 1{f' to {count}' if count > 1 else ''})")
    with api.LogSource(chosen) as source:
        offset = _print_from(source, 0)
        while follow:
            current = api.find_job(api.status(paths).state, found.key)
            ended = current is None or len(current.attempts) != chosen.number or current.attempts[-1].ended_at
            offset = _print_from(source, offset)
            if ended:
                break
            time.sleep(0.5)


def _wait_for_start(paths: api.StatePaths, key: str) -> api.Job:
    """Job `key` once it has an attempt, or has ended without one (`logs -f` on a job not started yet, which
    may still wait for a daemon to take its submission in)."""
    err_console().print(f"exq logs: {key} has not started; waiting for it to start (Ctrl-C to stop)")
    while True:
        job = api.find_job(api.status(paths).state, key)
        if job is not None and (job.attempts or job.status.finished):
            return job
        time.sleep(0.5)


def _print_from(source: api.LogSource, offset: int) -> int:
    data = source.read(offset)
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
    return offset + len(data)


@cli.command()
@click.option("--manifest", is_flag=True,
              help="The schema of manifests instead, for editors to check and complete them.")
def schema(manifest: bool) -> None:
    """Print the JSON Schema of queue_state.json (or, with --manifest, of manifests)."""
    click.echo(json.dumps(api.manifest_schema() if manifest else api.QueueState.model_json_schema(), indent=2))


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def gpus(ctx: click.Context, as_json: bool) -> None:
    """Show the GPUs the probe sees on this machine (simulated ones are labelled so)."""
    snap = api.probe_gpus(_paths(ctx))
    if as_json:
        click.echo(json.dumps({"backend": snap.backend, "simulated": snap.simulated, "message": snap.message,
                               "gpus": [vars(g) | {"processes": [vars(p) for p in g.processes]}
                                        for g in snap.gpus]}, indent=2))
        return
    from exq.views import gpu_table

    console().print(gpu_table("local", snap))


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def hosts(ctx: click.Context, as_json: bool) -> None:
    """Probe every configured host now: reachable or not, and its GPUs (exit 1 if any is unreachable)."""
    reports = api.probe_hosts(_paths(ctx))
    if as_json:
        click.echo(json.dumps([{
            "name": r.name, "up": r.snapshot is not None, "error": r.error,
            "backend": r.snapshot.backend if r.snapshot else None,
            "message": r.snapshot.message if r.snapshot else None,
            "slots": len(r.snapshot.gpus) if r.snapshot and r.snapshot.slots else None,
            "gpus": [{"index": g.index, "name": g.name, "memory_total": g.memory_total,
                      "memory_used": g.memory_used}
                     for g in (r.snapshot.gpus if r.snapshot and not r.snapshot.slots else ())],
        } for r in reports], indent=2))
    else:
        from exq.views import hosts_table

        console().print(hosts_table(reports))
    if any(r.snapshot is None for r in reports):
        sys.exit(EXIT_JOBS_FAILED)


@cli.group()
def plan() -> None:
    """Research plans (EXPERIMENT_PLAN.md + EXPERIMENT_TRACKER.md + runs.yaml) as queue submissions."""


_PLAN_OPTIONS = [
    click.argument("plan_file", metavar="PLAN.md", type=click.Path(dir_okay=False, path_type=Path)),
    click.option("--tracker", type=click.Path(dir_okay=False, path_type=Path),
                 help="EXPERIMENT_TRACKER.md (default: beside the plan)."),
    click.option("--runs", type=click.Path(dir_okay=False, path_type=Path),
                 help="The runs file with run commands (default: runs.yaml beside the plan, if there is one)."),
]
_SELECT_OPTIONS = [
    click.option("--include", "include", metavar="R004,...", default="",
                 help="Compile these runs whatever their tracker Status says."),
    click.option("--rerun-failed", is_flag=True, help="Also compile the runs marked FAILED or GATE FAILED."),
]
_WORKFLOW_OPTIONS = [
    click.option("--workflow", type=click.Path(dir_okay=False, path_type=Path),
                 help="workflow-state.md (default: the one under tickets/in-progress/, if exactly one)."),
    click.option("--no-workflow", is_flag=True, help="Use no workflow-state.md, and write none."),
]


def _options(*options: Callable[[Any], Any]) -> Callable[[_Command], _Command]:
    """One decorator applying `options` in the order listed."""
    def decorate(func: _Command) -> _Command:
        for option in reversed(options):
            func = option(func)
        return func
    return decorate


_plan_options = _options(*_PLAN_OPTIONS)


def _selection(include: str, rerun_failed: bool) -> Selection:
    from exq.bridge import plan as bridge

    return bridge.Selection(tuple(r.strip() for r in include.replace(" ", ",").split(",") if r.strip()),
                            rerun_failed)


def _print_choices(compiled: Compiled) -> None:
    """The compile report: each run compiled (with its command and where it came from) or left alone."""
    for choice in compiled.runs:
        err_console().print(f"{'run ' if choice.compiled else 'skip'}  {choice.describe()}")
    for note in compiled.notes:
        err_console().print(f"note: {note}")


@plan.command("compile")
@_plan_options
@_options(*_SELECT_OPTIONS)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the manifest here (default: print it).")
def plan_compile(plan_file: Path, tracker: Path | None, runs: Path | None, include: str, rerun_failed: bool,
                 output: Path | None) -> None:
    """Compile the runs still to do into an ordinary exq manifest: phases in Run Order (report on stderr)."""
    from exq.bridge import plan as bridge

    files = bridge.find_files(plan_file, tracker, runs)
    compiled = bridge.compile_files(files, bridge.find_workflow(plan_file, None), _selection(include, rerun_failed))
    api.parse_manifest(compiled.yaml_text, str((output or plan_file.parent / "plan.yaml").absolute()))
    _print_choices(compiled)
    if output is None:
        click.echo(compiled.yaml_text, nl=False)
    else:
        output.write_text(compiled.yaml_text)
        console().print(f"wrote {output}")


@plan.command("submit")
@_plan_options
@_options(*_SELECT_OPTIONS, *_WORKFLOW_OPTIONS)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to keep the compiled manifest (default: exq-plan.yaml beside the plan).")
@click.option("--dry-run", is_flag=True, help="Show each run's command and where it came from, and the phases; "
                                             "submit nothing, change nothing.")
@click.option("--force", is_flag=True, help="Submit although the stage gates say no (says what it overrode).")
@JSON_OPTION
@click.pass_context
def plan_submit(ctx: click.Context, plan_file: Path, tracker: Path | None, runs: Path | None, include: str,
                rerun_failed: bool, workflow: Path | None, no_workflow: bool, output: Path | None, dry_run: bool,
                force: bool, as_json: bool) -> None:
    """Compile and submit the runs still to do; refuses unless the gate before Training & Validation passed and
    the current stage is that one."""
    from exq.bridge import plan as bridge

    files = bridge.find_files(plan_file, tracker, runs)
    manifest = output or plan_file.parent / "exq-plan.yaml"
    flow = bridge.find_workflow(plan_file, workflow, enabled=not no_workflow)
    selection = _selection(include, rerun_failed)
    if dry_run:
        compiled = bridge.compile_files(files, flow, selection)
        _print_choices(compiled)
        if compiled.manifest["phases"]:
            _print_spec(api.parse_manifest(compiled.yaml_text, str(manifest.absolute())), all_jobs=False)
        if flow is not None:
            for problem in bridge.check_gates(flow, force=True):
                err_console().print(f"note: {flow}: {problem}")
        return
    item, overridden, compiled = bridge.submit(files, manifest, flow, force, _paths(ctx), selection)
    if as_json:
        echo_json({"submission": item.id, "jobs": [f"{item.id}/{job.id}" for job in item.spec.jobs],
                   "manifest": str(manifest), "overridden": overridden})
        return
    _print_choices(compiled)
    for problem in overridden:
        err_console().print(f"warning: --force overrode: {problem}")
    console().print(f"submitted the plan as submission {item.id} ({len(item.spec.jobs)} jobs); manifest: {manifest}")
    if flow is not None:
        console().print(f"{flow}: Training & Validation gate set to In Progress")


@plan.command("sync")
@_plan_options
@_options(*_WORKFLOW_OPTIONS)
@click.option("--results", type=click.Path(dir_okay=False, path_type=Path),
              help="EXPERIMENT_RESULTS.md (default: beside the plan).")
@click.option("--log", "log_file", type=click.Path(dir_okay=False, path_type=Path),
              help="EXPERIMENT_LOG.md (default: in the project root).")
@click.option("--submission", envvar="EXQ_SUBMISSION", metavar="N",
              help="The plan's submission (default: the newest named after the plan's project).")
@JSON_OPTION
@click.pass_context
def plan_sync(ctx: click.Context, plan_file: Path, tracker: Path | None, runs: Path | None, workflow: Path | None,
              no_workflow: bool, results: Path | None, log_file: Path | None, submission: str | None,
              as_json: bool) -> None:
    """Write the submission's progress into the tracker, results, log and training gate (idempotent); only
    exq's own cells and parts of cells change."""
    from exq.bridge import plan as bridge
    from exq.bridge.results import results_path
    from exq.bridge.runlog import log_path
    from exq.bridge.sync import SyncTargets, sync

    files = bridge.find_files(plan_file, tracker, runs)
    targets = SyncTargets(files, results or results_path(plan_file), log_file or log_path(plan_file),
                          bridge.find_workflow(plan_file, workflow, enabled=not no_workflow))
    report = sync(targets, _paths(ctx), submission)
    if as_json:
        echo_json({"submission": report.submission, "changed": [str(c) for c in report.changed],
                   "notes": report.notes})
        return
    for note in report.notes:
        err_console().print(f"note: {note}")
    for change in report.changed:
        console().print(f"updated {change}")
    if not report.changed:
        console().print(f"submission {report.submission}: the documents are up to date")


@plan.command("gate")
@click.argument("runs_file", metavar="RUNS.yaml", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("milestone")
@click.option("--submission", envvar="EXQ_SUBMISSION", required=True, metavar="N",
              help="The plan's submission (set for gate jobs).")
@click.option("--result-file", envvar="EXQ_RESULT_FILE", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the verdict here as JSON (set for gate jobs).")
@JSON_OPTION
@click.pass_context
def plan_gate(ctx: click.Context, runs_file: Path, milestone: str, submission: str, result_file: Path | None,
              as_json: bool) -> None:
    """Check a milestone's metric rules on its finished runs (what a plan's gate job runs); exit 1 if one fails."""
    from exq.bridge import plan as bridge

    checks = bridge.check_gate(_paths(ctx), runs_file, milestone, submission)
    if as_json:
        echo_json(bridge.gate_result(milestone, checks))
    else:
        for check in checks:
            console().print(f"{'PASS' if check.passed else 'FAIL'}  {check.rule}: {check.detail}")
    if result_file is not None:
        result_file.write_text(json.dumps(bridge.gate_result(milestone, checks), indent=2))
    if not all(check.passed for check in checks):
        sys.exit(EXIT_JOBS_FAILED)


@cli.group("import")
def import_() -> None:
    """Convert other queues' files into exq manifests."""


@import_.command("aris")
@click.argument("spec", metavar="MANIFEST", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the manifest here (default: print it).")
def import_aris(spec: Path, output: Path | None) -> None:
    """Convert an ARIS experiment-queue manifest (a grid spec or a built manifest, YAML or JSON); whatever
    cannot be carried over exactly is reported, not dropped."""
    from exq.bridge.aris import import_aris as convert

    conversion = convert(str(spec))
    for note in conversion.notes:
        err_console().print(f"note: {note}")
    if output is None:
        click.echo(conversion.manifest_yaml, nl=False)
    else:
        output.write_text(conversion.manifest_yaml, encoding="utf-8")
        console().print(f"wrote {output} ({len(conversion.notes)} note(s) above)")


def _register() -> None:
    """Commands defined beside the code they drive."""
    from exq import cli_control, cli_jobs
    from exq.doctor import doctor
    from exq.report.command import report
    from exq.service import service

    for command in (*cli_jobs.COMMANDS, *cli_control.COMMANDS, completion, doctor, service, report):
        cli.add_command(command)


_register()


def main() -> None:
    """Entry point: the one error boundary. Every error becomes `exq: error: ...` and a documented exit code
    (see `cli`); no traceback unless -vv or EXQ_DEBUG=1 asks for one."""
    try:
        code = _run(sys.argv[1:])
    except SystemExit:
        raise
    except BaseException as exc:
        code = _report(exc)
    sys.exit(code)


def _run(argv: list[str]) -> int:
    node, args = api.split_host(argv)
    if node is not None and not {"-h", "--help"} & set(args[:1]):
        return api.forward(node, args)
    result = cli.main(args, prog_name=PROG, complete_var=COMPLETE_VAR, standalone_mode=False)
    return result if isinstance(result, int) else EXIT_OK


def _report(exc: BaseException) -> int:
    """Say what went wrong in one line (per problem) and return the exit code."""
    if isinstance(exc, click.exceptions.Abort | KeyboardInterrupt):
        err_console().print("aborted")
        return EXIT_INTERRUPTED
    if isinstance(exc, click.ClickException):
        exc.show()
        return exc.exit_code
    if isinstance(exc, OSError) and exc.errno == errno.EPIPE:  # the reader went away (`exq status | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    if isinstance(exc, ExqError | OSError):
        error = exc if isinstance(exc, ExqError) else ExqError(os_error_text(exc))
        lines = [str(p) for p in error.problems] if isinstance(error, InputFileError) else [str(error)]
        for line in lines:
            _say("exq: error: ", line)
        _traceback_if_debug(exc)
        return error.exit_code
    _say("exq: internal error: ", f"{type(exc).__name__}: {exc}")
    if not _traceback_if_debug(exc):
        err_console().print(f"This is a bug in exq {__version__}; please report it with the command you ran and "
                            f"its output with -vv (or {DEBUG_ENV}=1), which adds the traceback.")
    return EXIT_ERROR


def _say(prefix: str, line: str) -> None:
    from rich.text import Text

    err_console().print(Text(prefix, style="bold red") + Text(line))


def _traceback_if_debug(exc: BaseException) -> bool:
    """Print `exc`'s traceback when -vv or EXQ_DEBUG asks for it; whether it did."""
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0") or logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    return debug


if __name__ == "__main__":
    main()
