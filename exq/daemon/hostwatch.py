"""Host watch step: apply finished GPU probes (hosts going down, coming back, lost), and check a host that
answers again for copies of attempts given up as lost there, killing any still running."""

from __future__ import annotations

import asyncio
import logging
import time

from exq.daemon.context import Context
from exq.daemon.finish import end_now
from exq.daemon.hosts import Change, HostHealth
from exq.daemon.placement import gpu_loads
from exq.errors import ExqError
from exq.model.events import HostDown, HostUp, Superseded
from exq.model.outcome import Outcome
from exq.model.state import Attempt, GpuView, HostView, Job, JobStatus, SupersededHow

log = logging.getLogger("exq.scheduler")


class HostWatch:
    """Follows which hosts answer and what that means for the jobs on them."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def collect_probes(self) -> None:
        """Apply the probes that finished: hosts going down or coming back."""
        ctx = self.ctx
        finished = ctx.probes.finished()
        if not finished:
            return
        now = time.time()
        for name, error in finished:
            if error is not None:
                if ctx.hosts.observe(name, False, now, error) == Change.WENT_DOWN:
                    self.went_down(name, error)
            elif ctx.hosts.observe(name, True, now) == Change.CAME_BACK:
                self._came_back(name)
        ctx.flush()
        self.update_views()
        ctx.dirty = True

    def _on_host(self, host: str, *statuses: JobStatus) -> list[Job]:
        return [j for j in self.ctx.store.state.jobs if j.status in statuses and j.host == host and j.attempts]

    def went_down(self, host: str, error: str) -> None:
        keys = [j.key for j in self._on_host(host, JobStatus.RUNNING)]
        log.warning("host %s is not answering (%s); %d running job(s) now unknown", host, error, len(keys))
        if keys:
            self.ctx.emit(HostDown(at=time.time(), host=host, keys=keys))

    def _came_back(self, host: str) -> None:
        """Re-attach its jobs still counted as running there; check it for copies of jobs moved elsewhere."""
        keys = [j.key for j in self._on_host(host, JobStatus.UNKNOWN)]
        log.warning("host %s answers again; re-attaching %d job(s)", host, len(keys))
        if keys:
            self.ctx.emit(HostUp(at=time.time(), host=host, keys=keys))
        self.check_superseded(host)

    def check_superseded(self, host: str) -> None:
        """Start checking `host` for copies of attempts given up as lost (see `_supersede`), in the
        background: the loop goes on, but places nothing on `host` until they are all checked."""
        attempts = self._begin_superseded_check(host)
        if attempts:
            self.ctx.spawn(self._supersede(host, attempts))

    def _begin_superseded_check(self, host: str) -> list[tuple[Job, Attempt]]:
        """The attempts on `host` given up as lost and not checked since, with their check marked as begun;
        none when it has none or a check is not due (HostTracker.check_due)."""
        ctx = self.ctx
        ledger = ctx.store.ledger
        if host not in ctx.workers or host not in ledger.unchecked_lost.values():
            return []
        if not ctx.hosts.check_due(host, time.time()):
            return []
        recorded = {(e.key, e.number) for e in ctx.pending if isinstance(e, Superseded)}  # not yet flushed
        attempts = [(ledger.jobs[key], ledger.jobs[key].attempts[number - 1])
                    for (key, number), where in ledger.unchecked_lost.items()
                    if where == host and (key, number) not in recorded]
        if attempts:
            ctx.hosts.check_started(host)
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
            self.ctx.hosts.check_ended(host, time.time(), failed=checked < len(attempts))
            self.ctx.wake_up()

    def _supersede_one(self, job: Job, attempt: Attempt, how: SupersededHow, found: str) -> None:
        """Record (and log) what became of an attempt given up as lost."""
        if how == "killed":
            log.warning("%s: killed its old copy (attempt %d) on %s", job.key, attempt.number, attempt.host)
        else:
            log.log(logging.WARNING if how == "finished" else logging.INFO, "%s attempt %d: %s",
                    job.key, attempt.number, found)
        reason = "; ".join(r for r in (attempt.reason, f"superseded: {found}") if r)
        self.ctx.emit(Superseded(at=time.time(), key=job.key, number=attempt.number, how=how, reason=reason))

    async def _end_copy(self, host: str, job: Job, attempt: Attempt) -> tuple[SupersededHow, str]:
        """Kill the attempt's copy on `host` if it still runs; what became of it, in words."""
        config = self.ctx.config
        worker = self.ctx.workers[host]
        record = await worker.read(attempt.dir)
        if not record.claimed and attempt.pid is None:  # its launch was cut short: it must never start now
            await worker.tombstone(attempt.dir)
            record = await worker.read(attempt.dir)  # tombstoned, unless its runner claimed it first
        if record.tombstoned:
            return "gone", f"never started on {host}"
        if record.alive:
            log.warning("%s attempt %d still runs on %s after the job was moved: killing it",
                        job.key, attempt.number, host)
            await worker.kill(attempt.dir, config.kill_grace)
            ended = config.kill_grace + config.probe_timeout  # bounded: its runner records the end
            record = await asyncio.wait_for(worker.wait(attempt.dir), ended)
        if record.signal is not None:
            return "killed", f"ran on {host} while the job was moved; killed"
        if record.ended:
            return "finished", (f"finished on {host} after the job was moved (exit code {record.exit_code}); "
                                "result ignored")
        return "gone", f"not running on {host} any more"

    def check_lost_hosts(self) -> None:
        """Requeue the jobs of hosts that stayed unreachable past their lost timeout; check the hosts that
        answer for copies of attempts given up as lost (again, after a check failed)."""
        ctx = self.ctx
        now = time.time()
        for host in ctx.workers:
            lost_at = ctx.hosts.lost_at(host)
            if lost_at is None or now < lost_at:
                continue
            for job in self._on_host(host, JobStatus.UNKNOWN):
                health = ctx.hosts.health[host]
                end_now(ctx, job, Outcome.LOST, f"host {host} lost: not answering since "
                        f"{time.strftime('%H:%M:%S', time.localtime(health.down_since))} ({health.error})")
                ctx.reservations.pop(job.key, None)
        ctx.flush()
        for host in ctx.workers:  # after the flush: checks already recorded are not started again
            self.check_superseded(host)

    def update_views(self) -> None:
        """The hosts and GPUs as status shows them."""
        ctx = self.ctx
        state = ctx.store.state
        state.hosts = []
        for name in ctx.workers:
            snap, health = ctx.probes.snapshots.get(name), ctx.hosts.health.get(name, HostHealth())
            state.hosts.append(HostView(
                name=name, backend=snap.backend if snap else "unreachable", message=snap.message if snap else None,
                probed_at=snap.taken_at if snap else None, up=health.up, down_since=health.down_since,
                error=health.error, slots=len(snap.gpus) if snap and snap.slots else None))
        snapshots = ctx.probes.snapshots
        state.gpus = [
            GpuView(host=ld.host, index=ld.gpu.index, uuid=ld.gpu.uuid, name=ld.gpu.name,
                    memory_total=ld.gpu.memory_total, memory_used=ld.gpu.memory_used,
                    foreign_memory=ld.foreign, reserved_memory=ld.reserved,
                    jobs=[r.key for r in ld.reservations], simulated=snapshots[ld.host].simulated)
            for ld in gpu_loads(snapshots, ctx.reservations.values())
            if ld.reservations or not snapshots[ld.host].slots
        ]
        ctx.store.touch()
