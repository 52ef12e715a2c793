"""Compile a research plan into an ordinary exq manifest a person can read and edit.

Only the runs a person still wants run are compiled: those whose tracker Status says to do (see
exq.bridge.status), plus `include`d ones and, with `rerun_failed`, the failed ones; every other run is left
alone and listed in the report with its status.

Each milestone of the plan's Run Order becomes a phase, in order, `after` the previous milestone's MUST work
(or its gate job, when the runs file gives the milestone metric rules). NICE runs go into their own phase with
a lower priority that nothing waits for, so their failure never closes a gate. A run with a `Depends On` run
that is compiled too gets a phase of its own (`M1-R004`), after the jobs of those runs. A run's command comes
from the runs file's entry for it, else the plan's Command column, else the tracker's, else the runs file's
default; a runs-file command is a template repeated per seed, a document's command is run as written, once.
"""

from __future__ import annotations

import re
import shlex
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from exq.api import TemplateError, render
from exq.bridge.model import Milestone, Plan, Tracker, TrackerRow
from exq.bridge.runs import LoadedRuns, RunsFile
from exq.bridge.status import Intent, read_status
from exq.errors import InputProblem, ManifestError, UsageError

NICE_PRIORITY = -10
NICE_SUFFIX = "-nice"
GATE_SUFFIX = "-gate"
_BLOCK_REF = re.compile(r"\b(?:block\s*|b)(\d+)\b", re.IGNORECASE)


@dataclass(frozen=True)
class RunChoice:
    """What compiling did with one tracker run, for the compile report."""

    row: TrackerRow
    compiled: bool
    why: str
    """`to do (TODO)`, `--include`, `failed (GATE FAILED), --rerun-failed` or `left alone: PAUSED`."""
    commands: tuple[str, ...] = ()
    source: str = ""
    """Where the command came from: `runs.yaml runs.R003`, `EXPERIMENT_PLAN.md:31 (Command)`, ..."""

    def describe(self) -> str:
        head = f"{self.row.run_id} ({self.row.milestone}, {self.row.status.strip() or 'no status'})"
        if not self.compiled:
            return f"{head}: {self.why}"
        shown = "; ".join(self.commands[:2]) + (f"; ... ({len(self.commands)} jobs)" if len(self.commands) > 2 else "")
        return f"{head}: {self.why}; command from {self.source}: {shown}"


@dataclass(frozen=True)
class Compiled:
    manifest: dict[str, Any]
    yaml_text: str
    notes: list[str]
    runs: list[RunChoice] = field(default_factory=list)
    """Every tracker run, compiled or left alone, in tracker order."""


@dataclass(frozen=True)
class _Jobs:
    """A compiled run's jobs: (job id, seed, command) each."""

    run: TrackerRow
    jobs: list[tuple[str, int, str]]
    source: str


def exq_command(*args: str) -> str:
    """A shell command running this exq (this interpreter), for jobs and hooks the daemon starts."""
    return shlex.join([sys.executable, "-m", "exq", *args])


def with_milestone_priorities(plan: Plan, tracker: Tracker) -> Tracker:
    """The tracker with each run's priority: its own Priority cell, else its milestone's `**Priority**` line."""
    given = {m.id: "NICE" if m.priority == "NICE-TO-HAVE" else "MUST" for m in plan.milestones if m.priority}
    rows = [row if row.priority or row.milestone not in given else replace(row, priority=given[row.milestone])
            for row in tracker.rows]
    return replace(tracker, rows=rows)


