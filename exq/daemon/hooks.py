"""on_job_end hooks: after jobs of a submission change status, run its command on the daemon's machine.

Crash-safe by counting: the ledger counts every status change of a submission's jobs (`changes`); a run
covers the changes counted when it starts, and only its HookRan event, committed once it finished,
advances `hook_covered`. A run is due while changes > hook_covered, so a daemon killed before or during
a run runs it again after a restart. At most one run per submission at a time: changes during a run
cause one more run after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

from exq.errors import ExqError
from exq.model.events import HookRan
from exq.model.jobspec import Hook
from exq.model.state import Submission
from exq.store.fsio import PRIVATE_FILE, atomic_write, private_dir
from exq.store.store import StatePaths
from exq.workers.local import group_alive

log = logging.getLogger("exq.scheduler")
TAIL_BYTES = 4096
"""How much of a failed run's output is searched for its last line."""
KILL_WAIT = 5.0
"""Seconds to wait for a killed hook's processes to vanish."""


def due(sub: Submission) -> bool:
    """Whether the submission's hook has not yet run for its latest status changes."""
    return sub.on_job_end is not None and sub.changes > sub.hook_covered


class HookRuns:
    """The on_job_end runs in flight, at most one per submission; the scheduler commits what they report."""

    def __init__(self, paths: StatePaths, timeout: float, on_done: Callable[[], None]) -> None:
        self._paths = paths
        self._timeout = timeout
        self._on_done = on_done
        self._runs: dict[str, asyncio.Task[HookRan]] = {}
        self._leave_by: float | None = None

    def start_due(self, submissions: Iterable[Submission]) -> None:
        """Start a run for each submission whose hook is due and has no run in flight."""
        for sub in submissions:
            if sub.on_job_end is not None and due(sub) and sub.id not in self._runs:
                task = asyncio.ensure_future(self._run(sub.id, sub.on_job_end, sub.changes))
                task.add_done_callback(lambda _: self._on_done())
                self._runs[sub.id] = task

    def finished(self) -> list[HookRan]:
        """The reports of the runs that ended since the last call (commit them before the next `start_due`)."""
        ended = [sub_id for sub_id, task in self._runs.items() if task.done()]
        return [self._runs.pop(sub_id).result() for sub_id in ended]

    def settled(self, submissions: Iterable[Submission]) -> bool:
        """For `exq run`: no run is due or in flight. Bounded: true anyway two timeouts after the first call."""
        now = time.monotonic()
        if self._leave_by is None:
            self._leave_by = now + 2 * self._timeout + KILL_WAIT
        if not self._runs and not any(due(s) for s in submissions):
            return True
        if now < self._leave_by:
            return False
        log.warning("leaving with on_job_end hooks still due; they run when a daemon next starts")
        return True

    async def cancel(self) -> None:
        """Kill the runs in flight without reporting them: they run again when a daemon next starts."""
        for task in self._runs.values():
            task.cancel()
        await asyncio.gather(*self._runs.values(), return_exceptions=True)
        self._runs.clear()

    async def _run(self, sub_id: str, hook: Hook, covered: int) -> HookRan:
        """Run the hook once, its output appended to the submission's hook log."""
        log_path = self._paths.hook_log(sub_id)
        started = time.monotonic()
        error: str | None
        try:
            private_dir(log_path.parent)
            await _kill_left_over(_pid_file(log_path))
            fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
            try:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                os.write(fd, f"--- {stamp} on_job_end after {covered} status change(s): {hook.cmd}\n".encode())
                output_from = os.fstat(fd).st_size
                error = await self._execute(sub_id, hook, fd, _pid_file(log_path))
                if error is not None:
                    error = _with_last_line(error, log_path, output_from)
                os.write(fd, f"--- {error or 'ok'} ({time.monotonic() - started:.1f}s)\n".encode())
            finally:
                os.close(fd)
        except (OSError, ExqError) as exc:  # e.g. the disk is full
            error = f"cannot run it: {exc}"
        if error is not None:
            log.warning("submission %s: on_job_end failed: %s (log: %s)", sub_id, error, log_path)
        return HookRan(at=time.time(), submission=sub_id, covered=covered, ok=error is None, error=error)

    async def _execute(self, sub_id: str, hook: Hook, output: int, pid_file: Path) -> str | None:
        """Run the command in its own session; None if it exited 0, else why not. Killed if cancelled."""
        env = {**os.environ, **hook.env, "EXQ_STATE_DIR": str(self._paths.root), "EXQ_SUBMISSION": sub_id}
        try:
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", hook.cmd, cwd=hook.workdir, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=output, stderr=output, start_new_session=True,
            )
        except (OSError, ValueError) as exc:  # e.g. its workdir is gone
            return f"cannot start it: {exc}"
        code: int | None = None
        try:
            with contextlib.suppress(psutil.NoSuchProcess):  # names the run for a daemon after a crash
                atomic_write(pid_file, f"{proc.pid} {psutil.Process(proc.pid).create_time()}\n".encode())
            code = await asyncio.wait_for(proc.wait(), self._timeout)
        except TimeoutError:
            pass
        finally:  # timed out, cancelled (the daemon drains) or failed: kill its whole process group
            if proc.returncode is None:
                _kill_group(proc.pid)
                await proc.wait()
            pid_file.unlink(missing_ok=True)
        if code is None:
            return f"timed out after {self._timeout:g}s"
        return None if code == 0 else f"exit code {code}" if code > 0 else f"killed by signal {-code}"


def _pid_file(log_path: Path) -> Path:
    return log_path.with_suffix(".pid")


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def _kill_left_over(pid_file: Path) -> None:
    """Kill a run that a daemon killed mid-run left behind, so that two runs never overlap."""
    try:
        fields = pid_file.read_text().split()
        pgid, created = int(fields[0]), float(fields[1])
    except (FileNotFoundError, ValueError, IndexError):
        return
    try:
        reused = abs(psutil.Process(pgid).create_time() - created) > 1.0
    except psutil.NoSuchProcess:
        reused = False  # the leader is gone; while any process of its group lives, its id is not reused
    if not reused and group_alive(pgid):
        log.warning("killing on_job_end run %d left over from a previous daemon", pgid)
        _kill_group(pgid)
        deadline = time.monotonic() + KILL_WAIT
        while group_alive(pgid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    pid_file.unlink(missing_ok=True)


def _with_last_line(error: str, log_path: Path, start: int) -> str:
    """`error` followed by the last non-empty line the run wrote at or after byte `start` of its log."""
    with log_path.open("rb") as handle:
        handle.seek(max(start, handle.seek(0, os.SEEK_END) - TAIL_BYTES))
        lines = [line.strip() for line in handle.read().decode("utf-8", "replace").splitlines() if line.strip()]
    return f"{error}: {lines[-1][:200]}" if lines else error
