"""Nothing acknowledged is lost and nothing runs twice: full disks, bad state files, replayed intakes, other users.

Each test makes the fault for real: a small tmpfs filled to the last byte, state files truncated,
garbled or deleted, an intake file replayed after a crash, files owned by another local user.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import EXQ, Exq, wait_until
from faults import fill_disk, needs_root, other_user, small_tmpfs
from test_store import launched, spec, submitted

from exq.daemon.scheduler import Scheduler
from exq.errors import StateError, WriteError
from exq.model.state import JobStatus
from exq.store import intake
from exq.store.store import StatePaths, Store, read_state

# -- a full disk -----------------------------------------------------------------------------------


@needs_root
def test_a_journal_append_cut_short_by_a_full_disk_leaves_no_partial_event(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "fs", "1m") as fs:
        paths = StatePaths(fs / "st")
        store = Store(paths).open()
        store.commit([submitted("1", 2)])
        before = paths.journal.stat().st_size
        filler = fill_disk(fs)
        os.truncate(filler, filler.stat().st_size - 4096)  # room for part of the next append only
        with pytest.raises(WriteError, match="No space left on device"):
            store.commit([submitted("2", 300)])
        assert paths.journal.stat().st_size == before, "a partial event stayed in the journal"
        assert len(store.state.jobs) == 2 and store.state.seq == 1
        filler.unlink()
        store.commit([submitted("2", 300)])
        store._lock.release()  # as after kill -9
        recovered = Store(paths).open()
        assert [s.id for s in recovered.state.submissions] == ["1", "2"] and len(recovered.state.jobs) == 302
        recovered.close()


@needs_root
def test_full_disk_submit_refuses_the_daemon_waits_and_resumes_losing_nothing(exq: Exq, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    with small_tmpfs(tmp_path / "fs", "2m") as fs:
        exq.state_dir = fs / "state"
        exq.env["EXQ_STATE_DIR"] = str(exq.state_dir)
        first = exq.manifest(f"name: first\ngpus: 0\ncmd: echo run >> {marks}/first\n", "first.yaml")
        second = exq.manifest(f"name: second\ngpus: 0\ncmd: echo run >> {marks}/second\n", "second.yaml")
        assert "as submission 1" in exq("submit", str(first)).stdout  # durable in intake/, no daemon yet
        filler = fill_disk(fs)

        assert "is full" in exq("status").stdout
        refused = exq("submit", str(second), check=False)
        assert refused.returncode == 3, refused
        assert "No space left on device" in refused.stderr and "Traceback" not in refused.stderr

        log_path = tmp_path / "daemon.log"
        with log_path.open("wb") as log:
            daemon = subprocess.Popen([*EXQ, "daemon", "--probe-interval", "0.3"], env=exq.env,
                                      stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: "cannot write the queue state" in log_path.read_text(), 30)
            assert daemon.poll() is None, "the daemon exited on a full disk"
            assert list((exq.state_dir / "intake").glob("*.json")), "the acknowledged submission was dropped"
            assert not (marks / "first").exists()
            cancel = exq("cancel", "--all", check=False)
            assert cancel.returncode == 3 and "Traceback" not in cancel.stderr, cancel

            filler.unlink()
            wait_until(lambda: "can be written again" in log_path.read_text(), 30)
            assert "as submission 2" in exq("submit", str(second)).stdout
            jobs = exq.wait_finished(2, timeout=60)
            assert {(j["submission"], j["status"]) for j in jobs.values()} == {("1", "succeeded"), ("2", "succeeded")}
            assert (marks / "first").read_text() == "run\n" and (marks / "second").read_text() == "run\n"
            assert daemon.poll() is None
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(20)
        assert "Traceback" not in log_path.read_text()


# -- one bad state file ----------------------------------------------------------------------------


def _state_with_a_compacted_journal(paths: StatePaths, monkeypatch: pytest.MonkeyPatch) -> None:
    """Submission 1 (3 jobs); j0 launched before the last compaction, j1 after it (journal only)."""
    monkeypatch.setattr("exq.store.store.COMPACT_JOURNAL_BYTES", 0)
    store = Store(paths, min_snapshot_interval=3600).open()
    store.commit([submitted("1", 3)])
    store.snapshot(force=True)
    store.commit([launched("1/j0")])
    store.snapshot(force=True)
    store.commit([launched("1/j1")])
    assert paths.snapshot_old.exists() and paths.journal.stat().st_size > 0
    store._lock.release()  # killed: no final snapshot


def _statuses(state_json: str) -> dict[str, str]:
    return {job["id"]: job["status"] for job in json.loads(state_json)["jobs"]}


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 8] = b"\xff{[\x00}]\"\n"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["deleted", "truncated", "garbled"])
def test_a_lost_or_corrupt_snapshot_is_rebuilt_from_the_previous_generation(
    exq: Exq, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    paths = StatePaths(exq.state_dir)
    _state_with_a_compacted_journal(paths, monkeypatch)
    expected = {"j0": "running", "j1": "running", "j2": "queued"}
    if damage == "deleted":
        paths.snapshot.unlink()
    elif damage == "truncated":
        os.truncate(paths.snapshot, paths.snapshot.stat().st_size // 2)
    else:
        _garble(paths.snapshot)

    as_json = exq("status", "--json", check=False)
    assert as_json.returncode == 0 and "Traceback" not in as_json.stderr, as_json
    assert _statuses(as_json.stdout) == expected
    table = exq("status", check=False)
    assert table.returncode == 0 and "j1" in table.stdout, table

    store = Store(paths).open()  # the daemon's recovery agrees with the readers
    assert {j.id: j.status.value for j in store.state.jobs} == expected
    store.close()
    assert _statuses(paths.snapshot.read_text()) == expected
    if damage != "deleted":
        assert list(exq.state_dir.glob("queue_state.json.corrupt-*")), "the bad snapshot was not kept for inspection"


def test_a_corrupt_journal_line_is_refused_alike_by_readers_and_the_daemon(
    exq: Exq, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = StatePaths(exq.state_dir)
    _state_with_a_compacted_journal(paths, monkeypatch)
    for path in (paths.journal, paths.journal_copy):  # both copies: one alone would stand in for the other
        with path.open("ab") as journal:
            journal.write(launched("1/j2").model_copy(update={"seq": 4}).model_dump_json().encode() + b"\n")
        lines = path.read_bytes().splitlines(keepends=True)
        lines[0] = b'{"seq": 3, "type": "launch' + b"\xff" * 10 + b"\n"
        path.write_bytes(b"".join(lines))

    for args in (["status"], ["status", "--json"]):
        proc = exq(*args, check=False)
        assert proc.returncode == 3, proc
        assert "journal.jsonl: corrupt event at byte 0 (line 1)" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(StateError, match=r"corrupt event at byte 0 \(line 1\)"):
        Store(paths).open()
    daemon = exq("daemon", check=False, timeout=30)
    assert daemon.returncode == 3 and "corrupt event at byte 0" in daemon.stderr and "Traceback" not in daemon.stderr


def test_both_snapshots_lost_after_a_compaction_is_refused_by_name_not_guessed(
    exq: Exq, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = StatePaths(exq.state_dir)
    _state_with_a_compacted_journal(paths, monkeypatch)
    paths.snapshot.unlink()
    paths.snapshot_old.unlink()
    for args in (["status"], ["status", "--json"], ["daemon"]):
        proc = exq(*args, check=False, timeout=30)
        assert proc.returncode == 3, proc
        assert "events after seq 0 are missing" in proc.stderr and "queue_state.json.old" in proc.stderr
        assert "Traceback" not in proc.stderr


# -- a submission is ingested once ------------------------------------------------------------------


def test_a_replayed_intake_file_is_never_ingested_twice(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "st")
    for name in ("a", "b"):
        intake.submit(paths, spec(1, name=name))
    (paths.intake / ".counter").write_text("1")  # set back (restored from a backup): c gets b's number
    item = intake.submit(paths, spec(1, name="c"))
    assert item.id == "3", "the number of a waiting intake file was handed out again"
    (paths.intake / ".counter").write_text("1")
    collided = intake.Intake(id="2", key="k-c2", submitted_at=time.time(), spec=spec(1, name="c2"))
    (paths.intake / "000000009.json").write_bytes(collided.model_dump_json().encode())  # number 2 again

    store = Store(paths).open()
    scheduler = Scheduler(store, {})
    replay = paths.root / "replay"
    shutil.copytree(paths.intake, replay)
    scheduler._ingest()  # ...then killed before the files were removed: they come back
    for path in replay.glob("*.json"):
        shutil.copy(path, paths.intake / path.name)
    scheduler._ingest()
    store.close()
    state = read_state(paths)
    assert [(s.id, s.name) for s in state.submissions] == [("1", "a"), ("2", "b"), ("3", "c"), ("4", "c2")]
    assert len(state.jobs) == 4
    assert not list(paths.intake.glob("*.json"))


def _submit_killed_after_reserving(root: str) -> None:
    """`exq submit` killed after it reserved its number, before its intake file was written."""
    import exq.store.intake as module

    real = module.atomic_write

    def die_on_intake_file(path: Path, data: bytes, mode: int = 0o600) -> None:
        if path.suffix == ".json":
            os._exit(9)
        real(path, data, mode)

    module.atomic_write = die_on_intake_file  # type: ignore[assignment]
    module.submit(StatePaths(Path(root)), spec(1, name="killed"))


def test_a_submitter_killed_midway_never_makes_a_number_mean_two_submissions(tmp_path: Path) -> None:
    import multiprocessing

    paths = StatePaths(tmp_path / "st")
    assert intake.submit(paths, spec(1, name="a")).id == "1"
    proc = multiprocessing.get_context("spawn").Process(target=_submit_killed_after_reserving, args=(str(paths.root),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 9
    told = intake.submit(paths, spec(1, name="b")).id
    store = Store(paths).open()
    Scheduler(store, {})._ingest()
    store.close()
    names = {s.id: s.name for s in read_state(paths).submissions}
    assert names[told] == "b" and sorted(names.values()) == ["a", "b"]


# -- other users -------------------------------------------------------------------------------------


@needs_root
def test_a_state_dir_another_user_owns_is_refused_by_every_command(exq: Exq) -> None:
    user = other_user()
    manifest = exq.manifest("name: m\ngpus: 0\ncmd: 'true'\n")
    exq("submit", str(manifest))
    os.chown(exq.state_dir, user.pw_uid, user.pw_gid)
    for args in (["status"], ["status", "--json"], ["submit", str(manifest)], ["daemon"], ["cancel", "--all"]):
        proc = exq(*args, check=False, timeout=30)
        assert proc.returncode == 3, (args, proc)
        assert f"is owned by {user.pw_name}" in proc.stderr and "chown" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_a_state_dir_others_can_write_is_refused_with_the_fix(exq: Exq) -> None:
    manifest = exq.manifest("name: m\ngpus: 0\ncmd: 'true'\n")
    exq("submit", str(manifest))
    os.chmod(exq.state_dir / "intake", 0o777)
    for args in (["status"], ["submit", str(manifest)], ["daemon"]):
        proc = exq(*args, check=False, timeout=30)
        assert proc.returncode == 3, (args, proc)
        assert "has mode 0777" in proc.stderr and "chmod 700" in proc.stderr and "Traceback" not in proc.stderr


@needs_root
def test_an_intake_file_of_another_user_is_moved_aside_and_never_run(exq: Exq, tmp_path: Path) -> None:
    user = other_user()
    pwned = tmp_path / "pwned"
    exq.start_daemon()
    paths = StatePaths(exq.state_dir)
    planted = intake.Intake(id="77", key="planted", submitted_at=time.time(),
                            spec=spec(1, name="planted").model_copy())
    planted.spec.jobs[0] = planted.spec.jobs[0].model_copy(update={"cmd": f"touch {pwned}"})
    tmp = paths.root / "planted.tmp"
    tmp.write_bytes(planted.model_dump_json().encode())
    os.chown(tmp, user.pw_uid, user.pw_gid)
    os.rename(tmp, paths.intake / "000000077.json")
    wait_until(lambda: (paths.intake / "000000077.json.foreign").exists(), 20)
    exq("submit", str(exq.manifest("name: ok\ngpus: 0\ncmd: 'true'\n")))
    jobs = exq.wait_finished(1)
    assert [(j["phase"], j["status"]) for j in jobs.values()] == [("ok", JobStatus.SUCCEEDED.value)]
    assert not pwned.exists()


def _cut(path: Path, damage: str) -> None:
    if damage == "deleted":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes().splitlines(keepends=True)[0])
    else:
        _garble(path)


@pytest.mark.parametrize("damage", ["deleted", "truncated", "garbled"])
def test_one_damaged_journal_loses_nothing_its_copy_stands_in(exq: Exq, damage: str) -> None:
    paths = StatePaths(exq.state_dir)
    store = Store(paths, min_snapshot_interval=3600).open()
    store.commit([submitted("1", 3)])
    store.commit([launched("1/j0")])
    store.commit([launched("1/j1")])  # journaled only: the snapshot is rate-limited
    store._lock.release()  # killed
    _cut(paths.journal, damage)
    expected = {"j0": "running", "j1": "running", "j2": "queued"}
    for args in (["status", "--json"], ["status"]):
        proc = exq(*args, check=False)
        assert proc.returncode == 0 and "journal.copy.jsonl" in proc.stderr and "Traceback" not in proc.stderr, proc
    assert _statuses(exq("status", "--json").stdout) == expected
    store = Store(paths).open()
    assert {j.id: j.status.value for j in store.state.jobs} == expected
    store.close()
    assert exq("status").stderr == ""  # the daemon started a new generation, both journals whole again


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_both_journals_cut_short_is_reported_by_readers_and_the_daemon(exq: Exq, damage: str) -> None:
    paths = StatePaths(exq.state_dir)
    store = Store(paths, min_snapshot_interval=3600).open()  # a new generation: .old at seq 0
    store.commit([submitted("1", 3)])
    store.commit([launched("1/j0")])
    store.close()  # queue_state.json at seq 2
    for path in (paths.journal, paths.journal_copy):
        _cut(path, damage)
    for args in (["status"], ["status", "--json"]):
        proc = exq(*args, check=False)
        assert proc.returncode == 0 and "before event 2 that" in proc.stderr and "cut short" in proc.stderr, proc
    store = Store(paths).open()
    assert store.ledger.jobs["1/j0"].status == JobStatus.RUNNING
    store.close()
    assert "cut short" not in exq("status").stderr  # the daemon started a new generation


def test_a_damaged_intake_file_is_reported_never_dropped_silently(exq: Exq) -> None:
    manifest = exq.manifest("name: m\ngpus: 0\ncmd: 'true'\n")
    exq("submit", str(manifest))
    intake_file = exq.state_dir / "intake" / "000000001.json"
    os.truncate(intake_file, 10)
    shown = exq("status")
    assert f"{intake_file} is damaged" in shown.stdout and intake_file.exists(), shown  # a reader changes nothing
    exq.start_daemon()
    wait_until(lambda: (exq.state_dir / "intake" / "000000001.json.bad").exists(), 20)
    assert "submission 1's intake file was damaged and set aside" in exq("status").stdout
