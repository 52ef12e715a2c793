"""Where a plan's submission stands: each tracker run and each milestone, read from the queue's jobs."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from exq.api import Job, JobStatus
from exq.bridge.compile import GATE_SUFFIX, block_of, with_milestone_priorities
from exq.bridge.gates import as_number
from exq.bridge.model import Milestone, Plan, Tracker, TrackerRow
from exq.bridge.runs import RunsFile
from exq.text import one_line

PASSED, FAILED, PENDING = "PASSED", "FAILED", "PENDING"
"""Milestone verdicts, as EXPERIMENT_RESULTS.md headings write them."""
REASON_CHARS = 160
_WORDS = {JobStatus.QUEUED: "QUEUED", JobStatus.RUNNING: "RUNNING", JobStatus.UNKNOWN: "RUNNING",
          JobStatus.SUCCEEDED: "DONE", JobStatus.FAILED: "FAILED", JobStatus.BLOCKED: "BLOCKED",
          JobStatus.CANCELLED: "CANCELLED"}


def gate_word(job: Job) -> str:
    """A single job's status in the tracker's words (QUEUED, RUNNING, DONE, FAILED, BLOCKED, CANCELLED)."""
    return _WORDS[job.status]


@dataclass(frozen=True)
class RunProgress:
    """One tracker run: its jobs (one per seed) in this submission, and what they add up to."""

    row: TrackerRow
    jobs: list[Job]
    metric: str | None
    """The key metric's name: the runs file's, else the first numeric one a job wrote."""

    @property
    def must(self) -> bool:
        return self.row.priority != "NICE"

    @property
    def status(self) -> str:
        """The tracker Status: QUEUED, RUNNING, DONE, FAILED, BLOCKED or CANCELLED."""
        statuses = {job.status for job in self.jobs}
        if JobStatus.FAILED in statuses:
            return "FAILED"
        if statuses & {JobStatus.RUNNING, JobStatus.UNKNOWN} or any(
                j.attempts for j in self.jobs if j.status == JobStatus.QUEUED) or (
                JobStatus.SUCCEEDED in statuses and JobStatus.QUEUED in statuses):
            return "RUNNING"
        if statuses == {JobStatus.SUCCEEDED}:
            return "DONE"
        if JobStatus.BLOCKED in statuses:
            return "BLOCKED"
        return "CANCELLED" if JobStatus.CANCELLED in statuses else "QUEUED"

    @property
    def finished(self) -> bool:
        return all(job.status.finished for job in self.jobs)

    @property
    def values(self) -> list[float]:
        """The key metric of each job that succeeded and wrote it."""
        if self.metric is None:
            return []
        found = [as_number((j.result or {}).get(self.metric)) for j in self.jobs if j.status == JobStatus.SUCCEEDED]
        return [v for v in found if v is not None]

    @property
    def summary(self) -> str:
        """`top1 71.2 ± 0.3 (3 seeds)`, `loss 0.12`, or empty when no job reported the metric."""
        values = self.values
        if not values or self.metric is None:
            return ""
        if len(values) == 1:
            return f"{self.metric} {values[0]:.4g}"
        return f"{self.metric} {statistics.fmean(values):.4g} ± {statistics.stdev(values):.2g} ({len(values)} seeds)"

    @property
    def attempts(self) -> int:
        return sum(len(job.attempts) for job in self.jobs)

    @property
    def oom_retries(self) -> int:
        return sum(job.oom_retries for job in self.jobs)

    @property
    def reason(self) -> str:
        """Why the run failed or is blocked: the first such job's reason."""
        bad = next((j for j in self.jobs if j.status in (JobStatus.FAILED, JobStatus.BLOCKED) and j.reason), None)
        if bad is None:
            return ""
        return one_line(f"{bad.id}: {bad.reason}", REASON_CHARS)

    @property
    def finished_at(self) -> float | None:
        """When its last job finished, once all have."""
        if not self.finished:
            return None
        return max((job.finished_at or job.submitted_at) for job in self.jobs)

    def notes(self) -> str:
        """The tracker's Notes: key metric, attempts and OOM retries, and why it failed."""
        parts = [self.summary] if self.summary else []
        if self.status in ("FAILED", "BLOCKED") and self.reason:
            parts.append(f"{self.status.lower()}: {self.reason}")
        if self.attempts:
            count = f"{self.attempts} attempt{'s' * (self.attempts != 1)}"
            if self.oom_retries:
                count += f", {self.oom_retries} OOM retr{'ies' if self.oom_retries != 1 else 'y'}"
            parts.append(count)
        return "; ".join(parts)


