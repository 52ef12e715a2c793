"""The public API of exq: what the CLI and the bridge use, and nothing deeper."""

from __future__ import annotations

import contextlib
import importlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exq.errors import DaemonRunningError, ExqError
from exq.forward import forward, split_host

if TYPE_CHECKING:
    from exq.config import ExqConfig, load_config
    from exq.daemon.context import SchedulerConfig
    from exq.gpus import GpuSnapshot
    from exq.logs import LogSource
    from exq.model.after import KnownJob
    from exq.model.jobspec import Scalar, SubmissionSpec
    from exq.model.manifest import Value, load_manifest, parse_manifest, workdir_note
    from exq.model.state import Job, JobStatus, QueueState, Submission
    from exq.model.summary import StatusIndex
    from exq.model.template import JOB_ID_RE, TemplateError, format_value, render
    from exq.ssh.connection import FailureKind
    from exq.store.archive import ArchivedSubmission
    from exq.store.fsio import atomic_write
    from exq.store.intake import ControlReply, ControlRequest, Intake
    from exq.store.store import StatePaths
    from exq.workers import Worker

__all__ = [
    "JOB_ID_RE",
    "ControlReply",
    "ControlRequest",
    "FailureKind",
    "HostReport",
    "Intake",
    "Job",
    "JobStatus",
    "LogSource",
    "QueueState",
    "Scalar",
    "SchedulerConfig",
    "StatePaths",
    "StatusView",
    "Submission",
    "SubmissionSpec",
    "TemplateError",
    "Value",
    "archived",
    "atomic_write",
    "build_workers",
    "control",
    "daemon_alive",
    "find_job",
    "fit_problems",
    "format_value",
    "forward",
    "known_jobs",
    "load_config",
    "load_manifest",
    "manifest_schema",
    "parse_manifest",
    "probe_gpus",
    "probe_hosts",
    "render",
    "resolve_ref",
    "scheduler_config",
    "serve",
    "split_host",
    "state_json",
    "state_paths",
    "status",
    "submit",
    "workdir_note",
]
_LAZY = {
    "JOB_ID_RE": "exq.model.template",
    "ControlReply": "exq.store.intake",
    "ControlRequest": "exq.store.intake",
    "FailureKind": "exq.ssh.connection",
    "Intake": "exq.store.intake",
    "Job": "exq.model.state",
    "JobStatus": "exq.model.state",
    "LogSource": "exq.logs",
    "QueueState": "exq.model.state",
    "Scalar": "exq.model.jobspec",
    "SchedulerConfig": "exq.daemon.context",
    "StatePaths": "exq.store.store",
    "Submission": "exq.model.state",
    "SubmissionSpec": "exq.model.jobspec",
    "TemplateError": "exq.model.template",
    "Value": "exq.model.manifest",
    "atomic_write": "exq.store.fsio",
    "format_value": "exq.model.template",
    "load_config": "exq.config",
    "load_manifest": "exq.model.manifest",
    "parse_manifest": "exq.model.manifest",
    "render": "exq.model.template",
    "workdir_note": "exq.model.manifest",
}
"""The names of `__all__` imported on first use (by `__getattr__`), and their modules. Every exq command
imports exq.api, and these modules load pydantic models, the scheduler or asyncio, which `exq --version`
and most commands do not need; for the same reason the functions below import what they use. Each name is
also imported under TYPE_CHECKING above, for its type."""
log = logging.getLogger("exq")


