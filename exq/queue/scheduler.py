"""The scheduler: one asyncio loop, the single writer of the queue state.

Each turn of the loop runs named steps: ingest submissions, apply control requests, finish ended
attempts, block dependants of failures, enforce timeouts, release settled GPUs, place ready jobs,
write the snapshot. A job's exit wakes the loop at once; nothing waits on a fixed poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import posixpath
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from exq.errors import ExqError, WorkerError, WriteError
from exq.queue import control, intake
from exq.queue.classify import classify
from exq.queue.codesync import WorkdirCopies
from exq.queue.events import Blocked, Ended, Event, HostDown, HostUp, Launched, Started, Submitted, Superseded
from exq.queue.gpus import GpuSnapshot
from exq.queue.hooks import HookRuns
from exq.queue.hosts import Change, HostHealth, HostTracker
from exq.queue.jobspec import may_run_here
from exq.queue.limits import Running
from exq.queue.outcome import Outcome
from exq.queue.placement import (
    DEFAULT_FOREIGN_THRESHOLD,
    GpuLoad,
    Placement,
    Reservation,
    gpu_loads,
    place,
    why_waiting,
)
from exq.queue.probes import Probes
from exq.queue.progress import Peek, ProgressReads
from exq.queue.retry import next_step
from exq.queue.state import (
    Attempt,
    DaemonInfo,
    GpuView,
    HostView,
    Job,
    JobStatus,
    Progress,
    QueueState,
    Submission,
    SupersededHow,
    job_key,
)
from exq.queue.store import Store
from exq.queue.waitfor import PathWaits
from exq.queue.workers import AttemptReport, LaunchRequest, RunRecord, Worker

log = logging.getLogger("exq.scheduler")
LOCAL_HOST = "local"


def _default_cpu_slots() -> int:
    return os.cpu_count() or 1


@dataclass
class SchedulerConfig:
    foreign_threshold: int = DEFAULT_FOREIGN_THRESHOLD
    """A GPU whose memory held by non-exq processes reaches this is not used."""
    probe_interval: float = 2.0
    probe_timeout: float = 20.0
    """A probe taking longer than this counts as the host not answering."""
    settle_timeout: float = 30.0
    """How long a GPU waits for an ended job's processes to vanish before its memory counts as foreign."""
    kill_grace: float = 10.0
    intake_poll: float = 0.1
    max_cpu_jobs: int = field(default_factory=_default_cpu_slots)
    lost_timeout: float = 300.0
    """How long a host may not answer before its running jobs count as lost and are requeued."""
    lost_timeouts: dict[str, float] = field(default_factory=dict)
    """Per-host overrides of lost_timeout."""
    hook_timeout: float = 120.0
    """A submission's on_job_end hook is killed after running this long."""
    progress_interval: float = 3.0
    """Seconds between reads of running jobs' result files (their live progress)."""
    write_retry: float = 2.0
    """While the state cannot be written (disk full), seconds between tries to write it again."""
    wait_for_interval: float = 2.0
    """Seconds between checks of the wait_for paths of a job ready to launch but for them."""


@dataclass
class _Pass:
    """What one placement pass knows, updated as it places jobs."""

    now: float
    loads: list[GpuLoad]
    running: Running
    cpu_jobs: int
    unfit: dict[object, str] = field(default_factory=dict)
    """Why jobs of one shape (resources, hosts, devices, foreign threshold) found no place in this pass."""


