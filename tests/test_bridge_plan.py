"""`exq plan compile|submit` on realistic documents, behind the workflow's stage gates."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Exq
from research import exq_plan, research_project

RUNS = 'workdir: ..\ndefaults: {gpus: 0}\nseeds: [0, 1]\nmilestones:\n  M0: {cmd: "echo sanity", seeds: [0]}\n' \
       'default: {cmd: "echo run {run_id} seed {seed}"}\n'


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return research_project(tmp_path / "proj", RUNS)


plan = exq_plan


def test_compile_prints_a_manifest_with_a_phase_per_milestone(exq: Exq, project: Path) -> None:
    out = plan(exq, project, "compile", "refine-logs/EXPERIMENT_PLAN.md")
    assert out.returncode == 0, out.stderr
    for phase in ("name: M0", "name: M1", "name: M2", "name: M3", "name: M3-nice"):
        assert phase in out.stdout
    assert "R007" in out.stdout.split("name: M3-nice")[1]  # the NICE run of M3


def test_a_run_without_a_command_is_an_error_listing_it(exq: Exq, project: Path) -> None:
    (project / "refine-logs" / "runs.yaml").write_text('milestones:\n  M0: {cmd: "true"}\n')
    out = plan(exq, project, "compile", "refine-logs/EXPERIMENT_PLAN.md")
    assert out.returncode == 2
    for run in ("R002", "R003", "R004", "R005", "R006", "R007"):
        assert f"run {run} " in out.stderr


def test_submit_sets_the_stage_5_gate_and_refuses_to_submit_twice(exq: Exq, project: Path) -> None:
    workflow = project / "tickets" / "in-progress" / "t1" / "workflow-state.md"
    before = workflow.read_text()
    out = plan(exq, project, "submit", "refine-logs/EXPERIMENT_PLAN.md")
    assert out.returncode == 0, out.stderr
    assert "submission 1 (13 jobs)" in out.stdout  # R001 x 1 seed + R002..R007 x 2 seeds
    after = workflow.read_text()
    assert "| 5 Training & Validation | In Progress |" in after and "| exq: submission 1 (exq-plan.yaml) |" in after
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
    assert [a.split("|")[1].strip() for a, _ in changed if a.startswith("|")] == ["5 Training & Validation"]
    again = plan(exq, project, "submit", "refine-logs/EXPERIMENT_PLAN.md")
    assert again.returncode == 1 and "already running" in again.stderr
    assert len(list((exq.state_dir / "intake").glob("*.json"))) == 1


def test_submit_refuses_outside_stage_5_unless_forced(exq: Exq, project: Path) -> None:
    workflow = project / "tickets" / "in-progress" / "t1" / "workflow-state.md"
    workflow.write_text(workflow.read_text().replace("- Current Stage: 5", "- Current Stage: 4"))
    refused = plan(exq, project, "submit", "refine-logs/EXPERIMENT_PLAN.md")
    assert refused.returncode == 1 and "the current stage is 4, not 5" in refused.stderr
    assert not (exq.state_dir / "intake").exists() or not list((exq.state_dir / "intake").glob("*.json"))
    forced = plan(exq, project, "submit", "refine-logs/EXPERIMENT_PLAN.md", "--force")
    assert forced.returncode == 0 and "--force overrode: the current stage is 4" in forced.stderr


def test_dry_run_shows_jobs_and_changes_nothing(exq: Exq, project: Path) -> None:
    workflow = project / "tickets" / "in-progress" / "t1" / "workflow-state.md"
    before = workflow.read_bytes()
    out = plan(exq, project, "submit", "--dry-run", "refine-logs/EXPERIMENT_PLAN.md")
    assert out.returncode == 0 and "R004_s1" in out.stdout
    assert workflow.read_bytes() == before and not (project / "refine-logs" / "exq-plan.yaml").exists()
