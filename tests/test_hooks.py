"""on_job_end hooks: real daemons, real hook processes, crash and drain, coalescing, failures."""

from __future__ import annotations

import itertools
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import Exq, wait_until
from test_store import ended, launched, submitted

from exq.errors import ManifestError
from exq.model.events import HookRan, Reset
from exq.model.jobspec import Hook
from exq.model.manifest import parse_manifest
from exq.model.state import JobStatus
from exq.store.store import StatePaths, Store, read_state

HOOK = """
import json, os, sys, time
from exq import api

if os.path.exists("hang"):  # the test wants this run killed: say who we are, then hang
    with open("hung.pid", "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(60)
start = time.time()
try:
    lock = os.open("hook.lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
except FileExistsError:
    open("overlap", "a").write(f"{os.getpid()}\\n")
    raise
sub = os.environ["EXQ_SUBMISSION"]
state = api.status(api.state_paths()).state   # EXQ_STATE_DIR, as the daemon set it
record = {
    "start": start, "cwd": os.getcwd(), "submission": sub, "state_dir": os.environ["EXQ_STATE_DIR"],
    "mark": os.environ.get("MARK"),
    "statuses": {j.id: j.status.value for j in state.jobs if j.submission == sub},
}
time.sleep(float(os.environ.get("HOOK_SLEEP", "0")))
record["end"] = time.time()
os.close(lock)
os.unlink("hook.lock")
with open("runs.jsonl", "a") as f:
    f.write(json.dumps(record) + "\\n")
"""

RUN_WITH_HOOK_TIMEOUT = """
import sys
from exq import api

paths = api.state_paths()
item = api.submit(paths, api.load_manifest(sys.argv[1]))
def done(state):
    mine = [j for j in state.jobs if j.submission == item.id]
    return bool(mine) and all(j.status.finished for j in mine)
api.serve(paths, config=api.SchedulerConfig(hook_timeout=float(sys.argv[2])), until=done, mode="run")
"""


@pytest.fixture
def work(exq: Exq) -> Path:
    """The manifests' workdir, holding the hook script."""
    path = exq.root / "work"
    path.mkdir()
    (path / "hook.py").write_text(HOOK)
    return path


def hooked(exq: Exq, jobs: str, cmd: str, extra: str = "", hook: str | None = None) -> Path:
    """A manifest of CPU jobs `j{i}` for i in `jobs`, running `cmd`, with the test hook (or `hook`)."""
    return exq.manifest(f"""
        name: hooked
        workdir: work
        gpus: 0
        grid: {{i: [{jobs}]}}
        id: "j{{i}}"
        cmd: {cmd}
        on_job_end: {hook or f"{sys.executable} hook.py"}
        {extra}
    """)


def runs(work: Path) -> list[dict[str, Any]]:
    path = work / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def submission(exq: Exq) -> dict[str, Any]:
    sub: dict[str, Any] = exq.state()["submissions"][0]
    return sub


def caught_up(exq: Exq) -> dict[str, Any] | None:
    sub = submission(exq)
    return sub if sub["changes"] and sub["hook_covered"] == sub["changes"] else None


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_hook_runs_in_the_workdir_after_durable_job_ends(exq: Exq, work: Path) -> None:
    manifest = hooked(exq, "1, 2", 'echo "$EXQ_STATE_DIR" > state_dir{i}; test {i} -eq 1',
                      extra="env: {MARK: m1, EXQ_STATE_DIR: /nowhere}")
    assert exq("run", str(manifest), check=False).returncode == 1
    last = runs(work)[-1]
    assert last["statuses"] == {"j1": "succeeded", "j2": "failed"}
    assert last["cwd"] == str(work) and last["submission"] == "1" and last["mark"] == "m1"
    assert last["state_dir"] == str(exq.state_dir)
    # a local job gets the state dir too (exq's variables win over the manifest's env)
    assert (work / "state_dir1").read_text().strip() == str(exq.state_dir)
    sub = submission(exq)
    assert sub["hook_covered"] == sub["changes"] == 4 and sub["hook_error"] is None
    assert sub["on_job_end"] == {"cmd": f"{sys.executable} hook.py", "workdir": str(work),
                                 "env": {"MARK": "m1", "EXQ_STATE_DIR": "/nowhere"}}
    log = exq.state_dir / "hooks" / "1.log"
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700 and stat.S_IMODE(log.stat().st_mode) == 0o600
    assert "on_job_end after 4 status change(s)" in log.read_text()


def test_exq_run_returns_only_after_the_hook_ran_for_the_final_changes(exq: Exq, work: Path) -> None:
    exq.env["HOOK_SLEEP"] = "1.5"
    manifest = hooked(exq, "1", '"true"')
    started = time.monotonic()
    exq("run", str(manifest))
    assert time.monotonic() - started >= 1.5
    assert runs(work)[-1]["statuses"] == {"j1": "succeeded"}
    sub = submission(exq)
    assert sub["hook_covered"] == sub["changes"] == 2


def test_quick_job_ends_coalesce_into_one_run_at_a_time(exq: Exq, work: Path) -> None:
    exq.env["HOOK_SLEEP"] = "0.4"
    exq.start_daemon()
    exq("submit", str(hooked(exq, ", ".join(map(str, range(12))), "sleep 0.0{i}")))
    exq.wait_finished(12)
    wait_until(lambda: caught_up(exq), 60, 0.2)
    done = runs(work)
    assert not (work / "overlap").exists()
    assert 1 <= len(done) < 12  # 24 status changes, coalesced
    for before, after in itertools.pairwise(done):
        assert before["end"] <= after["start"]
    assert set(done[-1]["statuses"].values()) == {"succeeded"} and len(done[-1]["statuses"]) == 12