def choose_runs(tracker: Tracker, include: Collection[str] = (), rerun_failed: bool = False) -> list[RunChoice]:
    """Which runs to compile, by their Status; UsageError for an `include`d run the tracker does not have."""
    known = {row.run_id for row in tracker.rows}
    unknown = [run for run in include if run not in known]
    if unknown:
        raise UsageError(f"--include {', '.join(unknown)}: no such run in {tracker.path} "
                         f"(its runs: {', '.join(sorted(known)) or 'none'})")
    choices = []
    for row in tracker.rows:
        status = read_status(row.status)
        if row.run_id in include:
            choices.append(RunChoice(row, True, "--include"))
        elif status.intent == Intent.TODO:
            choices.append(RunChoice(row, True, f"to do ({status})"))
        elif status.intent == Intent.FAILED and rerun_failed:
            choices.append(RunChoice(row, True, f"failed ({status}), --rerun-failed"))
        else:
            hint = "; --rerun-failed takes it" if status.intent == Intent.FAILED else ""
            unknown_word = "" if status.known else " (a status exq does not know)"
            choices.append(RunChoice(row, False, f"left alone: {status}{unknown_word}{hint}; --include {row.run_id} "
                                                 "forces it in"))
    return choices


def compile_plan(plan: Plan, tracker: Tracker, runs: LoadedRuns, on_job_end: str | None = None,
                 include: Collection[str] = (), rerun_failed: bool = False) -> Compiled:
    """The manifest for the runs of `plan` still to do; ManifestError listing every problem at once (a run
    without a command, an unknown milestone or Depends On run, a dependency cycle).

    `on_job_end`, when given, becomes the manifest's hook (the bridge's `exq plan sync`).
    """
    problems: list[InputProblem] = []
    notes: list[str] = []
    tracker = with_milestone_priorities(plan, tracker)
    milestones = {m.id: m for m in plan.milestones}
    for row in tracker.rows:
        if row.milestone not in milestones:
            message = (f"run {row.run_id} names milestone {row.milestone!r}, which the Run Order of "
                       f"{plan.path} does not have; milestones: {', '.join(milestones)}")
            problems.append(InputProblem(tracker.path, row.line, None, "Milestone", message))
    tracked = {row.run_id for row in tracker.rows}
    notes += [f"run {r.run_id} ({plan.path}:{r.line}) is not in {tracker.path}: not compiled"
              for r in plan.runs if r.run_id not in tracked]
    _check_gates(plan, tracker, runs)
    choices = choose_runs(tracker, include, rerun_failed)
    chosen = {c.row.run_id: _jobs(c.row, milestones[c.row.milestone], plan, tracker, runs, problems)
              for c in choices if c.compiled and c.row.milestone in milestones}
    deps = _run_deps(plan, tracker, set(chosen), problems, notes)
    if problems:
        raise ManifestError(problems)
    compiled = {run_id: jobs for run_id, jobs in chosen.items() if jobs is not None}
    choices = [RunChoice(c.row, c.compiled, c.why, tuple(cmd for _, _, cmd in compiled[c.row.run_id].jobs),
                         compiled[c.row.run_id].source) if c.compiled else c for c in choices]
    phases = _phases(plan, compiled, deps, runs, notes)
    notes += _gate_notes(runs.file, tracker, compiled)
    manifest = _manifest(plan, runs, phases, on_job_end)
    header = (f"# Compiled by `exq plan compile` on {time.strftime('%Y-%m-%d %H:%M')} from\n"
              f"#   plan:    {plan.path}\n#   tracker: {tracker.path}\n"
              f"#   runs:    {runs.source if runs.exists else '(none: commands from the documents)'}\n"
              "# An ordinary exq manifest: edit it freely (compiling again overwrites it).\n")
    text = header + yaml.safe_dump(manifest, sort_keys=False, width=120, allow_unicode=True)
    return Compiled(manifest, text, notes, choices)


