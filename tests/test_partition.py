"""A host cut off, not dead: when it answers again, the moved job's old copy there is killed before
anything else happens on it, and only one result of the job is ever accepted (real sshd hosts)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import Exq, wait_until
from sshhosts import SshHost, SshHosts
from test_remote_e2e import configure, marks, shared  # noqa: F401  (shared: a fixture)
from test_store import launched, submitted

from exq.config import HostConfig
from exq.daemon.hosts import CHECK_RETRY, HostTracker
from exq.errors import WorkerError
from exq.model.events import Ended, Superseded
from exq.model.outcome import Outcome
from exq.model.state import JobStatus
from exq.store.store import StatePaths, Store, read_state
from exq.workers.ssh import NETWORK_BACKOFF_MAX, SshWorker

Start = Callable[..., SshHosts]
JobView = dict[str, Any]


def moved_manifest(exq: Exq, work: Path, first_attempt: str) -> Path:
    """Job j0: marks its start, runs `first_attempt` (attempt 1) or nothing (later ones), writes its
    attempt number as its result and marks `done N`: every line of marks/j0 is one copy's work."""
    return exq.manifest(f"""
        name: moved
        workdir: {work}
        id: j0
        cmd: >-
          umask 0; echo "start $EXQ_ATTEMPT" >> marks/j0;
          if [ "$EXQ_ATTEMPT" = 1 ]; then {first_attempt}; fi;
          printf '{{{{"attempt": %s}}}}' "$EXQ_ATTEMPT" > "$EXQ_RESULT_FILE";
          echo "done $EXQ_ATTEMPT" >> marks/j0
    """)


WAIT_FOR_GO = "n=0; while [ ! -e marks/go ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done"
"""Attempt 1 runs until marks/go exists (at most 60 s)."""


def start_on_a_host(exq: Exq, hosts: SshHosts, work: Path, first_attempt: str) -> tuple[SshHost, JobView]:
    """Two SSH hosts, no local GPUs, lost_timeout 2s; j0 submitted: its first host and running attempt 1."""
    configure(exq, hosts, lost_timeout="2s", local=False)
    exq.start_daemon()
    exq("submit", str(moved_manifest(exq, work, first_attempt)))
    attempt = wait_until(lambda: (j := exq.jobs().get("j0")) and j["attempts"] and j["attempts"][0]["pid"]
                         and marks(work, "j0") and j["attempts"][0], 60, 0.2)
    return hosts[attempt["host"]], attempt


def moved_and_done(exq: Exq) -> JobView:
    """j0 once it succeeded after being moved off its first host."""
    job: JobView = wait_until(lambda: (j := exq.jobs()["j0"])["status"] == "succeeded" and j, 60, 0.2)
    assert [a["outcome"] for a in job["attempts"]] == ["lost", "succeeded"]
    assert job["attempts"][1]["host"] != job["attempts"][0]["host"] and job["result"] == {"attempt": 2}
    return job


def group_alive(pgid: int) -> bool:
    """Whether process group `pgid` has a live (not zombie) process on this machine (the hosts' machine)."""
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):
            continue
    return False


def exit_status(attempt: JobView) -> int:
    """The exit status the attempt's runner recorded on its host (128+N: killed by signal N)."""
    return int((Path(attempt["dir"]) / "exit").read_text().split()[0])


def superseded(exq: Exq, timeout: float = 40) -> JobView:
    """j0's first attempt once exq recorded what became of its old copy."""
    first: JobView = wait_until(lambda: "superseded" in ((a := exq.jobs()["j0"]["attempts"][0])["reason"] or "")
                                and a, timeout, 0.2)
    return first


