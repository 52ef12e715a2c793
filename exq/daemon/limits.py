"""max_parallel: at most N jobs of a submission, or of one of its phases, or with a label, running at once.

A job counts from its launch until its attempt ended (status running, or unknown while its host does not
answer); an ended attempt whose GPUs are still settling no longer counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from exq.model.state import Job, JobStatus, Submission

ACTIVE = (JobStatus.RUNNING, JobStatus.UNKNOWN)
"""The statuses of a job whose attempt has not ended."""


class Running:
    """How many jobs run per submission and per phase, as one placement pass sees and adds to them."""

    def __init__(self, jobs: Iterable[Job] = ()) -> None:
        self._submissions: Counter[str] = Counter()
        self._phases: Counter[tuple[str, str]] = Counter()
        self._labels: Counter[str] = Counter()
        for job in jobs:
            if job.status in ACTIVE:
                self.add(job)

    def add(self, job: Job) -> None:
        """Count `job` as running (it was just placed)."""
        self._submissions[job.submission] += 1
        self._phases[(job.submission, job.phase)] += 1
        self._labels.update(job.spec.labels)

    def held_back(self, job: Job, submission: Submission | None) -> str | None:
        """Why `job` may not start now for a max_parallel of its phase, submission or labels; None when it may."""
        for label, most in job.spec.label_max_parallel.items():
            if self._labels[label] >= most:
                return f"waiting: max_parallel {most} of label {label} reached"
        if submission is None:
            return None
        limit = submission.phase_max_parallel.get(job.phase)
        if limit is not None and self._phases[(job.submission, job.phase)] >= limit:
            return f"waiting: max_parallel {limit} of phase {job.phase} reached"
        limit = submission.max_parallel
        if limit is not None and self._submissions[job.submission] >= limit:
            return f"waiting: max_parallel {limit} of the submission reached"
        return None
