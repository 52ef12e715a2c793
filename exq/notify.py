"""The systemd notify protocol (sd_notify), by hand: readiness, status, watchdog and stopping.

When systemd runs `exq daemon` as a `Type=notify` service it sets `NOTIFY_SOCKET` (a path, or an
abstract socket written with a leading '@') and, with `WatchdogSec=`, `WATCHDOG_USEC` (and
`WATCHDOG_PID`). Each message is one datagram of `KEY=value` lines on an AF_UNIX socket. Without
`NOTIFY_SOCKET` every method here does nothing; a failed send is logged at debug level, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping

from exq.model.state import JobStatus, QueueState

log = logging.getLogger("exq.notify")

_ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Tells systemd how the daemon is doing: READY=1, STATUS=..., WATCHDOG=1, STOPPING=1."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None, status_interval: float = 2.0) -> None:
        self.address = _socket_address(address)
        self.watchdog_usec = watchdog_usec if self.address is not None else None
        """The watchdog timeout systemd enforces (None: no watchdog); we ping every half of it."""
        self.status_interval = status_interval
        self.ready = False
        self._status: str | None = None
        self._status_at = 0.0
        self._turn_at = time.monotonic()
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, env: MutableMapping[str, str] | None = None, unset: bool = True) -> Notifier:
        """The notifier systemd asked for through `env` (default: os.environ).

        With `unset`, the variables are removed from `env`, so jobs and hooks never inherit them.
        """
        env = os.environ if env is None else env
        values: Mapping[str, str] = {k: env[k] for k in _ENV_KEYS if k in env}
        if unset:
            for key in values:
                del env[key]
        watchdog: int | None = None
        with contextlib.suppress(ValueError):
            pid_ok = "WATCHDOG_PID" not in values or int(values["WATCHDOG_PID"]) == os.getpid()
            usec = int(values.get("WATCHDOG_USEC", "0"))
            watchdog = usec if pid_ok and usec > 0 else None
        return cls(values.get("NOTIFY_SOCKET"), watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, message: str) -> bool:
        """Send one datagram (`KEY=value` lines); False when disabled or it could not be sent."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)  # never stall the scheduler's loop on a full queue
            self._sock.sendto(message.encode(), self.address)
        except OSError as exc:
            log.debug("sd_notify %r to %r failed: %s", message, self.address, exc)
            return False
        return True

    def on_turn(self, state: QueueState) -> None:
        """After each scheduler turn: READY=1 on the first, then STATUS=... when due and changed."""
        now = time.monotonic()
        self._turn_at = now
        if not self.enabled:
            return
        if not self.ready:
            self.ready = True
            self._send_status(state, now, prefix="READY=1\n")
        elif now - self._status_at >= self.status_interval:
            self._send_status(state, now)

    def _send_status(self, state: QueueState, now: float, prefix: str = "") -> None:
        self._status_at = now
        text = status_text(state)
        if prefix or text != self._status:
            self._status = text
            self.send(f"{prefix}STATUS={text}")

    def stopping(self) -> None:
        """The daemon drains (SIGTERM): placing stops, running jobs keep running."""
        self.send("STOPPING=1\nSTATUS=draining: running jobs keep running")

    async def watchdog(self) -> None:
        """Send WATCHDOG=1 every WATCHDOG_USEC/2 while the scheduler's loop keeps turning; run as a task.

        Before the first turn (recovery) it always pings: TimeoutStartSec bounds the start. After
        that, a loop stuck for a whole watchdog period stops the pings, and systemd restarts exq.
        """
        if self.watchdog_usec is None:
            return
        timeout = self.watchdog_usec / 1e6
        while True:
            if not self.ready or time.monotonic() - self._turn_at < timeout:
                self.send("WATCHDOG=1")
            await asyncio.sleep(timeout / 2)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def status_text(state: QueueState) -> str:
    """One line for `systemctl status`: e.g. '12 running, 40 queued, 2 hosts up'."""
    counts = {status: 0 for status in (JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.UNKNOWN)}
    for job in state.jobs:
        if job.status in counts:
            counts[job.status] += 1
    parts = [f"{counts[JobStatus.RUNNING]} running", f"{counts[JobStatus.QUEUED]} queued"]
    if counts[JobStatus.UNKNOWN]:
        parts.append(f"{counts[JobStatus.UNKNOWN]} unknown")
    up = sum(host.up for host in state.hosts)
    parts.append(f"{up} host{'' if up == 1 else 's'} up")
    if up < len(state.hosts):
        parts.append(f"{len(state.hosts) - up} down")
    if state.paused:
        parts.append("paused")
    problem = state.daemon.problem if state.daemon is not None else None
    return ", ".join(parts) if problem is None else f"{problem}; " + ", ".join(parts)


def _socket_address(address: str | None) -> str | None:
    """The AF_UNIX address of NOTIFY_SOCKET: a path, or '@name' for the abstract namespace."""
    if not address:
        return None
    if address.startswith("@"):
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    log.debug("NOTIFY_SOCKET %r is neither a path nor an abstract socket: not notifying", address)
    return None
