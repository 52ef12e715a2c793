"""Import a grid spec of the older ARIS experiment queue as an ordinary exq manifest a person can read:
`convert_aris` returns its YAML text and notes on all it could not carry over exactly."""

from __future__ import annotations

import os
import re
import shlex
import tempfile
import textwrap
from dataclasses import dataclass
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from exq.api import JOB_ID_RE, Value, format_value, parse_manifest
from exq.errors import ManifestError
from exq.yamldoc import Path, Problems, format_path, parse_document
from exq.yamlfields import Count, Name, NonNegNumber, Str, leaf

_VAR = re.compile(r"\$\{([^{}]*)\}")
_CVD = "CUDA_VISIBLE_DEVICES=${GPU}"
_RESERVED = ("id", "phase", "job", "args")
Args = Annotated[Any, leaf("a string of arguments, or a mapping of flag names to values", lambda v: v is None or (
    isinstance(v, str) or (isinstance(v, dict) and all(isinstance(x, str | int | float) for x in v.values()))))]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _OomRetry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delay: NonNegNumber = 120
    max_attempts: Count = 3


class _Job(_Open):
    id: Str
    args: Args = None


class _Template(_Open):
    id: Str | None = None
    cmd: Str
    expected_output: Str | None = None


class _Phase(_Open):
    name: Name
    depends_on: Annotated[list[Str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)] = []
    grid: dict[Str, Annotated[list[Value], Field(min_length=1)]] = {}
    template: _Template


class _Spec(_Open):
    project: Str
    cwd: Str
    conda: Str | None = None
    conda_hook: Str | None = None
    ssh: Str | None = None
    gpus: list[Count] | None = None
    max_parallel: Count | None = None
    gpu_free_threshold_mib: NonNegNumber | None = None
    oom_retry: _OomRetry = _OomRetry()
    default_cmd: Str | None = None
    jobs: list[_Job] | None = None
    phases: list[_Phase] | None = None


@dataclass(frozen=True)
class Conversion:
    manifest_yaml: str
    notes: list[str]


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _flags(args: dict[str, Any]) -> str:
    return " ".join(f"--{k} {shlex.quote(format_value(v))}" for k, v in args.items())


