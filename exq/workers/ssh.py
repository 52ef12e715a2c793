"""The SSH worker: attempts on a remote host over one persistent asyncssh connection.

The remote host needs only POSIX sh, coreutils and setsid: every command is built (and its output
parsed) in `remote.py`; runner.sh is uploaded to the host's exq dir. Host keys are always verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from exq.config import HostConfig
from exq.errors import WorkerError
from exq.gpus import GpuSnapshot
from exq.gpus.nvidia_smi import PROBE_COMMAND, parse_probe_output
from exq.ssh import connection as sshconn
from exq.ssh.connection import HostUnreachableError, connect, describe, failure_kind
from exq.ssh.sync import sync_tree
from exq.workers import remote
from exq.workers.base import RUNNER_PATH, START_TIMEOUT, AttemptReport, Capabilities, LaunchRequest, RunRecord

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 30.0
"""Seconds any remote command may take beyond the waiting it does on purpose."""
PROBE_TIMEOUT = 60.0
MAX_CHANNELS = 8
EVENTS_NAME = "events"
"""The file on each host where runners say they ended (runner.sh's EXQ_RUNNER_EVENTS)."""
EVENTS_FALLBACK = 5.0
"""While the events channel follows a host, seconds between polls of every attempt watched there."""
"""Commands in flight on one connection (OpenSSH's MaxSessions defaults to 10)."""
NETWORK_BACKOFF_MAX = 2.0
"""Seconds between reconnects at most while the host cannot be reached at all (refused, timeout, no route):
trying costs it nothing, and a host that answers again is seen within seconds, so the copies of jobs moved
off it are killed soon (the longer backoff, up to backoff_max, is for hosts that answer but refuse exq)."""
_NETWORK_FAILURES = ("refused", "timeout", "unreachable", "dns")


@dataclass(frozen=True)
class ConnectionHealth:
    """Whether this worker's SSH connection is up (the scheduler's HostTracker decides about lost hosts)."""

    up: bool
    since: float
    """Unix time of the last change of `up`."""
    error: str | None = None


class _Client(asyncssh.SSHClient):
    """Tells the worker when its connection is lost."""

    def __init__(self, worker: SshWorker) -> None:
        self._worker = worker

    def connection_lost(self, exc: Exception | None) -> None:
        self._worker._lost(self, exc)


class SshWorker:
    """The Worker for one SSH host."""

    capabilities = Capabilities()

    def __init__(
        self,
        name: str,
        host: HostConfig,
        node_id: str,
        *,
        cleanup_grace: float = 10.0,
        poll_interval: float = 0.25,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
    ) -> None:
        if not node_id or "/" in node_id or node_id in (".", ".."):
            raise WorkerError(f"invalid node id {node_id!r}")
        self.name = name
        self.host = host
        self.node_id = node_id
        self.cleanup_grace = cleanup_grace
        self.poll_interval = poll_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.commands: Counter[str] = Counter()
        """Remote commands sent, per kind (poll, launch, read, ...)."""
        self.poll_rounds = 0
        """Rounds of the host-level poller (each sends at most one `poll` command)."""
        self.exq_dir: str | None = None
        self.home: str | None = None
        self._health = ConnectionHealth(False, time.time(), "not connected yet")
        self._conn: asyncssh.SSHClientConnection | None = None
        self._client: _Client | None = None
        self._connecting = asyncio.Lock()
        self._channels = asyncio.Semaphore(MAX_CHANNELS)
        self._retry_at = 0.0
        self._backoff = backoff_initial
        self._last_error: WorkerError | None = None
        self._waiters: dict[str, list[asyncio.Future[RunRecord]]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._poll_now = asyncio.Event()
        self._ended: set[str] = set()
        """Watched attempt dirs said to have ended (or new): the next poll round reads just these."""
        self._full_round = True
        """The next poll round reads every watched attempt (none is known to be missed otherwise)."""
        self._events: asyncio.Task[None] | None = None
        self._following = False
        """Whether the events channel follows the host's runners now: polls are then only a fallback."""

    @property
    def health(self) -> ConnectionHealth:
        return self._health

    @property
    def address(self) -> str:
        return sshconn.address(self.name, self.host)

    # --- connection --------------------------------------------------------------------------

    async def ensure_connected(self) -> None:
        """Connect (and set up the exq dir) unless connected; HostKeyError / HostUnreachableError."""
        await self._connection()

    async def _connection(self) -> asyncssh.SSHClientConnection:
        if self._conn is not None:
            return self._conn
        async with self._connecting:
            if self._conn is not None:
                return self._conn
            wait = self._retry_at - time.monotonic()
            if wait > 0 and self._last_error is not None:
                last = self._last_error
                raise type(last)(f"{last} (next try in {wait:.1f}s)") from (last.__cause__ or last)
            try:
                conn, client = await self._open()
            except WorkerError as exc:
                self._last_error = exc
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, self._backoff_cap(exc))
                self._set_health(False, str(exc))
                raise
            self._conn, self._client, self._last_error = conn, client, None
            self._backoff = self.backoff_initial
            self._set_health(True, None)
            self._events = asyncio.get_running_loop().create_task(self._follow_events(conn))
            return conn

    def _backoff_cap(self, exc: WorkerError) -> float:
        """The longest wait before the next connect after `exc` (see NETWORK_BACKOFF_MAX)."""
        if failure_kind(exc) in _NETWORK_FAILURES:
            return min(self.backoff_max, NETWORK_BACKOFF_MAX)
        return self.backoff_max

    async def _open(self) -> tuple[asyncssh.SSHClientConnection, _Client]:
        """Connect, then set the exq dir up; close the connection again if the setup fails."""
        client = _Client(self)
        conn = await connect(self.name, self.host, client_factory=lambda: client)
        try:
            await self._setup(conn)
        except BaseException:
            conn.abort()
            raise
        return conn, client

    async def _setup(self, conn: asyncssh.SSHClientConnection) -> None:
        """Resolve home and exq dir; upload runner.sh (atomically, 0700) when missing or different."""
        out = await self._call(conn, "setup", remote.setup_command(self.host.root, self.node_id), COMMAND_TIMEOUT)
        setup = remote.parse_setup(out)
        runner = RUNNER_PATH.read_bytes()
        target = posixpath.join(setup.exq_dir, remote.RUNNER_NAME)
        if setup.runner != runner:
            tmp = f"{target}.{secrets.token_hex(4)}.tmp"
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT), conn.start_sftp_client() as sftp:
                    async with sftp.open(tmp, "wb", asyncssh.SFTPAttrs(permissions=0o700)) as f:
                        await f.write(runner)
                    await sftp.chmod(tmp, 0o700)
                    await sftp.posix_rename(tmp, target)
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                raise HostUnreachableError(f"host {self.name}: cannot upload {target}: {describe(exc)}") from exc
        self.home, self.exq_dir = setup.home, setup.exq_dir

    def _lost(self, client: _Client, exc: Exception | None) -> None:
        if client is self._client:
            self._drop(f"connection lost: {describe(exc)}" if exc else "connection closed")

    def _drop(self, reason: str) -> None:
        """Forget the connection (the next call reconnects at once) and mark the host down."""
        conn, self._conn, self._client = self._conn, None, None
        if conn is not None:
            conn.abort()
            self._retry_at, self._backoff = 0.0, self.backoff_initial
            log.warning("%s: %s", self.name, reason)
        self._set_health(False, reason)

    def _set_health(self, up: bool, error: str | None) -> None:
        since = self._health.since if up == self._health.up else time.time()
        self._health = ConnectionHealth(up, since, error)

    async def _run(self, kind: str, command: str, timeout: float, stdin: str | None = None) -> str:
        return await self._call(await self._connection(), kind, command, timeout, stdin)

    async def _call(self, conn: asyncssh.SSHClientConnection, kind: str, command: str, timeout: float,
                    stdin: str | None = None) -> str:
        """Run one command; its stdout. HostUnreachableError (and the host marked down) when the
        connection fails or no answer comes within `timeout`; WorkerError when the command fails."""
        async with self._channels:
            self.commands[kind] += 1
            try:
                result = await asyncio.wait_for(conn.run(command, input=stdin, errors="replace"), timeout)
            except asyncssh.ChannelOpenError as exc:
                if conn is self._conn:
                    raise WorkerError(f"host {self.name}: cannot open a channel for {kind}: {exc}") from exc
                raise HostUnreachableError(f"host {self.name}: {kind}: {describe(exc)}") from exc
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                reason = f"no answer to {kind} within {timeout:g}s" if isinstance(exc, TimeoutError) else describe(exc)
                self._drop_if_current(conn, reason)
                raise HostUnreachableError(f"host {self.name} unreachable: {reason}") from exc
        if result.exit_status is None and result.exit_signal is None:
            self._drop_if_current(conn, f"{kind}: connection lost")
            raise HostUnreachableError(f"host {self.name} unreachable: {kind}: connection lost")
        if result.exit_status != 0:
            said = str(result.stderr or result.stdout or "").strip()[-500:]
            how = f"signal {result.exit_signal[0]}" if result.exit_signal else f"exit {result.exit_status}"
            raise WorkerError(f"host {self.name}: {kind} failed ({how}): {said}")
        return str(result.stdout)

    def _drop_if_current(self, conn: asyncssh.SSHClientConnection, reason: str) -> None:
        if conn is self._conn:
            self._drop(reason)
        else:
            conn.abort()

    # --- the Worker interface ----------------------------------------------------------------

    def attempt_dir(self, submission: str, job_id: str, number: int) -> str:
        if self.exq_dir is None:
            raise WorkerError(f"host {self.name}: not connected yet (probe it before placing jobs there)")
        return posixpath.join(self.exq_dir, "jobs", submission, job_id, str(number))

    def _path(self, path: str) -> str:
        """`path` on the host, absolute (relative ones are under the login's home), normalized."""
        if "\n" in path or "\0" in path:
            raise WorkerError(f"invalid path on {self.name}: {path!r}")
        if not path.startswith("/"):
            if self.home is None:
                raise WorkerError(f"host {self.name}: relative path {path!r} before the first connection")
            path = posixpath.join(self.home, path)
        return posixpath.normpath(path)

    async def prepare_workdir(self, local: str, dest: str, exclude: list[str]) -> str:
        """Copy what changed in directory `local` to `dest` on the host over SFTP; returns `dest`, absolute."""
        conn = await self._connection()
        target = self._path(dest)
        try:
            async with conn.start_sftp_client() as sftp:
                stats = await sync_tree(sftp, Path(local), target, exclude)
        except (OSError, asyncssh.Error) as exc:
            raise HostUnreachableError(f"host {self.name}: code sync to {target}: {describe(exc)}") from exc
        log.info("host %s: synced %s -> %s: %d of %d files uploaded (%d bytes) in %.1fs", self.name, local,
                 target, stats.files_uploaded, stats.files_seen, stats.bytes_uploaded, stats.seconds)
        return target

    async def probe(self) -> GpuSnapshot:
        out = await self._run("probe", PROBE_COMMAND, PROBE_TIMEOUT)
        return parse_probe_output(out, time.time())

    @property
    def _events_file(self) -> str:
        assert self.exq_dir is not None
        return posixpath.join(self.exq_dir, EVENTS_NAME)

    async def _follow_events(self, conn: asyncssh.SSHClientConnection) -> None:
        """Follow the runners' ends on this connection (one long-lived channel): each one that is watched
        is read in the next poll round, at once. When the channel ends, polls take over again."""
        try:
            async with conn.create_process(remote.events_command(self._events_file), errors="replace") as process:
                async for line in process.stdout:
                    if line.startswith(remote.MARKER):
                        self._following, self._full_round = True, True  # ends before now: read them all
                    elif line.startswith("ended ") and (d := line[6:].rstrip("\n")) in self._waiters:
                        self._ended.add(d)
                    else:
                        continue
                    self._poll_now.set()
        except (OSError, asyncssh.Error) as exc:
            log.debug("%s: events channel: %s", self.name, describe(exc))
        finally:
            self._following, self._full_round = False, True
            self._poll_now.set()

    async def launch(self, request: LaunchRequest) -> RunRecord:
        await self._connection()
        assert self.exq_dir is not None
        d = self._path(request.attempt_dir)
        env = {**request.env, "EXQ_RUNNER_EVENTS": self._events_file}
        req = LaunchRequest(d, request.cmd, self._path(request.workdir), env, request.setup)
        command = remote.launch_command(posixpath.join(self.exq_dir, remote.RUNNER_NAME), req, self.cleanup_grace)
        out = await self._run("launch", command, START_TIMEOUT + COMMAND_TIMEOUT)
        return remote.parse_launch(out, d, req.workdir, self.name)

    async def read(self, attempt_dir: str) -> RunRecord:
        return (await self._records([self._path(attempt_dir)], "read"))[0]

    async def _records(self, dirs: list[str], kind: str) -> list[RunRecord]:
        out = await self._run(kind, remote.poll_command(), COMMAND_TIMEOUT, remote.poll_input(dirs))
        return remote.parse_records(out, len(dirs))

    async def wait(self, attempt_dir: str) -> RunRecord:
        """Return once the runner has finished (exit recorded, cleanup done) or vanished. While the
        host is unreachable this keeps waiting."""
        d = self._path(attempt_dir)
        future: asyncio.Future[RunRecord] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(d, []).append(future)
        self._ended.add(d)  # a new attempt is looked at in the next round: it may have ended already
        self._poll_now.set()
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        try:
            return await future
        finally:
            waiters = self._waiters.get(d, [])
            if future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self._waiters[d]

    async def _poll(self) -> None:
        """The host's one poller: one remote command per round. While the events channel follows the
        host, a round reads the attempts said to have ended (and new ones), and every watched attempt only
        every EVENTS_FALLBACK seconds; otherwise every watched attempt every poll_interval."""
        next_full = 0.0
        while self._waiters:
            now = time.monotonic()
            if self._full_round or not self._following or now >= next_full:
                self._full_round = False
                dirs = list(self._waiters)
                next_full = now + (EVENTS_FALLBACK if self._following else self.poll_interval)
            else:
                dirs = [d for d in self._waiters if d in self._ended]
            self._ended.clear()
            if dirs:
                await self._poll_round(dirs)
            if self._waiters:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._poll_now.wait(), max(0.0, next_full - time.monotonic()))
                self._poll_now.clear()

    async def _poll_round(self, dirs: list[str]) -> None:
        """Read these attempts' records (one command) and hand the ended ones to their waiters."""
        self.poll_rounds += 1
        try:
            records = await self._records(dirs, "poll")
        except WorkerError as exc:
            log.debug("%s: poll failed: %s", self.name, exc)
            self._ended.update(dirs)
            return
        for d, record in zip(dirs, records, strict=True):
            if not record.alive:
                for future in self._waiters.pop(d, []):
                    if not future.done():
                        future.set_result(record)

    async def kill(self, attempt_dir: str, grace: float = 10.0) -> None:
        command = remote.kill_command(self._path(attempt_dir), grace)
        await self._run("kill", command, grace + COMMAND_TIMEOUT)

    async def tombstone(self, attempt_dir: str) -> bool:
        out = await self._run("tombstone", remote.tombstone_command(self._path(attempt_dir)), COMMAND_TIMEOUT)
        return remote.parse_flag(out, "claimed")

    async def group_alive(self, pgid: int) -> bool:
        out = await self._run("group", remote.group_alive_command(pgid), COMMAND_TIMEOUT)
        return remote.parse_flag(out, "alive")

    async def report(self, attempt_dir: str, workdir: str, result_file: str, outputs: list[str]) -> AttemptReport:
        await self._connection()
        d, wd = self._path(attempt_dir), self._path(workdir)
        out = await self._run("report", remote.report_command(d, wd, result_file, outputs), COMMAND_TIMEOUT)
        return remote.parse_report(out, wd, result_file, outputs)

    async def missing_paths(self, workdir: str, globs: list[str]) -> list[str]:
        if not globs:
            return []
        await self._connection()
        out = await self._run("missing", remote.missing_command(self._path(workdir), globs), COMMAND_TIMEOUT)
        return remote.parse_missing(out, globs)

    async def peek_results(self, paths: list[str]) -> dict[str, dict[str, Any]]:
        if not paths:
            return {}
        remote_paths = {self._path(path): path for path in paths}
        out = await self._run("peek", remote.peek_command(), COMMAND_TIMEOUT, remote.poll_input(list(remote_paths)))
        found = remote.parse_peek(out, list(remote_paths))
        return {remote_paths[path]: value for path, value in found.items()}

    def waiting(self) -> dict[str, str]:
        """Nothing waits in a queue of the host's own: a launch starts the job."""
        return {}

    async def close(self) -> None:
        """Stop polling (waiters are cancelled; jobs keep running) and close the connection."""
        for task in (self._poller, self._events):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._poller = self._events = None
        for futures in self._waiters.values():
            for future in futures:
                future.cancel()
        self._waiters.clear()
        conn, self._conn, self._client = self._conn, None, None
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5)
        self._set_health(False, "closed")


def make_worker(name: str, host: HostConfig, node_id: str) -> SshWorker:
    """The worker of an SSH host (see exq.workers.WORKER_KINDS)."""
    return SshWorker(name, host, node_id)
