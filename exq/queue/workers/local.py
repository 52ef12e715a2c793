"""The local worker: attempts on this machine, each run by runner.sh in its own session."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
import os
import signal
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from exq.errors import ExqError, WorkerError
from exq.queue.gpus import GpuProbe, GpuSnapshot
from exq.queue.workers.base import (
    LOG_TAIL_BYTES,
    PEEK_LIMIT,
    TOMBSTONE,
    AttemptReport,
    LaunchRequest,
    RunRecord,
    parse_record,
    parse_result,
)

RUNNER_PATH = Path(__file__).with_name("runner.sh")
START_TIMEOUT = 10.0
"""Seconds launch waits for the runner to record its pid."""
POLL_INTERVAL = 0.2
"""Seconds between checks of an attempt whose runner is not our child."""
CREATE_TIME_SLACK = 2.0
"""A process created this long after the recorded start is not our runner (its pid was reused)."""


class LaunchRefused(ExqError):
    """No process can be started with the attempt's command, environment or workdir (a NUL byte, a bad
    variable name, text that is not encodable, too large): the attempt fails, as a retry would too."""


_RUNNER_VARS = {"EXQ_RUNNER_CMD": "the command", "EXQ_RUNNER_SETUP": "the setup",
                "EXQ_RUNNER_WORKDIR": "the workdir"}
"""How a message names what reaches the job through these runner variables."""


def _unusable(text: str) -> str | None:
    """Why `text` cannot be an argument or environment entry of a process, else None."""
    if "\0" in text:
        return "contains a NUL byte (\\0)"
    try:
        os.fsencode(text)
    except UnicodeEncodeError as exc:
        return f"contains {text[exc.start]!r}, which is not encodable"
    return None


def _launch_problem(attempt_dir: Path, env: Mapping[str, str]) -> str | None:
    """Why the runner cannot be started in `attempt_dir` with `env`, else None."""
    if (why := _unusable(str(attempt_dir))) is not None:
        return f"the attempt directory {why}"
    for name, value in env.items():
        if not name or "=" in name or _unusable(name) is not None:
            return f"invalid environment variable name {name!r}"
        if (why := _unusable(value)) is not None:
            return f"{_RUNNER_VARS.get(name, f'environment variable {name}')} {why}"
    return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None


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


def read_record(attempt_dir: str | Path) -> RunRecord:
    """What the attempt directory records now, and whether its runner lives (see `parse_record`)."""
    d = Path(attempt_dir)

    def runner_alive(pid: int, started_at: float | None) -> bool:
        reference = started_at
        if reference is None:  # no pid record yet: the runner wrote its claim just after it started
            with contextlib.suppress(OSError):
                reference = (d / "claim").stat().st_mtime
        return _runner_alive(pid, reference)

    return parse_record(lambda name: _read_text(d / name), runner_alive)


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


def _make_dirs(path: Path) -> None:
    """Create `path` and its missing parents with mode 0700 (whatever the umask)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):
            p.mkdir(mode=0o700)
            p.chmod(0o700)


def workdir_problem(workdir: str, host: str) -> str | None:
    """Why `workdir` (on `host`, this machine) cannot be a job's working directory, else None."""
    if os.path.isdir(workdir):
        return None
    what = "is not a directory" if os.path.exists(workdir) else "does not exist"
    return f"workdir {workdir} {what} on {host}"


def missing_paths(workdir: str, globs: list[str]) -> list[str]:
    """The globs that match nothing under `workdir` (`**` spans directories)."""
    return [p for p in globs if not glob.glob(p, root_dir=workdir, recursive=True)]


def _log_tail(path: Path, size: int = LOG_TAIL_BYTES) -> str:
    """The last `size` bytes of the log, decoded (bytes that are not UTF-8 replaced)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _read_result(path: Path, limit: int | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """The result file's JSON object, or why there is none; (None, None) when it is missing or over `limit` bytes."""
    try:
        with path.open("rb") as f:
            if limit is not None and os.fstat(f.fileno()).st_size > limit:
                return None, None
            data = f.read()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot read result file {path}: {exc}"
    return parse_result(data, str(path))


_DETACHED: list[subprocess.Popen[bytes]] = []
"""Runners still running when their worker closed: kept (and reaped when found ended) so that no
Popen is collected while its process runs."""


@dataclass
class _Child:
    """A runner started by this worker, reaped as soon as it exits."""

    proc: subprocess.Popen[bytes]
    loop: asyncio.AbstractEventLoop
    exited: asyncio.Future[None]
    pidfd: int | None = None

    def stop_watching(self) -> None:
        if self.pidfd is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                self.loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None

    def reap(self) -> None:
        self.stop_watching()
        self.proc.poll()
        if not self.exited.done():
            self.exited.set_result(None)


