"""The YAML manifest: pydantic models, validation with file:line:col problems, and expansion to jobs.

`load_manifest(path)` / `parse_manifest(text, source)` return a SubmissionSpec or raise one
ManifestError carrying every problem found. What a manifest may hold is bounded before anything is
expanded or made durable: the YAML document (see exq.yamldoc: size, depth, aliases, strings), the jobs
per submission (MAX_JOBS, from the grid's dimensions), and templates (see exq.model.template: format
widths, rendered length, shell quoting of each placeholder).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    model_validator,
)

from exq.errors import InputProblem, ManifestError
from exq.model import expand
from exq.model.jobspec import (
    FailureRetry,
    Hook,
    JobSpec,
    OomRetry,
    OomScale,
    Resources,
    RetryPolicy,
    Scalar,
    SubmissionSpec,
    SyncSpec,
    TransientRetry,
    may_run_here,
)
from exq.model.template import TemplateError, command_placeholders, placeholders, render, render_cmd, render_id
from exq.model.template import format_value as _text
from exq.model.template import unknown_placeholder_message as _unknown
from exq.units import parse_size
from exq.yamldoc import Path, Problems, decode_document, parse_document, read_document, show, text_problem
from exq.yamlfields import (
    Bool,
    Count,
    Duration,
    EnvName,
    Factor,
    Fraction,
    Int,
    Name,
    NonNegNumber,
    PosDuration,
    PositiveInt,
    Regex,
    Size,
    Str,
    leaf,
    units,
)

# ---------------------------------------------------------------- manifest-only leaf types


def _one_or_list(value: Any) -> Any:
    return [value] if isinstance(value, str | dict) else value


def _non_empty_list(value: Any) -> Any:
    if not isinstance(value, list) or not value:
        hint = "(a single fixed value belongs in params)"
        raise ValueError(f"expected a non-empty list of values {hint}, got {show(value)}")
    return value


def _equal_lengths(group: dict[str, list[Scalar]]) -> dict[str, list[Scalar]]:
    if not group:
        raise ValueError("expected a mapping of grid keys to lists of equal length, got an empty mapping")
    if len({len(v) for v in group.values()}) > 1:
        sizes = ", ".join(f"{k} has {len(v)}" for k, v in group.items())
        raise ValueError(f"the lists of a zip group must have equal lengths: {sizes}")
    return group


Value = Annotated[Scalar, leaf("a string, number or boolean", lambda v: isinstance(v, str | int | float),
                              accepts=Scalar)]
EnvValue = Annotated[str, leaf("a string, number or boolean",
                                lambda v: isinstance(v, str | int | float), _text, accepts=Scalar)]
Values = Annotated[list[Value], BeforeValidator(_non_empty_list, json_schema_input_type=list[Scalar] | Scalar)]
ZipGroup = Annotated[dict[Str, Values], AfterValidator(_equal_lengths)]
Names = Annotated[list[Str], BeforeValidator(_one_or_list, json_schema_input_type=list[str] | str)]
Command = Annotated[str, leaf("a shell command (a non-empty string)", lambda v: isinstance(v, str) and bool(v.strip()),
                              accepts=Annotated[str, Field(min_length=1)])]


def _gpu_indices(value: list[int]) -> list[int]:
    if not value:
        raise ValueError("expected a non-empty list of GPU indices, got an empty list")
    twice = next((i for n, i in enumerate(value) if i in value[:n]), None)
    if twice is not None:
        raise ValueError(f"GPU index {twice} appears more than once")
    return value


def _positive_size(value: int) -> int:
    if value <= 0:
        raise ValueError(f"expected a positive size such as 500MiB or 2GiB, got {value}")
    return value


GpuIndices = Annotated[list[Count], AfterValidator(_gpu_indices)]
PositiveSize = Annotated[int, units(parse_size), AfterValidator(_positive_size)]

# ---------------------------------------------------------------- the document models


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OomRetryModel(_Model):
    max: Count = 3
    backoff: Duration = 10.0
    factor: Factor = 2.0
    max_backoff: Duration = 600.0


class FailureRetryModel(_Model):
    max: Count = 0
    backoff: Duration = 0.0


class TransientRetryModel(_Model):
    match: list[Regex] = []
    max: Count = 3
    backoff: Duration = 10.0


class RetryModel(_Model):
    oom: OomRetryModel = OomRetryModel()
    transient: TransientRetryModel = TransientRetryModel()
    failure: FailureRetryModel = FailureRetryModel()
    lost: FailureRetryModel = FailureRetryModel(max=3)


class ScaleModel(_Model):
    param: Str
    factor: Fraction
    min: NonNegNumber = 1


class OnOomModel(_Model):
    scale: ScaleModel


class SettingsModel(_Model):
    """What `defaults` may set, and every phase too."""

    params: dict[Str, Value] = {}
    priority: Int = 0
    gpus: Count = 1
    gpu_memory: Size | None = None
    share: Bool = False
    timeout: PosDuration | None = None
    retry: RetryModel = RetryModel()
    on_oom: OnOomModel | None = None
    outputs: Names = []
    env: dict[EnvName, EnvValue] = {}
    setup: Str | None = None
    hosts: Names | None = None
    devices: dict[Name, GpuIndices] = {}
    wait_for: Names = []
    foreign_threshold: PositiveSize | None = None
    labels: Names = []
    label_max_parallel: dict[Name, PositiveInt] = {}


class GridModel(_Model):
    """Grid keys -> lists of values; `zip` holds groups of keys advanced in lock-step."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Values] = Field(init=False)
    zip: Annotated[list[ZipGroup], BeforeValidator(_one_or_list)] = []
    _order: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_order(cls, data: Any, handler: Callable[[Any], GridModel]) -> GridModel:
        grid = handler(data)
        grid._order = [str(k) for k in data] if isinstance(data, dict) else []
        return grid

    def entries(self) -> list[expand.GridEntry]:
        extra = self.model_extra or {}
        return [self.zip if key == "zip" else (key, extra[key]) for key in self._order]


