"""`exq plan sync`: write a plan submission's progress back into the research documents.

The tracker's Status and Notes of each run this submission runs, EXPERIMENT_RESULTS.md, new EXPERIMENT_LOG.md
entries, and, once every MUST job (gate jobs included) finished, the Training & Validation gate of
workflow-state.md: Pass or Fail with evidence. Each file is rewritten atomically and only when something
changed, so running it again changes nothing. What sync owns: the Status cell of the runs it runs, and its
own part (see exq.bridge.owned) of their Notes, of a results row's Key Metric and of the gate's Evidence;
rows of runs it does not run are never touched, and a person's words are kept byte for byte.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from exq import api
from exq.bridge.compile import plan_name
from exq.bridge.documents import (
    load_plan,
    load_tracker,
    load_workflow,
    read_document,
    set_gate,
    update_tracker,
    write_document,
)
from exq.bridge.markdown import header_key
from exq.bridge.owned import merge
from exq.bridge.plan import PlanFiles, load_plan_runs, owns_gate
from exq.bridge.progress import PlanProgress, plan_progress
from exq.bridge.results import new_document, update_results
from exq.bridge.runlog import append_entries, new_entries
from exq.errors import NotFoundError
from exq.text import one_line

EVIDENCE_CHARS = 700
REENTRY = ("re-entry classification left to the human (Local Fix, Plan Impact, Requirement Gap, "
           "Investigation Gap or Unclear)")


@dataclass(frozen=True)
class SyncTargets:
    """The documents a sync reads and writes."""

    files: PlanFiles
    results: Path
    log: Path
    workflow: Path | None


@dataclass
class SyncReport:
    submission: str
    changed: list[str] = field(default_factory=list)
    """The files rewritten, each with what changed."""
    notes: list[str] = field(default_factory=list)


def find_submission(view: api.StatusView, plan: Path, given: str | None) -> str:
    """The submission to sync: as given, else the newest one named after the plan's project."""
    known = [(sub.id, sub.name) for sub in view.state.submissions] + [(i.id, i.spec.name) for i in view.pending]
    if given:
        if given not in {sub_id for sub_id, _ in known}:
            raise NotFoundError(f"no submission {given} in the queue")
        return given
    name = plan_name(plan)
    found = [sub_id for sub_id, sub_name in known if sub_name == name]
    if not found:
        raise NotFoundError(f"no submission named {name!r} (the plan's project) in the queue; "
                            "pass --submission N")
    return found[-1]


def sync(targets: SyncTargets, paths: api.StatePaths, submission: str | None = None) -> SyncReport:
    """Bring the documents up to date with the queue (one sync at a time per state directory)."""
    with FileLock(str(paths.root / "plan-sync.lock"), timeout=120):
        view = api.status(paths)
        sub = find_submission(view, targets.files.plan, submission)
        report = SyncReport(sub)
        jobs = [j for j in view.state.jobs if j.submission == sub]
        if not jobs:
            report.notes.append(f"submission {sub} waits for a daemon to take it in: nothing to sync yet")
            return report
        plan, tracker = load_plan(targets.files.plan), load_tracker(targets.files.tracker)
        progress = plan_progress(plan, tracker, load_plan_runs(targets.files).file, sub, jobs)
        _tracker(targets.files.tracker, progress, report)
        _results(targets, progress, report)
        _log(targets.log, progress, report)
        if targets.workflow is not None:
            _workflow(targets.workflow, progress, report)
        return report


def _tracker(path: Path, progress: PlanProgress, report: SyncReport) -> None:
    updates: dict[str, dict[str, str]] = {}
    for run in progress.runs:
        cells = {"Status": run.status}
        if any(header_key(name) == "notes" for name in run.row.cells):
            cells["Notes"] = merge(run.row.notes, run.notes())
        updates[run.row.run_id] = cells
    if update_tracker(path, updates):
        report.changed.append(f"{path}: Status and Notes of {len(updates)} run(s)")


def _results(targets: SyncTargets, progress: PlanProgress, report: SyncReport) -> None:
    path = targets.results
    if path.exists():
        text = read_document(path)
    else:
        plan = os.path.relpath(targets.files.plan.resolve(), path.resolve().parent)
        text = new_document(plan, datetime.date.today().isoformat())
    edited = update_results(text, progress)
    if edited != text or not path.exists():
        write_document(path, edited)
        verdicts = ", ".join(f"{m.milestone.id} {m.verdict}" for m in progress.milestones)
        report.changed.append(f"{path}: {verdicts}")


def _log(path: Path, progress: PlanProgress, report: SyncReport) -> None:
    text = read_document(path) if path.exists() else ""
    entries = new_entries(text, progress)
    if entries:
        write_document(path, append_entries(text, entries))
        report.changed.append(f"{path}: {len(entries)} new entr{'ies' if len(entries) != 1 else 'y'}")


def _workflow(path: Path, progress: PlanProgress, report: SyncReport) -> None:
    """Pass or Fail the training gate once the plan's MUST jobs finished; only a gate this submission set."""
    state = load_workflow(path)
    if state.training_stage is None:
        report.notes.append(f"{path}: a workflow without a Training & Validation stage ({state.describe()}): "
                            "left alone")
        return
    stage = state.training_stage
    gate = state.gate(stage)
    if gate is None or not owns_gate(gate.evidence, progress.submission) or \
            gate.status.casefold() not in ("in progress", "pass", "fail"):
        shown = f"{gate.status!r} ({gate.evidence or 'no evidence'})" if gate else "missing"
        report.notes.append(f"{path}: the stage {stage} gate is {shown}, not this submission's: left alone")
        return
    if progress.finished:
        status, ours = ("Pass" if progress.passed else "Fail"), _evidence(progress)
    elif gate.status.casefold() != "in progress":  # jobs were retried after the gate was decided
        done, total = progress.must_done
        status, ours = "In Progress", f"submission {progress.submission} ({done}/{total} must-run done)"
    else:
        return
    if set_gate(path, stage, status, merge(gate.evidence, ours)):
        report.changed.append(f"{path}: stage {stage} gate {status}")


def _evidence(progress: PlanProgress) -> str:
    done, total = progress.must_done
    parts = []
    for milestone in progress.milestones:
        if not milestone.must:
            continue
        if milestone.verdict == "FAILED":
            failed = [f"{r.row.run_id} {r.notes()}" for r in milestone.must if r.status == "FAILED"]
            detail = failed or [f"gate: {milestone.gate_reason}"]
        elif milestone.verdict == "PASSED":
            detail = [f"{r.row.run_id} {r.summary}".strip() for r in milestone.must]
        else:
            detail = [f"{r.row.run_id} {r.status}" for r in milestone.must]
        parts.append(f"{milestone.milestone.id} {milestone.verdict} ({', '.join(detail)})")
    head = f"submission {progress.submission}: {done}/{total} must-run done"
    text = "; ".join([head, *([] if progress.passed else [REENTRY]), *parts])
    return one_line(text, EVIDENCE_CHARS)
