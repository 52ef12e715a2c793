"""Crash safety of the state directory: journal, snapshots, intake, locking, permissions."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from exq.errors import DaemonRunningError, StateError
from exq.model.events import Ended, Launched, Submitted
from exq.model.jobspec import JobSpec, SubmissionSpec
from exq.model.outcome import Outcome
from exq.model.state import Attempt, JobStatus, Submission
from exq.store import intake
from exq.store import store as store_module
from exq.store.store import StatePaths, Store, read_state


def spec(n: int, name: str = "s") -> SubmissionSpec:
    jobs = [JobSpec(id=f"j{i}", phase="p", cmd_template="true", params={"i": i}, cmd="true", workdir="/tmp")
            for i in range(n)]
    return SubmissionSpec(name=name, source="/tmp/m.yaml", phases=["p"], jobs=jobs)


def submitted(sub_id: str, n: int) -> Submitted:
    s = spec(n)
    return Submitted(at=1.0, submission=Submission(id=sub_id, name=s.name, source=s.source, submitted_at=1.0,
                                                   phases=s.phases, jobs=n), jobs=s.jobs)


def launched(key: str, number: int = 1) -> Launched:
    attempt = Attempt(number=number, host="local", gpus=[0], params={}, cmd="true", dir="/x", log="/x/log",
                      launched_at=2.0)
    return Launched(at=2.0, key=key, attempt=attempt)


def ended(key: str, status: JobStatus = JobStatus.SUCCEEDED) -> Ended:
    return Ended(at=3.0, key=key, number=1, ended_at=3.0, exit_code=0, signal=None,
                 outcome=Outcome.SUCCEEDED, reason="exit 0", status=status)


def test_events_survive_reopen_without_snapshot(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "st")
    store = Store(paths).open()
    store.commit([submitted("1", 3), launched("1/j0")])
    # Simulate kill -9: no close(), no final snapshot; the lock dies with the process.
    store._lock.release()
    recovered = Store(paths).open()
    job = recovered.ledger.jobs["1/j0"]
    assert job.status == JobStatus.RUNNING and len(recovered.state.jobs) == 3
    recovered.close()


def test_torn_last_journal_line_is_dropped_and_earlier_events_kept(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "st")
    store = Store(paths).open()
    store.commit([submitted("1", 2), launched("1/j0")])
    store._lock.release()
    with paths.journal.open("ab") as handle:
        handle.write(b'{"type": "ended", "seq": 3, "at": 1')  # crash mid-append
    recovered = Store(paths).open()
    assert recovered.ledger.jobs["1/j0"].status == JobStatus.RUNNING
    recovered.commit([ended("1/j0")])
    recovered.close()
    assert read_state(paths).jobs[0].status == JobStatus.SUCCEEDED


def test_corrupt_event_in_the_middle_is_an_error(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "st")
    store = Store(paths).open()
    store.commit([submitted("1", 1)])
    store._lock.release()
    for journal in (paths.journal, paths.journal_copy):  # both copies: one alone would stand in for the other
        with journal.open("ab") as handle:
            handle.write(b"garbage\n")
            handle.write(launched("1/j0").model_copy(update={"seq": 3}).model_dump_json().encode() + b"\n")
    with pytest.raises(StateError, match="corrupt event"):
        Store(paths).open()


def test_second_writer_is_refused(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "st")
    store = Store(paths).open()
    with pytest.raises(DaemonRunningError):
        Store(paths).open()
    store.close()


def test_state_files_are_private(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "st")
    store = Store(paths).open()
    store.commit([submitted("1", 1)])
    store.close()
    intake.submit(paths, spec(1))
    for path in (paths.root, paths.intake, paths.control, paths.jobs):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for path in (paths.snapshot, paths.journal, *paths.intake.glob("*.json")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_snapshot_plus_journal_tail_gives_current_state(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "st")
    store = Store(paths, min_snapshot_interval=3600).open()
    store.commit([submitted("1", 2)])
    store.snapshot(force=True)
    store.commit([launched("1/j1")])  # journal only: the snapshot is rate-limited
    assert json.loads(paths.snapshot.read_bytes())["jobs"][1]["status"] == "queued"
    assert read_state(paths).jobs[1].status == JobStatus.RUNNING
    store.close()


def test_journal_compaction_keeps_every_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("exq.store.store.COMPACT_JOURNAL_BYTES", 1000)
    paths = StatePaths(tmp_path / "st")
    store = Store(paths).open()
    store.commit([submitted("1", 20)])
    store.snapshot(force=True)
    assert paths.journal.stat().st_size == 0
    store.commit([launched("1/j3")])
    store._lock.release()
    recovered = Store(paths).open()
    assert len(recovered.state.jobs) == 20 and recovered.ledger.jobs["1/j3"].status == JobStatus.RUNNING
    recovered.close()


def _submit_many(root: str, count: int) -> list[str]:
    return [intake.submit(StatePaths(Path(root)), spec(2, name=f"p{os.getpid()}")).id for _ in range(count)]


def test_concurrent_submitters_never_lose_or_duplicate(tmp_path: Path) -> None:
    root = str(tmp_path / "st")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.starmap(_submit_many, [(root, 15)] * 4)
    ids = [i for chunk in results for i in chunk]
    assert sorted(ids, key=int) == [str(n) for n in range(1, 61)]
    paths = StatePaths(Path(root))
    assert len(list(intake.pending_intakes(paths))) == 60


READER = textwrap.dedent("""
    import json, sys, time
    path, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
    reads = 0
    while time.monotonic() < deadline:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            continue
        json.loads(data)  # raises (and the test fails) on a torn file
        reads += 1
    print(reads)
""")


def test_reader_never_sees_a_torn_snapshot(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "st")
    store = Store(paths, min_snapshot_interval=0.0).open()
    store.commit([submitted("1", 300)])
    store.snapshot(force=True)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(paths.snapshot), "4"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 3.5
    writes = 0
    while time.monotonic() < deadline:
        key = f"1/j{writes % 300}"
        if store.ledger.jobs[key].status == JobStatus.QUEUED:
            store.commit([launched(key)])
        else:
            store.commit([submitted(str(writes + 2), 1)])
        writes += int(store.snapshot(force=True))
    out, err = reader.communicate(timeout=30)
    store.close()
    assert reader.returncode == 0, err
    assert int(out) > 10 and writes > 10


def test_reader_is_not_set_back_by_a_compaction_during_its_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("exq.store.store.COMPACT_JOURNAL_BYTES", 0)
    paths = StatePaths(tmp_path / "st")
    store = Store(paths, min_snapshot_interval=3600).open()
    store.commit([submitted("1", 2)])
    store.snapshot(force=True)
    store.commit([launched("1/j0")])  # in the journal only
    real_load = store_module._load_snapshot

    def load_then_writer_compacts(path: Path) -> object:
        old = real_load(path)  # the reader has the older snapshot in hand...
        store.snapshot(force=True)  # ...when the writer snapshots and empties the journal
        assert paths.journal.stat().st_size == 0
        return old

    monkeypatch.setattr(store_module, "_load_snapshot", load_then_writer_compacts)
    assert read_state(paths).jobs[0].status == JobStatus.RUNNING
    store.close()
