"""Host reachability: transitions, and when a silent host's jobs count as lost."""

from __future__ import annotations

from exq.daemon.hosts import Change, HostTracker


def test_transitions_are_reported_once() -> None:
    tracker = HostTracker({}, default_lost_timeout=60)
    assert tracker.observe("h1", True, 0.0) is None
    assert tracker.observe("h1", False, 10.0, "connection refused") == Change.WENT_DOWN
    assert tracker.observe("h1", False, 12.0, "timeout") is None
    assert not tracker.is_up("h1") and tracker.health["h1"].error == "timeout"
    assert tracker.health["h1"].down_since == 10.0
    assert tracker.observe("h1", True, 20.0) == Change.CAME_BACK
    assert tracker.is_up("h1") and tracker.lost_at("h1") is None


def test_lost_deadline_uses_the_hosts_own_timeout() -> None:
    tracker = HostTracker({"slow": 600.0}, default_lost_timeout=60)
    tracker.observe("fast", False, 100.0, "down")
    tracker.observe("slow", False, 100.0, "down")
    assert tracker.lost_at("fast") == 160.0 and tracker.lost_at("slow") == 700.0
    assert tracker.lost_at("never-seen") is None
