"""The local worker: attempts on this machine, each run by runner.sh in its own session."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import signal
import subprocess
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from exq.errors import WorkerError
from exq.gpus import GpuProbe, GpuSnapshot
from exq.workers.attempts import (
    log_tail,
    make_private_dirs,
    missing_paths,
    peek_results,
    read_result,
    read_text,
    runner_env,
    write_tombstone,
)
from exq.workers.base import (
    RUNNER_PATH,
    START_TIMEOUT,
    AttemptReport,
    Capabilities,
    LaunchRefused,
    LaunchRequest,
    RunRecord,
    parse_record,
)

POLL_INTERVAL = 0.2
"""Seconds between checks of an attempt whose runner is not our child."""
SPAWN_THREADS = 2
"""Threads that start runners, so that no launch waits for another to fork."""
REAPED_KEPT = 4096
"""How many reaped runners a worker remembers (the oldest is forgotten first)."""
CREATE_TIME_SLACK = 2.0
"""A process created this long after the recorded start is not our runner (its pid was reused)."""




def _runner_alive(pid: int, reference: float | None) -> bool:
    """Whether `pid` is still the runner: running, not a zombie, created before `reference` (+slack)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return reference is None or proc.create_time() <= reference + CREATE_TIME_SLACK
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def read_record(attempt_dir: str | Path, known: tuple[int, bool] | None = None) -> RunRecord:
    """What the attempt directory records now, and whether its runner lives (see `parse_record`);
    `known`: (pid, alive) of a runner whose state the caller knows (its own child, running or reaped)."""
    d = os.fspath(attempt_dir)

    def runner_alive(pid: int, started_at: float | None) -> bool:
        if known is not None and known[0] == pid:
            return known[1]
        reference = started_at
        if reference is None:  # no pid record yet: the runner wrote its claim just after it started
            with contextlib.suppress(OSError):
                reference = os.stat(os.path.join(d, "claim")).st_mtime
        return _runner_alive(pid, reference)

    return parse_record(lambda name: read_text(os.path.join(d, name)), runner_alive)


def group_alive(pgid: int) -> bool:
    """Whether process group `pgid` has a process that is not a zombie."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):
            continue
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


_DETACHED: list[subprocess.Popen[bytes]] = []
"""Runners still running when their worker closed: kept (and reaped when found ended) so that no
Popen is collected while its process runs."""


@functools.cache
def _env_default_signal() -> str:
    """Whether env(1) here has --default-signal ("yes"/"no"), asked once rather than by every runner."""
    try:
        done = subprocess.run(["env", "--default-signal", "true"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "no"
    return "yes" if done.returncode == 0 else "no"


@dataclass
class _Child:
    """A runner started by this worker: its start line is read and it is reaped as soon as it exits."""

    proc: subprocess.Popen[bytes]
    loop: asyncio.AbstractEventLoop
    exited: asyncio.Future[None]
    started: asyncio.Future[bool]
    """True once the runner said "started"; False when its stdout closed without saying it."""
    pidfd: int | None = None
    said: bytes = b""

    @property
    def stdout(self) -> int | None:
        """The read end of the runner's stdout, where it says "started"; None once closed."""
        out = self.proc.stdout
        return None if out is None or out.closed else out.fileno()

    def watch_start(self) -> None:
        assert self.stdout is not None
        os.set_blocking(self.stdout, False)
        self.loop.add_reader(self.stdout, self._read_start)

    def _read_start(self, final: bool = False) -> None:
        """Read what the runner said; `final`: it has exited, so what is not there now never comes."""
        while self.stdout is not None and not self.started.done():
            try:
                chunk = os.read(self.stdout, 64)
            except BlockingIOError:
                if not final:
                    return
                chunk = b""
            except OSError:
                chunk = b""
            self.said += chunk
            if b"started\n" in self.said or not chunk:
                self.started.set_result(b"started\n" in self.said)
        self._stop_reading()
        if not self.started.done():
            self.started.set_result(False)

    def _stop_reading(self) -> None:
        if (fd := self.stdout) is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                self.loop.remove_reader(fd)
            assert self.proc.stdout is not None
            self.proc.stdout.close()

    def stop_watching(self) -> None:
        if self.pidfd is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                self.loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None

    def reap(self) -> None:
        self.stop_watching()
        self.proc.poll()
        self._read_start(final=True)
        if not self.exited.done():
            self.exited.set_result(None)

    def close(self) -> None:
        """Stop reading and watching (the runner goes on)."""
        self._stop_reading()
        self.stop_watching()