class JobsModel(SettingsModel):
    """What produces jobs: a phase, or the top level of a single-phase manifest."""

    grid: GridModel = GridModel()
    exclude: list[dict[Str, Value]] = []
    include: list[dict[Str, Value]] = []
    id: Str | None = None
    max_parallel: PositiveInt | None = None


class PhaseModel(JobsModel):
    name: Name
    after: Names = []
    match: Names = []
    cmd: Str


class SyncModel(_Model):
    """Copy the workdir to each SSH host before its first job there."""

    dest: Str | None = None
    exclude: Names = []


def _sync_shorthand(value: Any) -> Any:
    return {} if value is True else None if value is False else value


class ManifestModel(JobsModel):
    name: Name
    workdir: Str | None = None
    sync: Annotated[SyncModel | None, BeforeValidator(_sync_shorthand)] = None
    defaults: SettingsModel = SettingsModel()
    phases: list[PhaseModel] | None = None
    cmd: Str | None = None
    after: Names = []
    on_job_end: Command | None = None


_SETTINGS = set(SettingsModel.model_fields)
_TOP_ONLY = {"name", "workdir", "sync", "defaults", "phases", "env", "setup", "on_job_end", "max_parallel", "labels"}
_REPLACED = {"on_oom", "devices"}
"""Mapping settings a phase replaces whole rather than merging into the defaults'."""
_RESOURCES = ("gpus", "gpu_memory", "share", "timeout")
_RESERVED = ("phase", "id")
MAX_JOBS = 100_000
"""The most jobs one submission may have, unless the caller allows more (`exq submit --max-jobs`)."""

# ---------------------------------------------------------------- pydantic errors -> problems

# ---------------------------------------------------------------- from models to jobs


@dataclass
class _Phase:
    name: str
    path: Path
    model: JobsModel
    cmd: str
    after: list[str]
    match: list[str]


def _phases(model: ManifestModel, problems: Problems) -> list[_Phase]:
    if model.phases is None:
        if model.cmd is None:
            problems.add(("cmd",), "missing required field 'phases' (or 'cmd' for a single-phase manifest)",
                         parent=True)
            return []
        return [_Phase(model.name, (), model, model.cmd, list(model.after), [])]
    for field in sorted(model.model_fields_set - _TOP_ONLY):
        problems.add((field,), f"a top-level {field!r} is only allowed without 'phases'; "
                               "put it in a phase (or, for settings, in 'defaults')", key=True)
    if not model.phases:
        problems.add(("phases",), "expected at least one phase")
    seen: set[str] = set()
    for i, phase in enumerate(model.phases):
        if phase.name in seen:
            problems.add(("phases", i, "name"), f"duplicate phase name {phase.name!r}")
        seen.add(phase.name)
    return [_Phase(p.name, ("phases", i), p, p.cmd, p.after, p.match) for i, p in enumerate(model.phases)]


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if key not in _REPLACED and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _workdir(model: ManifestModel, source: str, problems: Problems) -> str:
    base = os.path.dirname(source)
    workdir = os.path.normpath(os.path.join(base, os.path.expanduser(model.workdir or ".")))
    if (why := text_problem(workdir)) is not None:
        problems.add(("workdir",), f"the workdir's path {why}")
    return workdir