def __getattr__(name: str) -> object:
    """A name of `_LAZY`, imported now (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # found directly from now on
    return value


def state_paths(state_dir: str | Path | None = None) -> StatePaths:
    """The state directory: the given one, else $EXQ_STATE_DIR, else the XDG default."""
    from exq.store.store import StatePaths, default_state_dir

    return StatePaths(Path(state_dir) if state_dir else default_state_dir())


def submit(paths: StatePaths, spec: SubmissionSpec) -> Intake:
    """Make a submission durable; a running daemon picks it up within a fraction of a second.

    `after` entries naming jobs of other submissions (`SUB/ID`, `label:NAME`) are resolved now, against the
    queue as it is (NotFoundError when one names no job).
    """
    from exq.model.after import external_refs, resolve_external
    from exq.store import intake

    if external_refs(spec):
        spec = resolve_external(spec, known_jobs(paths))
    return intake.submit(paths, spec)


def fit_problems(paths: StatePaths, spec: SubmissionSpec) -> list[str]:
    """Phases of `spec` whose jobs no host could ever run, per the GPUs the daemon last saw on each host (or,
    before any daemon ran, this machine's probe); hosts whose GPUs are not known yet are given the benefit
    of the doubt."""
    from exq.config import LOCAL
    from exq.model.fit import ANY_MEMORY
    from exq.model.fit import fit_problems as problems

    hosts: dict[str, list[tuple[int, int]]] = {}
    index = status(paths).index if paths.snapshot.exists() else None
    if index is not None and index.hosts:
        for gpu in index.gpus:
            hosts.setdefault(gpu.host, []).append((gpu.index, gpu.memory_total))
        hosts.update({h.name: [] for h in index.hosts if h.backend == "none" and h.name not in hosts})
        hosts.update({h.name: [(i, ANY_MEMORY) for i in range(h.slots)] for h in index.hosts if h.slots})
    else:
        snap = probe_gpus(paths)
        hosts[LOCAL] = [(gpu.index, gpu.memory_total) for gpu in snap.gpus]
    return problems(spec, hosts)


def manifest_schema() -> dict[str, Any]:
    """The JSON Schema of manifests (for editors: YAML language servers take JSON Schema)."""
    from exq.model.manifest import ManifestModel

    schema = ManifestModel.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "exq manifest"
    return schema


def known_jobs(paths: StatePaths) -> list[KnownJob]:
    """Every job of the queue, and of submissions not ingested yet, in submission order (for `after`)."""
    from exq.model.after import KnownJob

    view = status(paths)
    labels = {sub.id: sub.labels for sub in view.state.submissions}
    found = [KnownJob(job.submission, job.id, [*labels.get(job.submission, []), *job.spec.labels])
             for job in view.state.jobs]
    found += [KnownJob(item.id, job.id, [*item.spec.labels, *job.labels])
              for item in view.pending for job in item.spec.jobs]
    return found


def resolve_ref(paths: StatePaths, ref: str) -> list[str]:
    """The keys of the jobs an `after` reference names (see exq.model.after); NotFoundError when none."""
    from exq.model.after import resolve_ref as resolve

    return resolve(ref, known_jobs(paths))


class StatusView:
    """The queue as a reader sees it: its state, submissions not ingested yet, problems.

    Made from the status index alone when that is current: the whole state is then read on first use of
    `state`, and `index` (what the default `exq status` shows) needs no state at all.
    """

    def __init__(self, state: QueueState | None, pending: list[Intake], daemon_alive: bool,
                 paths: StatePaths | None = None, problems: tuple[str, ...] = (),
                 index: StatusIndex | None = None) -> None:
        if state is None and (index is None or paths is None):
            raise ValueError("a StatusView needs a state, or an index and the paths to read the state from")
        self._state, self._index = state, index
        self._from_index = state is None
        self.pending = pending
        """Submissions written by `exq submit` that no daemon has ingested yet."""
        self.daemon_alive = daemon_alive
        self.paths = paths
        """The state directory it was read from (names hook logs)."""
        self.problems = problems
        """What keeps the queue from working normally now (a full disk...), for the reader to see first."""

    @property
    def state(self) -> QueueState:
        """The whole state (read now if the view was made from the index)."""
        if self._state is None:
            from exq.store.store import read_state

            assert self.paths is not None
            self._state = read_state(self.paths)
        return self._state

    @property
    def index(self) -> StatusIndex:
        """What the default view shows: the current status index, or that of the state."""
        if self._index is None:
            import time

            from exq.model.summary import summarize

            self._index = summarize(self.state, time.time())
        return self._index

    def with_state(self) -> StatusView:
        """This view made from the whole state (read now if need be), its `index` made from that state too."""
        if not self._from_index:
            return self
        return StatusView(self.state, self.pending, self.daemon_alive, self.paths, self.problems)


def status(paths: StatePaths) -> StatusView:
    """The queue as a reader sees it now: snapshot, newer journal events, and pending submissions.

    Reads only status_index.json when it is current (see `current_status_index`); `state` is then read
    on first use.
    """
    from exq.store import intake
    from exq.store.fsio import disk_full_problem
    from exq.store.store import current_status_index, daemon_running, read_state

    index = current_status_index(paths)
    state = read_state(paths) if index is None else None
    daemon = index.daemon if index is not None else state.daemon if state is not None else None
    damaged: list[Path] = []
    pending = [item for _, item in intake.pending_intakes(paths, False, damaged)] if paths.intake.exists() else []
    alive = daemon_running(paths)
    problems = [daemon.problem] if alive and daemon and daemon.problem else []
    if (full := disk_full_problem(paths.root)) is not None:
        problems.append(full)
    if paths.intake.exists():
        problems.extend(intake.damaged_intakes(paths, damaged))
    return StatusView(state, pending, alive, paths, tuple(problems), index)


def daemon_alive(paths: StatePaths) -> bool:
    """Whether a daemon (or `exq run`) holds this state directory now. Cheap: reads no state."""
    from exq.store.store import daemon_running

    return daemon_running(paths)


def state_json(paths: StatePaths) -> bytes:
    """The state as JSON: queue_state.json as it is when it is current, else rebuilt with newer events."""
    from exq.store.store import current_snapshot, read_state

    return current_snapshot(paths) or read_state(paths).model_dump_json().encode()


def archived(paths: StatePaths) -> list[ArchivedSubmission]:
    """The submissions `exq clean` archived, oldest first, with their jobs (from archive.jsonl)."""
    from exq.store.archive import read_archive
    from exq.store.store import read_state

    return read_archive(paths, read_state(paths).archived)


def find_job(state: QueueState, ref: str) -> Job | None:
    """A job by `SUB/ID`, or by bare `ID` (the newest submission that has it)."""
    if "/" in ref:
        return next((j for j in state.jobs if j.key == ref), None)
    matches = [j for j in state.jobs if j.id == ref]
    return matches[-1] if matches else None


def control(paths: StatePaths, req: ControlRequest, timeout: float = 15.0) -> ControlReply:
    """Carry out a control request: through the running daemon, or directly when none runs."""
    import asyncio

    from exq.store import intake
    from exq.store.store import daemon_running

    reply_path = intake.request(paths, req)
    if not daemon_running(paths):
        with contextlib.suppress(DaemonRunningError):  # a daemon started meanwhile: it will answer
            asyncio.run(_apply_offline(paths))
    answer = intake.wait_reply(reply_path, timeout)
    if answer is None:
        raise ExqError(f"no answer from the exq daemon within {timeout:.0f}s; the request stays queued")
    return answer


async def _apply_offline(paths: StatePaths) -> None:
    from exq.config import load_config
    from exq.daemon.scheduler import Scheduler
    from exq.store.store import Store

    store = Store(paths).open()
    try:
        await Scheduler(store, build_workers(paths, load_config()), mode="run").apply_pending_requests()
    finally:
        store.close()


def build_workers(paths: StatePaths, config: ExqConfig) -> dict[str, Worker]:
    """One worker per enabled host: this machine (`local`) and each SSH host of the config."""
    from exq.config import LOCAL
    from exq.gpus.select import select_probe
    from exq.model import contract
    from exq.workers.local import LocalWorker

    workers: dict[str, Worker] = {}
    if config.local_enabled:
        probe = select_probe(scope=str(paths.root))
        workers[LOCAL] = LocalWorker(name=LOCAL, probe=probe, jobs_root=paths.jobs,
                                     job_env={contract.STATE_DIR: str(paths.root)})
    from exq.workers import make_worker  # each kind's module (asyncssh for SSH) loads only when configured

    node_id = node_identity(paths)
    for name, host in config.remote_hosts().items():
        workers[name] = make_worker(name, host, node_id)
    return workers


def node_identity(paths: StatePaths) -> str:
    """Names this daemon's directory on remote hosts, so two daemons sharing a login never mix jobs."""
    import hashlib
    import socket

    digest = hashlib.sha256(f"{socket.gethostname()}:{paths.root}".encode()).hexdigest()[:12]
    return f"{socket.gethostname()}-{digest}"


def scheduler_config(config: ExqConfig, **overrides: Any) -> SchedulerConfig:
    """Scheduler settings with each host's lost timeout from the config."""
    from exq.daemon.context import SchedulerConfig

    lost = {name: host.lost_timeout for name, host in config.remote_hosts().items()}
    return SchedulerConfig(lost_timeouts=lost, **overrides)


@dataclass(frozen=True)
class HostReport:
    """One configured host as a live probe sees it now."""

    name: str
    snapshot: GpuSnapshot | None
    error: str | None
    error_kind: FailureKind | None = None
    """What kind of failure `error` is (host key, auth, refused, dns, timeout, unreachable, other)."""


def probe_hosts(paths: StatePaths, timeout: float = 60.0) -> list[HostReport]:
    """Probe every enabled host of the config now (connecting over SSH where needed)."""
    import asyncio

    from exq.config import load_config

    return asyncio.run(_probe_hosts(build_workers(paths, load_config()), timeout))


async def _probe_hosts(workers: dict[str, Worker], timeout: float) -> list[HostReport]:
    import asyncio

    from exq.ssh.connection import failure_kind

    async def one(name: str, worker: Worker) -> HostReport:
        try:
            return HostReport(name, await asyncio.wait_for(worker.probe(), timeout), None)
        except (ExqError, TimeoutError) as exc:
            return HostReport(name, None, str(exc) or "timed out", failure_kind(exc))
        finally:
            await worker.close()

    return list(await asyncio.gather(*(one(n, w) for n, w in workers.items())))


def probe_gpus(paths: StatePaths) -> GpuSnapshot:
    """What this machine's GPU probe sees now (a simulation is scoped to the state dir `paths`)."""
    from exq.gpus.select import select_probe

    probe = select_probe(scope=str(paths.root))
    try:
        return probe.snapshot()
    finally:
        probe.close()


def serve(
    paths: StatePaths,
    config: SchedulerConfig | None = None,
    until: Callable[[QueueState], bool] | None = None,
    mode: str = "daemon",
) -> QueueState:
    """Run the scheduler in this process until SIGTERM/SIGINT (drain) or until `until(state)` holds."""
    import asyncio

    return asyncio.run(_serve(paths, config, until, mode))


async def _serve(
    paths: StatePaths,
    config: SchedulerConfig | None,
    until: Callable[[QueueState], bool] | None,
    mode: str,
) -> QueueState:
    import asyncio

    from exq.config import load_config
    from exq.daemon.scheduler import Scheduler
    from exq.notify import Notifier
    from exq.store.store import Store

    host_config = load_config()
    store = Store(paths).open()
    workers = build_workers(paths, host_config)
    scheduler = Scheduler(store, workers, config or scheduler_config(host_config), mode=mode)
    notifier = Notifier.from_env()  # systemd's Type=notify; does nothing without NOTIFY_SOCKET

    def drain() -> None:
        notifier.stopping()
        scheduler.drain()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, drain)
    watchdog = asyncio.ensure_future(notifier.watchdog())
    try:
        await scheduler.run(until, on_turn=notifier.on_turn)
        return store.state
    finally:
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
        notifier.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        for worker in workers.values():
            await worker.close()
        store.close()
