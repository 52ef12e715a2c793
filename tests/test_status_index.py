"""status_index.json (what `exq status` reads instead of the whole state), the shared phase specs, and the
snapshot loader: the index is used only when current, falls back to the truth otherwise, and shows the same."""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import time
from pathlib import Path

import pytest
from rich.console import Console

from exq import api
from exq.errors import StateError
from exq.model.events import CancelRequested, Ended, Launched, PausedSet, Reset, Submitted
from exq.model.intern import SHARED
from exq.model.jobspec import JobSpec, OomScale, Resources
from exq.model.outcome import Outcome
from exq.model.state import Attempt, JobStatus, QueueState, Submission
from exq.model.summary import HELD, LISTED, RECENT, summarize
from exq.store.loader import load_state
from exq.store.store import StatePaths, Store, current_status_index, read_state
from exq.views import status_renderable

GOLDEN = Path(__file__).parent / "data" / "queue_state_v1.json"


def _specs(n: int, phase: str = "p") -> list[JobSpec]:
    """Specs as `exq submit` hands them over: each parsed on its own, so equal but distinct objects."""
    return [JobSpec.model_validate_json(JobSpec(
        id=f"{phase}{i}", phase=phase, cmd_template="run {i}", params={"i": i}, cmd=f"run {i}", workdir="/tmp",
        env={"A": "1"}, resources=Resources(gpus=1, gpu_memory=1 << 30),
        oom_scale=OomScale(param="i", factor=0.5)).model_dump_json()) for i in range(n)]


def _submitted(sub_id: str, n: int, phases: tuple[str, ...] = ("p",)) -> Submitted:
    jobs = [spec for phase in phases for spec in _specs(n, phase)]
    sub = Submission(id=sub_id, name="s", source="/tmp/m.yaml", submitted_at=1.0, phases=list(phases), jobs=len(jobs))
    return Submitted(at=1.0, submission=sub, jobs=jobs)


def _launched(key: str, at: float = 2.0) -> Launched:
    attempt = Attempt(number=1, host="local", gpus=[0], params={}, cmd="true", dir="/x", log="/x/log", launched_at=at)
    return Launched(at=at, key=key, attempt=attempt)


def _ended(key: str, status: JobStatus, at: float) -> Ended:
    outcome = Outcome.SUCCEEDED if status == JobStatus.SUCCEEDED else Outcome.FAILED
    return Ended(at=at, key=key, number=1, ended_at=at, exit_code=0 if outcome == Outcome.SUCCEEDED else 1,
                 signal=None, outcome=outcome, reason="exit", status=status)


def _store(tmp_path: Path) -> Store:
    return Store(StatePaths(tmp_path / "st"), min_snapshot_interval=0).open()


def _render(view: api.StatusView, all_jobs: bool = False) -> str:
    with open(os.devnull, "w") as sink:
        console = Console(width=160, record=True, file=sink)
        console.print(status_renderable(view, all_jobs))
        return console.export_text()


def _truth(paths: StatePaths) -> api.StatusView:
    """The view made from the whole state, as before the index existed."""
    return api.StatusView(read_state(paths), [], False, paths)


def _uses_index(view: api.StatusView) -> bool:
    return view._state is None


def test_the_index_is_written_with_each_snapshot_private_and_used(tmp_path: Path) -> None:
    store = _store(tmp_path)
    paths = store.paths
    store.commit([_submitted("1", 60, ("a", "b"))])
    store.snapshot(force=True)
    assert stat.S_IMODE(paths.status_index.stat().st_mode) == 0o600
    view = api.status(paths)
    assert _uses_index(view)
    assert _render(view) == _render(_truth(paths))
    assert view.index.total == 120 and [(p.phase, p.counts) for p in view.index.phases] == [
        ("a", {JobStatus.QUEUED: 60}), ("b", {JobStatus.QUEUED: 60})]
    assert "... 70 more jobs" in _render(view)
    store.close()