def _check_workdir_here(workdir: str, problems: Problems) -> None:
    """The workdir must be a directory on this machine when jobs may run here (or it is copied from here)."""
    if text_problem(workdir) is None and not os.path.isdir(workdir):
        what = "is not a directory" if os.path.exists(workdir) else "does not exist"
        problems.add(("workdir",), f"workdir {workdir} {what}")


def workdir_note(spec: SubmissionSpec) -> str | None:
    """What to tell the submitter when the workdir is not on this machine and every job runs elsewhere
    (so it was not refused): where and when it is checked instead."""
    if not spec.jobs or spec.jobs[0].sync is not None or os.path.isdir(spec.jobs[0].workdir):
        return None
    if any(may_run_here(job.hosts) for job in spec.jobs):
        return None
    hosts = sorted({h for job in spec.jobs for h in job.hosts or ()})
    return (f"workdir {spec.jobs[0].workdir} is not on this machine; every job runs on {', '.join(hosts)}, "
            "where it is checked when each job launches")


@dataclass
class _Context:
    model: ManifestModel
    workdir: str
    problems: Problems
    max_jobs: int
    sync: SyncSpec | None = None
    jobs_left: int = 0
    """How many more jobs the phases not yet built may have; -1 once the limit was reported."""

    def __post_init__(self) -> None:
        self.jobs_left = self.max_jobs