class _Converter:
    """Builds the manifest mapping from a validated spec, collecting notes (with lines) and problems."""

    def __init__(self, spec: _Spec, problems: Problems) -> None:
        self.spec, self.problems, self.noted = spec, problems, list[tuple[int, str]]()

    def note(self, path: Path, text: str) -> None:
        line = (self.problems.positions.keys.get(path) or self.problems.positions.values.get(path) or (0, 0))[0]
        self.noted.append((line, f"{format_path(path)}{f' (line {line})' if line else ''}: {text}"))

    def manifest(self) -> dict[str, Any]:
        s = self.spec
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", s.project).strip("._-")[:100] or "aris-import"
        if name != s.project:
            self.note(("project",), f"{s.project!r} is not a valid exq name; named {name!r}")
        out: dict[str, Any] = {"name": name, "workdir": s.cwd, "setup": self.setup(), "defaults": self.defaults()}
        if s.phases is not None:
            out["phases"] = [self.phase(i, p) for i, p in enumerate(s.phases)]
            for key in [k for k in ("default_cmd", "jobs") if getattr(s, k) is not None]:
                self.note((key,), "unused with 'phases' (each phase has its own cmd): not imported")
        elif s.jobs is not None:
            out["phases"] = [self.jobs(s.jobs, s.default_cmd)]
        else:
            self.problems.add(("phases",), "missing required field 'phases' (or 'jobs')", parent=True)
        self.unmapped()
        return {k: v for k, v in out.items() if v is not None}

    def setup(self) -> str | None:
        env, hook = self.spec.conda, self.spec.conda_hook
        if env is None:
            self.note(("conda",), "none given: ARIS activated 'base'; exq runs jobs in the daemon's environment")
            return None
        if hook is None:
            self.note(("conda",), "setup needs `conda` on the PATH of a non-interactive sh, else set conda_hook")
            hook = 'source "$(conda info --base)/etc/profile.d/conda.sh"'
        elif not hook.startswith("eval"):  # ARIS: a bare path to the conda binary
            hook = f'eval "$({shlex.quote(hook)} shell.posix hook)"'
        return f"{hook} && conda activate {shlex.quote(env)}"

    def defaults(self) -> dict[str, Any]:
        s, r = self.spec, self.spec.oom_retry
        retries, backoff = max(r.max_attempts - 1, 0), f"{r.delay:.6g}s"
        oom = {"max": retries, "backoff": backoff, "factor": 1, **({"max_backoff": backoff} if r.delay > 600 else {})}
        given = "" if "oom_retry" in s.model_fields_set else "not given, so ARIS's defaults: "
        self.note(("oom_retry",), f"{given}max_attempts {r.max_attempts} counts every launch in ARIS, so "
                                  f"retry.oom.max is {retries} (retries after the first), backoff {backoff}")
        if s.ssh in ("localhost", "127.0.0.1"):
            self.note(("ssh",), "the jobs run on the daemon's own machine: no hosts restriction")
        elif s.ssh:
            self.note(("ssh",), f"-> hosts: [{s.ssh}]: configure it in ~/.config/exq/config.yaml (`hosts: {{{s.ssh}: "
                                "{}}` for an ~/.ssh/config alias); workdir is a path on that host")
            return {"retry": {"oom": oom}, "hosts": [s.ssh]}
        return {"retry": {"oom": oom}}

    def gpu(self, text: str, path: Path) -> str:
        """`${GPU}` as the job sees it: exq sets CUDA_VISIBLE_DEVICES (ARIS did too), so its GPU is device 0."""
        if _CVD in text:
            text = text.replace(_CVD, "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES")
            self.note(path, f"{_CVD} -> CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES (exq sets it for each job)")
        if "${GPU}" in text:
            text = text.replace("${GPU}", "0")
            self.note(path, "${GPU} -> 0: exq sets CUDA_VISIBLE_DEVICES, so the job sees its GPU as device 0")
        return text

    def template(self, text: str, keys: list[str], path: Path, kind: str) -> str:
        """An ARIS `${key}` template as an exq `{key}` template; any other `${X}` stays as it was."""
        if kind == "cmd" and "GPU" not in keys:
            text = self.gpu(text, path)
        parts, end, left = [], 0, []
        for m in _VAR.finditer(text):
            parts += [_escape(text[end:m.start()]), f"{{{m[1]}}}" if m[1] in keys else _escape(m[0])]
            left += [] if m[1] in keys else [m[0]]
            end = m.end()
        if left and kind == "id":
            self.problems.add(path, f"{', '.join(left)}: not a grid key of this phase ({', '.join(keys) or 'none'})")
        elif left:
            self.note(path, f"{', '.join(left)} kept as {'shell variables' if kind == 'cmd' else 'text'}, as in ARIS")
        return "".join([*parts, _escape(text[end:])])

    def phase(self, i: int, p: _Phase) -> dict[str, Any]:
        at, t, keys = ("phases", i), p.template, list(p.grid)
        out = {"name": p.name, "after": p.depends_on or None, "grid": dict(p.grid) or None,
               "id": None if t.id is None else self.template(t.id, keys, (*at, "template", "id"), "id"),
               "cmd": self.template(t.cmd, keys, (*at, "template", "cmd"), "cmd"), "outputs": None}
        if t.expected_output is not None:
            out["outputs"] = [self.template(t.expected_output, keys, (*at, "template", "expected_output"), "glob")]
        return {k: v for k, v in out.items() if v is not None}

    def jobs(self, jobs: list[_Job], default_cmd: str | None) -> dict[str, Any]:
        if default_cmd is None or not jobs:
            what = "expected at least one job" if jobs == [] else "missing required field 'default_cmd' (the command)"
            self.problems.add(("jobs",), what, key=True)
        group: dict[str, list[Any]] = {"job": [j.id for j in jobs]}
        for i, job in ((i, j) for i, j in enumerate(jobs) if not JOB_ID_RE.match(j.id) or j.id in group["job"][:i]):
            self.problems.add(("jobs", i, "id"), f"not a valid, unique exq job id (letters, digits, . _ -): {job.id!r}")
        args, cmd, first = [j.args for j in jobs], default_cmd or "", jobs[0].args if jobs else None
        if isinstance(first, dict) and first and not set(first) & set(_RESERVED) and all(
                isinstance(a, dict) and list(a) == list(first) for a in args):
            group.update({k: [a[k] for a in args] for k in first})
            cmd = self.template(cmd, [], ("default_cmd",), "cmd") + "".join(f" --{k} {{{k}}}" for k in first)
            self.note(("jobs",), "each job's args mapping becomes `--key value` flags after default_cmd (a zip grid "
                                 "key per flag): check that your script takes them so")
        else:
            group["args"] = [_flags(a) if isinstance(a, dict) else self.gpu(a or "", ("jobs", i, "args"))
                             for i, a in enumerate(args)]
            cmd = f"eval {_escape(shlex.quote(self.gpu(cmd, ('default_cmd',))))} {{args}}"
            mixed = "; args mappings became `--key value` flags" if any(isinstance(a, dict) for a in args) else ""
            self.note(("jobs",), "ARIS appended each job's args to default_cmd as shell words; exq quotes {args} as "
                                 f"one word, so cmd is `eval '<default_cmd>' {{args}}`, which splits them again{mixed}")
        return {"name": "jobs", "grid": {"zip": [group]}, "id": "{job}", "cmd": cmd}

    def unmapped(self) -> None:
        s = self.spec
        if s.gpus is not None:
            self.note(("gpus",), f"{s.gpus}: not imported: exq places each job on any free GPU, of any index")
        if s.max_parallel is not None:
            self.note(("max_parallel",), f"{s.max_parallel}: not imported: exq runs as many jobs as free GPUs fit")
        if s.gpu_free_threshold_mib is not None:
            self.note(("gpu_free_threshold_mib",), f"{s.gpu_free_threshold_mib:g} MiB is a daemon setting in exq: "
                      f"`exq daemon --foreign-threshold {s.gpu_free_threshold_mib:g}MiB` (default 500MiB)")
        if any(p.template.expected_output for p in s.phases or []):
            self.note(("phases",), "expected_output -> outputs: exq checks them after exit 0 (a matching path); "
                                   "ARIS also required a non-empty file newer than the attempt")
        models: list[tuple[Path, BaseModel]] = [((), s), *((("jobs", i), j) for i, j in enumerate(s.jobs or []))]
        for i, p in enumerate(s.phases or []):
            models += [(("phases", i), p), (("phases", i, "template"), p.template)]
        for path, key in ((path, key) for path, model in models for key in model.model_extra or {}):
            self.note((*path, key), "unknown key: not imported")


