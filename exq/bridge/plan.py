"""`exq plan`: compile a research plan's documents into a manifest, and submit it behind the stage gates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from exq import api
from exq.bridge.compile import Compiled, compile_plan, exq_command, project_root
from exq.bridge.documents import load_plan, load_tracker, load_workflow, set_gate
from exq.bridge.gates import Check, JobMetrics, evaluate
from exq.bridge.runs import load_runs
from exq.errors import ExqError

TRAINING_STAGE = 5
"""Stage 5 (Training & Validation) is where experiments run, once the stage 4 gate passed."""


@dataclass(frozen=True)
class PlanFiles:
    plan: Path
    tracker: Path
    runs: Path


def find_files(plan: Path, tracker: Path | None, runs: Path | None) -> PlanFiles:
    """The tracker and runs file: as given, else beside the plan (EXPERIMENT_TRACKER.md, runs.yaml)."""
    return PlanFiles(plan, tracker or plan.parent / "EXPERIMENT_TRACKER.md", runs or plan.parent / "runs.yaml")


def compile_files(files: PlanFiles, workflow: Path | None) -> Compiled:
    """The plan's manifest, whose hook runs `exq plan sync` on these files after each job end."""
    return compile_plan(load_plan(files.plan), load_tracker(files.tracker), load_runs(files.runs),
                        on_job_end=sync_command(files, workflow))


def sync_command(files: PlanFiles, workflow: Path | None) -> str:
    """`exq plan sync` of these files, with absolute paths (the hook runs in the manifest's workdir)."""
    args = ["plan", "sync", str(files.plan.absolute()), "--tracker", str(files.tracker.absolute()),
            "--runs", str(files.runs.absolute())]
    if workflow is not None:
        args += ["--workflow", str(workflow.absolute())]
    return exq_command(*args)


def find_workflow(plan: Path, given: Path | None) -> Path | None:
    """workflow-state.md: as given, else the one ticket in progress under the project, if exactly one."""
    if given is not None:
        return given
    found = sorted(project_root(plan).glob("tickets/in-progress/*/workflow-state.md"))
    return found[0] if len(found) == 1 else None


def check_gates(workflow: Path, force: bool) -> list[str]:
    """Refuse unless the stage 4 gate passed and the current stage is 5; with force, say what was overridden."""
    state = load_workflow(workflow)
    problems = []
    stage4 = state.gate(TRAINING_STAGE - 1)
    if stage4 is None or stage4.status.lower() != "pass":
        problems.append(f"the stage 4 gate is {stage4.status if stage4 else 'missing'!r}, not 'Pass'")
    if state.current_stage != TRAINING_STAGE:
        problems.append(f"the current stage is {state.current_stage}, not {TRAINING_STAGE} (Training & Validation)")
    stage5 = state.gate(TRAINING_STAGE)
    if stage5 is not None and stage5.status.lower() == "in progress" and "exq submission" in stage5.evidence:
        problems.append(f"the plan is already running ({stage5.evidence})")
    if problems and not force:
        raise ExqError(f"{workflow}: experiments run in stage {TRAINING_STAGE}: " + "; ".join(problems)
                       + " (--force overrides)")
    return problems


def submit(files: PlanFiles, manifest_path: Path, workflow: Path | None, force: bool,
           paths: api.StatePaths) -> tuple[api.Intake, list[str]]:
    """Compile, write the manifest, check the gates, submit, and mark the stage 5 gate In Progress."""
    compiled = compile_files(files, workflow)
    spec = api.parse_manifest(compiled.yaml_text, str(manifest_path.absolute()))
    overridden = check_gates(workflow, force) if workflow is not None else []
    manifest_path.write_text(compiled.yaml_text)
    item = api.submit(paths, spec)
    if workflow is not None:
        set_gate(workflow, TRAINING_STAGE, "In Progress", evidence=f"exq submission {item.id} ({manifest_path.name})")
    return item, overridden


def check_gate(paths: api.StatePaths, runs_file: Path, milestone: str, submission: str) -> list[Check]:
    """The milestone's metric rules (from the runs file) checked on its succeeded MUST jobs of `submission`."""
    rules = load_runs(runs_file).file.gates.get(milestone)
    if not rules:
        raise ExqError(f"{runs_file}: no gates.{milestone} rules")
    jobs = [JobMetrics(job.id, str(job.params.get("run", job.id)), job.result or {})
            for job in api.status(paths).state.jobs
            if job.submission == submission and job.phase == milestone and job.status == api.JobStatus.SUCCEEDED]
    return evaluate(rules, jobs)


def gate_result(milestone: str, checks: list[Check]) -> dict[str, object]:
    """What the gate job writes to EXQ_RESULT_FILE; `error` (why it failed) is what `exq status` shows."""
    result: dict[str, object] = {"gate": milestone, "passed": all(c.passed for c in checks),
                                 "checks": [{"rule": c.rule, "passed": c.passed, "detail": c.detail} for c in checks]}
    failed = [f"{c.rule}: {c.detail}" for c in checks if not c.passed]
    if failed:
        result["error"] = f"gate {milestone} failed: " + "; ".join(failed)
    return result
