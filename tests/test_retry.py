"""next_step and the ledger: transient failures are retried per retry.transient, counted apart from others."""

from __future__ import annotations

from exq.model.events import Ended, Launched, Reset, Submitted
from exq.model.jobspec import FailureRetry, JobSpec, RetryPolicy, TransientRetry
from exq.model.ledger import Ledger
from exq.model.outcome import Outcome
from exq.model.retry import NextStep, next_step
from exq.model.state import Attempt, JobStatus, Submission

KEY = "1/j"
TRANSIENT = "transient error (log matches 'CUDA error: unknown error'); exit code 1: RuntimeError: CUDA error"


def ledger(transient: TransientRetry) -> Ledger:
    spec = JobSpec(id="j", phase="p", cmd_template="run", params={}, cmd="run", workdir="/w",
                   retry=RetryPolicy(transient=transient, failure=FailureRetry(max=1, backoff=5)))
    submission = Submission(id="1", name="s", source="/w/m.yaml", submitted_at=0.0, phases=["p"], jobs=1)
    book = Ledger()
    book.apply(Submitted(at=0.0, submission=submission, jobs=[spec]))
    return book


def attempt_ends(book: Ledger, outcome: Outcome, reason: str, now: float) -> NextStep:
    """Launch the job's next attempt, end it with `outcome`, and apply what next_step decides."""
    job = book.job(KEY)
    number = len(job.attempts) + 1
    book.apply(Launched(at=now, key=KEY, attempt=Attempt(number=number, host="local", gpus=[0], params={},
                                                         cmd="run", dir="/a", log="/a/log", launched_at=now)))
    step = next_step(job, outcome, reason, now)
    book.apply(Ended(at=now, key=KEY, number=number, ended_at=now, exit_code=1, signal=None, outcome=outcome,
                     reason=reason, job_reason=step.reason, status=step.status, not_before=step.not_before,
                     retry_kind=step.retry_kind))
    return step


def test_transient_failures_are_retried_after_the_backoff_then_given_up() -> None:
    book = ledger(TransientRetry(match=["CUDA error: unknown error"], max=2, backoff=30))
    for n in (1, 2):
        step = attempt_ends(book, Outcome.TRANSIENT, TRANSIENT, now=100.0 * n)
        assert (step.status, step.retry_kind, step.not_before) == (JobStatus.QUEUED, "transient", 100.0 * n + 30)
    job = book.job(KEY)
    assert (job.transient_retries, job.failure_retries, job.reason) == (2, 0, TRANSIENT)
    step = attempt_ends(book, Outcome.TRANSIENT, TRANSIENT, now=300.0)
    assert step.status == JobStatus.FAILED and step.retry_kind is None
    assert book.job(KEY).reason == f"{TRANSIENT}; gave up after 2 transient retries"


def test_transient_and_other_failures_have_their_own_budgets() -> None:
    book = ledger(TransientRetry(match=["x"], max=1, backoff=0))
    assert attempt_ends(book, Outcome.FAILED, "exit code 1: ValueError: bad", 1.0).retry_kind == "failure"
    assert attempt_ends(book, Outcome.TRANSIENT, TRANSIENT, 2.0).retry_kind == "transient"
    job = book.job(KEY)
    assert (job.status, job.transient_retries, job.failure_retries) == (JobStatus.QUEUED, 1, 1)
    assert attempt_ends(book, Outcome.FAILED, "exit code 1", 3.0).status == JobStatus.FAILED
    assert book.job(KEY).reason == "exit code 1 (after 1 retries)"
    book.apply(Reset(at=4.0, keys=[KEY]))  # `exq retry`: every budget afresh
    job = book.job(KEY)
    assert (job.status, job.transient_retries, job.failure_retries) == (JobStatus.QUEUED, 0, 0)
