"""wait_for: paths a job needs before it launches, checked in the background at a bounded rate.

Jobs with the same globs in the same workdir on the same host share one check. Each check runs at most
once per `interval` seconds, bounded by a timeout, through its host's worker (`missing_paths`), so
neither many waiting jobs nor a host that hangs stalls the scheduler's loop: it only reads the answers.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from exq.config import LOCAL
from exq.errors import ExqError
from exq.workers import Worker

log = logging.getLogger("exq.scheduler")
CheckKey = tuple[str, str, tuple[str, ...]]
"""(host, workdir, globs)."""
FORGET_AFTER = 10
"""A check no job asked about for this many intervals is forgotten."""


@dataclass
class _Check:
    started_at: float = -math.inf
    used_at: float = -math.inf
    task: asyncio.Task[list[str]] | None = None
    missing: list[str] | None = None
    """The globs that matched nothing at the last answer ([]: none); None before an answer, or after an error."""
    answered_at: float = -math.inf
    error: str | None = None

    def answered(self, now: float, interval: float) -> bool:
        """Every glob matched something at an answer younger than `interval`."""
        return self.missing == [] and now - self.answered_at < interval


class PathWaits:
    """The wait_for checks of the jobs ready to launch, and what each last found."""

    def __init__(self, workers: Mapping[str, Worker], interval: float, timeout: float,
                 on_done: Callable[[], None]) -> None:
        self._workers = workers
        self.interval = interval
        self._timeout = timeout
        self._on_done = on_done
        self._checks: dict[CheckKey, _Check] = {}

    def reason(self, host: str, workdir: str, globs: list[str], now: float) -> str | None:
        """None when every glob matched something in `workdir` on `host` at a recent answer; else why the
        job waits. Starts a check when none runs there and the last one started `interval` ago or more."""
        key = (host, workdir, tuple(globs))
        check = self._checks.setdefault(key, _Check())
        check.used_at = now
        if check.task is None and now - check.started_at >= self.interval and not check.answered(now, self.interval):
            self._start(key, check, now)
        on = "" if host == LOCAL else f" on {host}"
        if check.error is not None:
            return f"waiting: cannot check its wait_for paths{on}: {check.error}"
        if check.missing:
            return f"waiting for {', '.join(check.missing)} to exist{on}"
        if check.answered(now, self.interval):
            return None
        return f"waiting: checking its wait_for paths{on}"

    def next_due(self, since: float) -> float | None:
        """When the next check of a job asked about at `since` or later is due (None: none is)."""
        due = [c.started_at + self.interval for c in self._checks.values()
               if c.used_at >= since and c.task is None and c.missing != []]
        return min(due, default=None)

    def forget_unused(self, now: float) -> None:
        """Drop the checks no job asked about for FORGET_AFTER intervals."""
        for key in [k for k, c in self._checks.items()
                    if c.task is None and now - c.used_at > FORGET_AFTER * self.interval]:
            del self._checks[key]

    def cancel(self) -> None:
        for check in self._checks.values():
            if check.task is not None:
                check.task.cancel()

    def _start(self, key: CheckKey, check: _Check, now: float) -> None:
        host, workdir, globs = key
        check.started_at = now
        check.task = asyncio.ensure_future(self._missing(host, workdir, list(globs)))
        check.task.add_done_callback(lambda task: self._done(check, task))

    async def _missing(self, host: str, workdir: str, globs: list[str]) -> list[str]:
        return await asyncio.wait_for(self._workers[host].missing_paths(workdir, globs), self._timeout)

    def _done(self, check: _Check, task: asyncio.Task[list[str]]) -> None:
        """Keep what a check found, or why it failed (tried again after `interval`)."""
        check.task = None
        if task.cancelled():
            return
        check.answered_at = time.time()
        error = task.exception()
        if error is None:
            check.missing, check.error = task.result(), None
        else:
            if not isinstance(error, ExqError | TimeoutError | OSError):
                log.error("wait_for check failed unexpectedly: %r", error)
            check.missing, check.error = None, str(error) or f"no answer within {self._timeout:g}s"
        self._on_done()
