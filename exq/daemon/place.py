"""Place step: one pass over the ready jobs, highest priority first, reserving GPUs (or a CPU slot) for
every job that fits and handing them to the launch step. Each job that must wait says why."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

from exq.daemon.codesync import WorkdirCopies
from exq.daemon.context import Context
from exq.daemon.deps import PAUSED, ReadyJobs
from exq.daemon.launch import Launcher
from exq.daemon.limits import Running
from exq.daemon.placement import Batch, GpuLoad, Placement, Reservation, gpu_loads, place, why_waiting
from exq.daemon.waitfor import PathWaits
from exq.model.state import Job

FULL_PASS = 1.0
"""At most this many seconds between placement passes that go through every queued job."""


@dataclass
class _Pass:
    """What one placement pass knows, updated as it places jobs."""

    now: float
    loads: list[GpuLoad]
    running: Running
    cpu_jobs: int
    unfit: dict[object, str] = field(default_factory=dict)
    """Why jobs of one shape (resources, hosts, devices, foreign threshold) found no place in this pass."""
    waiting: dict[int, str] = field(default_factory=dict)
    """Why jobs of one kind (see `Placer._kind`) could not start in this pass: capacity only shrinks
    and counts only grow during a pass, so the next job of that kind cannot start either."""
    batches: dict[int, _OpenBatch] = field(default_factory=dict)
    """The throttled batch jobs of one kind join in this pass, on a host with its own queue."""


@dataclass
class _OpenBatch:
    batch: Batch
    size: int
    """How many jobs joined it so far."""


class Placer:
    """Runs placement passes when something changed or a backoff ended."""

    def __init__(self, ctx: Context, launcher: Launcher, copies: WorkdirCopies, waits: PathWaits) -> None:
        self.ctx = ctx
        self.launcher = launcher
        self.copies = copies
        self.waits = waits
        self.next_ready_at: float | None = None
        self._full_pass_at = 0.0
        self._queued_after = 0
        """How many jobs the last pass left queued: more now means some joined (a full pass is due)."""
        self._cpu_wanted = True
        """Whether some queued job wanted a CPU slot at the last full pass."""
        self._kinds: dict[str, int] = {}
        self._kind_ids: dict[tuple[object, ...], int] = {}
        self._batch_ids = itertools.count(1)

    def place(self) -> None:
        """Launch every ready job that fits, highest priority first, then submission order.

        A pass stops early once nothing more can start (no GPU with room left, and no CPU slot or no job
        wanting one): a job ending frees room and brings the next pass. At least every FULL_PASS seconds,
        and whenever jobs joined the queue, a pass goes through every queued job, so that each one's
        reason stays current.
        """
        ctx = self.ctx
        now = time.time()
        if not ctx.dirty and (self.next_ready_at is None or now < self.next_ready_at):
            return
        ctx.dirty = False
        queued = ctx.store.ledger.queued
        if not queued:
            return
        if ctx.store.state.paused:
            for job in queued.values():
                ctx.note(job, PAUSED)
            return
        full = now >= self._full_pass_at or len(queued) > self._queued_after
        if full:
            self.waits.forget_unused(now)
            self._cpu_wanted = any(job.spec.resources.gpus == 0 for job in queued.values())
        turn = _Pass(now, gpu_loads(ctx.probes.snapshots, ctx.reservations.values()),
                     Running((ctx.store.ledger.jobs[key], r.batch) for key, r in ctx.reservations.items()),
                     sum(1 for r in ctx.reservations.values() if not r.gpus))
        ready = ReadyJobs(ctx, now)
        launches = self._fill(ready, turn, full)
        if full:  # a full pass never stops early
            self._full_pass_at = now + FULL_PASS
        self.next_ready_at = ready.next_ready_at
        due = self.waits.next_due(now)
        if due is not None and (self.next_ready_at is None or due < self.next_ready_at):
            self.next_ready_at = due
        self._queued_after = len(queued) - len(launches)
        if launches:
            self.launcher.launch(launches, now)

    def _fill(self, ready: ReadyJobs, turn: _Pass, full: bool) -> list[tuple[Job, Placement, str]]:
        """Reserve a place for each ready job that fits, in order; the launches not started yet. Once no
        room is left, a partial pass stops, and a full one starts its launches at once and goes on only
        to note the other jobs' reasons."""
        launches: list[tuple[Job, Placement, str]] = []
        for job in ready:
            if (launches or not full) and not self._room(turn):
                if not full:
                    break
                self.launcher.launch(launches, turn.now)
                launches = []
            found = self._placement(job, turn)
            if found is None:
                continue
            placement, workdir = found
            res = job.spec.resources
            batch = self._batch(job, placement.host, turn)
            self.ctx.reservations[job.key] = Reservation(
                job.key, placement.host, placement.gpus, res.gpu_memory, res.share, batch=batch)
            launches.append((job, placement, workdir))
            self._kinds.pop(job.key, None)
            if batch is None:
                turn.running.add(job)
            if placement.gpus:
                turn.loads = gpu_loads(self.ctx.probes.snapshots, self.ctx.reservations.values())
            else:
                turn.cpu_jobs += 1
        return launches

    def _batch(self, job: Job, host: str, turn: _Pass) -> Batch | None:
        """The throttled batch `job`, placed on `host`, joins: the open one of its kind there, else (when it has
        max_parallel limits and the host a queue) a new one allowed as many running jobs as the limits have
        room for, counted as that many. None: it counts as one running job."""
        most = self.ctx.workers[host].capabilities.queue_batch
        if not most:
            return None
        kind = self._kind(job)
        joined = turn.batches.get(kind)
        if joined is not None and joined.batch.host == host and joined.size < most:
            joined.size += 1
            return joined.batch
        room = turn.running.room(job, self.ctx.submission(job.submission))
        if room is None:
            return None
        batch = Batch(f"b{next(self._batch_ids)}", host, max(room, 1))
        turn.batches[kind] = _OpenBatch(batch, 1)
        turn.running.add(job, batch.limit)
        return batch

    def _joinable(self, job: Job, turn: _Pass) -> Batch | None:
        """The open batch a job held back by max_parallel may still join (its room was counted for the batch)."""
        joined = turn.batches.get(self._kind(job))
        if joined is None or joined.size >= self.ctx.workers[joined.batch.host].capabilities.queue_batch:
            return None
        return joined.batch

    def _room(self, turn: _Pass) -> bool:
        """Whether one more job could start in this pass: a GPU not taken whole with memory left, or a CPU
        slot while some queued job wants one."""
        if self._cpu_wanted and turn.cpu_jobs < self.ctx.config.max_cpu_jobs:
            return True
        return any(load.available > 0 and not any(r.exclusive for r in load.reservations) for load in turn.loads)

    def _placement(self, job: Job, turn: _Pass) -> tuple[Placement, str] | None:
        """Where `job` launches now, and its workdir there; None (its reason noted) while it must wait.

        Its wait_for paths are checked on this machine when it may run here, else on the host it is placed on.
        """
        kind = None if job.key in self.ctx.avoid else self._kind(job)
        if kind is not None and (why := turn.waiting.get(kind)) is not None:
            self.ctx.note(job, why)
            return None
        found = self._place_one(job, turn)
        if found is None and kind is not None and job.reason is not None:
            turn.waiting[kind] = job.reason
        return found

    def _kind(self, job: Job) -> int:
        """A number shared by the jobs that can start exactly where and when this one can (what makes a
        place for a job: its submission and phase, resources, hosts, devices, workdir and wait_for)."""
        kind = self._kinds.get(job.key)
        if kind is None:
            spec = job.spec
            shape = (job.submission, job.phase, spec.resources, tuple(spec.hosts or ()), spec.hosts is None,
                     tuple(sorted((h, tuple(ix)) for h, ix in spec.devices.items())), spec.foreign_threshold,
                     spec.workdir, tuple(spec.wait_for), spec.sync and (spec.sync.dest, tuple(spec.sync.exclude)))
            kind = self._kinds[job.key] = self._kind_ids.setdefault(shape, len(self._kind_ids))
        return kind

    def _place_one(self, job: Job, turn: _Pass) -> tuple[Placement, str] | None:
        ctx = self.ctx
        spec = job.spec
        here = ctx.here is not None and (spec.hosts is None or ctx.here in spec.hosts)
        held = why = turn.running.held_back(job, ctx.submission(job.submission))
        joining = self._joinable(job, turn) if why is not None else None
        if joining is not None:
            why = None
        if why is None and here:
            assert ctx.here is not None
            why = self._paths_missing(job, ctx.here, spec.workdir, turn.now)
        if why is None and spec.hosts is not None and not any(h in ctx.workers for h in spec.hosts):
            why = (f"none of its hosts ({', '.join(spec.hosts)}) is configured for this daemon "
                   f"(it has: {', '.join(ctx.workers) or 'none'})")
        if why is not None:
            ctx.note(job, why)
            return None
        hosts = self._usable_hosts(job, tuple(spec.hosts) if spec.hosts is not None else None)
        if joining is not None:  # only there: anywhere else it would be one job more than its limits allow
            if hosts is not None and joining.host not in hosts:
                ctx.note(job, held or "")
                return None
            hosts = (joining.host,)
        placement = self._fit(job, hosts, turn)
        if placement is None:
            return None
        workdir = self.copies.workdir(job.submission, spec, placement.host, ctx.workers[placement.host])
        if workdir is None:
            ctx.note(job, f"waiting for its workdir to be copied to {placement.host}")
            return None
        why = None if here else self._paths_missing(job, placement.host, workdir, turn.now)
        if why is not None:
            ctx.note(job, why)
            return None
        return placement, workdir

    def _fit(self, job: Job, hosts: tuple[str, ...] | None, turn: _Pass) -> Placement | None:
        """GPUs (or a CPU slot) for `job` on one of `hosts` (None: any); None, its reason noted, when none fit."""
        ctx = self.ctx
        spec, res = job.spec, job.spec.resources
        threshold = spec.foreign_threshold or ctx.config.foreign_threshold
        shape = (res, hosts, tuple(sorted((h, tuple(ix)) for h, ix in spec.devices.items())), threshold)
        avoid = ctx.avoid.get(job.key, frozenset())
        placement: Placement | None = None
        if res.gpus == 0:
            host = self._cpu_host(hosts)
            if host is not None and turn.cpu_jobs < ctx.config.max_cpu_jobs:
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
            failed = self.copies.failed(job.submission).items()
            ctx.note(job, reason + "".join(f"; copying its workdir to {h} failed: {e}" for h, e in failed))
        return placement

    def _paths_missing(self, job: Job, host: str, workdir: str, now: float) -> str | None:
        """Why `job` waits for its wait_for paths on `host` (None: they exist, or it has none)."""
        if not job.spec.wait_for:
            return None
        return self.waits.reason(host, workdir, job.spec.wait_for, now)

    def _usable_hosts(self, job: Job, hosts: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """`hosts` (None: any) less those the copy of the job's workdir failed on, and those that may still
        run copies of attempts given up as lost (until they are checked: see `HostWatch`)."""
        ctx = self.ctx
        if self.copies.failed(job.submission):
            hosts = self.copies.usable_hosts(job.submission, hosts if hosts is not None else ctx.workers)
        fenced = set(ctx.store.ledger.unchecked_lost.values())
        if fenced:
            hosts = tuple(h for h in (hosts if hosts is not None else ctx.workers) if h not in fenced)
        return hosts

    def _cpu_host(self, hosts: tuple[str, ...] | None) -> str | None:
        """Where a CPU-only job runs: this machine when allowed, else the first answering allowed host."""
        ctx = self.ctx
        candidates = [h for h in ctx.workers if (hosts is None or h in hosts) and ctx.hosts.is_up(h)]
        return ctx.here if ctx.here in candidates else next(iter(candidates), None)
