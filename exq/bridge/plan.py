"""`exq plan`: compile a research plan's documents into a manifest, and submit it behind the stage gates."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from exq import api
from exq.bridge.compile import NICE_SUFFIX, Compiled, compile_plan, exq_command, project_root
from exq.bridge.documents import load_plan, load_tracker, load_workflow, set_gate
from exq.bridge.gates import Check, JobMetrics, evaluate
from exq.bridge.model import WorkflowState
from exq.bridge.owned import exq_part, merge
from exq.bridge.runs import LoadedRuns, load_runs
from exq.errors import ExqError


@dataclass(frozen=True)
class PlanFiles:
    plan: Path
    tracker: Path
    runs: Path
    runs_given: bool = True
    """False for the default runs.yaml beside the plan, which may be missing (commands then come from the
    documents)."""


@dataclass(frozen=True)
class Selection:
    """Which runs to compile besides those whose status says to do."""

    include: tuple[str, ...] = ()
    rerun_failed: bool = False


def find_files(plan: Path, tracker: Path | None, runs: Path | None) -> PlanFiles:
    """The tracker and runs file: as given, else beside the plan (EXPERIMENT_TRACKER.md, runs.yaml)."""
    return PlanFiles(plan, tracker or plan.parent / "EXPERIMENT_TRACKER.md", runs or plan.parent / "runs.yaml",
                     runs is not None)


def load_plan_runs(files: PlanFiles) -> LoadedRuns:
    """The runs file; an empty one when the default runs.yaml is missing."""
    return load_runs(files.runs, required=files.runs_given)


def compile_files(files: PlanFiles, workflow: Path | None, selection: Selection = Selection()) -> Compiled:
    """The plan's manifest, whose hook runs `exq plan sync` on these files after each job end."""
    return compile_plan(load_plan(files.plan), load_tracker(files.tracker), load_plan_runs(files),
                        on_job_end=sync_command(files, workflow), include=selection.include,
                        rerun_failed=selection.rerun_failed)


def sync_command(files: PlanFiles, workflow: Path | None) -> str:
    """`exq plan sync` of these files, with absolute paths (the hook runs in the manifest's workdir)."""
    args = ["plan", "sync", str(files.plan.absolute()), "--tracker", str(files.tracker.absolute())]
    if files.runs_given or files.runs.exists():
        args += ["--runs", str(files.runs.absolute())]
    args += ["--workflow", str(workflow.absolute())] if workflow is not None else ["--no-workflow"]
    return exq_command(*args)


def find_workflow(plan: Path, given: Path | None, enabled: bool = True) -> Path | None:
    """workflow-state.md: as given, else the one ticket in progress under the project, if exactly one; None
    when disabled (`--no-workflow`)."""
    if not enabled:
        return None
    if given is not None:
        return given
    found = sorted(project_root(plan).glob("tickets/in-progress/*/workflow-state.md"))
    return found[0] if len(found) == 1 else None


def training_stage(workflow: Path) -> tuple[WorkflowState, int]:
    """The workflow and its Training & Validation stage; ExqError (exq never writes into it) when it has none."""
    state = load_workflow(workflow)
    if state.training_stage is None:
        raise ExqError(f"{workflow}: this workflow has no Training & Validation stage ({state.describe()}); "
                       "exq runs experiments only in that stage and never writes into this file "
                       "(--workflow names another, --no-workflow goes without)")
    return state, state.training_stage


def owns_gate(evidence: str, submission: str) -> bool:
    """Whether a gate's Evidence cell says this submission set it."""
    return re.match(rf"(?:exq )?submission {re.escape(submission)}\b", exq_part(evidence)) is not None


def check_gates(workflow: Path, force: bool) -> list[str]:
    """Refuse unless the gate before the training stage passed and the current stage is the training stage;
    with force, say what was overridden."""
    state, stage = training_stage(workflow)
    problems = []
    earlier = [g.stage for g in state.gates if g.stage < stage]
    before = state.gate(max(earlier)) if earlier else None
    if before is not None and before.status.casefold() != "pass":
        problems.append(f"the stage {before.stage} gate is {before.status!r}, not 'Pass'")
    if state.current_stage != stage:
        problems.append(f"the current stage is {state.current_stage}, not {stage} (Training & Validation)")
    gate = state.gate(stage)
    if gate is not None and gate.status.casefold() == "in progress" and exq_part(gate.evidence):
        problems.append(f"the plan is already running ({exq_part(gate.evidence)})")
    if problems and not force:
        raise ExqError(f"{workflow}: experiments run in stage {stage}: " + "; ".join(problems)
                       + " (--force overrides)")
    return problems


def submit(files: PlanFiles, manifest_path: Path, workflow: Path | None, force: bool, paths: api.StatePaths,
           selection: Selection = Selection()) -> tuple[api.Intake, list[str], Compiled]:
    """Compile, write the manifest, check the gates, submit, and mark the training gate In Progress; the
    submission, what the gate checks overrode (with force) and what was compiled."""
    compiled = compile_files(files, workflow, selection)
    if not compiled.manifest["phases"]:
        raise ExqError(f"{files.tracker}: no run is left to do; nothing submitted "
                       "(--include RUN or --rerun-failed takes runs in)")
    spec = api.parse_manifest(compiled.yaml_text, str(manifest_path.absolute()))
    overridden = check_gates(workflow, force) if workflow is not None else []
    manifest_path.write_text(compiled.yaml_text)
    item = api.submit(paths, spec)
    if workflow is not None:
        state, stage = training_stage(workflow)
        gate = state.gate(stage)
        evidence = merge(gate.evidence if gate else "", f"submission {item.id} ({manifest_path.name})")
        set_gate(workflow, stage, "In Progress", evidence=evidence)
    return item, overridden, compiled


def check_gate(paths: api.StatePaths, runs_file: Path, milestone: str, submission: str) -> list[Check]:
    """The milestone's metric rules (from the runs file) checked on its succeeded MUST jobs of `submission`."""
    rules = load_runs(runs_file).file.gates.get(milestone)
    if not rules:
        raise ExqError(f"{runs_file}: no gates.{milestone} rules")
    jobs = [JobMetrics(job.id, str(job.params.get("run", job.id)), job.result or {})
            for job in api.status(paths).state.jobs
            if job.submission == submission and job.params.get("milestone", job.phase) == milestone
            and not job.phase.endswith(NICE_SUFFIX) and job.status == api.JobStatus.SUCCEEDED]
    return evaluate(rules, jobs)


def gate_result(milestone: str, checks: list[Check]) -> dict[str, object]:
    """What the gate job writes to EXQ_RESULT_FILE; `error` (why it failed) is what `exq status` shows."""
    result: dict[str, object] = {"gate": milestone, "passed": all(c.passed for c in checks),
                                 "checks": [{"rule": c.rule, "passed": c.passed, "detail": c.detail} for c in checks]}
    failed = [f"{c.rule}: {c.detail}" for c in checks if not c.passed]
    if failed:
        result["error"] = f"gate {milestone} failed: " + "; ".join(failed)
    return result
