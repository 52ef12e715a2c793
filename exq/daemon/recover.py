"""Recover step, after a restart: re-attach running attempts, classify those that ended, relaunch none.

An attempt recorded as launched that no runner claimed is tombstoned, so it can never start late: its job
is queued again (or ends cancelled, when its cancel was requested).
"""

from __future__ import annotations

import asyncio
import logging
import time

from exq.daemon.context import Context
from exq.daemon.hosts import Change
from exq.daemon.hostwatch import HostWatch
from exq.daemon.launch import Launcher
from exq.daemon.placement import Reservation
from exq.errors import ExqError
from exq.model.events import Ended, HostDown, HostUp
from exq.model.outcome import Outcome
from exq.model.state import JobStatus
from exq.workers import RunRecord, Worker

log = logging.getLogger("exq.scheduler")


async def recover(ctx: Context, launcher: Launcher, hosts: HostWatch, watch: bool = True) -> None:
    """Re-attach (with `watch`: and follow) the attempts the state counts as running or unknown."""
    for job in [j for j in ctx.store.state.jobs if j.status in (JobStatus.RUNNING, JobStatus.UNKNOWN)]:
        attempt = job.attempts[-1]
        worker = ctx.workers.get(attempt.host)
        if worker is None:
            log.error("%s: host %s is not configured; leaving it running", job.key, attempt.host)
            continue
        res = job.spec.resources
        ctx.reservations[job.key] = Reservation(
            job.key, attempt.host, tuple(attempt.gpus), res.gpu_memory, res.share, attempt.pid)
        try:
            record = await _await_claim(worker, attempt.dir)
        except ExqError as exc:
            if ctx.hosts.observe(attempt.host, False, time.time(), str(exc)) == Change.WENT_DOWN:
                hosts.went_down(attempt.host, str(exc))
            if job.status == JobStatus.RUNNING:
                ctx.emit(HostDown(at=time.time(), host=attempt.host, keys=[job.key]))
            if watch:
                launcher.watch(job.key, attempt.number, worker, attempt.dir)
            continue
        if job.status == JobStatus.UNKNOWN:
            ctx.emit(HostUp(at=time.time(), host=attempt.host, keys=[job.key]))
        if record.tombstoned:
            ctx.reservations.pop(job.key)
            cancelled = job.cancel_requested
            ctx.commit([Ended(
                at=time.time(), key=job.key, number=attempt.number, ended_at=time.time(),
                exit_code=None, signal=None, outcome=Outcome.CANCELLED if cancelled else Outcome.LOST,
                reason="never started: exq stopped while launching it" + ("; cancelled" if cancelled else ""),
                status=JobStatus.CANCELLED if cancelled else JobStatus.QUEUED,
            )])
            continue
        if job.cancel_requested:
            launcher.kill(job.key)
        if watch or record.ended or not record.alive:
            launcher.attach(job, record)
        log.info("%s attempt %d: %s", job.key, attempt.number,
                 "re-attached" if record.alive else "ended while exq was down")
    ctx.flush()


async def _await_claim(worker: Worker, attempt_dir: str, wait: float = 5.0) -> RunRecord:
    """The attempt's record once the runner wrote its pid; a tombstone if it never claimed it."""
    record = await worker.read(attempt_dir)
    if not record.claimed and await worker.tombstone(attempt_dir):
        return await worker.read(attempt_dir)
    deadline = time.monotonic() + wait
    while record.runner_pid is None and not record.ended and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        record = await worker.read(attempt_dir)
    return record
