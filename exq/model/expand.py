"""Grid expansion (cartesian product, zip groups, exclude, include) and phase dependencies.

Problems are reported to a `Problems` collector with the path of the offending YAML node.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from exq.model.jobspec import Scalar
from exq.model.template import format_value
from exq.yamldoc import Path, Problems

Combo = dict[str, Scalar]
"""One combination of grid values, key -> value, in grid key order."""
Axis = list[Combo]
"""The points of one grid axis: one key's values, or a zip group's values advanced in lock-step."""
GridEntry = tuple[str, Sequence[Scalar]] | Sequence[Mapping[str, Sequence[Scalar]]]
"""A grid key and its values, or (for the key `zip`) the list of zip groups."""

_MAX_REPORTED = 3


def same(a: Scalar, b: Scalar) -> bool:
    """Equal values: 1 == 1.0, but true != 1 and '1' != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, str) or isinstance(b, str):
        return type(a) is type(b) and a == b
    return a == b


def is_number(value: Scalar) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def show(values: Mapping[str, Scalar]) -> str:
    """`{lr: 0.1, bs: 32}` as `lr=0.1, bs=32`."""
    return ", ".join(f"{k}={format_value(v)}" for k, v in values.items()) or "no params"


def grid_axes(entries: Sequence[GridEntry], path: Path, problems: Problems) -> list[Axis]:
    """One axis per grid key, and one per zip group, in key order; a key used twice is an error."""
    axes: list[Axis] = []
    seen: set[str] = set()
    for entry in entries:
        if isinstance(entry, tuple):
            key, values = entry
            if key in seen:
                problems.add((*path, "grid", key), f"grid key {key!r} appears more than once", key=True)
            seen.add(key)
            axes.append([{key: v} for v in values])
            continue
        for g, group in enumerate(entry):
            for key in group:
                if key in seen:
                    problems.add((*path, "grid", "zip", g, key), f"grid key {key!r} appears more than once",
                                 key=True)
                seen.add(key)
            length = min((len(column) for column in group.values()), default=0)
            axes.append([{k: column[i] for k, column in group.items()} for i in range(length)])
    return axes


def grid_keys(axes: Sequence[Axis]) -> list[str]:
    """Every grid key, in order."""
    return [key for axis in axes if axis for key in axis[0]]


def combination_count(axes: Sequence[Axis]) -> int:
    """How many combinations `cartesian(axes)` gives, without making them."""
    return math.prod(len(axis) for axis in axes)


def cartesian(axes: Sequence[Axis]) -> list[Combo]:
    """Every combination of the axes, the last axis varying fastest."""
    return [{k: v for point in points for k, v in point.items()} for points in itertools.product(*axes)]


def _matches(combo: Combo, entry: Mapping[str, Scalar]) -> bool:
    return all(key in combo and same(combo[key], value) for key, value in entry.items())


def _check_exclude(entry: Mapping[str, Scalar], axes: Sequence[Axis], path: Path, problems: Problems) -> bool:
    keys = grid_keys(axes)
    ok = bool(entry)
    if not entry:
        problems.add(path, "an exclude entry needs at least one grid key and value")
    for key, value in entry.items():
        if key not in keys:
            problems.add((*path, key), f"{key!r} is not a grid key; grid keys: {', '.join(keys) or '(none)'}",
                         key=True)
            ok = False
            continue
        values = [point[key] for axis in axes for point in axis if key in point]
        if not any(same(value, v) for v in values):
            shown = ", ".join(format_value(v) for v in values)
            problems.add((*path, key), f"{format_value(value)} is not a grid value of {key!r} ({shown})")
            ok = False
    return ok


def _check_include(entry: Mapping[str, Scalar], keys: list[str], path: Path, problems: Problems) -> bool:
    ok = True
    for key in entry:
        if key not in keys:
            problems.add((*path, key), f"{key!r} is not a grid key; grid keys: {', '.join(keys) or '(none)'}",
                         key=True)
            ok = False
    missing = [k for k in keys if k not in entry]
    if missing:
        problems.add(path, f"include entry lacks grid key(s) {', '.join(missing)}; "
                           f"each include gives a value for every grid key ({', '.join(keys)})")
        ok = False
    return ok


def expand_grid(
    axes: Sequence[Axis],
    exclude: Sequence[Mapping[str, Scalar]],
    include: Sequence[Mapping[str, Scalar]],
    path: Path,
    problems: Problems,
) -> list[Combo]:
    """The phase's combinations: the cartesian product minus excluded ones, plus included ones."""
    combos = cartesian(axes)
    total = len(combos)
    good = [e for i, e in enumerate(exclude) if _check_exclude(e, axes, (*path, "exclude", i), problems)]
    combos = [c for c in combos if not any(_matches(c, e) for e in good)]
    keys = grid_keys(axes)
    for i, entry in enumerate(include):
        if _check_include(entry, keys, (*path, "include", i), problems):
            combos.append({k: entry[k] for k in keys})
    if exclude and not combos and len(good) == len(exclude) and not include:
        message = f"exclude removes all {total} combinations of the grid; no job is left"
        problems.add((*path, "exclude"), message)
    return combos


