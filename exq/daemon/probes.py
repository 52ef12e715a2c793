"""GPU probes of every host, run in the background: at most one in flight per host, each bounded.

A host that hangs never stalls the scheduler's loop: its probe times out on its own, and the loop
only collects probes that finished.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping

from exq.errors import ExqError
from exq.gpus import GpuSnapshot
from exq.workers import Worker


class Probes:
    """The latest GPU snapshot of each host and the probes in flight."""

    def __init__(
        self, workers: Mapping[str, Worker], interval: float, timeout: float, on_done: Callable[[], None]
    ) -> None:
        self._workers = workers
        self._interval = interval
        self.timeout = timeout
        self._on_done = on_done
        self.snapshots: dict[str, GpuSnapshot] = {}
        """The last answer of each host that answered its last probe."""
        self._tasks: dict[str, asyncio.Task[GpuSnapshot]] = {}
        self._probed_at: dict[str, float] = {}

    def start(
        self, force: bool = False, hosts: Iterable[str] | None = None, newer_than: float | None = None
    ) -> list[asyncio.Task[GpuSnapshot]]:
        """Start a probe of each host due for one (`interval` passed; with `force`, any host, or with
        `newer_than` any whose snapshot is older); returns the probes in flight of those hosts."""
        now = time.time()
        in_flight = []
        for name in hosts or self._workers:
            task = self._tasks.get(name)
            if task is None:
                snap = self.snapshots.get(name)
                stale = newer_than is not None and (snap is None or snap.taken_at < newer_than)
                due = now - self._probed_at.get(name, 0.0) >= self._interval
                if not (force and (newer_than is None or stale)) and not due:
                    continue
                self._probed_at[name] = now
                task = asyncio.ensure_future(asyncio.wait_for(self._workers[name].probe(), self.timeout))
                task.add_done_callback(lambda _: self._on_done())
                self._tasks[name] = task
            in_flight.append(task)
        return in_flight

    def finished(self) -> list[tuple[str, str | None]]:
        """The hosts whose probe finished, each with None (answered: its snapshot is kept) or why it
        did not answer (its snapshot is dropped). An unexpected error (a bug) is raised."""
        results: list[tuple[str, str | None]] = []
        for name, task in [(n, t) for n, t in self._tasks.items() if t.done()]:
            del self._tasks[name]
            error = task.exception() if not task.cancelled() else None
            if isinstance(error, ExqError | TimeoutError) or task.cancelled():
                self.snapshots.pop(name, None)
                why = str(error) if error is not None else ""
                results.append((name, why or f"no answer to a GPU probe within {self.timeout:.0f}s"))
            elif error is not None:
                raise error
            else:
                self.snapshots[name] = task.result()
                results.append((name, None))
        return results

    def cancel(self) -> None:
        for task in self._tasks.values():
            task.cancel()
