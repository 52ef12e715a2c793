"""What the steps of a turn share: the store, the workers, the settings, and the daemon's live bookkeeping.

The loop (`exq.daemon.scheduler`) owns one `Context`; each step module reads and updates it. Events go
through `emit` (queued) and `flush`/`commit` (made durable, then applied): nothing an event causes happens
before it is durable.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from exq.daemon.hosts import HostTracker
from exq.daemon.placement import DEFAULT_FOREIGN_THRESHOLD, Reservation
from exq.daemon.probes import Probes
from exq.model.events import Event, Started
from exq.model.state import Job, Submission
from exq.store.store import Store
from exq.workers import Worker

STARTED_LAG = 0.05
"""Seconds a Started event alone may wait to be written with the next commit (see `seconds_until_flush`)."""


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


class Context:
    """The state one daemon's steps share."""

    def __init__(self, store: Store, workers: Mapping[str, Worker], config: SchedulerConfig) -> None:
        self.store = store
        self.workers = dict(workers)
        self.config = config
        self.here = next((name for name, w in self.workers.items() if w.capabilities.on_daemon_host), None)
        """The worker of the daemon's own machine, if any."""
        self.reservations: dict[str, Reservation] = {}
        """GPUs (or a CPU slot) held by each running or settling attempt, by job key."""
        self.finished: list[tuple[str, int]] = []
        """Attempts (job key, number) seen ending, for the finish step."""
        self.timed_out: set[str] = set()
        self.avoid: dict[str, frozenset[tuple[str, int]]] = {}
        """GPUs (host, index) a job's next attempt avoids: where it last ran out of memory."""
        self.pending: list[Event] = []
        self.started_since: float | None = None
        """When the oldest Started event still queued was emitted."""
        self.tasks: set[asyncio.Task[None]] = set()
        self.dirty = True
        """Something changed that may let a job start: the next turn runs a placement pass."""
        self.wake: asyncio.Event | None = None
        self.hosts = HostTracker(config.lost_timeouts, config.lost_timeout)
        self.probes = Probes(self.workers, config.probe_interval, config.probe_timeout, self.wake_up)

    def emit(self, event: Event) -> None:
        """Queue an event for the next `flush` (one journal fsync for the batch)."""
        if isinstance(event, Started) and self.started_since is None:
            self.started_since = time.monotonic()
        self.pending.append(event)

    def flush(self) -> None:
        """Make the queued events durable, then apply them. Nothing they cause happens before this.

        On WriteError they stay queued, in order, for the next try: what they record happened already.
        """
        if self.pending:
            self.store.commit(self.pending)
            self._written()

    def commit(self, events: list[Event]) -> None:
        """Make decisions taken now durable, after the queued events. On WriteError these are dropped: what
        they were decided from (an intake file, a request, the state) is still there to decide again."""
        if self.pending or events:
            self.store.commit([*self.pending, *events])
            self._written()

    def seconds_until_flush(self) -> float | None:
        """When the queued events are due to be written at the end of a turn (None: none are queued).

        Started events alone may wait up to STARTED_LAG for the next commit to carry them: they only
        record what the attempt's own files record too (its runner's pid and start), so nothing is lost
        if exq stops first; every other event is due at once.
        """
        if not self.pending:
            return None
        if self.started_since is None or any(not isinstance(e, Started) for e in self.pending):
            return 0.0
        return max(0.0, self.started_since + STARTED_LAG - time.monotonic())

    def _written(self) -> None:
        self.pending = []
        self.started_since = None
        self.dirty = True

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `coro` in the background; the loop cancels what is left when it ends."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def wake_up(self) -> None:
        self.dirty = True
        if self.wake is not None:
            self.wake.set()

    def note(self, job: Job, reason: str) -> None:
        """Say why a queued job is not running (advisory: shown in status, not journaled)."""
        if job.reason != reason:
            job.reason = reason
            self.store.touch()

    def submission(self, sub_id: str) -> Submission | None:
        return self.store.ledger.submissions.get(sub_id)