@dataclass(frozen=True)
class MilestoneProgress:
    milestone: Milestone
    runs: list[RunProgress]
    gate: Job | None
    """The job checking the milestone's metric rules, when the runs file gives some."""

    @property
    def must(self) -> list[RunProgress]:
        return [run for run in self.runs if run.must]

    @property
    def verdict(self) -> str:
        """PASSED when its MUST runs (all runs when it has none) are DONE and its gate passed."""
        must = self.must or self.runs
        if any(run.status == "FAILED" for run in must) or (self.gate and self.gate.status == JobStatus.FAILED):
            return FAILED
        gate_ok = self.gate is None or self.gate.status == JobStatus.SUCCEEDED
        if must and all(run.status == "DONE" for run in must) and gate_ok:
            return PASSED
        return PENDING

    @property
    def gate_reason(self) -> str:
        if self.gate is None or self.gate.status != JobStatus.FAILED:
            return ""
        return one_line(self.gate.reason or "", REASON_CHARS)


@dataclass(frozen=True)
class PlanProgress:
    submission: str
    milestones: list[MilestoneProgress]

    @property
    def runs(self) -> list[RunProgress]:
        return [run for m in self.milestones for run in m.runs]

    @property
    def must_done(self) -> tuple[int, int]:
        """(MUST runs DONE, MUST runs)."""
        must = [run for run in self.runs if run.must]
        return sum(run.status == "DONE" for run in must), len(must)

    @property
    def finished(self) -> bool:
        """Every MUST run and every gate job has finished (one way or another)."""
        gates = [m.gate for m in self.milestones if m.gate is not None]
        return all(run.finished for run in self.runs if run.must) and all(g.status.finished for g in gates)

    @property
    def passed(self) -> bool:
        return all(m.verdict == PASSED for m in self.milestones if m.must)


def plan_progress(plan: Plan, tracker: Tracker, runs: RunsFile, submission: str, jobs: list[Job]) -> PlanProgress:
    """The progress of `plan` from the jobs of its `submission` (jobs carry `run` and `seed` params)."""
    by_run: dict[str, list[Job]] = {}
    gates: dict[str, Job] = {}
    for job in jobs:
        if job.submission != submission:
            continue
        if job.phase.endswith(GATE_SUFFIX):
            gates[job.phase[: -len(GATE_SUFFIX)]] = job
        elif isinstance(run := job.params.get("run"), str):
            by_run.setdefault(run, []).append(job)
    tracker = with_milestone_priorities(plan, tracker)
    milestones = []
    for milestone in plan.milestones:
        progress = []
        for row in tracker.rows:
            if row.milestone != milestone.id or row.run_id not in by_run:
                continue
            run_jobs = sorted(by_run[row.run_id], key=lambda j: str(j.params.get("seed", "")))
            progress.append(RunProgress(row, run_jobs, _metric(row, milestone, runs, run_jobs)))
        if progress:
            milestones.append(MilestoneProgress(milestone, progress, gates.get(milestone.id)))
    return PlanProgress(submission, milestones)


def _metric(row: TrackerRow, milestone: Milestone, runs: RunsFile, jobs: list[Job]) -> str | None:
    try:
        named = runs.metric(row.run_id, row.milestone, block_of(row, milestone, runs))
    except ValueError:
        named = runs.metric(row.run_id, row.milestone, None)
    if named is not None:
        return named
    for job in jobs:
        first = next((k for k, v in (job.result or {}).items() if as_number(v) is not None), None)
        if first is not None:
            return first
    return None

