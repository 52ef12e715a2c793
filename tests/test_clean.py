"""`exq clean` moves finished submissions out of the queue into archive.jsonl, durably: with or without a
daemon, across a restart and a kill -9, never reusing an id nor ingesting a replayed intake again."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from conftest import Exq, wait_until

from exq.model.events import Archived, Ended, Launched, Submitted
from exq.model.jobspec import JobSpec
from exq.model.ledger import Ledger
from exq.model.outcome import Outcome
from exq.model.state import Attempt, JobStatus, Submission
from exq.model.summary import advance, summarize
from exq.store.archive import ArchivedSubmission, append, read_archive
from exq.store.store import StatePaths


def added(exq: Exq, *args: str) -> str:
    """`exq add --json ARGS`: the id of the submission it made."""
    sub: str = json.loads(exq("add", "--json", "--gpus", "0", *args).stdout)["submission"]
    return sub


def clean(exq: Exq, *args: str) -> dict[str, Any]:
    reply: dict[str, Any] = json.loads(exq("clean", "--json", *args).stdout)
    assert reply["ok"], reply
    return reply


def statuses(exq: Exq) -> dict[str, str]:
    """Submission id -> status of its one job."""
    return {job["submission"]: job["status"] for job in exq.state()["jobs"]}


def archived(exq: Exq) -> list[str]:
    return [r["submission"]["id"] for r in json.loads(exq("status", "--archived", "--json").stdout)["archived"]]


def snapshot_ids(exq: Exq) -> set[str]:
    """The submission ids queue_state.json holds."""
    return {sub["id"] for sub in json.loads((exq.state_dir / "queue_state.json").read_bytes())["submissions"]}


def test_clean_with_a_daemon_archives_only_finished_submissions(exq: Exq) -> None:
    exq.start_daemon()
    ok, failed = added(exq, "--", "echo", "hi"), added(exq, "--", "sh", "-c", "exit 3")
    running = added(exq, "--", "sleep", "30")
    wait_until(lambda: statuses(exq) == {ok: "succeeded", failed: "failed", running: "running"})
    assert (exq.state_dir / "jobs" / ok).is_dir()
    kept = json.loads(exq("clean", "--json", "--submission", running).stdout)
    assert kept["affected"] == [] and f"{running} (not finished)" in kept["message"]
    assert clean(exq, "--older-than", "7d")["affected"] == []  # they finished moments ago
    reply = clean(exq)
    assert reply["affected"] == [ok, failed] and reply["message"].startswith("archived 2 submission(s) (2 jobs)")
    assert "deleted the logs of 2 attempt(s)" in reply["message"]
    assert statuses(exq) == {running: "running"}
    assert not (exq.state_dir / "jobs" / ok).exists() and not (exq.state_dir / "jobs" / failed).exists()
    assert (exq.state_dir / "jobs" / running).is_dir()
    wait_until(lambda: snapshot_ids(exq) == {running})
    assert f"{ok}/job" not in exq("status", "--all").stdout
    assert archived(exq) == [ok, failed]
    text = exq("status", "--archived", failed).stdout
    assert f"{failed}/job" in text and "exit code 3" in text and f"{ok}/job" not in text
    missing = exq("clean", "--submission", "99", check=False)
    assert missing.returncode == 5 and "no submission named '99'" in missing.stderr
    again = clean(exq, "--submission", ok)
    assert again["affected"] == [] and "already archived" in again["message"]
    assert added(exq, "--", "true") == str(int(running) + 1)
    exq("cancel", "--submission", running)


def test_clean_without_a_daemon_keeps_logs_on_request_and_never_reuses_an_id(exq: Exq) -> None:
    first, second = added(exq, "--", "true"), added(exq, "--", "true")
    exq.start_daemon()
    wait_until(lambda: statuses(exq) == {first: "succeeded", second: "succeeded"})
    exq.stop_all()
    time.sleep(1.2)
    assert clean(exq, "--older-than", "1h")["affected"] == []
    reply = clean(exq, "--older-than", "1s", "--keep-logs", "--submission", first)
    assert reply["affected"] == [first] and "logs kept" in reply["message"]
    assert (exq.state_dir / "jobs" / first).is_dir()
    assert clean(exq)["affected"] == [second]
    assert not (exq.state_dir / "jobs" / second).exists() and (exq.state_dir / "jobs" / first).is_dir()
    assert exq.state()["jobs"] == [] and snapshot_ids(exq) == set()
    assert archived(exq) == [first, second]
    (exq.state_dir / "intake" / ".counter").unlink()  # lost: the next number comes from the state
    third = added(exq, "--", "true")
    assert int(third) > int(second)
    exq.start_daemon()
    wait_until(lambda: statuses(exq) == {third: "succeeded"})


def test_kill9_right_after_clean_then_restart_keeps_them_archived_once(exq: Exq) -> None:
    first = added(exq, "--", "true")
    intake_file = next((exq.state_dir / "intake").glob("*.json"))
    saved = exq.root / intake_file.name
    shutil.copy(intake_file, saved)  # as a crash before its removal would have left it
    second = added(exq, "--", "true")
    daemon = exq.start_daemon()
    wait_until(lambda: statuses(exq) == {first: "succeeded", second: "succeeded"})
    assert clean(exq)["affected"] == [first, second]
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(10)
    shutil.copy(saved, intake_file)  # replayed: its key is archived, so it is not ingested again
    exq.start_daemon()
    wait_until(lambda: not list((exq.state_dir / "intake").glob("*.json")))
    time.sleep(0.5)
    assert exq.state()["submissions"] == [] and exq.state()["jobs"] == []
    assert archived(exq) == [first, second]
    exq.stop_all()
    assert snapshot_ids(exq) == set()
    lines = (exq.state_dir / "archive.jsonl").read_text().splitlines()
    assert [json.loads(line)["submission"]["id"] for line in lines] == [first, second]
    assert (exq.state_dir / "archive.jsonl").stat().st_mode & 0o777 == 0o600


def _spec(job_id: str, deps: list[str] | None = None) -> JobSpec:
    return JobSpec(id=job_id, phase="p", cmd_template="x", params={}, cmd="x", workdir="/", deps=deps or [])


def _submit(ledger: Ledger, sub_id: str, *specs: JobSpec) -> None:
    sub = Submission(id=sub_id, key=f"key-{sub_id}", name="exp", source="/m.yaml", submitted_at=0, phases=["p"],
                     jobs=len(specs))
    ledger.apply(Submitted(seq=ledger.state.seq + 1, at=0, submission=sub, jobs=list(specs)))


def _finish(ledger: Ledger, key: str) -> None:
    attempt = Attempt(number=1, host="local", gpus=[], params={}, cmd="x", dir="/nowhere", log="/nowhere/log",
                      launched_at=1)
    ledger.apply(Launched(seq=ledger.state.seq + 1, at=1, key=key, attempt=attempt))
    ledger.apply(Ended(seq=ledger.state.seq + 1, at=2, key=key, number=1, ended_at=2, exit_code=0, signal=None,
                       outcome=Outcome.SUCCEEDED, reason="ok", status=JobStatus.SUCCEEDED))


def test_the_ledger_drops_archived_submissions_and_keeps_their_keys_and_the_order() -> None:
    from exq.daemon.control import plan
    from exq.store.intake import ControlRequest

    ledger = Ledger()
    _submit(ledger, "1", _spec("a"), _spec("b"))
    _submit(ledger, "2", _spec("c", deps=["1/a"]))
    _submit(ledger, "3", _spec("d"))
    for key in ("1/a", "1/b", "3/d"):
        _finish(ledger, key)
    result = plan(ledger, ControlRequest(op="clean", scope="all"), 3.0)
    assert result.affected == ["3"] and "1 (jobs of submission 2 depend on it)" in result.message
    event = Archived(seq=ledger.state.seq + 1, at=3, keys=["1"])
    assert advance(summarize(ledger.state, 3.0), [event]) is None  # the status index cannot follow it
    ledger.apply(event)
    assert [j.key for j in ledger.state.jobs] == ["2/c", "3/d"] and [j.order for j in ledger.state.jobs] == [0, 1]
    assert set(ledger.jobs) == {"2/c", "3/d"} and list(ledger.queued) == ["2/c"]
    assert [s.id for s in ledger.state.submissions] == ["2", "3"] and "key-1" in ledger.submission_keys
    reloaded = Ledger(ledger.state.model_copy(deep=True))
    assert "key-1" in reloaded.submission_keys and reloaded.state.archived == {"1": "key-1"}


def test_archive_readers_keep_the_last_line_of_each_submission_and_skip_a_torn_one(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "st").create()
    sub = Submission(id="1", name="a", source="/m.yaml", submitted_at=0, phases=[], jobs=0)
    append(paths, [ArchivedSubmission(archived_at=1, submission=sub, jobs=[])])
    with (paths.root / "archive.jsonl").open("ab") as handle:
        handle.write(b'{"archived_at": 2, "subm')  # a write cut short
    append(paths, [ArchivedSubmission(archived_at=3, submission=sub, jobs=[])])
    assert [r.archived_at for r in read_archive(paths)] == [3]
    assert read_archive(paths, archived=["2"]) == []
