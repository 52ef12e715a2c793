"""Live progress: the result files of running attempts, read in the background every few seconds.

A job that reports as it trains (`exq.torch.report`) rewrites its EXQ_RESULT_FILE atomically; the
scheduler shows what it last held as the job's `progress`. One read per host is in flight at a time,
bounded by a timeout, so a host that hangs never stalls the loop; a failed read is simply retried
at the next interval (progress is advisory).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from exq.daemon.context import Context
from exq.daemon.finish import result_file
from exq.errors import ExqError
from exq.model.state import JobStatus, Progress
from exq.workers import Worker

log = logging.getLogger("exq.scheduler")


@dataclass(frozen=True)
class Peek:
    """One running attempt whose result file is to be read."""

    host: str
    key: str
    number: int
    path: str


Found = list[tuple[Peek, dict[str, Any]]]


class ProgressReads:
    """The progress reads in flight, at most one per host; the scheduler applies what they found."""

    def __init__(self, interval: float, timeout: float) -> None:
        self._interval = interval
        self._timeout = timeout
        self._reads: dict[str, asyncio.Task[Found]] = {}
        self._round_at = -math.inf

    def start_due(self, workers: Mapping[str, Worker], peeks: Callable[[], Iterable[Peek]]) -> None:
        """Every `interval`: start a read on each host with attempts to peek at and no read in flight."""
        now = time.monotonic()
        if now - self._round_at < self._interval:
            return
        self._round_at = now
        by_host: dict[str, list[Peek]] = {}
        for peek in peeks():
            by_host.setdefault(peek.host, []).append(peek)
        for host, host_peeks in by_host.items():
            if host not in self._reads:
                self._reads[host] = asyncio.ensure_future(self._read(workers[host], host_peeks))

    def collect(self) -> Found:
        """What the reads that finished found (attempts without a readable JSON object left out)."""
        found: Found = []
        for host in [h for h, task in self._reads.items() if task.done()]:
            task = self._reads.pop(host)
            if not task.cancelled():
                found.extend(task.result())
        return found

    async def cancel(self) -> None:
        tasks, self._reads = list(self._reads.values()), {}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self, worker: Worker, peeks: list[Peek]) -> Found:
        try:
            results = await asyncio.wait_for(worker.peek_results([p.path for p in peeks]), self._timeout)
        except (ExqError, TimeoutError) as exc:
            log.debug("%s: cannot read progress now: %s", worker.name, exc)
            return []
        return [(peek, results[peek.path]) for peek in peeks if peek.path in results]


def running_peeks(ctx: Context) -> list[Peek]:
    """The result files of the running attempts."""
    peeks = []
    for key, reservation in ctx.reservations.items():
        job = ctx.store.ledger.jobs[key]
        if reservation.settling_since is None and job.status == JobStatus.RUNNING and job.attempts:
            attempt = job.attempts[-1]
            peeks.append(Peek(attempt.host, key, attempt.number, result_file(attempt)))
    return peeks


def apply_progress(ctx: Context, reads: ProgressReads) -> None:
    """Show what running jobs last wrote to their result files (advisory: not journaled)."""
    now = time.time()
    for peek, result in reads.collect():
        job = ctx.store.ledger.jobs.get(peek.key)
        if job is None or job.status != JobStatus.RUNNING or len(job.attempts) != peek.number:
            continue  # ended (or moved on) since the read started
        progress = Progress.from_result(result, now, job.progress)
        if progress is not job.progress:
            job.progress = progress
            ctx.store.touch()


def note_waiting(ctx: Context) -> None:
    """Say why launched jobs have not started, when their host's own queue holds them (advisory)."""
    waits = {d: why for worker in ctx.workers.values() for d, why in worker.waiting().items()}
    if not waits:
        return
    for key in ctx.reservations:
        job = ctx.store.ledger.jobs[key]
        attempt = job.current_attempt
        if attempt is not None and attempt.started_at is None and (why := waits.get(attempt.dir)) is not None:
            ctx.note(job, why)