class Scheduler:
    """Places queued jobs on free GPUs of its workers and follows them to the end."""

    def __init__(
        self,
        store: Store,
        workers: Mapping[str, Worker],
        config: SchedulerConfig | None = None,
        mode: str = "daemon",
    ) -> None:
        self.store = store
        self.workers = dict(workers)
        self.config = config or SchedulerConfig()
        self.mode = mode
        self._wake: asyncio.Event | None = None
        self._finished: list[tuple[str, int]] = []
        self._reservations: dict[str, Reservation] = {}
        self._timed_out: set[str] = set()
        self._avoid: dict[str, frozenset[tuple[str, int]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._draining = False
        self._dirty = True
        self._next_ready_at: float | None = None
        self._pending: list[Event] = []
        self._write_error: str | None = None
        """Why the state cannot be written now (disk full...): nothing is placed until a write works again."""
        self._next_write_try = 0.0
        self._hosts = HostTracker(self.config.lost_timeouts, self.config.lost_timeout)
        self._copies = WorkdirCopies(self._wake_up)
        self._hooks = HookRuns(store.paths, self.config.hook_timeout, self._wake_up)
        self._progress = ProgressReads(self.config.progress_interval, self.config.probe_timeout)
        self._probes = Probes(self.workers, self.config.probe_interval, self.config.probe_timeout, self._wake_up)
        self._waits = PathWaits(self.workers, self.config.wait_for_interval, self.config.probe_timeout, self._wake_up)

    # -- lifecycle -------------------------------------------------------------------------

    def drain(self) -> None:
        """Stop placing and leave the loop; running jobs keep running. Safe from a signal handler."""
        self._draining = True
        if self._wake is not None:
            self._wake.set()

    async def run(
        self, until: Callable[[QueueState], bool] | None = None, on_turn: Callable[[QueueState], None] | None = None
    ) -> None:
        """Run until drained, or until `until(state)` holds after a turn (the `exq run` mode).

        `on_turn(state)` is called after each turn (the first one: recovered, in the loop; see exq.notify).
        """
        self._wake = asyncio.Event()
        intake.clean_stale_replies(self.store.paths)
        self._set_daemon_info()
        await asyncio.wait(self._probes.start(force=True), timeout=min(5.0, self.config.probe_timeout))
        await self._collect_probes()
        while not await self._recovered() and not self._draining:
            await asyncio.sleep(self.config.write_retry)
        for host in self.workers:  # the loop starts while they are checked
            if self._hosts.is_up(host):
                self._check_superseded(host)
        try:
            while not self._draining:
                try:
                    await self._turn()
                except WriteError as exc:
                    self._cannot_write(exc)
                if on_turn is not None:
                    on_turn(self.store.state)
                if until is not None and until(self.store.state) and self._hooks.settled(self.store.state.submissions):
                    break
                await self._sleep()
        finally:
            self._copies.cancel()
            self._waits.cancel()
            await self._hooks.cancel()
            await self._progress.cancel()
            self._probes.cancel()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.store.state.daemon = None
            self.store.touch()
            try:
                self.store.snapshot(force=True)
            except WriteError as exc:  # the journal holds every event: the next start rebuilds it
                log.error("final snapshot not written: %s", exc)

    async def _recovered(self) -> bool:
        """Recover after a restart; False (and the reason shown) when the state cannot be written yet."""
        try:
            await self._recover()
        except WriteError as exc:
            self._cannot_write(exc)
            self._pending.clear()  # the next try finds the same and records it again
            return False
        self._write_error = None
        return True

    def _cannot_write(self, exc: WriteError) -> None:
        """The state cannot be written: stop placing, keep running jobs, say why, try again later."""
        if self._write_error is None:
            log.error("cannot write the queue state: %s. Placing stopped; running jobs go on; retrying every %.0fs",
                      exc, self.config.write_retry)
        self._write_error = str(exc)
        self._next_write_try = time.monotonic() + self.config.write_retry
        if self.store.state.daemon is not None:
            self.store.state.daemon.problem = f"cannot write the queue state ({exc}): not placing jobs"

    def _writes_work(self) -> bool:
        """While writes fail: try the queued events and a snapshot again (rate-limited); True once they work."""
        if self._write_error is None:
            return True
        if time.monotonic() < self._next_write_try:
            return False
        try:
            self._flush()
            self.store.touch()
            self.store.snapshot(force=True)
        except WriteError as exc:
            self._cannot_write(exc)
            return False
        log.warning("the queue state can be written again: placing resumes")
        self._write_error = None
        if self.store.state.daemon is not None:
            self.store.state.daemon.problem = None
        self._wake_up()
        return True

    async def apply_pending_requests(self) -> None:
        """Without a running loop: recover, apply queued control requests and submissions, then stop."""
        self._wake = asyncio.Event()
        await self._recover(watch=False)
        self._ingest()
        await self._handle_control()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.store.snapshot(force=True)

    async def _turn(self) -> None:
        if not self._writes_work():
            return
        await self._collect_probes()
        self._probes.start()  # those due: every host is watched, jobs to place or not
        self._ingest()
        await self._handle_control()
        await self._handle_finished()
        self._apply_progress()
        self._block_dependants()
        self._check_timeouts()
        self._check_lost_hosts()
        await self._settle()
        if not self.store.state.paused and not self._draining:
            await self._place()
        self._progress.start_due(self.workers, self._running_peeks)
        self._pending.extend(self._hooks.finished())
        self._flush()
        self._hooks.start_due(self.store.state.submissions)  # after the flush: hooks read the durable state
        self.store.snapshot()

    async def _sleep(self) -> None:
        assert self._wake is not None
        timeout = self.config.intake_poll
        pending = self.store.seconds_until_snapshot()
        if pending is not None:
            timeout = min(timeout, pending)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(0.001, timeout))
        self._wake.clear()

    def _emit(self, event: Event) -> None:
        """Queue an event for the next `_flush` (one journal fsync for the batch)."""
        self._pending.append(event)

    def _flush(self) -> None:
        """Make the queued events durable, then apply them. Nothing they cause happens before this.

        On WriteError they stay queued, in order, for the next try: what they record happened already.
        """
        if self._pending:
            self.store.commit(self._pending)
            self._pending = []
            self._dirty = True

    def _commit(self, events: list[Event]) -> None:
        """Make decisions taken now durable, after the queued events. On WriteError these are dropped: what
        they were decided from (an intake file, a request, the state) is still there to decide again."""
        if self._pending or events:
            self.store.commit([*self._pending, *events])
            self._pending = []
            self._dirty = True

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _set_daemon_info(self) -> None:
        self.store.state.daemon = DaemonInfo(
            pid=os.getpid(), hostname=socket.gethostname(), started_at=time.time(),
            mode="run" if self.mode == "run" else "daemon",
        )
        self.store.touch()

    # -- steps -----------------------------------------------------------------------------

    def _ingest(self) -> None:
        """Turn intake files into Submitted events, then remove the files."""
        for path, item in intake.pending_intakes(self.store.paths):
            sub = intake_submission(item)
            if self._ingested(sub):
                path.unlink(missing_ok=True)  # ingested before a crash removed the file
                continue
            if self._submission(sub.id) is not None:
                # The number was handed out twice (intake/.counter was set back by hand or a backup): keep both.
                number = 1 + max(int(s.id) for s in self.store.state.submissions if s.id.isdigit())
                intake.raise_counter(self.store.paths, number)
                log.error("submission number %s was already taken; ingesting %s as %d", sub.id, sub.name, number)
                sub = sub.model_copy(update={"id": str(number)})
            self._commit([Submitted(at=item.submitted_at, submission=sub, jobs=item.spec.jobs)])
            log.info("submission %s (%s): %d jobs", sub.id, sub.name, len(item.spec.jobs))
            path.unlink(missing_ok=True)

    def _ingested(self, sub: Submission) -> bool:
        """Whether this intake was already ingested (by its key; files written before keys: by time and name)."""
        if sub.key is not None:
            return sub.key in self.store.ledger.submission_keys
        existing = self._submission(sub.id)
        return existing is not None and (existing.submitted_at, existing.name) == (sub.submitted_at, sub.name)

    def _submission(self, sub_id: str) -> Submission | None:
        return self.store.ledger.submissions.get(sub_id)

    async def _handle_control(self) -> None:
        for path, req in intake.pending_requests(self.store.paths):
            try:
                plan = control.plan(self.store.ledger, req, time.time())
            except ExqError as exc:
                intake.reply(path, intake.ControlReply(ok=False, message=str(exc)))
                continue
            self._commit(plan.events)
            for key in plan.kill:
                self._kill(key)
            intake.reply(path, intake.ControlReply(ok=True, message=plan.message, affected=plan.affected))

    async def _handle_finished(self) -> None:
        """Classify every attempt that ended, decide each job's next step, commit them together."""
        finished, self._finished = self._finished, []
        jobs = []
        for key, number in dict.fromkeys(finished):
            job = self.store.ledger.jobs.get(key)
            if job is None or len(job.attempts) != number:
                continue
            if job.status == JobStatus.RUNNING:
                jobs.append(job)
            elif job.status == JobStatus.UNKNOWN:  # seen ending as its host stopped answering: read it
                self._finished.append((key, number))  # once the host answers again (or it is lost)
        reports = await asyncio.gather(*(self._report(job) for job in jobs), return_exceptions=True)
        for job, report in zip(jobs, reports, strict=True):
            if isinstance(report, ExqError):  # its host stopped answering: try again on a later turn
                log.warning("%s: cannot read how it ended: %s", job.key, report)
                self._finished.append((job.key, len(job.attempts)))
            elif isinstance(report, BaseException):
                raise report
            elif report.record.alive and not report.record.ended:
                log.warning("%s attempt %d: still running after all; watching it again", job.key, len(job.attempts))
                self._attach(job, report.record)
            else:
                self._finish_attempt(job, report)
        self._flush()

    async def _report(self, job: Job) -> AttemptReport:
        attempt = job.attempts[-1]
        worker = self.workers[attempt.host]
        workdir = attempt.workdir or job.spec.workdir
        return await worker.report(attempt.dir, workdir, _result_file(attempt), job.spec.outputs)

    def _finish_attempt(self, job: Job, report: AttemptReport) -> None:
        attempt = job.attempts[-1]
        record = report.record
        timed_out = job.key in self._timed_out or _ran_past_timeout(job, record)
        outcome, reason = classify(report, timed_out=timed_out, cancelled=job.cancel_requested,
                                   transient=job.spec.retry.transient.match)
        now = time.time()
        step = next_step(job, outcome, reason, now)
        self._emit(Ended(
            at=now, key=job.key, number=attempt.number, ended_at=record.ended_at or now,
            exit_code=record.exit_code, signal=record.signal, outcome=outcome, reason=reason,
            job_reason=step.reason, result=report.result, status=step.status, not_before=step.not_before,
            retry_kind=step.retry_kind, params=step.params, cmd=step.cmd,
        ))
        log.info("%s attempt %d: %s -> %s", job.key, attempt.number, reason, step.status)
        self._timed_out.discard(job.key)
        if outcome == Outcome.OOM:
            self._avoid[job.key] = frozenset((attempt.host, g) for g in attempt.gpus)
        reservation = self._reservations.get(job.key)
        if reservation is not None:
            reservation.settling_since = now
            reservation.pgid = reservation.pgid or record.pgid

    def _running_peeks(self) -> list[Peek]:
        """The result files of the running attempts."""
        peeks = []
        for key, reservation in self._reservations.items():
            job = self.store.ledger.jobs[key]
            if reservation.settling_since is None and job.status == JobStatus.RUNNING and job.attempts:
                attempt = job.attempts[-1]
                peeks.append(Peek(attempt.host, key, attempt.number, _result_file(attempt)))
        return peeks

    def _apply_progress(self) -> None:
        """Show what running jobs last wrote to their result files (advisory: not journaled)."""
        now = time.time()
        for peek, result in self._progress.collect():
            job = self.store.ledger.jobs.get(peek.key)
            if job is None or job.status != JobStatus.RUNNING or len(job.attempts) != peek.number:
                continue  # ended (or moved on) since the read started
            progress = Progress.from_result(result, now, job.progress)
            if progress is not job.progress:
                job.progress = progress
                self.store.touch()

    def _block_dependants(self) -> None:
        """Queued jobs whose dependency failed, was cancelled or is blocked become blocked."""
        if not self._dirty:
            return
        jobs = self.store.ledger.jobs
        blocked: dict[str, str] = {}
        changed = True
        while changed:
            changed = False
            for job in self.store.ledger.queued.values():
                if job.key in blocked or not job.deps:
                    continue
                for dep in job.deps:
                    dep_key = job_key(job.submission, dep)
                    upstream = jobs.get(dep_key)
                    bad = upstream is not None and upstream.status in _BLOCKING
                    if bad or dep_key in blocked:
                        state = "blocked" if dep_key in blocked else upstream.status if upstream else "?"
                        blocked[job.key] = f"dependency {dep} {state}"
                        changed = True
                        break
        by_reason: dict[str, list[str]] = {}
        for key, reason in blocked.items():
            by_reason.setdefault(reason, []).append(key)
        self._commit([Blocked(at=time.time(), keys=keys, reason=r) for r, keys in by_reason.items()])

    def _check_timeouts(self) -> None:
        now = time.time()
        for key, reservation in list(self._reservations.items()):
            job = self.store.ledger.jobs[key]
            timeout = job.spec.resources.timeout
            attempt = job.current_attempt
            if reservation.settling_since is not None or timeout is None or attempt is None:
                continue
            if attempt.started_at and now >= attempt.started_at + timeout and key not in self._timed_out:
                log.info("%s: timeout after %.0fs, killing", key, timeout)
                self._timed_out.add(key)
                self._kill(key)

    async def _settle(self) -> None:
        """Release the GPUs of ended attempts once their processes are gone from the GPU."""
        settling = [r for r in self._reservations.values() if r.settling_since is not None]
        if not settling:
            return
        now = time.time()
        gone: list[Reservation] = []
        for res in settling:
            if not res.gpus or res.pgid is None or not await self._group_alive(res):
                gone.append(res)
            elif now - res.settling_since > self.config.settle_timeout:  # type: ignore[operator]
                log.warning("%s: processes still alive after %.0fs; GPU memory now counts as foreign",
                            res.key, self.config.settle_timeout)
                self._release(res)
        for res in gone:
            res.gone_at = res.gone_at or now
        hosts = {r.host for r in gone if r.gpus}
        if hosts:  # a probe newer than the processes' end must show them gone from the GPU
            probes = self._probes.start(force=True, hosts=hosts, newer_than=min(r.gone_at or now for r in gone))
            if probes:
                await asyncio.wait(probes, timeout=1.0)
                await self._collect_probes()
        for res in gone:
            snap = self._probes.snapshots.get(res.host)
            fresh = not res.gpus or (snap is not None and snap.taken_at >= (res.gone_at or now))
            on_gpu = snap is not None and any(
                p.pgid == res.pgid for gpu in snap.gpus if gpu.index in res.gpus for p in gpu.processes
            )
            if (fresh and not on_gpu) or now - res.settling_since > self.config.settle_timeout:  # type: ignore[operator]
                self._release(res)

    async def _group_alive(self, res: Reservation) -> bool:
        assert res.pgid is not None
        try:
            return await self.workers[res.host].group_alive(res.pgid)
        except ExqError:
            return True  # cannot tell: keep the GPU until the settle timeout

    def _release(self, res: Reservation) -> None:
        self._reservations.pop(res.key, None)
        self._dirty = True

    async def _place(self) -> None:
        """Launch every ready job that fits, highest priority first, then submission order."""
        now = time.time()
        if not self._dirty and (self._next_ready_at is None or now < self._next_ready_at):
            return
        self._dirty = False
        ready = self._ready_jobs(now)
        self._waits.forget_unused(now)
        if not ready:
            return
        turn = _Pass(now, gpu_loads(self._probes.snapshots, self._reservations.values()),
                     Running(self.store.ledger.jobs[key] for key in self._reservations),
                     sum(1 for r in self._reservations.values() if not r.gpus))
        launches: list[tuple[Job, Placement, str]] = []
        for job in ready:
            found = self._placement(job, turn)
            if found is None:
                continue
            placement, workdir = found
            res = job.spec.resources
            self._reservations[job.key] = Reservation(
                job.key, placement.host, placement.gpus, res.gpu_memory, res.share)
            launches.append((job, placement, workdir))
            turn.running.add(job)
            if placement.gpus:
                turn.loads = gpu_loads(self._probes.snapshots, self._reservations.values())
            else:
                turn.cpu_jobs += 1
        due = self._waits.next_due(now)
        if due is not None and (self._next_ready_at is None or due < self._next_ready_at):
            self._next_ready_at = due
        if launches:
            await self._launch(launches, now)

    def _placement(self, job: Job, turn: _Pass) -> tuple[Placement, str] | None:
        """Where `job` launches now, and its workdir there; None (its reason noted) while it must wait.

        Its wait_for paths are checked on this machine when it may run here, else on the host it is placed on.
        """
        spec = job.spec
        here = LOCAL_HOST in self.workers and may_run_here(spec.hosts)
        why = turn.running.held_back(job, self._submission(job.submission))
        if why is None and here:
            why = self._paths_missing(job, LOCAL_HOST, spec.workdir, turn.now)
        if why is None and spec.hosts is not None and not any(h in self.workers for h in spec.hosts):
            why = (f"none of its hosts ({', '.join(spec.hosts)}) is configured for this daemon "
                   f"(it has: {', '.join(self.workers) or 'none'})")
        if why is not None:
            self._note(job, why)
            return None
        hosts = self._usable_hosts(job, tuple(spec.hosts) if spec.hosts is not None else None)
        placement = self._fit(job, hosts, turn)
        if placement is None:
            return None
        workdir = self._copies.workdir(job.submission, spec, placement.host, self.workers[placement.host])
        if workdir is None:
            self._note(job, f"waiting for its workdir to be copied to {placement.host}")
            return None
        why = None if here else self._paths_missing(job, placement.host, workdir, turn.now)
        if why is not None:
            self._note(job, why)
            return None
        return placement, workdir

    def _fit(self, job: Job, hosts: tuple[str, ...] | None, turn: _Pass) -> Placement | None:
        """GPUs (or a CPU slot) for `job` on one of `hosts` (None: any); None, its reason noted, when none fit."""
        spec, res = job.spec, job.spec.resources
        threshold = spec.foreign_threshold or self.config.foreign_threshold
        shape = (res, hosts, tuple(sorted((h, tuple(ix)) for h, ix in spec.devices.items())), threshold)
        avoid = self._avoid.get(job.key, frozenset())
        placement: Placement | None = None
        if res.gpus == 0:
            host = self._cpu_host(hosts)
            if host is not None and turn.cpu_jobs < self.config.max_cpu_jobs:
                placement = Placement(host, (), ())
        elif shape not in turn.unfit or avoid:
            placement = place(res, turn.loads, foreign_threshold=threshold, hosts=hosts, avoid=avoid,
                              devices=spec.devices)
        if placement is None:
            allowed = [ld for ld in turn.loads if hosts is None or ld.host in hosts]
            reason = turn.unfit.get(shape) or (
                why_waiting(res, allowed, threshold, spec.devices) if res.gpus
                else "waiting for a CPU job slot on an answering host")
            turn.unfit[shape] = reason
            failed = self._copies.failed(job.submission).items()
            self._note(job, reason + "".join(f"; copying its workdir to {h} failed: {e}" for h, e in failed))
        return placement

    def _paths_missing(self, job: Job, host: str, workdir: str, now: float) -> str | None:
        """Why `job` waits for its wait_for paths on `host` (None: they exist, or it has none)."""
        if not job.spec.wait_for:
            return None
        return self._waits.reason(host, workdir, job.spec.wait_for, now)

    async def _launch(self, launches: list[tuple[Job, Placement, str]], now: float) -> None:
        """Record the launches durably, then start them (none starts if they cannot be recorded)."""
        try:
            self._commit([Launched(at=now, key=job.key, attempt=self._new_attempt(job, p, now, workdir))
                          for job, p, workdir in launches])
        except WriteError:
            for job, _, _ in launches:
                self._reservations.pop(job.key, None)
            raise
        await asyncio.gather(*(self._start(job) for job, _, _ in launches))
        self._flush()

    def _usable_hosts(self, job: Job, hosts: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """`hosts` (None: any) less those the copy of the job's workdir failed on, and those that may still
        run copies of attempts given up as lost (until they are checked: see `_supersede`)."""
        if self._copies.failed(job.submission):
            hosts = self._copies.usable_hosts(job.submission, hosts if hosts is not None else self.workers)
        fenced = set(self.store.ledger.unchecked_lost.values())
        if fenced:
            hosts = tuple(h for h in (hosts if hosts is not None else self.workers) if h not in fenced)
        return hosts

    def _wake_up(self) -> None:
        self._dirty = True
        if self._wake is not None:
            self._wake.set()

    def _cpu_host(self, hosts: tuple[str, ...] | None) -> str | None:
        """Where a CPU-only job runs: this machine when allowed, else the first answering allowed host."""
        candidates = [h for h in self.workers if (hosts is None or h in hosts) and self._hosts.is_up(h)]
        return LOCAL_HOST if LOCAL_HOST in candidates else next(iter(candidates), None)

    def _ready_jobs(self, now: float) -> list[Job]:
        jobs = self.store.ledger.jobs
        ready = []
        self._next_ready_at = None
        for job in self.store.ledger.queued.values():
            pending = sum(jobs[job_key(job.submission, d)].status != JobStatus.SUCCEEDED for d in job.deps)
            if pending:
                self._note(job, f"waiting for {pending} upstream job(s)")
                continue
            if job.not_before is not None and job.not_before > now:
                if self._next_ready_at is None or job.not_before < self._next_ready_at:
                    self._next_ready_at = job.not_before
                continue
            ready.append(job)
        ready.sort(key=lambda j: (-j.priority, j.order))
        return ready

    def _note(self, job: Job, reason: str) -> None:
        """Say why a queued job is not running (advisory: shown in status, not journaled)."""
        if job.reason != reason:
            job.reason = reason
            self.store.touch()

    def _new_attempt(self, job: Job, placement: Placement, now: float, workdir: str) -> Attempt:
        number = len(job.attempts) + 1
        attempt_dir = self.workers[placement.host].attempt_dir(job.submission, job.id, number)
        return Attempt(
            number=number, host=placement.host, gpus=list(placement.gpus), gpu_uuids=list(placement.uuids),
            params=dict(job.params), cmd=job.cmd, dir=attempt_dir, log=posixpath.join(attempt_dir, "log"),
            workdir=None if workdir == job.spec.workdir else workdir, launched_at=now,
        )

    async def _start(self, job: Job) -> None:
        """Launch the job's latest attempt. A launch that raises anything ends that attempt, never the daemon."""
        attempt = job.attempts[-1]
        try:
            request = LaunchRequest(
                attempt_dir=attempt.dir, cmd=attempt.cmd, workdir=attempt.workdir or job.spec.workdir,
                env=self._job_env(job, attempt), setup=job.spec.setup,
            )
            record = await self.workers[attempt.host].launch(request)
        except Exception as exc:
            known = isinstance(exc, ExqError)
            log.error("%s: launch failed: %s", job.key, exc if known else repr(exc), exc_info=not known)
            self._reservations.pop(job.key, None)
            # The connection may have dropped after the runner started: LOST attempts are checked
            # (and killed if running) when their host answers again. Anything else (a value no process
            # can receive, a bug) fails the attempt with its reason.
            outcome = Outcome.LOST if isinstance(exc, WorkerError) else Outcome.FAILED
            self._end_now(job, outcome, f"launch failed: {exc if known else f'{type(exc).__name__}: {exc}'}")
            return
        self._attach(job, record)

    def _attach(self, job: Job, record: RunRecord) -> None:
        """Record the runner's pid and follow the attempt until it ends."""
        attempt = job.attempts[-1]
        if attempt.pid != record.pgid or attempt.started_at != record.started_at:
            self._emit(Started(at=time.time(), key=job.key, number=attempt.number,
                               pid=record.pgid, started_at=record.started_at))
        reservation = self._reservations.get(job.key)
        if reservation is not None:
            reservation.pgid = record.pgid
        self._spawn(self._watch(job.key, attempt.number, self.workers[attempt.host], attempt.dir))

    async def _watch(self, key: str, number: int, worker: Worker, attempt_dir: str) -> None:
        """Wait for the attempt to end, then hand it to the loop."""
        try:
            await worker.wait(attempt_dir)
        except ExqError as exc:
            log.error("%s: lost track of attempt %d: %s", key, number, exc)
        self._finished.append((key, number))
        self._wake_up()

    def _kill(self, key: str) -> None:
        attempt = self.store.ledger.jobs[key].current_attempt
        if attempt is not None:
            self._spawn(self._kill_attempt(attempt))

    async def _kill_attempt(self, attempt: Attempt) -> None:
        try:
            await self.workers[attempt.host].kill(attempt.dir, self.config.kill_grace)
        except ExqError as exc:
            log.warning("cannot kill %s on %s now: %s", attempt.dir, attempt.host, exc)

    def _end_now(self, job: Job, outcome: Outcome, reason: str) -> None:
        """End the current attempt without a record from its runner (never started, host lost)."""
        now = time.time()
        step = next_step(job, outcome, reason, now)
        self._emit(Ended(
            at=now, key=job.key, number=len(job.attempts), ended_at=now, exit_code=None, signal=None,
            outcome=outcome, reason=reason, job_reason=step.reason, status=step.status,
            not_before=step.not_before, retry_kind=step.retry_kind, params=step.params, cmd=step.cmd,
        ))

    def _job_env(self, job: Job, attempt: Attempt) -> dict[str, str]:
        env = dict(job.spec.env)
        env.update(
            CUDA_DEVICE_ORDER="PCI_BUS_ID",
            CUDA_VISIBLE_DEVICES=",".join(str(g) for g in attempt.gpus),
            EXQ_JOB_ID=job.id,
            EXQ_SUBMISSION=job.submission,
            EXQ_PHASE=job.phase,
            EXQ_ATTEMPT=str(attempt.number),
            EXQ_RESULT_FILE=_result_file(attempt),
            EXQ_PARAMS=json.dumps(attempt.params, sort_keys=True),
            EXQ_BASE_PARAMS=json.dumps(job.spec.params, sort_keys=True),
        )
        if job.spec.resources.gpu_memory is not None:
            env["EXQ_GPU_MEMORY"] = str(job.spec.resources.gpu_memory)
        if attempt.host == LOCAL_HOST:
            env["EXQ_STATE_DIR"] = str(self.store.paths.root)
        return env

    # -- probes and recovery ---------------------------------------------------------------

    async def _collect_probes(self) -> None:
        """Apply the probes that finished: hosts going down or coming back."""
        finished = self._probes.finished()
        if not finished:
            return
        now = time.time()
        for name, error in finished:
            if error is not None:
                if self._hosts.observe(name, False, now, error) == Change.WENT_DOWN:
                    self._host_went_down(name, error)
            elif self._hosts.observe(name, True, now) == Change.CAME_BACK:
                self._host_came_back(name)
        self._flush()
        self._update_views()
        self._dirty = True

    def _on_host(self, host: str, *statuses: JobStatus) -> list[Job]:
        return [j for j in self.store.state.jobs if j.status in statuses and j.host == host and j.attempts]

    def _host_went_down(self, host: str, error: str) -> None:
        keys = [j.key for j in self._on_host(host, JobStatus.RUNNING)]
        log.warning("host %s is not answering (%s); %d running job(s) now unknown", host, error, len(keys))
        if keys:
            self._emit(HostDown(at=time.time(), host=host, keys=keys))

    def _host_came_back(self, host: str) -> None:
        """Re-attach its jobs still counted as running there; check it for copies of jobs moved elsewhere."""
        keys = [j.key for j in self._on_host(host, JobStatus.UNKNOWN)]
        log.warning("host %s answers again; re-attaching %d job(s)", host, len(keys))
        if keys:
            self._emit(HostUp(at=time.time(), host=host, keys=keys))
        self._check_superseded(host)

    def _check_superseded(self, host: str) -> None:
        """Start checking `host` for copies of attempts given up as lost (see `_supersede`), in the
        background: the loop goes on, but places nothing on `host` until they are all checked."""
        attempts = self._begin_superseded_check(host)
        if attempts:
            self._spawn(self._supersede(host, attempts))

    def _begin_superseded_check(self, host: str) -> list[tuple[Job, Attempt]]:
        """The attempts on `host` given up as lost and not checked since, with their check marked as begun;
        none when it has none or a check is not due (HostTracker.check_due)."""
        ledger = self.store.ledger
        if host not in self.workers or host not in ledger.unchecked_lost.values():
            return []
        if not self._hosts.check_due(host, time.time()):
            return []
        recorded = {(e.key, e.number) for e in self._pending if isinstance(e, Superseded)}  # not yet flushed
        attempts = [(ledger.jobs[key], ledger.jobs[key].attempts[number - 1])
                    for (key, number), where in ledger.unchecked_lost.items()
                    if where == host and (key, number) not in recorded]
        if attempts:
            self._hosts.check_started(host)
        return attempts

    async def _supersede(self, host: str, attempts: list[tuple[Job, Attempt]]) -> None:
        """Kill the copies of these attempts still running on `host` (all at once) and record what became of
        each (Superseded): their jobs moved on and never change by them. What failed is checked again later."""
        checked = 0
        try:
            ends = await asyncio.gather(*(self._end_copy(host, job, a) for job, a in attempts), return_exceptions=True)
            for (job, attempt), end in zip(attempts, ends, strict=True):
                if isinstance(end, ExqError | TimeoutError):
                    log.warning("cannot check %s attempt %d on %s now (%s); placing nothing there until it is "
                                "checked", job.key, attempt.number, host, str(end) or "no answer in time")
                elif isinstance(end, BaseException):
                    raise end
                else:
                    self._supersede_one(job, attempt, *end)
                    checked += 1
        finally:  # whatever went wrong is tried again, not at once
            self._hosts.check_ended(host, time.time(), failed=checked < len(attempts))
            self._wake_up()

    def _supersede_one(self, job: Job, attempt: Attempt, how: SupersededHow, found: str) -> None:
        """Record (and log) what became of an attempt given up as lost."""
        if how == "killed":
            log.warning("%s: killed its old copy (attempt %d) on %s", job.key, attempt.number, attempt.host)
        else:
            log.log(logging.WARNING if how == "finished" else logging.INFO, "%s attempt %d: %s",
                    job.key, attempt.number, found)
        reason = "; ".join(r for r in (attempt.reason, f"superseded: {found}") if r)
        self._emit(Superseded(at=time.time(), key=job.key, number=attempt.number, how=how, reason=reason))

    async def _end_copy(self, host: str, job: Job, attempt: Attempt) -> tuple[SupersededHow, str]:
        """Kill the attempt's copy on `host` if it still runs; what became of it, in words."""
        worker = self.workers[host]
        record = await worker.read(attempt.dir)
        if not record.claimed and attempt.pid is None:  # its launch was cut short: it must never start now
            await worker.tombstone(attempt.dir)
            record = await worker.read(attempt.dir)  # tombstoned, unless its runner claimed it first
        if record.tombstoned:
            return "gone", f"never started on {host}"
        if record.alive:
            log.warning("%s attempt %d still runs on %s after the job was moved: killing it",
                        job.key, attempt.number, host)
            await worker.kill(attempt.dir, self.config.kill_grace)
            ended = self.config.kill_grace + self.config.probe_timeout  # bounded: its runner records the end
            record = await asyncio.wait_for(worker.wait(attempt.dir), ended)
        if record.signal is not None:
            return "killed", f"ran on {host} while the job was moved; killed"
        if record.ended:
            return "finished", (f"finished on {host} after the job was moved (exit code {record.exit_code}); "
                                "result ignored")
        return "gone", f"not running on {host} any more"

    def _check_lost_hosts(self) -> None:
        """Requeue the jobs of hosts that stayed unreachable past their lost timeout; check the hosts that
        answer for copies of attempts given up as lost (again, after a check failed)."""
        now = time.time()
        for host in self.workers:
            lost_at = self._hosts.lost_at(host)
            if lost_at is None or now < lost_at:
                continue
            for job in self._on_host(host, JobStatus.UNKNOWN):
                health = self._hosts.health[host]
                self._end_now(job, Outcome.LOST, f"host {host} lost: not answering since "
                              f"{time.strftime('%H:%M:%S', time.localtime(health.down_since))} ({health.error})")
                self._reservations.pop(job.key, None)
        self._flush()
        for host in self.workers:  # after the flush: checks already recorded are not started again
            self._check_superseded(host)

    def _update_views(self) -> None:
        state = self.store.state
        state.hosts = []
        for name in self.workers:
            snap, health = self._probes.snapshots.get(name), self._hosts.health.get(name, HostHealth())
            state.hosts.append(HostView(
                name=name, backend=snap.backend if snap else "unreachable", message=snap.message if snap else None,
                probed_at=snap.taken_at if snap else None, up=health.up, down_since=health.down_since,
                error=health.error))
        state.gpus = [
            GpuView(host=ld.host, index=ld.gpu.index, uuid=ld.gpu.uuid, name=ld.gpu.name,
                    memory_total=ld.gpu.memory_total, memory_used=ld.gpu.memory_used,
                    foreign_memory=ld.foreign, reserved_memory=ld.reserved,
                    jobs=[r.key for r in ld.reservations], simulated=self._probes.snapshots[ld.host].simulated)
            for ld in gpu_loads(self._probes.snapshots, self._reservations.values())
        ]
        self.store.touch()

    async def _recover(self, watch: bool = True) -> None:
        """After a restart: re-attach running attempts, classify those that ended, relaunch none."""
        for job in [j for j in self.store.state.jobs if j.status in (JobStatus.RUNNING, JobStatus.UNKNOWN)]:
            attempt = job.attempts[-1]
            worker = self.workers.get(attempt.host)
            if worker is None:
                log.error("%s: host %s is not configured; leaving it running", job.key, attempt.host)
                continue
            res = job.spec.resources
            self._reservations[job.key] = Reservation(
                job.key, attempt.host, tuple(attempt.gpus), res.gpu_memory, res.share, attempt.pid)
            try:
                record = await self._await_claim(worker, attempt.dir)
            except ExqError as exc:
                if self._hosts.observe(attempt.host, False, time.time(), str(exc)) == Change.WENT_DOWN:
                    self._host_went_down(attempt.host, str(exc))
                if job.status == JobStatus.RUNNING:
                    self._emit(HostDown(at=time.time(), host=attempt.host, keys=[job.key]))
                if watch:
                    self._spawn(self._watch(job.key, attempt.number, worker, attempt.dir))
                continue
            if job.status == JobStatus.UNKNOWN:
                self._emit(HostUp(at=time.time(), host=attempt.host, keys=[job.key]))
            if record.tombstoned:
                self._reservations.pop(job.key)
                self._commit([Ended(
                    at=time.time(), key=job.key, number=attempt.number, ended_at=time.time(),
                    exit_code=None, signal=None, outcome=Outcome.LOST,
                    reason="never started: exq stopped while launching it", status=JobStatus.QUEUED,
                )])
                continue
            if job.cancel_requested:
                self._kill(job.key)
            if watch or record.ended or not record.alive:
                self._attach(job, record)
            log.info("%s attempt %d: %s", job.key, attempt.number,
                     "re-attached" if record.alive else "ended while exq was down")
        self._flush()

    async def _await_claim(self, worker: Worker, attempt_dir: str, wait: float = 5.0) -> RunRecord:
        """The attempt's record once the runner wrote its pid; a tombstone if it never claimed it."""
        record = await worker.read(attempt_dir)
        if not record.claimed and await worker.tombstone(attempt_dir):
            return await worker.read(attempt_dir)
        deadline = time.monotonic() + wait
        while record.runner_pid is None and not record.ended and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            record = await worker.read(attempt_dir)
        return record


_BLOCKING = (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.BLOCKED)
_EMPTY = GpuSnapshot(backend="none", gpus=(), taken_at=0.0)


def intake_submission(item: intake.Intake) -> Submission:
    spec = item.spec
    return Submission(id=item.id, key=item.key, name=spec.name, source=spec.source, submitted_at=item.submitted_at,
                      phases=list(spec.phases), jobs=len(spec.jobs), on_job_end=spec.on_job_end,
                      max_parallel=spec.max_parallel, phase_max_parallel=dict(spec.phase_max_parallel))


def _result_file(attempt: Attempt) -> str:
    return posixpath.join(attempt.dir, "result.json")


def _ran_past_timeout(job: Job, record: RunRecord) -> bool:
    """A signal death after the timeout had passed: the kill was ours (also across a daemon restart)."""
    timeout = job.spec.resources.timeout
    if timeout is None or record.signal is None or not record.started_at or not record.ended_at:
        return False
    return record.ended_at - record.started_at >= timeout - 0.5