class LocalWorker:
    """The Worker for this machine."""

    def __init__(
        self,
        name: str = "local",
        probe: GpuProbe | None = None,
        runner_path: str | Path = RUNNER_PATH,
        *,
        jobs_root: str | Path,
        cleanup_grace: float = 10.0,
    ) -> None:
        if probe is None:
            from exq.queue.gpus.select import select_probe

            probe = select_probe()
        self.name = name
        self._probe = probe
        self.runner_path = os.path.abspath(runner_path)
        self.jobs_root = os.path.abspath(jobs_root)
        """Attempt directories live under jobs_root/<submission>/<job>/<attempt>."""
        self.cleanup_grace = cleanup_grace
        """Seconds the runner waits between SIGTERM and SIGKILL for leftovers of an ended job."""
        self._children: dict[str, _Child] = {}

    def attempt_dir(self, submission: str, job_id: str, number: int) -> str:
        return os.path.join(self.jobs_root, submission, job_id, str(number))

    async def prepare_workdir(self, local: str, dest: str, exclude: list[str]) -> str:
        """Nothing to copy on the daemon's own machine: jobs run in `local` itself."""
        return local

    async def probe(self) -> GpuSnapshot:
        return await asyncio.to_thread(self._probe.snapshot)

    async def launch(self, request: LaunchRequest) -> RunRecord:
        d = Path(os.path.abspath(request.attempt_dir))
        env = {**os.environ, **self._probe.job_env, **request.env}
        env.update(
            EXQ_RUNNER_CMD=request.cmd,
            EXQ_RUNNER_WORKDIR=os.path.abspath(request.workdir),
            EXQ_RUNNER_GRACE=f"{self.cleanup_grace:.1f}",
        )
        env.pop("EXQ_RUNNER_SETUP", None)
        if request.setup:
            env["EXQ_RUNNER_SETUP"] = request.setup
        if (problem := _launch_problem(d, env) or workdir_problem(env["EXQ_RUNNER_WORKDIR"], self.name)) is not None:
            raise LaunchRefused(problem)
        _make_dirs(d)
        child = self._spawn(d, env)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not (d / "pid").exists():
            if child.exited.done():
                record = read_record(d)
                if (d / "pid").exists() or record.tombstoned:
                    return read_record(d)
                raise WorkerError(f"runner for {d} exited before starting the job")
            if loop.time() > deadline:
                _signal_group(child.proc.pid, signal.SIGKILL)
                raise WorkerError(f"runner for {d} did not start the job within {START_TIMEOUT:g}s")
            await asyncio.sleep(0.01)
        return read_record(d)

    async def wait(self, attempt_dir: str) -> RunRecord:
        """Return once the runner has finished (exit recorded, leftovers cleaned up) or vanished."""
        d = os.path.abspath(attempt_dir)
        child = self._children.get(d)
        if child is not None and child.loop is asyncio.get_running_loop():
            await asyncio.shield(child.exited)
            return read_record(d)
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
        d = Path(attempt_dir)
        _make_dirs(d)
        try:
            fd = os.open(d / "claim", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(TOMBSTONE + "\n")
        return True

    async def group_alive(self, pgid: int) -> bool:
        return group_alive(pgid)

    async def report(
        self, attempt_dir: str, workdir: str, result_file: str, outputs: list[str]
    ) -> AttemptReport:
        d = Path(attempt_dir)
        result, result_error = _read_result(Path(workdir, result_file))
        return AttemptReport(
            record=read_record(d),
            log_tail=_log_tail(d / "log"),
            result=result,
            result_error=result_error,
            missing_outputs=missing_paths(workdir, outputs),
        )

    async def missing_paths(self, workdir: str, globs: list[str]) -> list[str]:
        return await asyncio.to_thread(missing_paths, os.path.abspath(workdir), globs)

    async def peek_results(self, paths: list[str]) -> dict[str, dict[str, Any]]:
        def peek() -> dict[str, dict[str, Any]]:
            found = {path: _read_result(Path(path), PEEK_LIMIT)[0] for path in paths}
            return {path: data for path, data in found.items() if data is not None}

        return await asyncio.to_thread(peek)

    async def close(self) -> None:
        """Stop watching runners (they keep running) and close the probe."""
        _DETACHED[:] = [p for p in _DETACHED if p.poll() is None]
        for child in self._children.values():
            child.stop_watching()
            if child.proc.poll() is None:
                _DETACHED.append(child.proc)
        self._children.clear()
        self._probe.close()

    def _spawn(self, attempt_dir: Path, env: dict[str, str]) -> _Child:
        """Start the runner in a new session with stdio on /dev/null, and watch for its exit."""
        sh = "/bin/sh" if os.path.exists("/bin/sh") else "sh"
        try:
            proc = subprocess.Popen(
                [sh, self.runner_path, str(attempt_dir)],
                env=env,
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except ValueError as exc:  # what _launch_problem did not foresee
            raise LaunchRefused(f"cannot start the runner for {attempt_dir}: {exc}") from exc
        except OSError as exc:
            if exc.errno == errno.E2BIG:
                raise LaunchRefused("the job's command and environment are too large for a process "
                                    f"(E2BIG: {exc.strerror})") from exc
            raise WorkerError(f"cannot start the runner for {attempt_dir}: {exc}") from exc
        loop = asyncio.get_running_loop()
        child = _Child(proc, loop, loop.create_future())
        self._children[str(attempt_dir)] = child
        child.exited.add_done_callback(lambda _: self._forget(str(attempt_dir), child))
        try:
            child.pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # not Linux >= 5.3: a thread waits for the runner instead
            threading.Thread(target=self._reap_in_thread, args=(child,), daemon=True).start()
        else:
            loop.add_reader(child.pidfd, child.reap)
        return child

    def _forget(self, key: str, child: _Child) -> None:
        if self._children.get(key) is child:
            del self._children[key]

    @staticmethod
    def _reap_in_thread(child: _Child) -> None:
        child.proc.wait()
        with contextlib.suppress(RuntimeError):
            child.loop.call_soon_threadsafe(child.reap)