class _PhaseBuilder:
    """Expands one phase to its jobs, reporting what is wrong with it."""

    def __init__(self, phase: _Phase, ctx: _Context) -> None:
        self.phase, self.ctx, self.problems = phase, ctx, ctx.problems
        top, defaults = ctx.model, ctx.model.defaults
        settings = _merge({"env": top.env, "setup": top.setup}, defaults.model_dump(exclude_unset=True))
        self.settings = _merge(settings, phase.model.model_dump(exclude_unset=True, include=_SETTINGS))
        self.on_oom_path: Path = phase.path if "on_oom" in phase.model.model_fields_set else ("defaults",)
        self.axes = expand.grid_axes(phase.model.grid.entries(), phase.path, self.problems)
        self.grid_keys = expand.grid_keys(self.axes)
        self.fixed = {**{k: v for k, v in defaults.params.items() if k not in self.grid_keys},
                      **phase.model.params}
        self.keys = [*self.grid_keys, *self.fixed]

    def _at(self, *rest: str | int) -> Path:
        return (*self.phase.path, *rest)

    def check_names(self) -> bool:
        ok = True
        for key in self.grid_keys:
            if key in _RESERVED:
                self.problems.add(self._at("grid", key), f"grid key {key!r} is reserved; rename it", key=True)
                ok = False
        for key in self.phase.model.params:
            if key in self.grid_keys or key in _RESERVED:
                why = "is also a grid key; remove one of them" if key in self.grid_keys else "is reserved"
                self.problems.add(self._at("params", key), f"param {key!r} {why}", key=True)
                ok = False
        return ok

    def check_templates(self) -> bool:
        names = [*self.keys, "phase"]
        ok = self._check_template("id", self.phase.model.id, names)
        ok = self._check_template("cmd", self.phase.cmd, [*names, "id"], shell=True) and ok
        for field in ("outputs", "wait_for"):
            for i, glob in enumerate(self.settings.get(field, [])):
                ok = self._check_template(field, glob, [*names, "id"], i) and ok
        return ok

    def _check_template(self, field: str, template: str | None, names: list[str], *index: int,
                        shell: bool = False) -> bool:
        if template is None:
            return True
        try:
            used = command_placeholders(template) if shell else placeholders(template)
            unknown = [n for n in used if n not in names]
        except TemplateError as exc:
            self.problems.add(self._at(field, *index), str(exc))
            return False
        for name in unknown:
            self.problems.add(self._at(field, *index), _unknown(name, names))
        return not unknown

    def default_id(self, combo: expand.Combo) -> str:
        text = self.phase.name + "".join(f"_{k}{_text(v)}" for k, v in combo.items())
        return re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:200]

    def job_id(self, combo: expand.Combo) -> str:
        template = self.phase.model.id
        params = {**combo, **self.fixed}
        return render_id(template, params, phase=self.phase.name) if template else self.default_id(combo)

    @functools.cached_property
    def labels(self) -> list[str]:
        """The submission's labels, then the phase's own (from `defaults` or the phase), each once."""
        return list(dict.fromkeys([*self.ctx.model.labels, *self.settings.get("labels", [])]))

    @functools.cached_property
    def policies(self) -> tuple[Resources, RetryPolicy, OomScale | None]:
        """The phase's resources, retry policy and OOM scaling: the same objects for all its jobs."""
        s = self.settings
        retry = s.get("retry", {})
        return (Resources(**{k: s[k] for k in _RESOURCES if k in s}),
                RetryPolicy(oom=OomRetry(**retry.get("oom", {})),
                            transient=TransientRetry(**retry.get("transient", {})),
                            failure=FailureRetry(**retry.get("failure", {})),
                            lost=FailureRetry(**{"max": 3, **retry.get("lost", {})})),
                OomScale(**s["on_oom"]["scale"]) if s.get("on_oom") else None)

    def job(self, job_id: str, combo: expand.Combo) -> JobSpec:
        params = {**combo, **self.fixed}
        values = {**params, "phase": self.phase.name, "id": job_id}
        s = self.settings
        resources, retry, oom_scale = self.policies
        return JobSpec(
            id=job_id, phase=self.phase.name, cmd_template=self.phase.cmd, params=params,
            cmd=render_cmd(self.phase.cmd, params, job_id=job_id, phase=self.phase.name),
            workdir=self.ctx.workdir, env=s.get("env", {}), setup=s.get("setup"),
            resources=resources, retry=retry, oom_scale=oom_scale,
            outputs=[render(glob, values, quote=False) for glob in s.get("outputs", [])],
            priority=s.get("priority", 0),
            hosts=s.get("hosts"),
            sync=self.ctx.sync,
            devices=s.get("devices", {}),
            wait_for=[render(glob, values, quote=False) for glob in s.get("wait_for", [])],
            foreign_threshold=s.get("foreign_threshold"),
            labels=self.labels,
            label_max_parallel=s.get("label_max_parallel", {}),
        )

    def check_scale(self, jobs: list[JobSpec]) -> None:
        scale = jobs[0].oom_scale if jobs else None
        if scale is None:
            return
        path = (*self.on_oom_path, "on_oom", "scale", "param")
        if scale.param not in self.keys:
            self.problems.add(path, f"on_oom.scale.param {scale.param!r} is not a param or grid key of phase "
                                    f"{self.phase.name!r}; its keys: {', '.join(self.keys) or '(none)'}")
            return
        bad = [j for j in jobs if not expand.is_number(j.params[scale.param])]
        if bad:
            self.problems.add(path, f"on_oom.scale.param {scale.param!r} must be numeric in every job; job "
                                    f"{bad[0].id!r} has {_text(bad[0].params[scale.param])!r}")

    def within_limit(self) -> bool:
        """Whether the phase's jobs fit in what the submission may still have, known before expanding."""
        include = len(self.phase.model.include)
        count = expand.combination_count(self.axes) + include
        left, self.ctx.jobs_left = self.ctx.jobs_left, self.ctx.jobs_left - count
        if count <= left:
            return True
        self.ctx.jobs_left = -1
        if left >= 0:
            sizes = " x ".join(str(len(axis)) for axis in self.axes) or "1"
            shape = f"{sizes} + {include} included" if include else sizes
            earlier = self.ctx.max_jobs - left
            before = f", on top of {earlier:,} jobs of earlier phases" if earlier else ""
            self.problems.add(self._at("grid"), f"the grid gives {count:,} jobs ({shape}){before}; a submission "
                                                f"may have at most {self.ctx.max_jobs:,} (--max-jobs raises it)")
        return False

    def build(self) -> list[JobSpec]:
        model = self.phase.model
        fits = self.within_limit()
        combos = expand.expand_grid(self.axes, model.exclude, model.include, self.phase.path, self.problems) \
            if fits else []
        if not (self.check_names() & self.check_templates()) or not fits:
            return []
        jobs: list[JobSpec] = []
        failures: dict[str, list[str]] = {"id": [], "cmd": []}
        for combo in combos:
            field = "id"
            try:
                job_id = self.job_id(combo)
                field = "cmd"
                jobs.append(self.job(job_id, combo))
            except TemplateError as exc:
                failures[field].append(str(exc))
        for field, messages in failures.items():
            if messages:
                more = f" (and {len(messages) - 1} more jobs)" if len(messages) > 1 else ""
                self.problems.add(self._at(field), messages[0] + more)
        self.check_scale(jobs)
        return jobs