def test_the_index_follows_launch_and_end_events(tmp_path: Path) -> None:
    store = _store(tmp_path)
    paths = store.paths
    store.commit([_submitted("1", 5)])
    now = time.time()
    store.commit([_launched("1/p0"), _launched("1/p1"), _launched("1/p2")])
    store.commit([_ended("1/p0", JobStatus.SUCCEEDED, now), _ended("1/p1", JobStatus.FAILED, now),
                  PausedSet(at=now, paused=True)])
    store.snapshot(force=True)
    view = api.status(paths)
    assert _uses_index(view)
    counts = view.index.phases[0].counts
    assert counts == {JobStatus.SUCCEEDED: 1, JobStatus.FAILED: 1, JobStatus.RUNNING: 1, JobStatus.QUEUED: 2}
    assert view.index.paused
    assert _render(view) == _render(_truth(paths))
    listing = view.index.listing(now + 1)
    assert listing is not None
    assert [job.id for job in listing[0]] == ["p2", "p1", "p3", "p4", "p0"] and listing[1] == 5
    store.close()


def test_newer_journal_events_are_applied_to_the_index_or_it_steps_aside(tmp_path: Path) -> None:
    store = _store(tmp_path)
    paths = store.paths
    store.commit([_submitted("1", HELD + 20)])
    store.snapshot(force=True)
    store.commit([_launched("1/p0")])  # journaled, not yet in a snapshot
    index = current_status_index(paths)
    assert index is not None and index.seq == 2 and index.phases[0].counts[JobStatus.RUNNING] == 1
    view = api.status(paths)
    assert _uses_index(view) and _render(view) == _render(_truth(paths))
    assert json.loads(api.state_json(paths))["seq"] == 2
    store.commit([_launched(f"1/p{HELD + 10}")])  # a job the index does not hold
    assert current_status_index(paths) is None
    view = api.status(paths)
    assert not _uses_index(view) and _render(view) == _render(_truth(paths))
    store.close()


