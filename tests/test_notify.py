"""sd_notify: a real AF_UNIX datagram socket stands in for systemd's NOTIFY_SOCKET.

That a daemon stopped with SIGTERM leaves its running job running, and that the next daemon
re-attaches it and it succeeds with one attempt, is test_scheduler_e2e.py::
test_sigterm_drains_and_leaves_jobs_running_then_reattaches; here SIGTERM is checked to send STOPPING=1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Exq, wait_until

from exq.model.state import HostView, QueueState
from exq.notify import Notifier, status_text


class Listener:
    """Receives and keeps every datagram sent to its socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def poll(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def lines(self) -> list[str]:
        return [line for message in self.poll() for line in message.splitlines()]

    def wait_for(self, predicate: str, timeout: float = 30) -> str:
        """The first line starting with `predicate` (waits for it)."""
        found: str = wait_until(lambda: next((ln for ln in self.lines() if ln.startswith(predicate)), None), timeout)
        return found


@pytest.fixture
def listener() -> Iterator[tuple[Listener, str]]:
    """A socket bound at a short path (AF_UNIX paths are limited to 108 bytes)."""
    directory = tempfile.mkdtemp(prefix="exq-notify-")
    path = os.path.join(directory, "notify")
    listen = Listener(path)
    yield listen, path
    listen.sock.close()
    shutil.rmtree(directory, ignore_errors=True)


def test_daemon_sends_ready_status_watchdog_and_stopping(exq: Exq, listener: tuple[Listener, str]) -> None:
    listen, path = listener
    out = exq.root / "job-env"
    exq.env.update(NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
    daemon = exq.start_daemon()
    assert listen.wait_for("READY=1", 20)
    assert listen.wait_for("STATUS=0 running, 0 queued, 1 host up", 5)  # sent with READY=1
    manifest = exq.manifest(f"""
        name: notify
        gpus: 1
        id: job
        cmd: (env | grep ^NOTIFY_SOCKET || true) > {out}; sleep 60
    """)
    exq("submit", str(manifest))
    assert listen.wait_for("STATUS=1 running, 0 queued, 1 host up", 20)
    assert out.read_text() == ""  # the job did not inherit NOTIFY_SOCKET

    def pings() -> int:
        return listen.lines().count("WATCHDOG=1")

    seen = pings()
    wait_until(lambda: pings() >= seen + 3, 10)  # every 0.2s
    assert "STOPPING=1" not in listen.lines()
    daemon.send_signal(signal.SIGTERM)
    assert listen.wait_for("STOPPING=1", 10)
    assert daemon.wait(15) == 0
    assert exq.jobs()["job"]["status"] == "running"  # drained: the job keeps running
    assert listen.lines().count("READY=1") == 1


def test_abstract_socket() -> None:
    name = f"exq-test-{uuid.uuid4().hex}"
    listen = Listener("\0" + name)
    try:
        notifier = Notifier("@" + name)
        notifier.on_turn(QueueState(hosts=[HostView(name="local", backend="simulated")]))
        assert listen.wait_for("READY=1", 5)
        assert "STATUS=0 running, 0 queued, 1 host up" in listen.lines()
        notifier.stopping()
        assert listen.wait_for("STOPPING=1", 5)
        notifier.close()
    finally:
        listen.sock.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled and notifier.watchdog_usec is None
    assert not notifier.send("READY=1")
    notifier.on_turn(QueueState())
    notifier.stopping()
    asyncio.run(asyncio.wait_for(notifier.watchdog(), 1))  # returns at once
    assert not Notifier("relative/path").enabled


def test_from_env_reads_and_unsets_the_variables() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid()), "HOME": "/h"}
    notifier = Notifier.from_env(env)
    assert notifier.address == "/run/x" and notifier.watchdog_usec == 400000
    assert env == {"HOME": "/h"}  # jobs and hooks inherit none of them
    other_pid = Notifier.from_env({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"})
    assert other_pid.watchdog_usec is None
    assert Notifier.from_env({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "junk"}).watchdog_usec is None
    assert Notifier.from_env({"WATCHDOG_USEC": "400000"}).watchdog_usec is None


def test_send_errors_are_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    with caplog.at_level(logging.DEBUG, logger="exq.notify"):
        assert not notifier.send("READY=1")
        notifier.on_turn(QueueState())
    assert "sd_notify" in caplog.text
    notifier.close()


def test_status_is_throttled_and_sent_when_changed(listener: tuple[Listener, str]) -> None:
    listen, path = listener
    notifier = Notifier(path, status_interval=3600)
    notifier.on_turn(QueueState())
    notifier.on_turn(QueueState(paused=True))  # within the interval: not sent
    assert listen.wait_for("READY=1", 5)
    assert [ln for ln in listen.lines() if ln.startswith("STATUS=")] == ["STATUS=0 running, 0 queued, 0 hosts up"]
    notifier.status_interval = 0
    notifier.on_turn(QueueState())  # due but unchanged: not sent
    notifier.on_turn(QueueState(paused=True))
    assert listen.wait_for("STATUS=0 running, 0 queued, 0 hosts up, paused", 5)
    notifier.close()


def test_watchdog_pings_only_while_the_loop_turns(listener: tuple[Listener, str]) -> None:
    listen, path = listener
    notifier = Notifier(path, watchdog_usec=100_000)

    async def scenario() -> None:
        task = asyncio.ensure_future(notifier.watchdog())
        await asyncio.sleep(0.3)  # before the first turn (recovery): pings
        before = listen.lines().count("WATCHDOG=1")
        assert before >= 3
        notifier.on_turn(QueueState())
        await asyncio.sleep(0.3)  # no turn for longer than the watchdog timeout: pings stop
        stalled = listen.lines().count("WATCHDOG=1")
        await asyncio.sleep(0.3)
        assert listen.lines().count("WATCHDOG=1") == stalled
        task.cancel()

    asyncio.run(scenario())
    notifier.close()


def test_status_text_counts_hosts_down() -> None:
    hosts = [HostView(name="local", backend="nvml"), HostView(name="a", backend="none", up=False)]
    assert status_text(QueueState(hosts=hosts)) == "0 running, 0 queued, 1 host up, 1 down"


def test_status_text_leads_with_what_keeps_the_daemon_from_working() -> None:
    from exq.model.state import DaemonInfo

    state = QueueState(daemon=DaemonInfo(pid=1, hostname="h", started_at=0.0, mode="daemon",
                                         problem="cannot write the queue state (disk full): not placing jobs"))
    assert status_text(state) == ("cannot write the queue state (disk full): not placing jobs; "
                                  "0 running, 0 queued, 0 hosts up")