def _check_unique(jobs: list[JobSpec], paths: Mapping[str, Path], problems: Problems) -> None:
    first: dict[str, JobSpec] = {}
    for job in jobs:
        other = first.setdefault(job.id, job)
        if other is not job:
            problems.add(paths[job.phase], f"duplicate job id {job.id!r}: phase {other.phase!r} with "
                                           f"{expand.show(other.params)} and phase {job.phase!r} with "
                                           f"{expand.show(job.params)}")


def _expand(model: ManifestModel, source: str, problems: Problems, max_jobs: int) -> SubmissionSpec:
    phases = _phases(model, problems)
    workdir = _workdir(model, source, problems)
    sync = None
    if model.sync is not None:
        sync = SyncSpec(dest=model.sync.dest or workdir, exclude=list(model.sync.exclude))
    ctx = _Context(model, workdir, problems, max_jobs, sync)
    jobs: list[JobSpec] = []
    graph: list[expand.PhaseJobs] = []
    here = sync is not None
    for phase in phases:
        builder = _PhaseBuilder(phase, ctx)
        built = builder.build()
        jobs.extend(built)
        graph.append(expand.PhaseJobs(phase.name, phase.path, phase.after, phase.match, builder.keys,
                                      [(j.id, j.params) for j in built]))
        here = here or may_run_here(builder.settings.get("hosts"))
    if here:
        _check_workdir_here(workdir, problems)
    paths = {p.name: (*p.path, "id" if p.model.id else "grid") for p in phases}
    _check_unique(jobs, paths, problems)
    deps = expand.resolve_deps(graph, problems)
    problems.raise_if_any()
    jobs = [j.model_copy(update={"deps": deps.get(j.id, [])}) for j in jobs]
    hook = None if model.on_job_end is None else Hook(cmd=model.on_job_end, workdir=workdir, env=model.env)
    # A single phase's top-level max_parallel is the submission's; only `phases` entries have their own.
    limits = {p.name: p.model.max_parallel for p in phases if p.model is not model and p.model.max_parallel}
    return SubmissionSpec(name=model.name, source=source, phases=[p.name for p in phases], jobs=jobs,
                          on_job_end=hook, max_parallel=model.max_parallel, phase_max_parallel=limits,
                          labels=list(model.labels))


# ---------------------------------------------------------------- entry points


def parse_manifest(text: str | bytes, source: str, *, max_jobs: int | None = None) -> SubmissionSpec:
    """Validate and expand manifest `text` (bytes: undecoded, e.g. from stdin); `source` is its absolute path
    (for messages and workdir). At most `max_jobs` jobs (default MAX_JOBS), checked before expanding."""
    source = os.path.abspath(source)
    if text_problem(source) is not None:
        shown = source.encode("utf-8", "backslashreplace").decode()
        raise ManifestError([InputProblem(shown, None, None, "", "the manifest's path is not UTF-8 text; rename it")])
    model, problems = parse_document(
        ManifestModel, decode_document(text) if isinstance(text, bytes) else text, source, ManifestError,
        "a mapping at the top level (name, phases or cmd, ...)")
    return _expand(model, source, problems, MAX_JOBS if max_jobs is None else max_jobs)


def load_manifest(path: str | os.PathLike[str], *, max_jobs: int | None = None) -> SubmissionSpec:
    """Read, validate and expand the manifest file at `path` (at most `max_jobs` jobs, default MAX_JOBS)."""
    source = os.path.abspath(path)
    return parse_manifest(read_document(source, "manifest", ManifestError), source, max_jobs=max_jobs)


__all__ = ["MAX_JOBS", "ManifestModel", "PhaseModel", "load_manifest", "parse_manifest",
           "workdir_note"]
