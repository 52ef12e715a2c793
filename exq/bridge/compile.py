"""Compile a research plan into an ordinary exq manifest a person can read and edit.

Each milestone of the plan's Run Order becomes a phase, in table order, `after` the previous
milestone's gate: its MUST runs, and its gate job when the runs file gives the milestone metric rules.
NICE runs go into their own phase with a lower priority that no later milestone waits for, so their
failure never closes a gate. Each run (times its seeds) is one job, whose command comes from the runs file.
"""

from __future__ import annotations

import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from exq.api import TemplateError, render
from exq.bridge.model import Milestone, Plan, Tracker, TrackerRow
from exq.bridge.runs import LoadedRuns, RunsFile
from exq.errors import InputProblem, ManifestError

NICE_PRIORITY = -10
NICE_SUFFIX = "-nice"
GATE_SUFFIX = "-gate"
_BLOCK_REF = re.compile(r"\b(?:block\s*|b)(\d+)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Compiled:
    manifest: dict[str, Any]
    yaml_text: str
    notes: list[str]


def exq_command(*args: str) -> str:
    """A shell command running this exq (this interpreter), for jobs and hooks the daemon starts."""
    return shlex.join([sys.executable, "-m", "exq", *args])


def compile_plan(plan: Plan, tracker: Tracker, runs: LoadedRuns, on_job_end: str | None = None) -> Compiled:
    """The manifest for `plan`; ManifestError listing every run without a command (or a bad one) at once.

    `on_job_end`, when given, becomes the manifest's hook (the bridge's `exq plan sync`).
    """
    problems: list[InputProblem] = []
    notes: list[str] = []
    known = {m.id for m in plan.milestones}
    for row in tracker.rows:
        if row.milestone not in known:
            message = (f"run {row.run_id} names milestone {row.milestone!r}, which the Run Order of "
                       f"{plan.path} does not have; milestones: {', '.join(sorted(known))}")
            problems.append(InputProblem(tracker.path, row.line, None, "Milestone", message))
    _check_gates(plan, tracker, runs)
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
            phases.append(_phase(milestone.id, after, must, milestone, tracker, runs, problems, priority=None))
            gate = milestone.id
            if milestone.id in runs.file.gates:
                phases.append(_gate_phase(milestone.id, runs.source))
                gate = milestone.id + GATE_SUFFIX
        if nice:
            phases.append(_phase(milestone.id + NICE_SUFFIX, after, nice, milestone, tracker, runs, problems,
                                 NICE_PRIORITY))
    if problems:
        raise ManifestError(problems)
    manifest = _manifest(plan, runs, phases, on_job_end)
    header = (f"# Compiled by `exq plan compile` on {time.strftime('%Y-%m-%d %H:%M')} from\n"
              f"#   plan:    {plan.path}\n#   tracker: {tracker.path}\n#   runs:    {runs.source}\n"
              "# An ordinary exq manifest: edit it freely (compiling again overwrites it).\n")
    text = header + yaml.safe_dump(manifest, sort_keys=False, width=120, allow_unicode=True)
    return Compiled(manifest, text, notes)


def _check_gates(plan: Plan, tracker: Tracker, runs: LoadedRuns) -> None:
    """Gate rules must name milestones of the plan that have MUST runs, and only those runs."""
    problems = runs.problems
    for milestone, rules in runs.file.gates.items():
        must = {r.run_id for r in tracker.rows if r.milestone == milestone and r.priority != "NICE"}
        if milestone not in {m.id for m in plan.milestones}:
            problems.add(("gates", milestone), f"milestone {milestone} is not in the Run Order of {plan.path}",
                         key=True)
        elif not must:
            problems.add(("gates", milestone), f"milestone {milestone} has no MUST runs in {tracker.path} to gate",
                         key=True)
        for index, rule in enumerate(rules):
            for run in rule.runs or []:
                if run not in must:
                    problems.add(("gates", milestone, index, "runs"),
                                 f"{run} is not a MUST run of {milestone}; its MUST runs: {', '.join(sorted(must))}")
    problems.raise_if_any()


def block_of(row: TrackerRow, milestone: Milestone | None, runs: RunsFile) -> str | None:
    """The `blocks` entry of the runs file that holds the run: by the tracker's Block column when it has
    one, else by the blocks its milestone's Runs cell names. ValueError when several could."""
    if not runs.blocks:
        return None
    by_number = {int(m.group(1)): key for key in runs.blocks if (m := _BLOCK_REF.fullmatch(key.strip()))}
    by_number.update({int(key): key for key in runs.blocks if key.strip().isdigit()})
    cell = next((v for k, v in row.cells.items() if k.strip().strip("*").casefold() == "block" and v), None)
    text = cell if cell is not None else milestone.runs if milestone is not None else ""
    found = list(dict.fromkeys(by_number[n] for n in map(int, _BLOCK_REF.findall(text)) if n in by_number))
    if len(found) > 1:
        raise ValueError(f"run {row.run_id} could belong to blocks {', '.join(found)} of the runs file: "
                         f"add runs.{row.run_id}, or a Block column to the tracker")
    return found[0] if found else None


def _phase(name: str, after: list[str], rows: list[TrackerRow], milestone: Milestone, tracker: Tracker,
           runs: LoadedRuns, problems: list[InputProblem], priority: int | None) -> dict[str, Any]:
    ids: list[str] = []
    seeds: list[int] = []
    commands: list[str] = []
    for row in rows:
        try:
            entry = runs.file.command(row.run_id, row.milestone, block_of(row, milestone, runs.file))
        except ValueError as exc:
            problems.append(InputProblem(tracker.path, row.line, None, "Block", str(exc)))
            continue
        if entry is None:
            problems.append(InputProblem(runs.source, None, None, f"runs.{row.run_id}",
                                         f"run {row.run_id} ({row.milestone}, tracker line {row.line}) has no command: "
                                         f"add runs.{row.run_id}, blocks.<its block>, milestones.{row.milestone} "
                                         "or default"))
            continue
        for seed in entry.seeds if entry.seeds is not None else runs.file.seeds:
            values = {**entry.params, "run_id": row.run_id, "milestone": row.milestone, "seed": seed}
            try:
                commands.append(render(entry.cmd, values, quote=True))
            except TemplateError as exc:
                problems.append(InputProblem(runs.source, None, None, f"run {row.run_id}", str(exc)))
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


def _gate_phase(milestone: str, runs_source: str) -> dict[str, Any]:
    """A CPU job on this machine that checks the milestone's metric rules once its MUST runs succeeded."""
    return {"name": milestone + GATE_SUFFIX, "after": [milestone], "gpus": 0, "hosts": ["local"],
            "timeout": "10m", "cmd": exq_command("plan", "gate", runs_source, milestone)}


def _manifest(plan: Plan, runs: LoadedRuns, phases: list[dict[str, Any]], on_job_end: str | None) -> dict[str, Any]:
    base = Path(runs.source).parent
    workdir = (base / runs.file.workdir).resolve() if runs.file.workdir else base.resolve()
    manifest: dict[str, Any] = {"name": plan_name(plan.path), "workdir": str(workdir)}
    if runs.file.env:
        manifest["env"] = runs.file.env
    if runs.file.setup:
        manifest["setup"] = runs.file.setup
    if runs.file.defaults:
        manifest["defaults"] = runs.file.defaults
    if on_job_end:
        manifest["on_job_end"] = on_job_end
    manifest["phases"] = phases
    return manifest


def project_root(plan_path: str | Path) -> Path:
    """The research project's folder: the plan's, or its parent for a plan in refine-logs/, docs/ or plans/."""
    folder = Path(plan_path).resolve().parent
    return folder.parent if folder.name in {"refine-logs", "docs", "plans"} else folder


def plan_name(plan_path: str | Path) -> str:
    """The project's folder name as an exq name: the compiled manifest's (and its submission's) name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", project_root(plan_path).name).strip("-._")
    return cleaned or "plan"