def test_a_failing_hook_is_recorded_shown_and_not_retried(exq: Exq, work: Path) -> None:
    exq.start_daemon()
    exq("submit", str(hooked(exq, "1", '"true"', hook="echo starting; echo boom-detail >&2; exit 3")))
    sub = wait_until(lambda: caught_up(exq), 30, 0.2)
    assert sub["hook_error"] == "exit code 3: boom-detail"
    log = exq.state_dir / "hooks" / "1.log"
    count = log.read_text().count("on_job_end after")
    time.sleep(1.0)  # the daemon keeps turning: a failed run is covered, not run again
    assert log.read_text().count("on_job_end after") == count
    exq.env["COLUMNS"] = "400"
    out = exq("status").stdout
    assert f"submission 1 (hooked): on_job_end failed: exit code 3: boom-detail; log: {log}" in out


def test_a_hook_past_its_timeout_is_killed_with_its_process_group(exq: Exq, work: Path) -> None:
    script = exq.root / "run_with_timeout.py"
    script.write_text(RUN_WITH_HOOK_TIMEOUT)
    manifest = hooked(exq, "1", '"true"', hook="sleep 60 & echo $! > child.pid; echo waiting; sleep 60")
    started = time.monotonic()
    subprocess.run([sys.executable, str(script), str(manifest), "1"], env=exq.env, check=True, timeout=60)
    assert time.monotonic() - started < 30
    sub = submission(exq)
    assert sub["hook_error"] == "timed out after 1s: waiting" and sub["hook_covered"] == sub["changes"]
    child = int((work / "child.pid").read_text())
    wait_until(lambda: not alive(child), 10)


def test_drain_and_kill9_mid_hook_run_it_again_after_a_restart(exq: Exq, work: Path) -> None:
    (work / "hang").touch()
    hung = work / "hung.pid"
    daemon = exq.start_daemon()
    exq("submit", str(hooked(exq, "1", '"true"')))
    pids: list[int] = []
    try:
        pids.append(wait_until(lambda: hung.exists() and [int(p) for p in hung.read_text().split()], 30)[0])
        daemon.send_signal(signal.SIGTERM)  # drain: the run is killed and not recorded
        assert daemon.wait(15) == 0
        wait_until(lambda: not alive(pids[0]), 10)
        sub = submission(exq)
        assert sub["hook_covered"] < sub["changes"] == 2 and exq.jobs()["j1"]["status"] == "succeeded"

        daemon = exq.start_daemon()  # runs it again, and it hangs again
        pids.append(wait_until(lambda: len(ids := hung.read_text().split()) == 2 and int(ids[1]), 30))
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        assert alive(pids[1])  # in its own session: it outlives the daemon
        assert submission(exq)["hook_covered"] < 2

        (work / "hang").unlink()
        exq.start_daemon()  # kills the run left over, then runs the hook to the end
        sub = wait_until(lambda: caught_up(exq), 30, 0.2)
        assert sub["changes"] == 2 and sub["hook_error"] is None
        assert not alive(pids[1])
        assert [r["statuses"] for r in runs(work)] == [{"j1": "succeeded"}]
        assert "left over" in (exq.root / "daemon2.log").read_text()
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_status_changes_are_counted_and_replayed_the_same(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "st")
    store = Store(paths).open()
    store.commit([submitted("1", 2), launched("1/j0"), ended("1/j0", JobStatus.FAILED), Reset(at=4.0, keys=["1/j0"]),
                  Reset(at=4.0, keys=["1/j1"])])  # j1 is queued already: no change
    assert store.ledger.submissions["1"].changes == 3
    store.commit([HookRan(at=5.0, submission="1", covered=2, ok=False, error="exit code 1")])
    sub = store.ledger.submissions["1"]
    assert (sub.hook_covered, sub.hook_error) == (2, "exit code 1")
    store.commit([HookRan(at=6.0, submission="1", covered=3, ok=True)])
    replayed = read_state(paths).submissions[0]  # from the journal: no snapshot was written
    store.close()
    assert (replayed.changes, replayed.hook_covered, replayed.hook_error) == (3, 3, None)


def test_on_job_end_is_carried_into_the_spec_and_checked(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    src = str(tmp_path / "m.yaml")
    text = "name: h\nworkdir: code\nenv: {A: 1}\nphases:\n  - {name: p, cmd: run}\non_job_end: exq plan sync\n"
    assert parse_manifest(text, src).on_job_end == Hook(cmd="exq plan sync", workdir=str(tmp_path / "code"),
                                                         env={"A": "1"})
    with pytest.raises(ManifestError) as info:
        parse_manifest("name: h\ncmd: run\non_job_end: [exq, plan, sync]\n", src)
    assert str(info.value) == f"{src}:3:13: on_job_end: expected a shell command (a non-empty string), got a list"


def test_a_bad_on_job_end_is_refused_by_submit_with_line_and_field(exq: Exq) -> None:
    manifest = exq.manifest("name: h\ncmd: run\non_job_end:\n  - exq\n  - plan\n")
    proc = exq("submit", str(manifest), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{manifest}:4:3: on_job_end: expected a shell command (a non-empty string), got a list" in proc.stderr