def _phases(plan: Plan, compiled: dict[str, _Jobs], deps: dict[str, list[str]], runs: LoadedRuns,
            notes: list[str]) -> list[dict[str, Any]]:
    """The phases, milestone by milestone; each milestone's waits for the previous one's MUST work."""
    phases: list[dict[str, Any]] = []
    before: list[str] = []
    for milestone in plan.milestones:
        mine = [jobs for jobs in compiled.values() if jobs.run.milestone == milestone.id]
        if not mine:
            notes.append(f"milestone {milestone.id} has no runs to do: no phase for it")
            continue
        must_phases: list[str] = []
        for nice in (False, True):
            group = [jobs for jobs in mine if (jobs.run.priority == "NICE") == nice]
            suffix, priority = (NICE_SUFFIX, NICE_PRIORITY) if nice else ("", None)
            made = _milestone_phases(milestone.id, suffix, priority, before, group, compiled, deps)
            phases += made
            if not nice:
                must_phases = [phase["name"] for phase in made]
        if must_phases:
            before = must_phases
            if milestone.id in runs.file.gates:
                phases.append(_gate_phase(milestone.id, must_phases, runs.source))
                before = [milestone.id + GATE_SUFFIX]
    return phases


def _gate_notes(runs: RunsFile, tracker: Tracker, compiled: dict[str, _Jobs]) -> list[str]:
    """A gate rule naming a run that is not compiled will find no job of it: say so."""
    status = {row.run_id: row.status.strip() or "no status" for row in tracker.rows}
    return [f"gates.{milestone}: a rule names {run} ({status.get(run, '?')}), which is not compiled: that rule "
            "fails, as it finds no job of it (--include it, or drop it from the rule)"
            for milestone, rules in runs.gates.items() if any(j.run.milestone == milestone for j in compiled.values())
            for run in dict.fromkeys(r for rule in rules for r in rule.runs or []) if run not in compiled]