def _check(manifest: dict[str, Any], problems: Problems, jobs_form: bool) -> None:
    """Validate the manifest with exq's own parser (workdir aside), reporting at the spec's lines."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            parse_manifest(yaml.safe_dump({**manifest, "workdir": tmp}), os.path.join(tmp, "m.yaml"))
            return
        except ManifestError as exc:
            errors = exc.problems
    for p in errors:
        m = re.match(r"phases\[(\d+)\]", p.field)
        path: Path = () if not m else ("jobs",) if jobs_form else ("phases", int(m[1]))
        problems.add(path, f"the imported manifest would be invalid: {p.field}: {p.message}")


def convert_aris(text: str, source: str) -> Conversion:
    """The exq manifest (YAML text with a comment header) for the ARIS grid spec `text` read from `source`."""
    source = os.path.abspath(source)
    spec, problems = parse_document(_Spec, text, source, ManifestError,
                                    "a mapping at the top level (project, cwd, phases or jobs, ...)")
    converter = _Converter(spec, problems)
    manifest = converter.manifest()
    problems.raise_if_any()
    _check(manifest, problems, spec.phases is None)
    problems.raise_if_any()
    notes = [text for _, text in sorted(converter.noted, key=lambda n: n[0])]
    header = [f"Imported by exq from the ARIS grid spec {source}.", "An ordinary exq manifest: edit it freely. Notes:"]
    for note in notes:
        header += textwrap.wrap(note, 110, initial_indent="- ", subsequent_indent="  ", break_on_hyphens=False)
    body = yaml.safe_dump(manifest, sort_keys=False, width=110, allow_unicode=True, default_flow_style=None)
    return Conversion("".join(f"# {line}\n" for line in header) + body, notes)


__all__ = ["Conversion", "convert_aris"]
