"""The public API of exq: what the CLI and the bridge use, and nothing deeper."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exq.config import ExqConfig, load_config
from exq.errors import DaemonRunningError, ExqError
from exq.forward import forward, split_host
from exq.logs import LogSource
from exq.notify import Notifier
from exq.queue import intake
from exq.queue.fsio import atomic_write, disk_full_problem
from exq.queue.gpus import GpuSnapshot
from exq.queue.gpus.select import select_probe
from exq.queue.intake import ControlReply, ControlRequest, Intake
from exq.queue.jobspec import SubmissionSpec
from exq.queue.manifest import Value, load_manifest, parse_manifest, workdir_note
from exq.queue.scheduler import LOCAL_HOST, Scheduler, SchedulerConfig
from exq.queue.state import Job, JobStatus, QueueState, Submission
from exq.queue.store import (
    StatePaths,
    Store,
    current_snapshot,
    daemon_running,
    default_state_dir,
    read_state,
)
from exq.queue.template import JOB_ID_RE, TemplateError, format_value, render
from exq.queue.workers import Worker
from exq.queue.workers.local import LocalWorker
from exq.queue.workers.ssh import SshWorker
from exq.queue.workers.sshconn import FailureKind, failure_kind

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
    "SchedulerConfig",
    "StatePaths",
    "StatusView",
    "Submission",
    "SubmissionSpec",
    "TemplateError",
    "Value",
    "atomic_write",
    "build_workers",
    "control",
    "daemon_alive",
    "find_job",
    "format_value",
    "forward",
    "load_config",
    "load_manifest",
    "parse_manifest",
    "probe_gpus",
    "probe_hosts",
    "render",
    "scheduler_config",
    "serve",
    "split_host",
    "state_json",
    "state_paths",
    "status",
    "submit",
    "workdir_note",
]
log = logging.getLogger("exq")


def state_paths(state_dir: str | Path | None = None) -> StatePaths:
    """The state directory: the given one, else $EXQ_STATE_DIR, else the XDG default."""
    return StatePaths(Path(state_dir) if state_dir else default_state_dir())


def submit(paths: StatePaths, spec: SubmissionSpec) -> Intake:
    """Make a submission durable; a running daemon picks it up within a fraction of a second."""
    return intake.submit(paths, spec)


@dataclass(frozen=True)
class StatusView:
    state: QueueState
    pending: list[Intake]
    """Submissions written by `exq submit` that no daemon has ingested yet."""
    daemon_alive: bool
    paths: StatePaths | None = None
    """The state directory it was read from (names hook logs)."""
    problems: tuple[str, ...] = ()
    """What keeps the queue from working normally now (a full disk...), for the reader to see first."""


def status(paths: StatePaths) -> StatusView:
    """The queue as a reader sees it now: snapshot, newer journal events, and pending submissions."""
    state = read_state(paths)
    damaged: list[Path] = []
    pending = [item for _, item in intake.pending_intakes(paths, False, damaged)] if paths.intake.exists() else []
    alive = daemon_running(paths)
    problems = [state.daemon.problem] if alive and state.daemon and state.daemon.problem else []
    if (full := disk_full_problem(paths.root)) is not None:
        problems.append(full)
    if paths.intake.exists():
        problems.extend(intake.damaged_intakes(paths, damaged))
    return StatusView(state, pending, alive, paths, tuple(problems))


def daemon_alive(paths: StatePaths) -> bool:
    """Whether a daemon (or `exq run`) holds this state directory now. Cheap: reads no state."""
    return daemon_running(paths)


def state_json(paths: StatePaths) -> bytes:
    """The state as JSON: queue_state.json as it is when it is current, else rebuilt with newer events."""
    return current_snapshot(paths) or read_state(paths).model_dump_json().encode()


def find_job(state: QueueState, ref: str) -> Job | None:
    """A job by `SUB/ID`, or by bare `ID` (the newest submission that has it)."""
    if "/" in ref:
        return next((j for j in state.jobs if j.key == ref), None)
    matches = [j for j in state.jobs if j.id == ref]
    return matches[-1] if matches else None


def control(paths: StatePaths, req: ControlRequest, timeout: float = 15.0) -> ControlReply:
    """Carry out a control request: through the running daemon, or directly when none runs."""
    reply_path = intake.request(paths, req)
    if not daemon_running(paths):
        with contextlib.suppress(DaemonRunningError):  # a daemon started meanwhile: it will answer
            asyncio.run(_apply_offline(paths))
    answer = intake.wait_reply(reply_path, timeout)
    if answer is None:
        raise ExqError(f"no answer from the exq daemon within {timeout:.0f}s; the request stays queued")
    return answer


async def _apply_offline(paths: StatePaths) -> None:
    store = Store(paths).open()
    try:
        await Scheduler(store, build_workers(paths, load_config()), mode="run").apply_pending_requests()
    finally:
        store.close()


def build_workers(paths: StatePaths, config: ExqConfig) -> dict[str, Worker]:
    """One worker per enabled host: this machine (`local`) and each SSH host of the config."""
    workers: dict[str, Worker] = {}
    if config.local_enabled:
        probe = select_probe(scope=str(paths.root))
        workers[LOCAL_HOST] = LocalWorker(name=LOCAL_HOST, probe=probe, jobs_root=paths.jobs)
    node_id = node_identity(paths)
    for name, host in config.remote_hosts().items():
        workers[name] = SshWorker(name, host, node_id)
    return workers


def node_identity(paths: StatePaths) -> str:
    """Names this daemon's directory on remote hosts, so two daemons sharing a login never mix jobs."""
    digest = hashlib.sha256(f"{socket.gethostname()}:{paths.root}".encode()).hexdigest()[:12]
    return f"{socket.gethostname()}-{digest}"


def scheduler_config(config: ExqConfig, **overrides: Any) -> SchedulerConfig:
    """Scheduler settings with each host's lost timeout from the config."""
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
    return asyncio.run(_probe_hosts(build_workers(paths, load_config()), timeout))


async def _probe_hosts(workers: dict[str, Worker], timeout: float) -> list[HostReport]:
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
    return asyncio.run(_serve(paths, config, until, mode))


async def _serve(
    paths: StatePaths,
    config: SchedulerConfig | None,
    until: Callable[[QueueState], bool] | None,
    mode: str,
) -> QueueState:
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
