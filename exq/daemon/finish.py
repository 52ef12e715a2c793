"""Finish step: classify every attempt that ended, decide each job's next step, and end attempts that
ended without their runner's word (never started, host lost)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from exq.daemon.classify import classify
from exq.daemon.context import Context
from exq.errors import ExqError
from exq.model import contract
from exq.model.events import Ended, Started
from exq.model.outcome import Outcome
from exq.model.retry import next_step
from exq.model.state import Attempt, Job, JobStatus
from exq.workers import AttemptReport, RunRecord

log = logging.getLogger("exq.scheduler")


def result_file(attempt: Attempt) -> str:
    return contract.result_path(attempt.dir)


async def finish_ended(ctx: Context, attach: Callable[[Job, RunRecord], None]) -> None:
    """Classify every attempt that ended, decide each job's next step, commit them together; `attach`
    follows again an attempt that turned out to be still running."""
    finished, ctx.finished = ctx.finished, []
    jobs = []
    for key, number in dict.fromkeys(finished):
        job = ctx.store.ledger.jobs.get(key)
        if job is None or len(job.attempts) != number:
            continue
        if job.status == JobStatus.RUNNING:
            jobs.append(job)
        elif job.status == JobStatus.UNKNOWN:  # seen ending as its host stopped answering: read it
            ctx.finished.append((key, number))  # once the host answers again (or it is lost)
    reports = await asyncio.gather(*(_report(ctx, job) for job in jobs), return_exceptions=True)
    for job, report in zip(jobs, reports, strict=True):
        if isinstance(report, ExqError):  # its host stopped answering: try again on a later turn
            log.warning("%s: cannot read how it ended: %s", job.key, report)
            ctx.finished.append((job.key, len(job.attempts)))
        elif isinstance(report, BaseException):
            raise report
        elif report.record.alive and not report.record.ended:
            log.warning("%s attempt %d: still running after all; watching it again", job.key, len(job.attempts))
            attach(job, report.record)
        else:
            _finish_attempt(ctx, job, report)
    ctx.flush()


async def _report(ctx: Context, job: Job) -> AttemptReport:
    attempt = job.attempts[-1]
    worker = ctx.workers[attempt.host]
    workdir = attempt.workdir or job.spec.workdir
    return await worker.report(attempt.dir, workdir, result_file(attempt), job.spec.outputs)


def _finish_attempt(ctx: Context, job: Job, report: AttemptReport) -> None:
    attempt = job.attempts[-1]
    record = report.record
    timed_out = job.key in ctx.timed_out or _ran_past_timeout(job, record)
    outcome, reason = classify(report, timed_out=timed_out, cancelled=job.cancel_requested,
                               transient=job.spec.retry.transient.match)
    now = time.time()
    step = next_step(job, outcome, reason, now)
    if attempt.started_at is None and record.started_at is not None:  # a start seen only now (after a restart)
        ctx.emit(Started(at=now, key=job.key, number=attempt.number, pid=record.pgid, started_at=record.started_at))
    ctx.emit(Ended(
        at=now, key=job.key, number=attempt.number, ended_at=record.ended_at or now,
        exit_code=record.exit_code, signal=record.signal, outcome=outcome, reason=reason,
        job_reason=step.reason, result=report.result, status=step.status, not_before=step.not_before,
        retry_kind=step.retry_kind, params=step.params, cmd=step.cmd,
    ))
    log.info("%s attempt %d: %s -> %s", job.key, attempt.number, reason, step.status)
    ctx.timed_out.discard(job.key)
    if outcome == Outcome.OOM:
        ctx.avoid[job.key] = frozenset((attempt.host, g) for g in attempt.gpus)
    reservation = ctx.reservations.get(job.key)
    if reservation is not None:
        reservation.settling_since = now
        reservation.pgid = reservation.pgid or record.pgid


def end_now(ctx: Context, job: Job, outcome: Outcome, reason: str) -> None:
    """End the current attempt without a record from its runner (never started, host lost). A job
    cancelled meanwhile ends cancelled: it is never queued again."""
    if job.cancel_requested:
        outcome, reason = Outcome.CANCELLED, f"cancelled; {reason}"
    now = time.time()
    step = next_step(job, outcome, reason, now)
    ctx.emit(Ended(
        at=now, key=job.key, number=len(job.attempts), ended_at=now, exit_code=None, signal=None,
        outcome=outcome, reason=reason, job_reason=step.reason, status=step.status,
        not_before=step.not_before, retry_kind=step.retry_kind, params=step.params, cmd=step.cmd,
    ))


def _ran_past_timeout(job: Job, record: RunRecord) -> bool:
    """A signal death after the timeout had passed: the kill was ours (also across a daemon restart)."""
    timeout = job.spec.resources.timeout
    if timeout is None or record.signal is None or not record.started_at or not record.ended_at:
        return False
    return record.ended_at - record.started_at >= timeout - 0.5
