"""The scheduler: one asyncio loop, the single writer of the queue state.

Each turn runs the steps, each in its own module over a shared `Context`: apply finished probes
(hostwatch), ingest submissions and control requests (ingest), finish ended attempts (finish), block
the dependants of failures (deps), enforce timeouts (launch), requeue the jobs of lost hosts (hostwatch),
release settled GPUs (settle), place ready jobs and start them in the background (place, launch), then
write the snapshot. After a restart, `recover` re-attaches running attempts first. A job's start or exit
wakes the loop at once; nothing waits on a fixed poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

from exq import __version__
from exq.daemon.codesync import WorkdirCopies
from exq.daemon.context import Context, SchedulerConfig
from exq.daemon.deps import block_dependants
from exq.daemon.finish import finish_ended
from exq.daemon.hooks import HookRuns
from exq.daemon.hostwatch import HostWatch
from exq.daemon.ingest import apply_requests, ingest
from exq.daemon.launch import Launcher
from exq.daemon.place import Placer
from exq.daemon.progress import ProgressReads, apply_progress, note_waiting, running_peeks
from exq.daemon.recover import recover
from exq.daemon.settle import settle
from exq.daemon.waitfor import PathWaits
from exq.errors import WriteError
from exq.model.state import DaemonInfo, QueueState
from exq.store import intake
from exq.store.store import Store
from exq.workers import Worker

log = logging.getLogger("exq.scheduler")


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
        self.config = config or SchedulerConfig()
        self.mode = mode
        self.ctx = ctx = Context(store, workers, self.config)
        self._draining = False
        self._write_error: str | None = None
        """Why the state cannot be written now (disk full...): nothing is placed until a write works again."""
        self._next_write_try = 0.0
        self._launcher = Launcher(ctx)
        self._hostwatch = HostWatch(ctx)
        self._copies = WorkdirCopies(ctx.wake_up)
        self._waits = PathWaits(ctx.workers, self.config.wait_for_interval, self.config.probe_timeout, ctx.wake_up)
        self._placer = Placer(ctx, self._launcher, self._copies, self._waits)
        self._hooks = HookRuns(store.paths, self.config.hook_timeout, ctx.wake_up)
        self._progress = ProgressReads(self.config.progress_interval, self.config.probe_timeout)

    # -- lifecycle -------------------------------------------------------------------------

    def drain(self) -> None:
        """Stop placing and leave the loop; running jobs keep running. Safe from a signal handler."""
        if not self._draining:
            log.info("draining: no new jobs are placed; %d running job(s) keep running", len(self.ctx.reservations))
        self._draining = True
        if self.ctx.wake is not None:
            self.ctx.wake.set()

    async def run(
        self, until: Callable[[QueueState], bool] | None = None, on_turn: Callable[[QueueState], None] | None = None
    ) -> None:
        """Run until drained, or until `until(state)` holds after a turn (the `exq run` mode).

        `on_turn(state)` is called after each turn (the first one: recovered, in the loop; see exq.notify).
        """
        ctx = self.ctx
        ctx.wake = asyncio.Event()
        intake.clean_stale_replies(self.store.paths)
        self._set_daemon_info()
        state = self.store.state
        log.info("exq %s started (pid %d, state %s): %d job(s), %d queued; hosts: %s", __version__, os.getpid(),
                 self.store.paths.root, len(state.jobs), len(self.store.ledger.queued),
                 ", ".join(ctx.workers) or "none")
        await asyncio.wait(ctx.probes.start(force=True), timeout=min(5.0, self.config.probe_timeout))
        await self._hostwatch.collect_probes()
        while not await self._recovered() and not self._draining:
            await asyncio.sleep(self.config.write_retry)
        log.info("recovered: %d attempt(s) still running re-attached, seq %d", len(ctx.reservations), state.seq)
        for host in ctx.workers:  # the loop starts while they are checked
            if ctx.hosts.is_up(host):
                self._hostwatch.check_superseded(host)
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
            await self._launcher.wait_for_starts()
            self._copies.cancel()
            self._waits.cancel()
            await self._hooks.cancel()
            await self._progress.cancel()
            ctx.probes.cancel()
            for task in ctx.tasks:
                task.cancel()
            await asyncio.gather(*ctx.tasks, return_exceptions=True)
            self.store.state.daemon = None
            self.store.touch()
            try:
                ctx.flush()
                self.store.snapshot(force=True)
            except WriteError as exc:  # the journal holds every event: the next start rebuilds it
                log.error("final snapshot not written: %s", exc)
            log.info("stopped; %d job(s) left running (re-attached at the next start)", len(ctx.reservations))

    async def _recovered(self) -> bool:
        """Recover after a restart; False (and the reason shown) when the state cannot be written yet."""
        try:
            await recover(self.ctx, self._launcher, self._hostwatch)
        except WriteError as exc:
            self._cannot_write(exc)
            self.ctx.pending.clear()  # the next try finds the same and records it again
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
            self.ctx.flush()
            self.store.touch()
            self.store.snapshot(force=True)
        except WriteError as exc:
            self._cannot_write(exc)
            return False
        log.warning("the queue state can be written again: placing resumes")
        self._write_error = None
        if self.store.state.daemon is not None:
            self.store.state.daemon.problem = None
        self.ctx.wake_up()
        return True

    async def apply_pending_requests(self) -> None:
        """Without a running loop: recover, apply queued control requests and submissions, then stop."""
        self.ctx.wake = asyncio.Event()
        await recover(self.ctx, self._launcher, self._hostwatch, watch=False)
        self._ingest()
        apply_requests(self.ctx, self._launcher.kill)
        await asyncio.gather(*self.ctx.tasks, return_exceptions=True)
        self.store.snapshot(force=True)

    async def _turn(self) -> None:
        ctx = self.ctx
        if not self._writes_work():
            return
        await self._hostwatch.collect_probes()
        ctx.probes.start()  # those due: every host is watched, jobs to place or not
        self._ingest()
        apply_requests(ctx, self._launcher.kill)
        await finish_ended(ctx, self._launcher.attach)
        apply_progress(ctx, self._progress)
        note_waiting(ctx)
        block_dependants(ctx)
        self._launcher.check_timeouts()
        self._hostwatch.check_lost_hosts()
        await settle(ctx, self._hostwatch.collect_probes)
        if not self._draining:
            self._placer.place()
        self._progress.start_due(ctx.workers, lambda: running_peeks(ctx))
        ctx.pending.extend(self._hooks.finished())
        if ctx.seconds_until_flush() == 0.0:
            ctx.flush()
        self._hooks.start_due(self.store.state.submissions)  # after the flush: hooks read the durable state
        self.store.snapshot()

    def _ingest(self) -> None:
        ingest(self.ctx)

    async def _sleep(self) -> None:
        assert self.ctx.wake is not None
        timeout = self.config.intake_poll
        for due in (self.store.seconds_until_snapshot(), self.ctx.seconds_until_flush()):
            if due is not None:
                timeout = min(timeout, due)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ctx.wake.wait(), timeout=max(0.001, timeout))
        self.ctx.wake.clear()

    def _set_daemon_info(self) -> None:
        self.store.state.daemon = DaemonInfo(
            pid=os.getpid(), hostname=socket.gethostname(), started_at=time.time(),
            mode="run" if self.mode == "run" else "daemon",
        )
        self.store.touch()
