"""Launch step: record launches durably, start them in the background, follow each attempt to its end,
and kill attempts (cancel, timeout). Starts and ends come back to the loop as events, never by polling."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import posixpath
import time

from exq.daemon.context import Context
from exq.daemon.finish import end_now, result_file
from exq.daemon.placement import Placement
from exq.errors import ExqError, WorkerError, WriteError
from exq.model import contract
from exq.model.events import Launched, Started
from exq.model.outcome import Outcome
from exq.model.state import Attempt, Job, JobStatus
from exq.workers import LaunchRequest, RunRecord, Worker

log = logging.getLogger("exq.scheduler")
START_WAIT = 15.0
"""Seconds a kill, or the end of the loop, waits for a launch in flight (workers bound their own starts)."""


class Launcher:
    """Starts attempts and follows them; knows which launches are still in flight."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.starting: dict[str, asyncio.Task[None]] = {}
        """Launches in flight, by job key: the turn goes on while runners start."""

    def launch(self, launches: list[tuple[Job, Placement, str]], now: float) -> None:
        """Record the launches durably, then start them in the background (none starts if they cannot be
        recorded): their starts come back as Started events on a later turn."""
        ctx = self.ctx
        try:
            ctx.commit([Launched(at=now, key=job.key, attempt=self._new_attempt(job, p, now, workdir))
                        for job, p, workdir in launches])
        except WriteError:
            for job, _, _ in launches:
                ctx.reservations.pop(job.key, None)
            raise
        for job, _, _ in launches:
            self.starting[job.key] = ctx.spawn(self._start(job))
            self.starting[job.key].add_done_callback(functools.partial(self._started, job.key))

    async def wait_for_starts(self) -> None:
        """Let runners that are starting say so (bounded), so that their Started is recorded."""
        if self.starting:
            await asyncio.wait(list(self.starting.values()), timeout=START_WAIT)

    def _started(self, key: str, task: asyncio.Future[None]) -> None:
        if self.starting.get(key) is task:
            del self.starting[key]
        self.ctx.wake_up()

    def _new_attempt(self, job: Job, placement: Placement, now: float, workdir: str) -> Attempt:
        number = len(job.attempts) + 1
        attempt_dir = self.ctx.workers[placement.host].attempt_dir(job.submission, job.id, number)
        return Attempt(
            number=number, host=placement.host, gpus=list(placement.gpus), gpu_uuids=list(placement.uuids),
            params=dict(job.params), cmd=job.cmd, dir=attempt_dir, log=posixpath.join(attempt_dir, contract.LOG),
            workdir=None if workdir == job.spec.workdir else workdir, launched_at=now,
        )

    async def _start(self, job: Job) -> None:
        """Launch the job's latest attempt. A launch that raises anything ends that attempt, never the daemon."""
        ctx = self.ctx
        attempt = job.attempts[-1]
        number = attempt.number
        reservation = ctx.reservations.get(job.key)
        batch = reservation.batch if reservation is not None else None
        try:
            request = LaunchRequest(
                attempt_dir=attempt.dir, cmd=attempt.cmd, workdir=attempt.workdir or job.spec.workdir,
                env=job_env(job, attempt), setup=job.spec.setup, gpus=job.spec.resources.gpus,
                timeout=job.spec.resources.timeout, batch=batch.id if batch else None,
                max_parallel=batch.limit if batch else None,
            )
            record = await ctx.workers[attempt.host].launch(request)
        except Exception as exc:
            known = isinstance(exc, ExqError)
            log.error("%s: launch failed: %s", job.key, exc if known else repr(exc), exc_info=not known)
            if len(job.attempts) != number or job.status not in (JobStatus.RUNNING, JobStatus.UNKNOWN):
                return  # ended meanwhile (its host was given up as lost)
            ctx.reservations.pop(job.key, None)
            # The connection may have dropped after the runner started: LOST attempts are checked
            # (and killed if running) when their host answers again. Anything else (a value no process
            # can receive, a bug) fails the attempt with its reason.
            outcome = Outcome.LOST if isinstance(exc, WorkerError) else Outcome.FAILED
            end_now(ctx, job, outcome, f"launch failed: {exc if known else f'{type(exc).__name__}: {exc}'}")
            return
        self.attach(job, record)

    def attach(self, job: Job, record: RunRecord) -> None:
        """Record the runner's pid and follow the attempt until it ends."""
        ctx = self.ctx
        attempt = job.attempts[-1]
        if attempt.pid != record.pgid or attempt.started_at != record.started_at:
            ctx.emit(Started(at=time.time(), key=job.key, number=attempt.number,
                             pid=record.pgid, started_at=record.started_at))
        reservation = ctx.reservations.get(job.key)
        if reservation is not None:
            reservation.pgid = record.pgid
        self.watch(job.key, attempt.number, ctx.workers[attempt.host], attempt.dir)

    def watch(self, key: str, number: int, worker: Worker, attempt_dir: str) -> None:
        """Follow the attempt in the background; its end goes to the finish step."""
        self.ctx.spawn(self._watch(key, number, worker, attempt_dir))

    async def _watch(self, key: str, number: int, worker: Worker, attempt_dir: str) -> None:
        try:
            await worker.wait(attempt_dir)
        except ExqError as exc:
            log.error("%s: lost track of attempt %d: %s", key, number, exc)
        else:
            self._probe_after_end(key)
        self.ctx.finished.append((key, number))
        self.ctx.wake_up()

    def _probe_after_end(self, key: str) -> None:
        """Start the GPU probe that settling the attempt's GPUs needs (newer than its end) at once, while
        its end is read and classified."""
        reservation = self.ctx.reservations.get(key)
        if reservation is not None and reservation.gpus:
            reservation.exited_at = time.time()
            self.ctx.probes.start(force=True, hosts=[reservation.host], newer_than=reservation.exited_at)

    def kill(self, key: str) -> None:
        """Kill the job's current attempt, in the background."""
        attempt = self.ctx.store.ledger.jobs[key].current_attempt
        if attempt is not None:
            self.ctx.spawn(self._kill_attempt(key, attempt))

    async def _kill_attempt(self, key: str, attempt: Attempt) -> None:
        """Kill the attempt, once its launch (if in flight) has started it: only then is its group known."""
        starting = self.starting.get(key)
        if starting is not None:
            await asyncio.wait([starting], timeout=START_WAIT)
        try:
            await self.ctx.workers[attempt.host].kill(attempt.dir, self.ctx.config.kill_grace)
        except ExqError as exc:
            log.warning("cannot kill %s on %s now: %s", attempt.dir, attempt.host, exc)

    def check_timeouts(self) -> None:
        """Kill the running attempts past their job's timeout."""
        ctx = self.ctx
        now = time.time()
        for key, reservation in list(ctx.reservations.items()):
            job = ctx.store.ledger.jobs[key]
            timeout = job.spec.resources.timeout
            attempt = job.current_attempt
            if reservation.settling_since is not None or timeout is None or attempt is None:
                continue
            if attempt.started_at and now >= attempt.started_at + timeout and key not in ctx.timed_out:
                log.info("%s: timeout after %.0fs, killing", key, timeout)
                ctx.timed_out.add(key)
                self.kill(key)


def job_env(job: Job, attempt: Attempt) -> dict[str, str]:
    """What exq tells the job (its worker adds what its host needs)."""
    env = dict(job.spec.env)
    env.update({
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in attempt.gpus),
        contract.JOB_ID: job.id,
        contract.SUBMISSION: job.submission,
        contract.PHASE: job.phase,
        contract.ATTEMPT: str(attempt.number),
        contract.RESULT_FILE: result_file(attempt),
        contract.PARAMS: json.dumps(attempt.params, sort_keys=True),
        contract.BASE_PARAMS: json.dumps(job.spec.params, sort_keys=True),
    })
    if job.spec.resources.gpu_memory is not None:
        env[contract.GPU_MEMORY] = str(job.spec.resources.gpu_memory)
    return env
