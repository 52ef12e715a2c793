"""Which hosts answer: up/down transitions from probe results, when a down host counts as lost, and when
a host that answers is due a check for copies of attempts given up as lost."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

CHECK_RETRY = 2.0
"""Seconds after a failed check of a host for copies of attempts given up as lost before the next try."""


class Change(Enum):
    WENT_DOWN = "down"
    CAME_BACK = "up"


@dataclass
class HostHealth:
    up: bool = True
    down_since: float | None = None
    error: str | None = None


class HostTracker:
    """Follows each host's reachability; a host down longer than its lost timeout has lost its jobs."""

    def __init__(self, lost_timeouts: Mapping[str, float], default_lost_timeout: float = 300.0) -> None:
        self._lost_timeouts = dict(lost_timeouts)
        self._default = default_lost_timeout
        self.health: dict[str, HostHealth] = {}
        self._checking: set[str] = set()
        self._check_retry_at: dict[str, float] = {}

    def observe(self, host: str, ok: bool, now: float, error: str | None = None) -> Change | None:
        """Record one probe result; returns the transition it makes, if any."""
        health = self.health.setdefault(host, HostHealth())
        if ok:
            changed = not health.up
            self.health[host] = HostHealth()
            if changed:
                self._check_retry_at.pop(host, None)  # checked again at once
            return Change.CAME_BACK if changed else None
        health.error = error
        if health.up:
            health.up, health.down_since = False, now
            return Change.WENT_DOWN
        return None

    def is_up(self, host: str) -> bool:
        return self.health.get(host, HostHealth()).up

    def lost_at(self, host: str) -> float | None:
        """When the host's running jobs count as lost (None while it is up)."""
        health = self.health.get(host)
        if health is None or health.up or health.down_since is None:
            return None
        return health.down_since + self._lost_timeouts.get(host, self._default)

    def check_due(self, host: str, now: float) -> bool:
        """Whether to start checking `host` for copies of attempts given up as lost: it answers, no check
        of it runs, and the last one did not fail within CHECK_RETRY seconds."""
        return self.is_up(host) and host not in self._checking and now >= self._check_retry_at.get(host, 0.0)

    def check_started(self, host: str) -> None:
        self._checking.add(host)

    def check_ended(self, host: str, now: float, failed: bool) -> None:
        """A check of `host` ended; a failed one is tried again after CHECK_RETRY seconds."""
        self._checking.discard(host)
        if failed:
            self._check_retry_at[host] = now + CHECK_RETRY
        else:
            self._check_retry_at.pop(host, None)
