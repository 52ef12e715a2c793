"""Import a manifest of the older ARIS experiment queue as an ordinary exq manifest a person can read.

Every form ARIS's queue_manager runs is read, as YAML or JSON: grid specs (`phases` with `template` and
`grid`, or top-level `jobs` with `args` and a `default_cmd`) and built manifests (`phases[].jobs[]` with
explicit `id` and `cmd`). `convert_aris` returns the manifest's YAML text and notes on all it could not carry
over exactly; every problem is reported at file:line:col.
"""

from __future__ import annotations

import json
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
from exq.errors import InputProblem, ManifestError
from exq.yamldoc import Path, Problems, format_path, parse_document, read_document, show
from exq.yamlfields import Count, NonNegNumber, Str, is_int, leaf

_VAR = re.compile(r"\$\{([^{}]*)\}")
_WAIT_VAR = re.compile(r"\$\{([^{}]*)\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
"""A placeholder in a precondition's path: `${key}`, or `{key}` as ARIS's own examples write there."""
_CVD = "CUDA_VISIBLE_DEVICES=${GPU}"
_RESERVED = ("id", "phase", "job", "args")
_LOCALHOSTS = ("localhost", "127.0.0.1", "::1")
_GENERIC_STEMS = ("manifest", "grid", "spec", "grid_spec", "queue")
"""File names that say nothing of the project: a project named after one takes its folder's name."""
_SURROGATE_PAIR = re.compile(r"(?<!\\)((?:\\\\)*)\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})")
"""A JSON escape of a character beyond U+FFFF (`\\ud83d\\ude00`), not itself escaped."""


def _strip(value: Any) -> Any:
    """A string without the surrounding whitespace (a block scalar's trailing newline); anything else as is."""
    return value.strip() if isinstance(value, str) else value


Cmd = Annotated[str, leaf("a shell command (a non-empty string)", lambda v: isinstance(v, str) and bool(v.strip()),
                          str.strip)]
Text = Annotated[str, leaf("a string", lambda v: isinstance(v, str), str.strip)]
Args = Annotated[Any, leaf("a string of arguments, or a mapping of flag names to values", lambda v: v is None or (
    isinstance(v, str) or (isinstance(v, dict) and all(isinstance(x, str | int | float) for x in v.values()))),
    _strip)]
Positive = Annotated[int, leaf("an integer >= 1", lambda v: is_int(v) and v >= 1)]
Names = Annotated[list[Str], BeforeValidator(lambda v: [] if v is None else [v] if isinstance(v, str) else v)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _OomRetry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delay: NonNegNumber = 120
    max_attempts: Count = 3


class _Job(_Open):
    """A job of the top-level `jobs` list: its args are appended to `default_cmd`."""

    id: Str
    args: Args = None


class _BuiltJob(_Open):
    """A job of a built manifest's phase: its own command."""

    id: Str
    cmd: Cmd
    expected_output: Text | None = None


class _Template(_Open):
    id: Str | None = None
    cmd: Cmd
    expected_output: Text | None = None


class _Phase(_Open):
    name: Str
    depends_on: Names = []
    grid: dict[Str, Annotated[list[Value], Field(min_length=1)]] = {}
    template: _Template | None = None
    jobs: list[_BuiltJob] | None = None


class _Spec(_Open):
    project: Str | None = None
    cwd: Text | None = None
    conda: Text | None = None
    conda_hook: Text | None = None
    ssh: Text | None = None
    gpus: Annotated[list[Count], Field(min_length=1)] | None = None
    max_parallel: Positive | None = None
    gpu_free_threshold_mib: NonNegNumber | None = None
    oom_retry: _OomRetry = _OomRetry()
    preconditions: list[Any] | None = None
    default_cmd: Cmd | None = None
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


def _flag_keys(jobs: list[_Job]) -> list[str] | None:
    """The args keys when every job's args is a mapping of the same keys (each becomes a grid key), else None."""
    first = jobs[0].args if jobs else None
    if isinstance(first, dict) and first and not set(first) & set(_RESERVED) and all(
            isinstance(j.args, dict) and list(j.args) == list(first) for j in jobs):
        return list(first)
    return None


def _exq_name(text: str) -> str:
    """`text` made an exq name (letters, digits, . _ -); empty when nothing of it is left."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("._-")[:100]


class _Converter:
    """Builds the manifest mapping from a validated spec, collecting notes (with lines) and problems."""

    def __init__(self, spec: _Spec, problems: Problems) -> None:
        self.spec, self.problems, self.source = spec, problems, problems.source
        self.noted: dict[tuple[Path, str], tuple[int, Path, int]] = {}
        """(path with `*` for indices, text) -> (line, path) of its first place, and how many more it applies to."""

    def note(self, path: Path, text: str) -> None:
        """Note `text` about `path`; the same text about the same field of other list items is said once."""
        line = (self.problems.positions.keys.get(path) or self.problems.positions.values.get(path) or (0, 0))[0]
        key = (tuple("*" if isinstance(part, int) else part for part in path), text)
        first = self.noted.get(key)
        self.noted[key] = (line, path, 0) if first is None else (first[0], first[1], first[2] + 1)

    def notes(self) -> list[str]:
        """The notes in file order, each `path (line N): text`."""
        out = []
        for (_, text), (line, path, more) in sorted(self.noted.items(), key=lambda n: n[1][0]):
            also = f" (also {more} more place{'s' if more > 1 else ''})" if more else ""
            out.append(f"{format_path(path)}{f' (line {line})' if line else ''}: {text}{also}")
        return out

    def manifest(self) -> dict[str, Any]:
        s = self.spec
        out: dict[str, Any] = {"name": self.project(), "workdir": self.workdir(), "setup": self.setup(),
                               "max_parallel": s.max_parallel, "defaults": self.defaults(), "phases": self.phases()}
        self.unmapped()
        return {k: v for k, v in out.items() if v is not None}

    def project(self) -> str:
        given = self.spec.project
        if given is not None:
            name = _exq_name(given) or "aris-import"
            if name != given:
                self.note(("project",), f"{given!r} is not a valid exq name; named {name!r}")
            return name
        stem, folder = os.path.splitext(os.path.basename(self.source))[0], os.path.dirname(self.source)
        derived = os.path.basename(folder) if stem.lower() in _GENERIC_STEMS else stem
        name = _exq_name(derived) or "aris-import"
        self.note(("project",), f"not given (ARIS called it 'unknown'): named {name!r} after the file's "
                                f"{'folder' if derived != stem else 'name'}")
        return name

    def workdir(self) -> str:
        here, cwd = os.path.dirname(self.source), self.spec.cwd
        if not cwd:
            self.note(("cwd",), f"not given: ARIS ran the jobs in the directory it was started in; workdir is "
                                f"this file's folder, {here}")
            return here
        if os.path.isabs(cwd) or cwd.startswith("~"):
            return cwd
        workdir = os.path.normpath(os.path.join(here, cwd))
        self.note(("cwd",), f"{cwd!r} is relative to the directory ARIS was started in; workdir is {workdir}, "
                            "taken from this file's folder")
        return workdir

    def setup(self) -> str | None:
        env, hook = self.spec.conda, self.spec.conda_hook
        if "conda" not in self.spec.model_fields_set:
            self.note(("conda",), "not given: ARIS activated 'base'; exq runs jobs in the daemon's environment")
            return None
        if env is None or env.lower() in ("", "none"):
            if hook:
                self.note(("conda_hook",), "unused without a conda environment: not imported")
            return None
        if not hook:
            self.note(("conda",), "setup needs `conda` on the PATH of a non-interactive sh, else set conda_hook")
            hook = '. "$(conda info --base)/etc/profile.d/conda.sh"'
        elif not hook.startswith("eval"):  # ARIS: a bare path to the conda binary
            hook = f'eval "$({shlex.quote(hook)} shell.posix hook)"'
        return f"{hook} && conda activate {shlex.quote(env)}"

    def host(self) -> str | None:
        """The ssh host the jobs run on; None for the daemon's own machine."""
        ssh = self.spec.ssh
        if ssh in _LOCALHOSTS:
            self.note(("ssh",), "the jobs run on the daemon's own machine: no hosts restriction")
        if not ssh or ssh in _LOCALHOSTS:
            return None
        self.note(("ssh",), f"-> hosts: [{ssh}]: configure it in ~/.config/exq/config.yaml (`hosts: {{{ssh}: "
                            "{}}` for an ~/.ssh/config alias); workdir is a path on that host")
        return ssh

    def defaults(self) -> dict[str, Any]:
        s, r, host = self.spec, self.spec.oom_retry, self.host()
        retries, backoff = max(r.max_attempts - 1, 0), f"{r.delay:.6g}s"
        oom = {"max": retries, "backoff": backoff, "factor": 1, **({"max_backoff": backoff} if r.delay > 600 else {})}
        given = "" if "oom_retry" in s.model_fields_set else "not given, so ARIS's defaults: "
        self.note(("oom_retry",), f"{given}max_attempts {r.max_attempts} counts every launch in ARIS, so "
                                  f"retry.oom.max is {retries} (retries after the first), backoff {backoff}")
        threshold = None if s.gpu_free_threshold_mib is None else f"{s.gpu_free_threshold_mib:g}MiB"
        out = {"retry": {"oom": oom}, "hosts": None if host is None else [host],
               "devices": None if s.gpus is None else {host or "local": list(s.gpus)},
               "foreign_threshold": threshold, "wait_for": self.wait_for()}
        return {k: v for k, v in out.items() if v is not None}

    def wait_for(self) -> list[str] | None:
        """The preconditions' paths as exq wait_for globs, with the keys every job has as placeholders."""
        out, keys = [], self.job_keys()
        for i, item in enumerate(self.spec.preconditions or []):
            if (found := self.precondition(item, ("preconditions", i))) is not None:
                out.append(self.template(found[0], keys, found[1], "wait"))
        return out or None

    def job_keys(self) -> list[str]:
        """The keys every job of the manifest has a value of: `id`, and the grid keys all phases share."""
        s = self.spec
        if s.phases is not None:
            shared = set.intersection(*(set(p.grid if p.template else ()) for p in s.phases)) if s.phases else set()
            return ["id", *(k for k in s.phases[0].grid if k in shared)]
        return ["id", *(_flag_keys(s.jobs or []) or [])]

    def precondition(self, item: Any, at: Path) -> tuple[str, Path] | None:
        """The path a precondition waits for, and where it is: `X`, `{type: checkpoint_exists, path: X}` or
        `{checkpoint_exists: X}` (any `*_exists` type); None after reporting a problem."""
        if isinstance(item, str) and item.strip():
            return item.strip(), at
        if not isinstance(item, dict) or not ("type" in item or len(item) == 1):
            self.problems.add(at, f"expected a path, {{type: checkpoint_exists, path: X}} or {{checkpoint_exists: X}}, "
                                  f"got {show(item)}")
            return None
        typed = "type" in item
        kind, path = (item["type"], item.get("path")) if typed else next(iter(item.items()))
        kind_at, path_at = ((*at, "type"), (*at, "path")) if typed else ((*at, kind), (*at, kind))
        for key in [k for k in item if k not in ("type", "path")] if typed else []:
            self.note((*at, key), "unknown key: not imported")
        if not (isinstance(kind, str) and kind.endswith("_exists")):
            self.problems.add(kind_at, f"unknown precondition type {show(kind)}: exq can wait only for paths to "
                                       "exist (checkpoint_exists or another *_exists type)", key=not typed)
        elif isinstance(path, str) and path.strip():
            return path.strip(), path_at
        else:
            self.problems.add(path_at, f"expected the path that {kind} waits for, got {show(path)}")
        return None

    def phases(self) -> list[dict[str, Any]] | None:
        s = self.spec
        if s.phases is not None:
            names = {p.name: self.phase_name(i, p.name) for i, p in enumerate(s.phases)}
            for key in [k for k in ("default_cmd", "jobs") if getattr(s, k) is not None]:
                self.note((key,), "unused with 'phases' (each phase has its own cmd): not imported")
            return [self.phase(i, p, names) for i, p in enumerate(s.phases)]
        if s.jobs is not None:
            return [self.jobs(s.jobs, s.default_cmd)]
        self.problems.add(("phases",), "missing required field 'phases' (or 'jobs')", parent=True)
        return None

    def phase_name(self, i: int, name: str) -> str:
        exq_name = _exq_name(name) or f"phase{i}"
        if exq_name != name:
            self.note(("phases", i, "name"), f"{name!r} is not a valid exq name; named {exq_name!r}")
        return exq_name

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
        """An ARIS `${key}` template as an exq `{key}` template; any other `${X}` stays as it was, but in an id
        (kind `id`) or a precondition's path (kind `wait`, where `{key}` is a placeholder too) it is an error."""
        if kind == "cmd" and "GPU" not in keys:
            text = self.gpu(text, path)
        parts, end, left = [], 0, []
        for m in (_WAIT_VAR if kind == "wait" else _VAR).finditer(text):
            name = m[1] if m[1] is not None else m[2]
            parts += [_escape(text[end:m.start()]), f"{{{name}}}" if name in keys else _escape(m[0])]
            left += [] if name in keys else [m[0]]
            end = m.end()
        if left and kind == "id":
            self.problems.add(path, f"{', '.join(left)}: not a grid key of this phase ({', '.join(keys) or 'none'})")
        elif left and kind == "wait":
            self.problems.add(path, f"{', '.join(left)}: not a key every job has ({', '.join(keys)}), so exq cannot "
                                    "fill it in: write the path itself (a glob such as * is fine)")
        elif left:
            self.note(path, f"{', '.join(left)} kept as {'shell variables' if kind == 'cmd' else 'text'}, as in ARIS")
        return "".join([*parts, _escape(text[end:])])

    def phase(self, i: int, p: _Phase, names: dict[str, str]) -> dict[str, Any]:
        at = ("phases", i)
        head = {"name": names[p.name], "after": [names.get(d, d) for d in p.depends_on] or None}
        if p.jobs is not None and p.template is None:
            if p.grid:
                self.note((*at, "grid"), "unused with 'jobs' (a built manifest's jobs are listed): not imported")
            body = self.built(at, p.jobs)
        elif p.template is not None and p.jobs is None:
            body = self.expand(at, p.grid, p.template)
        else:
            self.problems.add(at, "expected either 'template' (with 'grid': a grid spec) or 'jobs' (a built "
                                  "manifest's jobs, each with id and cmd)")
            body = {}
        return {k: v for k, v in {**head, **body}.items() if v is not None}

    def expand(self, at: Path, grid: dict[str, list[Any]], t: _Template) -> dict[str, Any]:
        """A grid spec's phase: its template, with its grid."""
        keys = list(grid)
        return {"grid": dict(grid) or None,
                "id": None if t.id is None else self.template(t.id, keys, (*at, "template", "id"), "id"),
                "cmd": self.template(t.cmd, keys, (*at, "template", "cmd"), "cmd"),
                "outputs": None if t.expected_output is None else
                [self.template(t.expected_output, keys, (*at, "template", "expected_output"), "glob")]}

    def built(self, at: Path, jobs: list[_BuiltJob]) -> dict[str, Any]:
        """A built manifest's phase: one zip grid of its jobs' ids, commands and expected outputs."""
        group: dict[str, list[Any]] = {"job": self.ids(jobs, (*at, "jobs")),
                                       "cmd": [self.gpu(j.cmd, (*at, "jobs", k, "cmd")) for k, j in enumerate(jobs)]}
        outputs = [j.expected_output for j in jobs]
        if any(outputs):
            group["out"] = [out or "." for out in outputs]
            if not all(outputs):
                self.note((*at, "jobs"), "the jobs without expected_output get the output glob '.', which always "
                                         "matches")
        self.note((*at, "jobs"), "each job's cmd runs as `eval {cmd}`: exq quotes a value as one word, and eval "
                                 "runs it as the shell script it is")
        return {"grid": {"zip": [group]}, "id": "{job}", "cmd": "eval {cmd}",
                "outputs": ["{out}"] if "out" in group else None}

    def ids(self, jobs: list[_Job] | list[_BuiltJob], at: Path) -> list[str]:
        """The jobs' ids, each reported unless a valid exq job id unique among them."""
        if not jobs:
            self.problems.add(at, "expected at least one job", key=True)
        ids = [j.id for j in jobs]
        for i, job_id in enumerate(ids):
            if not JOB_ID_RE.match(job_id) or job_id in ids[:i]:
                self.problems.add((*at, i, "id"), f"not a valid, unique exq job id (letters, digits, . _ -): "
                                                  f"{job_id!r}")
        return ids

    def jobs(self, jobs: list[_Job], default_cmd: str | None) -> dict[str, Any]:
        """The top-level `jobs` with `args` appended to `default_cmd`, as one phase named `jobs`."""
        group: dict[str, list[Any]] = {"job": self.ids(jobs, ("jobs",))}
        if default_cmd is None and jobs:
            self.problems.add(("jobs",), "missing required field 'default_cmd' (the command)", key=True)
        args, cmd, flags = [j.args for j in jobs], default_cmd or "", _flag_keys(jobs)
        if flags is not None:
            group.update({k: [a[k] for a in args] for k in flags})
            cmd = self.template(cmd, [], ("default_cmd",), "cmd") + "".join(f" --{k} {{{k}}}" for k in flags)
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
        phases = s.phases or []
        if any(p.template and p.template.expected_output for p in phases) or any(
                j.expected_output for p in phases for j in p.jobs or []):
            self.note(("phases",), "expected_output -> outputs: exq checks them after exit 0 (a matching path); "
                                   "ARIS also required a non-empty file newer than the attempt")
        models: list[tuple[Path, BaseModel]] = [((), s), *((("jobs", i), j) for i, j in enumerate(s.jobs or []))]
        for i, p in enumerate(phases):
            models += [(("phases", i), p), *([(("phases", i, "template"), p.template)] if p.template else [])]
            models += [(("phases", i, "jobs", k), j) for k, j in enumerate(p.jobs or [])]
        for path, key in ((path, key) for path, model in models for key in model.model_extra or {}):
            self.note((*path, key), "unknown key: not imported")


_ORIGINS: dict[str, Path] = {"name": ("project",), "workdir": ("cwd",), "setup": ("conda",),
                             "max_parallel": ("max_parallel",), "defaults.hosts": ("ssh",),
                             "defaults.devices": ("gpus",), "defaults.foreign_threshold": ("gpu_free_threshold_mib",),
                             "defaults.wait_for": ("preconditions",), "defaults.retry": ("oom_retry",)}
"""Where in the ARIS manifest each top-level field of the imported manifest comes from."""


def _origin(field: str, jobs_form: bool) -> Path:
    """The ARIS manifest's path for a problem at `field` of the imported manifest."""
    if m := re.match(r"phases\[(\d+)\]", field):
        return ("jobs",) if jobs_form else ("phases", int(m[1]))
    return next((path for prefix, path in _ORIGINS.items() if field.startswith(prefix)), ())


def _check(manifest: dict[str, Any], problems: Problems, jobs_form: bool) -> None:
    """Validate the manifest with exq's own parser (workdir aside), reporting at the spec's lines."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            parse_manifest(yaml.safe_dump({**manifest, "workdir": tmp}), os.path.join(tmp, "m.yaml"))
            return
        except ManifestError as exc:
            errors = exc.problems
    for p in errors:
        problems.add(_origin(p.field, jobs_form), f"the imported manifest would be invalid: {p.field}: {p.message}")


def _join_pair(m: re.Match[str]) -> str:
    return m[1] + chr(0x10000 + ((int(m[2], 16) - 0xD800) << 10) + int(m[3], 16) - 0xDC00)


def _readable(text: str, source: str) -> str:
    """`text` for the YAML loader, lines unchanged. JSON is YAML, except for tabs between tokens and escaped
    surrogate pairs (`\\ud83d\\ude00`): in JSON text they become spaces and the character itself. A `.json` file
    that is not JSON is an error at its line."""
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        if source.lower().endswith(".json"):
            raise ManifestError([InputProblem(source, exc.lineno, exc.colno, "", f"invalid JSON: {exc.msg}")]) from None
        return text
    except (ValueError, RecursionError):  # too deep, or undecodable: the YAML loader says where
        return text
    return _SURROGATE_PAIR.sub(_join_pair, text.replace("\t", " "))


class _Dumper(yaml.SafeDumper):
    """Writes a command as it runs: never wrapped, a multi-line one as a literal block; a list of short
    values on one line, else one value a line."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


def _represent_list(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.Node:
    short = all(isinstance(v, str | int | float) and "\n" not in str(v) for v in value) and len(str(value)) <= 80
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=short)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(list, _represent_list)


def convert_aris(text: str, source: str) -> Conversion:
    """The exq manifest (YAML text with a comment header) for the ARIS manifest `text` read from `source`."""
    source = os.path.abspath(source)
    spec, problems = parse_document(_Spec, _readable(text, source), source, ManifestError,
                                    "a mapping at the top level (project, cwd, phases or jobs, ...)")
    converter = _Converter(spec, problems)
    manifest = converter.manifest()
    problems.raise_if_any()
    _check(manifest, problems, spec.phases is None)
    problems.raise_if_any()
    notes = converter.notes()
    header = [f"Imported by exq from the ARIS queue manifest {source}.",
              "An ordinary exq manifest: edit it freely. Notes:"]
    for note in notes:
        header += textwrap.wrap(note, 110, initial_indent="- ", subsequent_indent="  ", break_on_hyphens=False)
    body = yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=2**20, allow_unicode=True,
                     default_flow_style=None)
    return Conversion("".join(f"# {line}\n" for line in header) + body, notes)


def import_aris(path: str) -> Conversion:
    """`convert_aris` of the ARIS manifest file at `path` (YAML or JSON)."""
    source = os.path.abspath(path)
    return convert_aris(read_document(source, "ARIS manifest", ManifestError), source)


__all__ = ["Conversion", "convert_aris", "import_aris"]