def assert_killed(exq: Exq, work: Path, host: SshHost) -> None:
    """The old copy was killed by exq once its host answered: never finished, group gone, said so."""
    first = superseded(exq)
    assert (first["outcome"], first["superseded"]) == ("lost", "killed") and f"host {host.name} lost" in first["reason"]
    assert f"superseded: ran on {host.name} while the job was moved; killed" in first["reason"], first["reason"]
    assert exit_status(first) > 128 and not group_alive(first["pid"])
    assert "killed its old copy" in (exq.root / "daemon0.log").read_text()
    job = exq.jobs()["j0"]
    assert job["status"] == "succeeded" and job["result"] == {"attempt": 2} and len(job["attempts"]) == 2
    assert marks(work, "j0") == ["start 1", "start 2", "done 2"]  # one completion: attempt 1 never finished


def test_cut_off_host_has_the_old_copy_killed_before_anything_else_runs_there(
    exq: Exq, ssh_hosts: Start, shared: Path  # noqa: F811  (the fixture imported above)
) -> None:
    hosts = ssh_hosts([("h1", "1x24GiB"), ("h2", "1x24GiB")])
    host, _ = start_on_a_host(exq, hosts, shared, WAIT_FOR_GO)
    host.cut_off()  # sshd only: the job runs on, out of exq's reach
    try:
        wait_until(lambda: exq.jobs()["j0"]["status"] != "running", 30, 0.2)
        late = exq.manifest(f"name: late\nworkdir: {shared}\ngpus: 0\nhosts: [{host.name}]\nid: late\n"
                            "cmd: umask 0; echo start >> marks/late\n", name="late.yaml")
        exq("submit", str(late))  # placeable only on the cut-off host
        moved_and_done(exq)
        assert exq.jobs()["late"]["status"] == "queued" and group_alive(exq.jobs()["j0"]["attempts"][0]["pid"])
    finally:
        host.reconnect()
    assert_killed(exq, shared, host)
    late_job = wait_until(lambda: (j := exq.jobs()["late"])["status"] == "succeeded" and j, 60, 0.2)
    old_end = float((Path(exq.jobs()["j0"]["attempts"][0]["dir"]) / "exit").read_text().split()[1])
    assert late_job["attempts"][0]["launched_at"] > old_end  # nothing launched there before the kill


def test_frozen_host_has_the_old_copy_killed_before_it_can_complete(
    exq: Exq, ssh_hosts: Start, shared: Path  # noqa: F811  (the fixture imported above)
) -> None:
    hosts = ssh_hosts([("h1", "1x24GiB"), ("h2", "1x24GiB")])
    host, _ = start_on_a_host(exq, hosts, shared, "sleep 30")  # wall time: it goes on counting while frozen
    host.stop()  # sshd, its sessions and the job: the whole host frozen
    try:
        moved_and_done(exq)
    finally:
        host.cont()
    assert_killed(exq, shared, host)


def test_old_copy_that_finished_while_cut_off_is_recorded_and_its_result_ignored(
    exq: Exq, ssh_hosts: Start, shared: Path  # noqa: F811  (the fixture imported above)
) -> None:
    hosts = ssh_hosts([("h1", "1x24GiB"), ("h2", "1x24GiB")])
    host, _ = start_on_a_host(exq, hosts, shared, WAIT_FOR_GO)
    host.cut_off()
    try:
        before = moved_and_done(exq)
        (shared / "marks" / "go").touch()  # the old copy, out of reach, finishes too
        wait_until(lambda: "done 1" in marks(shared, "j0"), 30, 0.1)
    finally:
        host.reconnect()
    first = superseded(exq)
    assert first["superseded"] == "finished"
    assert f"superseded: finished on {host.name} after the job was moved (exit code 0); result ignored" \
        in first["reason"], first["reason"]
    job = exq.jobs()["j0"]
    assert job["status"] == "succeeded" and job["result"] == {"attempt": 2} and len(job["attempts"]) == 2
    assert job["finished_at"] == before["finished_at"] and job["attempts"][1] == before["attempts"][1]
    assert sorted(marks(shared, "j0")) == ["done 1", "done 2", "start 1", "start 2"]


