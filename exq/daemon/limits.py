"""max_parallel: at most N jobs of a submission, or of one of its phases, or with a label, running at once.

A job counts from its launch until its attempt ended (status running, or unknown while its host does not
answer); an ended attempt whose GPUs are still settling no longer counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from exq.daemon.placement import Batch
from exq.model.state import Job, JobStatus, Submission

ACTIVE = (JobStatus.RUNNING, JobStatus.UNKNOWN)
"""The statuses of a job whose attempt has not ended."""


class Running:
    """How many jobs run per submission and per phase, as one placement pass sees and adds to them. A throttled
    batch (see exq.daemon.placement.Batch) counts as its limit, or its active jobs when fewer are left."""

    def __init__(self, active: Iterable[tuple[Job, Batch | None]] = ()) -> None:
        self._submissions: Counter[str] = Counter()
        self._phases: Counter[tuple[str, str]] = Counter()
        self._labels: Counter[str] = Counter()
        batches: dict[Batch, list[Job]] = {}
        for job, batch in active:
            if job.status not in ACTIVE:
                continue
            if batch is None:
                self.add(job)
            else:
                batches.setdefault(batch, []).append(job)
        for batch, jobs in batches.items():
            self.add(jobs[0], min(batch.limit, len(jobs)))

    def add(self, job: Job, weight: int = 1) -> None:
        """Count `job` (it was just placed), or a batch of jobs like it of which `weight` may run at once."""
        self._submissions[job.submission] += weight
        self._phases[(job.submission, job.phase)] += weight
        for label in job.spec.labels:
            self._labels[label] += weight

    def room(self, job: Job, submission: Submission | None) -> int | None:
        """How many more jobs like `job` may start now under its max_parallel limits (None: it has none)."""
        rooms = [most - self._labels[label] for label, most in job.spec.label_max_parallel.items()]
        if submission is not None:
            limit = submission.phase_max_parallel.get(job.phase)
            if limit is not None:
                rooms.append(limit - self._phases[(job.submission, job.phase)])
            if submission.max_parallel is not None:
                rooms.append(submission.max_parallel - self._submissions[job.submission])
        return min(rooms) if rooms else None

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