def _milestone_phases(milestone: str, suffix: str, priority: int | None, before: list[str], group: list[_Jobs],
                      compiled: dict[str, _Jobs], deps: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The phases of a milestone's MUST (or NICE) runs: one for those without compiled dependencies, and one per
    run with some, after the jobs of the runs it depends on."""
    plain = [jobs for jobs in group if not deps.get(jobs.run.run_id)]
    phases = [_phase(milestone + suffix, before, plain, priority)] if plain else []
    for jobs in group:
        if deps.get(jobs.run.run_id):
            after = before + [job_id for dep in deps[jobs.run.run_id] for job_id, _, _ in compiled[dep].jobs]
            phases.append(_phase(f"{milestone}-{jobs.run.run_id}{suffix}", after, [jobs], priority))
    return phases


def _jobs(row: TrackerRow, milestone: Milestone, plan: Plan, tracker: Tracker, runs: LoadedRuns,
          problems: list[InputProblem]) -> _Jobs | None:
    """The run's jobs and where their command came from; None (with a problem) when it has no usable command."""
    try:
        entry = runs.file.entry(row.run_id, row.milestone, block_of(row, milestone, runs.file))
    except ValueError as exc:
        problems.append(InputProblem(tracker.path, row.line, None, "Block", str(exc)))
        return None
    planned = plan.run(row.run_id)
    if entry is not None:
        key, command = entry
    elif planned is not None and planned.command:
        return _Jobs(row, [(row.run_id, 0, planned.command)], f"{Path(plan.path).name}:{planned.line} (Command)")
    elif row.command:
        return _Jobs(row, [(row.run_id, 0, row.command)], f"{Path(tracker.path).name}:{row.line} (Command)")
    elif runs.file.default is not None:
        key, command = "default", runs.file.default
    else:
        where = f"runs.{row.run_id}, blocks.<its block>, milestones.{row.milestone} or default in {runs.source}"
        problems.append(InputProblem(tracker.path, row.line, None, "Command",
                                     f"run {row.run_id} ({row.milestone}) has no command: give it a Command column "
                                     f"in the plan or the tracker, or {where}"))
        return None
    jobs = []
    for seed in command.seeds if command.seeds is not None else runs.file.seeds:
        values = {**command.params, "run_id": row.run_id, "milestone": row.milestone, "seed": seed}
        try:
            jobs.append((f"{row.run_id}_s{seed}", seed, render(command.cmd, values, quote=True)))
        except TemplateError as exc:
            problems.append(InputProblem(runs.source, None, None, key, f"run {row.run_id}: {exc}"))
            return None
    return _Jobs(row, jobs, f"{Path(runs.source).name} {key}")


def _run_deps(plan: Plan, tracker: Tracker, compiled: set[str], problems: list[InputProblem],
              notes: list[str]) -> dict[str, list[str]]:
    """Each compiled run's compiled Depends On runs (plan's and tracker's); unknown ones, later milestones
    and cycles are problems; runs not compiled count as met (noted)."""
    order = {m.id: i for i, m in enumerate(plan.milestones)}
    rows = {row.run_id: row for row in tracker.rows}
    deps: dict[str, list[str]] = {}
    for run_id in sorted(compiled, key=lambda r: rows[r].line):
        row, planned = rows[run_id], plan.run(run_id)
        named = list(dict.fromkeys([*(planned.depends_on if planned else ()), *row.depends_on]))
        where = (plan.path, planned.line) if planned and planned.depends_on else (tracker.path, row.line)
        mine: list[str] = []
        for dep in named:
            other = rows.get(dep)
            if other is None:
                problems.append(InputProblem(where[0], where[1], None, "Depends On",
                                             f"run {run_id} depends on {dep}, which {tracker.path} does not have"))
            elif order.get(other.milestone, 0) > order.get(row.milestone, 0):
                problems.append(InputProblem(where[0], where[1], None, "Depends On",
                                             f"run {run_id} ({row.milestone}) depends on {dep} of the later milestone "
                                             f"{other.milestone}, which waits for {row.milestone}"))
            elif dep not in compiled:
                notes.append(f"run {run_id} depends on {dep} ({other.status.strip() or 'no status'}), which is not "
                             "compiled: counted as met")
            else:
                mine.append(dep)
        deps[run_id] = mine
    for cycle in _cycles(deps):
        row = rows[cycle[0]]
        problems.append(InputProblem(tracker.path, row.line, None, "Depends On",
                                     f"runs depend on each other in a cycle: {' -> '.join(cycle)}"))
    return deps


def _cycles(deps: dict[str, list[str]]) -> list[list[str]]:
    """Each dependency cycle once, as `[a, b, a]`."""
    found: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(run: str, stack: list[str]) -> None:
        state[run] = 1
        for dep in deps.get(run, []):
            if state.get(dep) == 1:
                found.append([*stack[stack.index(dep):], dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[run] = 2

    for run in deps:
        if run not in state:
            visit(run, [run])
    return found


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


def _phase(name: str, after: list[str], runs: list[_Jobs], priority: int | None) -> dict[str, Any]:
    """A phase running `runs`: one job per (run, seed), each with its own command."""
    jobs = [(group.run, job) for group in runs for job in group.jobs]
    phase: dict[str, Any] = {"name": name}
    if after:
        phase["after"] = list(after)
    if priority is not None:
        phase["priority"] = priority
    phase["grid"] = {"zip": [{"job": [job_id for _, (job_id, _, _) in jobs],
                              "run": [row.run_id for row, _ in jobs],
                              "milestone": [row.milestone for row, _ in jobs],
                              "seed": [seed for _, (_, seed, _) in jobs],
                              "run_cmd": [cmd for _, (_, _, cmd) in jobs]}]}
    phase["id"] = "{job}"
    phase["cmd"] = "sh -c {run_cmd}"
    return phase


def _gate_phase(milestone: str, after: list[str], runs_source: str) -> dict[str, Any]:
    """A CPU job on this machine that checks the milestone's metric rules once its MUST runs succeeded."""
    return {"name": milestone + GATE_SUFFIX, "after": after, "gpus": 0, "hosts": ["local"],
            "timeout": "10m", "cmd": exq_command("plan", "gate", runs_source, milestone)}


def _manifest(plan: Plan, runs: LoadedRuns, phases: list[dict[str, Any]], on_job_end: str | None) -> dict[str, Any]:
    base = Path(runs.source).parent if runs.exists else project_root(plan.path)
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
