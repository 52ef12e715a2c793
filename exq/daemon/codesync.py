"""Code sync bookkeeping: one background copy of a submission's workdir per host, started on demand."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from exq.model.jobspec import JobSpec
from exq.workers import Worker

log = logging.getLogger("exq.scheduler")


class WorkdirCopies:
    """Where each submission's jobs run on each host, once its workdir has been copied there."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self._tasks: dict[tuple[str, str], asyncio.Task[str]] = {}
        self._on_change = on_change

    def workdir(self, submission: str, spec: JobSpec, host: str, worker: Worker) -> str | None:
        """The job's workdir on `host`; None while the copy there runs (started by the first call)."""
        if spec.sync is None:
            return spec.workdir
        key = (submission, host)
        task = self._tasks.get(key)
        if task is None:
            log.info("submission %s: copying %s to %s:%s", submission, spec.workdir, host, spec.sync.dest)
            task = asyncio.ensure_future(worker.prepare_workdir(spec.workdir, spec.sync.dest, list(spec.sync.exclude)))
            task.add_done_callback(lambda done: self._done(done, key))
            self._tasks[key] = task
        if not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result()

    def failed(self, submission: str) -> dict[str, str]:
        """Hosts the copy of `submission`'s workdir failed on, with the error."""
        return {host: str(task.exception()) for (sub, host), task in self._tasks.items()
                if sub == submission and task.done() and not task.cancelled() and task.exception()}

    def usable_hosts(self, submission: str, hosts: Iterable[str]) -> tuple[str, ...]:
        failed = self.failed(submission)
        return tuple(h for h in hosts if h not in failed)

    def cancel(self) -> None:
        for task in self._tasks.values():
            task.cancel()

    def _done(self, task: asyncio.Task[str], key: tuple[str, str]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("submission %s: copying its workdir to %s failed: %s; its jobs will not run there",
                      key[0], key[1], task.exception())
        self._on_change()
