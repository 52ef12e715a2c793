"""What `exq plan sync` writes, piece by piece: gate rules, the results file, the log, the workflow gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import Exq
from research import exq_plan, research_project

from exq.api import Job, JobStatus
from exq.bridge.gates import GateRule, JobMetrics, evaluate
from exq.bridge.model import Milestone, Plan, Tracker, TrackerRow
from exq.bridge.progress import PlanProgress, plan_progress
from exq.bridge.results import new_document, update_results
from exq.bridge.runlog import append_entries, new_entries
from exq.bridge.runs import RunsFile
from exq.model.jobspec import JobSpec


def rule(**fields: Any) -> GateRule:
    return GateRule.model_validate(fields)


JOBS = [JobMetrics("R1_s0", "R1", {"acc": 70.0, "base": 60.0}), JobMetrics("R1_s1", "R1", {"acc": 74.0, "base": 80.0}),
        JobMetrics("R2_s0", "R2", {"acc": 50.0})]


def test_gate_rules_check_each_job_the_mean_over_seeds_or_the_mean_over_all() -> None:
    each, seeds, overall, other = evaluate([
        rule(metric="acc", at_least=60), rule(metric="acc", over="seeds", above=71),
        rule(metric="acc", over="all", above=60), rule(metric="acc", above="base", runs=["R1"]),
    ], JOBS)
    assert not each.passed and each.detail == "failed for R2_s0: 50"
    assert not seeds.passed and seeds.detail == "failed for R2: 50" and "R1: 72" not in seeds.detail
    assert overall.passed and overall.detail == "all: 64.67" and overall.rule == "mean acc over all jobs > 60"
    assert not other.passed and other.detail == "failed for R1_s1: 74 vs base 80"
    assert other.rule == "acc of each job > base (runs R1)"


def test_a_missing_or_non_numeric_metric_fails_the_rule_naming_the_job() -> None:
    jobs = [JobMetrics("R1_s0", "R1", {"acc": "high"}), JobMetrics("R2_s0", "R2", {})]
    check = evaluate([rule(metric="acc", above=1)], jobs)[0]
    assert not check.passed
    assert check.detail == "failed for R1_s0: R1_s0 wrote a non-numeric 'high' as 'acc'; R2_s0: R2_s0 wrote no 'acc'"
    assert not evaluate([rule(metric="acc", above=1)], [])[0].passed


# ---- results and log, from jobs in given states -------------------------------------------------------------


def job(run: str, seed: int, status: JobStatus, result: dict[str, Any] | None = None, attempts: int = 1,
        finished_at: float = 1_800_000_000.0, phase: str = "M0", oom: int = 0, reason: str | None = None) -> Job:
    spec = JobSpec(id=f"{run}_s{seed}", phase=phase, cmd_template="sh -c {run_cmd}", params={}, cmd="x",
                   workdir="/proj")
    data = {"id": spec.id, "submission": "1", "phase": phase, "status": status, "cmd": "x", "order": 0,
            "params": {"run": run, "seed": seed, "run_cmd": f"python train.py --seed {seed}", "lr": 0.1},
            "attempts": [{"number": n + 1, "host": "local", "gpus": [0], "params": {}, "cmd": "x", "dir": "/a",
                          "log": "/a/log", "launched_at": 1.0} for n in range(attempts)],
            "oom_retries": oom, "result": result, "reason": reason, "submitted_at": 1.0,
            "finished_at": finished_at if status.finished else None, "spec": spec}
    return Job.model_validate(data)


PLAN = Plan("/proj/refine-logs/EXPERIMENT_PLAN.md", None,
            [Milestone("M0", "Sanity", "", "", "?", 3), Milestone("M1", "Main", "", "", "?", 4)], [])
TRACKER = Tracker("/proj/refine-logs/EXPERIMENT_TRACKER.md", [
    TrackerRow("R001", "M0", "sanity", "vit-tiny", "MUST", "TODO", "", 3),
    TrackerRow("R002", "M1", "main", "vit-tiny, schedule", "MUST", "TODO", "", 4),
    TrackerRow("R003", "M1", "extra", "resnet", "NICE", "TODO", "", 5)])


def progress(*jobs: Job) -> PlanProgress:
    return plan_progress(PLAN, TRACKER, RunsFile(key_metric="acc"), "1", list(jobs))


def test_run_status_and_notes_follow_the_jobs() -> None:
    ok = {"acc": 71.0}
    state = progress(job("R001", 0, JobStatus.SUCCEEDED, ok, attempts=2, oom=1),
                     job("R002", 0, JobStatus.SUCCEEDED, ok, phase="M1"), job("R002", 1, JobStatus.QUEUED, phase="M1"),
                     job("R003", 0, JobStatus.FAILED, phase="M1-nice", reason="exit code 3"))
    by_run = {run.row.run_id: run for run in state.runs}
    assert by_run["R001"].status == "DONE" and by_run["R001"].notes() == "acc 71; 2 attempts, 1 OOM retry"
    assert by_run["R002"].status == "RUNNING"  # one seed done, one to go
    assert by_run["R003"].notes() == "failed: R003_s0: exit code 3; 1 attempt"
    assert [m.verdict for m in state.milestones] == ["PASSED", "PENDING"]
    assert state.must_done == (1, 2) and not state.finished


HUMAN_RESULTS = (
    "# Initial Experiment Results\r\n\r\n**Date**: 2026-05-01\r\n\r\n## Results by Milestone\r\n\r\n"
    "### M0: Sanity (冒烟) — PENDING\r\n\r\nWritten by hand: the loss curve looked fine.\r\n\r\n"
    "| Run | System | Key Metric | Status | Comment |\r\n|---|---|---|---|---|\r\n"
    "| R001 | old | | TODO | keep me |\r\n| R099 | a run exq does not know | 1 | DONE | |\r\n\r\n"
    "## Summary\r\n\r\n- [0/2] must-run experiments completed\r\n- Main result: pending\r\n")


def test_results_change_only_verdicts_exq_cells_new_rows_and_the_count() -> None:
    state = progress(job("R001", 0, JobStatus.SUCCEEDED, {"acc": 71.0}),
                     job("R002", 0, JobStatus.RUNNING, phase="M1"))
    text = update_results(HUMAN_RESULTS, state)
    assert text == HUMAN_RESULTS.replace("— PENDING", "— PASSED").replace(
        "| R001 | old | | TODO | keep me |", "| R001 | old | exq: acc 71 | DONE | keep me |").replace(
        "[0/2]", "[1/2]").replace(
        "| R099 | a run exq does not know | 1 | DONE | |\r\n\r\n",
        "| R099 | a run exq does not know | 1 | DONE | |\r\n\r\n### M1: Main — PENDING\r\n\r\n"
        "| Run | System | Key Metric | Status |\r\n|---|---|---|---|\r\n"
        "| R002 | vit-tiny, schedule |  | RUNNING |\r\n\r\n")
    assert update_results(text, state) == text
    by_hand = text.replace("| R001 | old | exq: acc 71 |", "| R001 | old | checked by hand · exq: acc 71 |")
    rerun = progress(job("R001", 0, JobStatus.SUCCEEDED, {"acc": 72.0}), job("R002", 0, JobStatus.RUNNING, phase="M1"))
    assert update_results(by_hand, rerun) == by_hand.replace("exq: acc 71", "exq: acc 72")


def test_a_new_results_file_has_every_milestone_and_the_summary() -> None:
    state = progress(job("R001", 0, JobStatus.FAILED, reason="exit code 1"),
                     job("R002", 0, JobStatus.BLOCKED, phase="M1", reason="dependency R001_s0 failed"))
    text = update_results(new_document("EXPERIMENT_PLAN.md", "2026-11-22"), state)
    assert "**Plan**: EXPERIMENT_PLAN.md" in text
    assert "### M0: Sanity — FAILED\n\n| Run | System | Key Metric | Status |\n|---|---|---|---|\n" \
           "| R001 | vit-tiny | exq: R001_s0: exit code 1 | FAILED |\n\n### M1: Main — PENDING" in text
    assert text.endswith("\n\n## Summary\n\n- [0/2] must-run experiments completed\n")


def test_log_entries_are_appended_once_and_a_rerun_gets_its_own() -> None:
    first = progress(job("R001", 0, JobStatus.FAILED, reason="exit code 1", finished_at=1_800_000_000.0))
    text = append_entries("", new_entries("", first))
    assert text.startswith("# Experiment Log\n\n## R001 — 2027-01-15T08:00Z\n- **System**: vit-tiny\n")
    assert "- **Config**: M0; seed 0; lr=0.1; exq submission 1\n- **Result**: failed: R001_s0: exit code 1\n" in text
    assert "- **Reproduce**: `cd /proj && python train.py --seed 0`" in text
    assert new_entries(text, first) == []
    rerun = progress(job("R001", 0, JobStatus.SUCCEEDED, {"acc": 70.0}, attempts=2, finished_at=1_800_000_600.0))
    again = append_entries(text, new_entries(text, rerun))
    assert again.startswith(text) and again.count("## R001 — ") == 2 and "- **Result**: acc 70\n" in again


def test_a_running_or_blocked_run_is_not_logged() -> None:
    state = progress(job("R001", 0, JobStatus.RUNNING), job("R002", 0, JobStatus.BLOCKED, phase="M1"))
    assert new_entries("", state) == []


# ---- the command, against a real queue ----------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return research_project(tmp_path / "proj", "defaults: {gpus: 0}\nseeds: [0]\ndefault: {cmd: 'echo {run_id}'}\n")


plan = exq_plan


def test_sync_leaves_a_stage_gate_someone_else_set_alone(exq: Exq, project: Path) -> None:
    assert plan(exq, project, "submit", "refine-logs/EXPERIMENT_PLAN.md").returncode == 0
    waiting = plan(exq, project, "sync", "refine-logs/EXPERIMENT_PLAN.md")
    assert waiting.returncode == 0 and "submission 1 waits for a daemon" in waiting.stderr
    workflow = project / "tickets" / "in-progress" / "t1" / "workflow-state.md"
    text = workflow.read_text().replace("| In Progress | Run evidence closes the success criteria | exq: submission 1",
                                        "| Blocked | Run evidence closes the success criteria | GPUs down")
    workflow.write_text(text)
    exq.start_daemon()
    exq.wait_finished(7)
    out = plan(exq, project, "sync", "refine-logs/EXPERIMENT_PLAN.md")
    assert out.returncode == 0, out.stderr
    assert "the stage 5 gate is 'Blocked' (GPUs down (exq-plan.yaml)), not this submission's: left alone" in out.stderr
    assert workflow.read_text() == text
    tracker = (project / "refine-logs" / "EXPERIMENT_TRACKER.md").read_text()
    assert "| R001 | M0 | sanity | vit-tiny, schedule, 2 epochs | train/test | loss | MUST | DONE | exq: 1 attempt |" \
        in tracker


def test_sync_names_a_missing_submission(exq: Exq, project: Path) -> None:
    out = plan(exq, project, "sync", "refine-logs/EXPERIMENT_PLAN.md")
    assert out.returncode == 5 and "no submission named 'proj'" in out.stderr
    out = plan(exq, project, "sync", "refine-logs/EXPERIMENT_PLAN.md", "--submission", "7")
    assert out.returncode == 5 and "no submission 7" in out.stderr