@dataclass
class PhaseJobs:
    """A phase's jobs, as dependency resolution sees them."""

    name: str
    path: Path
    after: list[str]
    """Names of the phases it waits for, and ids of jobs (of any phase) it waits for."""
    match: list[str]
    keys: list[str]
    """The param keys of its jobs (grid keys and fixed params)."""
    jobs: list[tuple[str, Combo]] = field(default_factory=list)
    """(job id, params) of each job."""


LABEL_PREFIX = "label:"
"""An `after` entry `label:NAME` waits for every job in the queue with label NAME (found at submission)."""


def is_external(name: str) -> bool:
    """Whether an `after` entry names jobs of other submissions: `SUB/ID`, or `label:NAME`."""
    return "/" in name or name.startswith(LABEL_PREFIX)


def _job_phases(phases: Sequence[PhaseJobs]) -> dict[str, str]:
    """Job id -> the name of its phase, for `after` entries that name a job rather than a phase."""
    return {job_id: phase.name for phase in phases for job_id, _ in phase.jobs}


def _after_phases(phase: PhaseJobs, names: Collection[str], owners: Mapping[str, str]) -> list[str]:
    """The phases `phase` waits for: those its `after` names, and those of the jobs it names."""
    found = [name if name in names else owners[name] for name in phase.after if name in names or name in owners]
    return list(dict.fromkeys(found))


def check_graph(phases: Sequence[PhaseJobs], problems: Problems) -> bool:
    """Report unknown `after` names (neither a phase nor a job id) and cycles; True when the graph is sound."""
    names = {p.name for p in phases}
    owners = _job_phases(phases)
    ok = True
    for phase in phases:
        for i, name in enumerate(phase.after):
            if name not in names and name not in owners and not is_external(name):
                problems.add((*phase.path, "after", i), f"unknown phase {name!r}; phases: {', '.join(sorted(names))} "
                                                        "(job ids of this submission are accepted too, SUB/ID for "
                                                        "a job of another submission, label:NAME for labelled jobs)")
                ok = False
    return not _report_cycles(phases, owners, problems) and ok


def _report_cycles(phases: Sequence[PhaseJobs], owners: Mapping[str, str], problems: Problems) -> bool:
    """Report each cycle of phases; an `after` naming a job is an edge to that job's phase."""
    by_name = {p.name: p for p in phases}
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    found = False

    def visit(name: str, stack: list[str]) -> None:
        nonlocal found
        state[name] = 1
        for up in _after_phases(by_name[name], by_name, owners):
            if state.get(up) == 1:
                cycle = [*stack[stack.index(up):], up] if up in stack else [name, up]
                problems.add((*by_name[name].path, "after"), f"cycle in after: {' -> '.join(cycle)}")
                found = True
            elif up not in state:
                visit(up, [*stack, up])
        state[name] = 2

    for phase in phases:
        if phase.name not in state:
            visit(phase.name, [phase.name])
    return found


def _check_match(phase: PhaseJobs, by_name: Mapping[str, PhaseJobs], problems: Problems) -> bool:
    ok = True
    upstream = [name for name in phase.after if name in by_name]
    if phase.match and not upstream:
        problems.add((*phase.path, "match"), "match needs after: name the phases whose jobs to match")
        return False
    for i, key in enumerate(phase.match):
        if key not in phase.keys:
            problems.add((*phase.path, "match", i),
                         f"match key {key!r} is not a param or grid key of phase {phase.name!r}; "
                         f"its keys: {', '.join(phase.keys) or '(none)'}")
            ok = False
        for up in upstream:
            if key not in by_name[up].keys:
                problems.add((*phase.path, "match", i),
                             f"match key {key!r} is not a param or grid key of upstream phase {up!r}; "
                             f"its keys: {', '.join(by_name[up].keys) or '(none)'}")
                ok = False
    return ok


def _phase_deps(
    phase: PhaseJobs, by_name: Mapping[str, PhaseJobs], problems: Problems
) -> dict[str, list[str]]:
    """Each job's upstream jobs: those of the phases in `after` (per `match`), then the jobs it names."""
    deps: dict[str, list[str]] = {}
    unmatched: list[str] = []
    named_jobs = [name for name in phase.after if name not in by_name]
    for job_id, params in phase.jobs:
        ids: list[str] = []
        for up in (name for name in phase.after if name in by_name):
            found = [uid for uid, up_params in by_name[up].jobs
                     if all(same(params[k], up_params[k]) for k in phase.match)]
            if not found:
                wanted = show({k: params[k] for k in phase.match})
                unmatched.append(f"job {job_id!r} ({wanted}) matches no job of phase {up!r}")
            ids.extend(uid for uid in found if uid not in ids)
        deps[job_id] = [*ids, *(uid for uid in named_jobs if uid not in ids)]
    for message in unmatched[:_MAX_REPORTED]:
        problems.add((*phase.path, "match"), message)
    if len(unmatched) > _MAX_REPORTED:
        problems.add((*phase.path, "match"), f"... and {len(unmatched) - _MAX_REPORTED} more unmatched jobs")
    return deps


def resolve_deps(phases: Sequence[PhaseJobs], problems: Problems) -> dict[str, list[str]]:
    """Job id -> ids of the upstream jobs it waits for, per each phase's after (phases and job ids) and match."""
    if not check_graph(phases, problems):
        return {}
    by_name = {p.name: p for p in phases}
    deps: dict[str, list[str]] = {}
    for phase in phases:
        if _check_match(phase, by_name, problems):
            deps.update(_phase_deps(phase, by_name, problems))
    return deps
