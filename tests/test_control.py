"""Which jobs cancel/retry requests reach: by job id, phase or submission, newest submission first."""

from __future__ import annotations

import pytest

from exq.daemon.control import plan
from exq.errors import NotFoundError
from exq.model.events import Blocked, Submitted
from exq.model.jobspec import JobSpec
from exq.model.ledger import Ledger
from exq.model.state import JobStatus, Submission
from exq.store.intake import ControlRequest


def _submit(ledger: Ledger, sub_id: str, name: str = "exp") -> None:
    jobs = [
        JobSpec(id="a", phase="teacher", cmd_template="x", params={}, cmd="x", workdir="/"),
        JobSpec(id="b", phase="student", cmd_template="x", params={}, cmd="x", workdir="/", deps=["a"]),
    ]
    sub = Submission(id=sub_id, name=name, source="/m.yaml", submitted_at=0, phases=["teacher", "student"], jobs=2)
    ledger.apply(Submitted(seq=len(ledger.state.submissions) + 1, at=0, submission=sub, jobs=jobs))


def test_bare_job_id_means_the_newest_submission() -> None:
    ledger = Ledger()
    _submit(ledger, "1")
    _submit(ledger, "2")
    result = plan(ledger, ControlRequest(op="cancel", targets=["a"]), 1.0)
    assert result.affected == ["2/a"]
    assert plan(ledger, ControlRequest(op="cancel", targets=["1/a"]), 1.0).affected == ["1/a"]


def test_phase_and_submission_scopes() -> None:
    ledger = Ledger()
    _submit(ledger, "1", name="old")
    _submit(ledger, "2", name="new")
    phase = plan(ledger, ControlRequest(op="cancel", targets=["student"], scope="phase"), 1.0)
    assert phase.affected == ["2/b"]
    by_name = plan(ledger, ControlRequest(op="cancel", targets=["old"], scope="submission"), 1.0)
    assert by_name.affected == ["1/a", "1/b"]
    with pytest.raises(NotFoundError, match="no phase named 'nope'"):
        plan(ledger, ControlRequest(op="cancel", targets=["nope"], scope="phase"), 1.0)


def test_retry_requeues_the_failed_job_and_the_jobs_blocked_behind_it() -> None:
    ledger = Ledger()
    _submit(ledger, "1")
    ledger.jobs["1/a"].status = JobStatus.FAILED  # as an Ended event leaves it
    ledger.apply(Blocked(seq=3, at=1, keys=["1/b"], reason="dependency a failed"))
    result = plan(ledger, ControlRequest(op="retry", targets=["a"]), 2.0)
    assert result.affected == ["1/a", "1/b"]
    for event in result.events:
        ledger.apply(event)
    assert [ledger.jobs[k].status for k in ("1/a", "1/b")] == [JobStatus.QUEUED, JobStatus.QUEUED]
    assert plan(ledger, ControlRequest(op="retry", targets=["a"]), 3.0).affected == []