def test_a_host_is_checked_once_it_answers_and_again_after_a_failed_check() -> None:
    tracker = HostTracker({}, default_lost_timeout=2)
    tracker.observe("h1", False, 0.0, "refused")
    assert not tracker.check_due("h1", 10.0)  # not answering: nothing to do there yet
    tracker.observe("h1", True, 10.0)
    assert tracker.check_due("h1", 10.0)
    tracker.check_started("h1")
    assert not tracker.check_due("h1", 10.5)  # one check at a time
    tracker.check_ended("h1", 11.0, failed=True)
    assert not tracker.check_due("h1", 11.0) and tracker.check_due("h1", 11.0 + CHECK_RETRY)
    tracker.observe("h1", False, 11.5, "refused")
    tracker.observe("h1", True, 12.0)
    assert tracker.check_due("h1", 12.0)  # back again: checked at once


def test_a_superseded_attempt_is_recorded_and_never_changes_its_job(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "st")
    store = Store(paths).open()
    lost = Ended(at=3.0, key="1/j0", number=1, ended_at=3.0, exit_code=None, signal=None, outcome=Outcome.LOST,
                 reason="host local lost", status=JobStatus.QUEUED, retry_kind="lost")
    done = Ended(at=5.0, key="1/j0", number=2, ended_at=5.0, exit_code=0, signal=None, outcome=Outcome.SUCCEEDED,
                 reason="succeeded", status=JobStatus.SUCCEEDED, result={"attempt": 2})
    store.commit([submitted("1", 1), launched("1/j0"), lost, launched("1/j0", 2), done])
    assert store.ledger.unchecked_lost == {("1/j0", 1): "local"}
    before = store.ledger.jobs["1/j0"].model_dump(exclude={"attempts"})
    reason = "host local lost; superseded: finished on local after the job was moved (exit code 0); result ignored"
    store.commit([Superseded(at=6.0, key="1/j0", number=1, how="finished", reason=reason)])
    job = store.ledger.jobs["1/j0"]
    assert job.model_dump(exclude={"attempts"}) == before and store.ledger.unchecked_lost == {}
    assert (job.attempts[0].superseded, job.attempts[0].reason) == ("finished", reason)
    store._lock.release()  # as after kill -9: no final snapshot
    replayed = Store(paths).open()  # the journal replayed
    assert replayed.ledger.unchecked_lost == {}
    replayed.close()
    for state in (replayed.state, read_state(paths)):  # and the snapshot written on close
        attempt = state.jobs[0].attempts[0]
        assert (attempt.superseded, attempt.reason, state.jobs[0].result) == ("finished", reason, {"attempt": 2})


def test_an_unreachable_host_is_tried_again_every_few_seconds_at_most() -> None:
    """A refused connection backs off to NETWORK_BACKOFF_MAX, not backoff_max: a host answering again
    is seen soon (and the copies of jobs moved off it killed soon)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: connecting there is refused
    worker = SshWorker("gone", HostConfig(address="127.0.0.1", port=port, connect_timeout=2), "node1",
                       backoff_initial=0.5, backoff_max=30.0)
    waits: list[float] = []

    async def next_wait() -> float:
        """Fail one real connect, then read the wait it set from the next call's error."""
        while True:
            with pytest.raises(WorkerError) as failed:
                await worker.ensure_connected()
            if "next try in" not in str(failed.value):
                break
            await asyncio.sleep(0.05)
        with pytest.raises(WorkerError, match="next try in") as throttled:
            await worker.ensure_connected()
        match = re.search(r"next try in ([0-9.]+)s", str(throttled.value))
        assert match is not None
        return float(match.group(1))

    async def go() -> None:
        while len(waits) < 4:
            waits.append(await next_wait())
        await worker.close()

    asyncio.run(asyncio.wait_for(go(), 30))
    assert waits == pytest.approx([0.5, 1.0, NETWORK_BACKOFF_MAX, NETWORK_BACKOFF_MAX], abs=0.2)  # not 4.0
