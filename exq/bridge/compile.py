"""Compile a research plan into an ordinary exq manifest a person can read and edit.

Each milestone of the plan's Run Order becomes a phase, in table order, `after` the previous
milestone's gate: the MUST runs of that milestone. NICE runs go into their own phase with a lower
priority that no later milestone waits for, so their failure never closes a gate. Each run (times
its seeds) is one job, whose command comes from the runs file.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from exq.bridge.model import Plan, Tracker, TrackerRow
from exq.bridge.runs import RunsFile
from exq.errors import InputProblem, ManifestError
from exq.queue.template import TemplateError, render

NICE_PRIORITY = -10


@dataclass(frozen=True)
class Compiled:
    manifest: dict[str, Any]
    yaml_text: str
    notes: list[str]


def compile_plan(plan: Plan, tracker: Tracker, runs: RunsFile, runs_source: str) -> Compiled:
    """The manifest for `plan`; ManifestError listing every run without a command (or a bad one) at once."""
    problems: list[InputProblem] = []
    notes: list[str] = []
    known = {m.id for m in plan.milestones}
    for row in tracker.rows:
        if row.milestone not in known:
            message = (f"run {row.run_id} names milestone {row.milestone!r}, which the Run Order of "
                       f"{plan.path} does not have; milestones: {', '.join(sorted(known))}")
            problems.append(InputProblem(tracker.path, row.line, None, "Milestone", message))
    phases: list[dict[str, Any]] = []
    gate: str | None = None
    for milestone in plan.milestones:
        rows = [r for r in tracker.rows if r.milestone == milestone.id]
        if not rows:
            notes.append(f"milestone {milestone.id} has no runs in the tracker: no phase for it")
            continue
        must = [r for r in rows if r.priority != "NICE"]
        nice = [r for r in rows if r.priority == "NICE"]
        after = [gate] if gate else []
        if must:
            phases.append(_phase(milestone.id, after, must, runs, runs_source, problems, priority=None))
            gate = milestone.id
        if nice:
            phases.append(_phase(f"{milestone.id}-nice", after, nice, runs, runs_source, problems, NICE_PRIORITY))
    if problems:
        raise ManifestError(problems)
    manifest = _manifest(plan, runs, runs_source, phases)
    header = (f"# Compiled by `exq plan compile` on {time.strftime('%Y-%m-%d %H:%M')} from\n"
              f"#   plan:    {plan.path}\n#   tracker: {tracker.path}\n#   runs:    {runs_source}\n"
              "# An ordinary exq manifest: edit it freely (compiling again overwrites it).\n")
    text = header + yaml.safe_dump(manifest, sort_keys=False, width=120, allow_unicode=True)
    return Compiled(manifest, text, notes)


def _phase(name: str, after: list[str], rows: list[TrackerRow], runs: RunsFile, runs_source: str,
           problems: list[InputProblem], priority: int | None) -> dict[str, Any]:
    ids: list[str] = []
    seeds: list[int] = []
    commands: list[str] = []
    for row in rows:
        entry = runs.command(row.run_id, row.milestone)
        if entry is None:
            problems.append(InputProblem(runs_source, None, None, f"runs.{row.run_id}",
                                         f"run {row.run_id} ({row.milestone}, tracker line {row.line}) has no command: "
                                         f"add runs.{row.run_id}, milestones.{row.milestone} or default"))
            continue
        for seed in entry.seeds if entry.seeds is not None else runs.seeds:
            values = {**entry.params, "run_id": row.run_id, "milestone": row.milestone, "seed": seed}
            try:
                commands.append(render(entry.cmd, values, quote=True))
            except TemplateError as exc:
                problems.append(InputProblem(runs_source, None, None, f"run {row.run_id}", str(exc)))
                break
            ids.append(row.run_id)
            seeds.append(seed)
    phase: dict[str, Any] = {"name": name}
    if after:
        phase["after"] = after
    if priority is not None:
        phase["priority"] = priority
    phase["grid"] = {"zip": [{"run": ids, "seed": seeds, "run_cmd": commands}]}
    phase["id"] = "{run}_s{seed}"
    phase["cmd"] = "sh -c {run_cmd}"
    return phase


def _manifest(plan: Plan, runs: RunsFile, runs_source: str, phases: list[dict[str, Any]]) -> dict[str, Any]:
    base = Path(runs_source).parent
    workdir = (base / runs.workdir).resolve() if runs.workdir else base.resolve()
    manifest: dict[str, Any] = {"name": _name(plan.path), "workdir": str(workdir)}
    if runs.env:
        manifest["env"] = runs.env
    if runs.setup:
        manifest["setup"] = runs.setup
    if runs.defaults:
        manifest["defaults"] = runs.defaults
    manifest["phases"] = phases
    return manifest


def _name(plan_path: str) -> str:
    """The project's directory name (the plan's, or its parent's for refine-logs/), as an exq name."""
    folder = Path(plan_path).resolve().parent
    if folder.name in {"refine-logs", "docs", "plans"}:
        folder = folder.parent
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.name).strip("-._")
    return cleaned or "plan"