class LocalWorker:
    """The Worker for this machine."""

    capabilities = Capabilities(on_daemon_host=True)

    def __init__(
        self,
        name: str = "local",
        probe: GpuProbe | None = None,
        runner_path: str | Path = RUNNER_PATH,
        *,
        jobs_root: str | Path,
        cleanup_grace: float = 10.0,
        job_env: Mapping[str, str] | None = None,
    ) -> None:
        if probe is None:
            from exq.gpus.select import select_probe

            probe = select_probe()
        self.name = name
        self._probe = probe
        self.runner_path = os.path.abspath(runner_path)
        self.jobs_root = os.path.abspath(jobs_root)
        """Attempt directories live under jobs_root/<submission>/<job>/<attempt>."""
        self.cleanup_grace = cleanup_grace
        """Seconds the runner waits between SIGTERM and SIGKILL for leftovers of an ended job."""
        self.job_env = dict(job_env or {})
        """Variables every job on this host gets, over the manifest's (EXQ_STATE_DIR: jobs here reach the queue)."""
        self._children: dict[str, _Child] = {}
        self._reaped: dict[str, int] = {}
        self._spawner: ThreadPoolExecutor | None = None
        """Runners of this worker seen exiting, by attempt dir, until their attempt is reported."""

    def attempt_dir(self, submission: str, job_id: str, number: int) -> str:
        return os.path.join(self.jobs_root, submission, job_id, str(number))

    async def prepare_workdir(self, local: str, dest: str, exclude: list[str]) -> str:
        """Nothing to copy on the daemon's own machine: jobs run in `local` itself."""
        return local

    async def probe(self) -> GpuSnapshot:
        return await asyncio.to_thread(self._probe.snapshot)

    async def launch(self, request: LaunchRequest) -> RunRecord:
        d = Path(os.path.abspath(request.attempt_dir))
        added = runner_env(request, {**self._probe.job_env, **request.env, **self.job_env}, self.cleanup_grace,
                           self.name, default_signal=_env_default_signal())
        env = {**os.environ, **added}
        if not request.setup:
            env.pop("EXQ_RUNNER_SETUP", None)
        child = await self._spawn(d, env)
        try:
            started = await asyncio.wait_for(asyncio.shield(child.started), START_TIMEOUT)
        except TimeoutError:
            _signal_group(child.proc.pid, signal.SIGKILL)
            raise WorkerError(f"runner for {d} did not start the job within {START_TIMEOUT:g}s") from None
        record = read_record(d, (child.proc.pid, not child.exited.done()))
        if not started and record.pgid is None and not record.tombstoned:
            raise WorkerError(f"runner for {d} exited before starting the job")
        return record

    async def wait(self, attempt_dir: str) -> RunRecord:
        """Return once the runner has finished (exit recorded, leftovers cleaned up) or vanished."""
        d = os.path.abspath(attempt_dir)
        child = self._children.get(d)
        if child is not None and child.loop is asyncio.get_running_loop():
            await asyncio.shield(child.exited)
            return read_record(d, (child.proc.pid, False))
        while True:
            record = read_record(d)
            if not record.alive:
                return record
            await asyncio.sleep(POLL_INTERVAL)

    async def read(self, attempt_dir: str) -> RunRecord:
        return read_record(attempt_dir)

    async def kill(self, attempt_dir: str, grace: float = 10.0) -> None:
        record = read_record(attempt_dir)
        pgid = record.pgid
        if pgid is None or (record.ended and not record.alive):
            return
        _signal_group(pgid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while group_alive(pgid):
            if loop.time() >= deadline:
                _signal_group(pgid, signal.SIGKILL)
                return
            await asyncio.sleep(0.05)

    async def tombstone(self, attempt_dir: str) -> bool:
        return write_tombstone(Path(attempt_dir))

    async def group_alive(self, pgid: int) -> bool:
        return group_alive(pgid)

    async def report(
        self, attempt_dir: str, workdir: str, result_file: str, outputs: list[str]
    ) -> AttemptReport:
        d = Path(attempt_dir)
        result, result_error = read_result(Path(workdir, result_file))
        pid = self._reaped.pop(os.path.abspath(attempt_dir), None)
        return AttemptReport(
            record=read_record(d, None if pid is None else (pid, False)),
            log_tail=log_tail(d / "log"),
            result=result,
            result_error=result_error,
            missing_outputs=missing_paths(workdir, outputs),
        )

    async def missing_paths(self, workdir: str, globs: list[str]) -> list[str]:
        return await asyncio.to_thread(missing_paths, os.path.abspath(workdir), globs)

    async def peek_results(self, paths: list[str]) -> dict[str, dict[str, Any]]:
        return await asyncio.to_thread(peek_results, paths)

    def waiting(self) -> dict[str, str]:
        """Nothing waits in a queue of the host's own: a launch starts the job."""
        return {}

    async def close(self) -> None:
        """Stop watching runners (they keep running) and close the probe."""
        _DETACHED[:] = [p for p in _DETACHED if p.poll() is None]
        for child in self._children.values():
            child.close()
            if child.proc.poll() is None:
                _DETACHED.append(child.proc)
        self._children.clear()
        if self._spawner is not None:
            self._spawner.shutdown(wait=True)
            self._spawner = None
        self._probe.close()

    async def _spawn(self, attempt_dir: Path, env: dict[str, str]) -> _Child:
        """Create the attempt dir and start its runner in a thread of the worker's own (the daemon's loop
        goes on meanwhile: a fork waits for the child to exec, which on a busy machine takes a while);
        then watch the runner's start line and its exit from the loop."""
        loop = asyncio.get_running_loop()
        if self._spawner is None:
            self._spawner = ThreadPoolExecutor(max_workers=SPAWN_THREADS, thread_name_prefix="exq-spawn")
        proc = await loop.run_in_executor(self._spawner, self._start_runner, attempt_dir, env)
        child = _Child(proc, loop, loop.create_future(), loop.create_future())
        child.watch_start()
        self._children[str(attempt_dir)] = child
        child.exited.add_done_callback(lambda _: self._forget(str(attempt_dir), child))
        try:
            child.pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # not Linux >= 5.3: a thread waits for the runner instead
            threading.Thread(target=self._reap_in_thread, args=(child,), daemon=True).start()
        else:
            loop.add_reader(child.pidfd, child.reap)
        return child

    def _start_runner(self, attempt_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Create the attempt dir and start the runner in a new session, stdin and stderr on /dev/null and
        stdout a pipe for its start line. (Not posix_spawn, which is cheaper but leaves glibc's internal
        signals ignored in the job.)"""
        make_private_dirs(attempt_dir)
        sh = "/bin/sh" if os.path.exists("/bin/sh") else "sh"
        try:
            proc = subprocess.Popen(
                [sh, self.runner_path, str(attempt_dir)],
                env=env,
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except ValueError as exc:  # what launch_problem did not foresee
            raise LaunchRefused(f"cannot start the runner for {attempt_dir}: {exc}") from exc
        except OSError as exc:
            if exc.errno == errno.E2BIG:
                raise LaunchRefused("the job's command and environment are too large for a process "
                                    f"(E2BIG: {exc.strerror})") from exc
            raise WorkerError(f"cannot start the runner for {attempt_dir}: {exc}") from exc
        return proc

    def _forget(self, key: str, child: _Child) -> None:
        if self._children.get(key) is child:
            del self._children[key]
        if len(self._reaped) >= REAPED_KEPT:
            del self._reaped[next(iter(self._reaped))]
        self._reaped[key] = child.proc.pid

    @staticmethod
    def _reap_in_thread(child: _Child) -> None:
        child.proc.wait()
        with contextlib.suppress(RuntimeError):
            child.loop.call_soon_threadsafe(child.reap)