def test_the_advanced_index_shows_what_the_whole_state_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random events, some snapshots: whenever the index answers, the view is the one of the whole state."""
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now)
    rng = random.Random(7)
    store = _store(tmp_path)
    paths = store.paths
    store.commit([_submitted("1", 40, ("a", "b"))])
    store.snapshot(force=True)
    answered = subs = 0
    for step in range(150):
        jobs = store.state.jobs
        queued = [j.key for j in jobs if j.status == JobStatus.QUEUED]
        running = [j.key for j in jobs if j.status == JobStatus.RUNNING]
        failed = [j.key for j in jobs if j.status in (JobStatus.FAILED, JobStatus.CANCELLED)]
        roll = rng.random()
        if roll < 0.35 and queued:
            store.commit([_launched(rng.choice(queued[:60]), now - 50)])
        elif roll < 0.7 and running:
            status = rng.choice([JobStatus.SUCCEEDED, JobStatus.SUCCEEDED, JobStatus.FAILED])
            store.commit([_ended(rng.choice(running), status, now - RECENT * rng.choice([0.01, 0.5, 2]))])
        elif roll < 0.8 and failed:
            store.commit([Reset(at=now, keys=[rng.choice(failed)])])
        elif roll < 0.87 and queued:
            store.commit([CancelRequested(at=now, keys=[rng.choice(queued)])])
        elif roll < 0.92:
            subs += 1
            store.commit([_submitted(str(subs + 1), rng.choice([3, 30]))])
        elif roll < 0.95:
            store.commit([PausedSet(at=now, paused=rng.random() < 0.5)])
        else:
            store.snapshot(force=True)
        view = api.status(paths)
        if _uses_index(view):
            answered += 1
            assert view.index.seq == store.state.seq
            assert _render(view) == _render(_truth(paths)), step
    assert answered > 50
    store.close()


def test_a_corrupt_missing_or_stale_index_falls_back_to_the_truth(tmp_path: Path) -> None:
    store = _store(tmp_path)
    paths = store.paths
    store.commit([_submitted("1", 3)])
    store.snapshot(force=True)
    old = tmp_path / "old_index.json"
    shutil.copy(paths.status_index, old)
    store.commit([_launched("1/p0")])
    store.snapshot(force=True)
    expected = _render(_truth(paths))
    assert "running" in expected
    shutil.copy(old, paths.status_index)  # a crash between writing the snapshot and its index
    for damage in (None, b"{not json", b'{"version": 1}', b""):
        if damage is not None:
            paths.status_index.write_bytes(damage)
        view = api.status(paths)
        assert not _uses_index(view) and _render(view) == expected
    paths.status_index.unlink()
    assert not _uses_index(api.status(paths)) and _render(api.status(paths)) == expected
    store.commit([PausedSet(at=5.0, paused=True)])
    store.snapshot(force=True)
    assert _uses_index(api.status(paths))
    data = paths.snapshot.read_bytes()
    paths.snapshot.write_bytes(data)  # rewritten in place (same bytes, new mtime): no longer the stamped file
    assert current_status_index(paths) is None
    store.close()


def test_a_garbled_journal_is_refused_as_without_the_index(tmp_path: Path) -> None:
    store = _store(tmp_path)
    paths = store.paths
    store.commit([_submitted("1", 2)])
    store.commit([_launched("1/p0")])
    store.snapshot(force=True)
    store.close()
    assert current_status_index(paths) is not None
    for journal in (paths.journal, paths.journal_copy):
        first, rest = journal.read_bytes().split(b"\n", 1)
        journal.write_bytes(b"garbage" + first[7:] + b"\n" + rest)
    with pytest.raises(StateError, match="corrupt event"):
        read_state(paths)
    assert current_status_index(paths) is None
    with pytest.raises(StateError, match="corrupt event"):
        api.status(paths)


def test_recent_successes_fade_from_the_listing_as_without_the_index(tmp_path: Path) -> None:
    store = _store(tmp_path)
    state = store.state
    store.commit([_submitted("1", HELD + 10)])
    at = 1e9
    store.commit([_launched(f"1/p{i}") for i in range(HELD + 5)])
    store.commit([_ended(f"1/p{i}", JobStatus.SUCCEEDED, at + i) for i in range(HELD + 5)])
    index = summarize(state, at + 100)
    for now in (at + 100, at + RECENT + 0.5, at + RECENT + 30, at + RECENT + 60.5, at + 2 * RECENT):
        shown = [j for j in state.jobs if j.status != JobStatus.SUCCEEDED or now - (j.finished_at or 0) < RECENT]
        listing = index.listing(now)
        if listing is not None:
            assert listing[1] == len(shown)
            assert [j.key for j in listing[0]] == [j.key for j in sorted(shown, key=lambda j: (
                {JobStatus.QUEUED: 3}.get(j.status, 4), j.order))][:LISTED]
    assert index.listing(at + RECENT + 30) is not None
    assert index.listing(at + RECENT + 60.5) is None  # its first recent jobs faded: it cannot tell the next ones
    assert index.listing(at) is None  # before it was made
    store.commit([_submitted("2", LISTED)])  # queued jobs fill the listing: succeeded ones never make it
    listing = summarize(state, at + 100).listing(at + RECENT + 60.5)
    assert listing is not None and listing[1] == LISTED + 5 + 44
    assert all(job.status == JobStatus.QUEUED for job in listing[0])
    store.close()


def test_when_the_index_cannot_tell_the_view_comes_whole_from_the_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    paths = store.paths
    base = time.time() - 100
    store.commit([_submitted("1", HELD + 10)])
    store.commit([_launched(f"1/p{i}") for i in range(HELD + 10)])
    store.commit([_ended(f"1/p{i}", JobStatus.SUCCEEDED, base + i) for i in range(HELD + 10)])
    store.close()
    later = base + RECENT + 60.5  # p0..p60 have faded; the index holds p0..p99 only
    monkeypatch.setattr(time, "time", lambda: later)
    view = api.status(paths)
    assert _uses_index(view) and view.index.listing(later) is None
    shown = _render(view)
    assert shown == _render(_truth(paths))
    assert "1/p61 " in shown and "1/p60 " not in shown and f"1/p{HELD + 9} " in shown
    assert _render(api.status(paths), all_jobs=True) == _render(_truth(paths), all_jobs=True)


def test_status_json_is_the_snapshot_and_equals_the_whole_state(tmp_path: Path) -> None:
    store = _store(tmp_path)
    paths = store.paths
    store.commit([_submitted("1", 4), _launched("1/p0"), _ended("1/p0", JobStatus.SUCCEEDED, 3.0)])
    store.close()
    assert current_status_index(paths) is not None
    out = api.state_json(paths)
    assert out == paths.snapshot.read_bytes()
    assert QueueState.model_validate_json(out) == read_state(paths)
    paths.status_index.unlink()
    assert api.state_json(paths) == out


def test_jobs_of_a_phase_share_its_spec_parts_after_submit_and_after_load(tmp_path: Path) -> None:
    store = _store(tmp_path)
    paths = store.paths
    store.commit([_submitted("1", 3, ("a", "b")), _submitted("2", 2, ("a",))])

    def check(state: QueueState) -> None:
        by_phase: dict[tuple[str, str], list[JobSpec]] = {}
        for job in state.jobs:
            by_phase.setdefault((job.submission, job.phase), []).append(job.spec)
        for specs in by_phase.values():
            first = specs[0]
            for spec in specs[1:]:
                assert spec is not first and spec.id != first.id
                assert all(getattr(spec, name) is getattr(first, name) for name in SHARED)
        assert by_phase[("1", "a")][0].resources == by_phase[("2", "a")][0].resources

    check(store.state)
    store.close()
    check(read_state(paths))
    reopened = Store(paths).open()
    check(reopened.state)
    reopened.close()


def test_the_loader_gives_what_pydantic_gives(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.commit([_submitted("1", 3, ("a", "b")), _launched("1/a0"), _ended("1/a0", JobStatus.FAILED, 3.0)])
    store.close()
    for data in (GOLDEN.read_bytes(), store.paths.snapshot.read_bytes(),
                 b' \n{ "jobs" : [ ] ,"seq": 3}\n'):
        loaded, expected = load_state(data), QueueState.model_validate_json(data)
        assert loaded == expected and loaded.model_dump_json() == expected.model_dump_json()
    for bad in (b'{"seq": 1, "jobs": [{}]}', b'{"seq": 1} x', b'{"jobs": [', b'[]'):
        try:
            load_state(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} loaded")


@pytest.fixture
def exq_cli(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A state dir and the environment of an `exq` subprocess using it."""
    state_dir = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXQ_")}
    env.update(EXQ_STATE_DIR=str(state_dir), EXQ_SIMULATE_GPUS="1x24GiB", COLUMNS="160")
    return state_dir, env


def test_cli_status_reads_the_index_and_shows_the_same_as_without(exq_cli: tuple[Path, dict[str, str]]) -> None:
    import subprocess
    import sys

    state_dir, env = exq_cli
    store = Store(StatePaths(state_dir)).open()
    store.commit([_submitted("1", 70, ("a", "b")), _launched("1/a3"), _ended("1/a3", JobStatus.FAILED, 3.0)])
    store.close()

    def status() -> str:
        proc = subprocess.run([sys.executable, "-m", "exq", "status"], env=env, capture_output=True, text=True,
                              timeout=60, check=True)
        return proc.stdout

    with_index = status()
    (state_dir / "status_index.json").unlink()
    assert status() == with_index and "a3" in with_index and "more jobs" in with_index
