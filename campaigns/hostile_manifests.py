"""Hostile YAML manifests, generated with hypothesis, through `exq validate`'s code path.

Documents: manifest-shaped mappings whose values are hostile (NUL bytes, lone surrogates, huge
numbers, placeholders with huge format widths, ids with newlines, env names with `=`, YAML tags),
random structure, deep nesting, alias bombs, huge grids, valid manifests mutated byte by byte
(non-UTF-8 bytes, NULs, stray indicators), and plain random bytes. Each document is loaded with
`exq.api.load_manifest` in a forked child (its peak RSS from wait4, its time bounded), and every
`--cli-every`-th one also with `exq validate FILE` in a subprocess. The outcome must be: accepted
(exit 0) or a clean error (exit 2) whose every line names `file:line`; never an uncaught exception
or traceback, never more than --max-seconds, never more than --max-mb of memory.

    .venv/bin/python campaigns/hostile_manifests.py --count 500 [--cli-every 25] [--seed 1] [--json out.json]
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hyp_seed
from hypothesis import strategies as st

from campaigns._harness import Campaign, last_line, parser, run_main, table

MUST_ZERO = ["crashes", "errors without file:line", "other exit codes", "too slow", "too much memory",
             "CLI disagreements"]
OTHER = ["documents", "accepted", "clean errors", "CLI runs", "slowest s", "most MB"]

VALID = """\
name: hostile
workdir: .
env: {A: "1"}
defaults:
  gpus: 1
  gpu_memory: 8GiB
  retry: {oom: {max: 2, backoff: 1s}}
phases:
  - name: train
    grid: {lr: [0.1, 0.01], seed: [0, 1]}
    id: "train_{lr}_{seed}"
    cmd: python train.py --lr {lr} --seed {seed}
  - name: eval
    after: [train]
    match: [lr]
    gpus: 0
    grid: {lr: [0.1, 0.01]}
    cmd: echo {lr}
"""

NASTY_STRINGS = [
    "\x00", "a\x00b", "\udc80", "\ud800x", "x\udfff", "\ufeff", "\u202e", "line\nbreak", "tab\there", "\r\n",
    "{x:999999999999}", "{lr:>99999999}", "{lr:.99999999f}", "{lr:{lr}}", "{", "}", "{{}}", "{0}", "{lr!r}",
    "{lr.real}", "{lr[0]}", "{id}", "{phase}", "A=B", "=", "PATH", "LD_PRELOAD", "$(touch PWNED)", "`id`",
    "'", '"', ";", "--flag", "*", "../../etc/passwd", "/", "~", "x" * 100_000, "é" * 1000, "\U0001f600",
    "-1", "1e999", "nan", ".inf", "0x10", "0o7", "1_000", "true", "null", "~", "", " ", "9" * 5000,
]
NASTY_BYTES = [b"\x00", b"\xff", b"\xfe\xff", b"\xc3", b"\xed\xa0\x80", b"\t", b"\n", b": ", b"- ", b"&a ",
               b"*a", b"<<: *a\n", b"!!python/object/apply:os.system ['touch PWNED']", b"%YAML 9.9\n",
               b"---\n", b"...\n", b"? ", b"|\n", b">-\n", b"{", b"[", b"}", b"]", b"'", b'"', b"#", b"@", b"`",
               b"!!binary AAAA", b"!!set {a, b}", b"!!timestamp 2001-01-01", b"\r", b"\xef\xbb\xbf"]
FIELDS = ["name", "workdir", "env", "setup", "on_job_end", "sync", "defaults", "phases", "grid", "cmd", "id",
          "params", "gpus", "gpu_memory", "share", "timeout", "retry", "on_oom", "outputs", "priority", "hosts",
          "after", "match", "include", "exclude", "zip", "oom", "failure", "lost", "max", "backoff", "factor",
          "scale", "param", "min", "dest", "exclude", "unknown_field", "zip"]


# ------------------------------------------------------------------------------------------ documents


def emit(value: Any) -> str:
    """YAML text for `value`: block style when PyYAML can write it, else JSON (lone surrogates as escapes)."""
    try:
        return yaml.safe_dump(value, allow_unicode=True, sort_keys=False, width=200)
    except (yaml.YAMLError, UnicodeError, RecursionError, ValueError):
        return json.dumps(value)


scalars = st.one_of(
    st.sampled_from(NASTY_STRINGS), st.text(max_size=30), st.integers(), st.integers(min_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
    st.from_regex(r"\{[a-z]{1,3}(:[<>^]?[0-9]{1,12}(\.[0-9]{1,9})?[a-z]?)?\}", fullmatch=True),
)
keys = st.one_of(st.sampled_from(FIELDS), st.sampled_from(NASTY_STRINGS[:30]), st.text(max_size=8))
nested = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=5)), max_leaves=25)


@st.composite
def manifest_like(draw: st.DrawFn) -> bytes:
    doc: dict[Any, Any] = {"name": draw(st.one_of(st.just("m"), scalars))}
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=6, unique=True)):
        doc[key] = draw(nested)
    if draw(st.booleans()):
        doc["cmd"] = draw(st.one_of(st.just("echo {a}"), st.sampled_from(NASTY_STRINGS), st.text(max_size=40)))
        doc["grid"] = {draw(st.sampled_from(["a", "b", "=", "a\nb", "\x00"])): draw(st.lists(scalars, min_size=1,
                                                                                            max_size=4))}
    if draw(st.booleans()):
        doc["env"] = draw(st.dictionaries(st.sampled_from(["A=B", "", "X", "1A", "\x00", "PATH", "A B", "é"]),
                                          scalars, max_size=3))
    if draw(st.booleans()):
        doc["id"] = draw(st.sampled_from(["j\n{a}", "{a}\x00", "../{a}", "-{a}", "{a}" * 60, " {a}", "{a:9999}"]))
    return emit(doc).encode("utf-8", "surrogatepass")


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID.encode())
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "replace", "delete", "truncate"]))
        piece = draw(st.one_of(st.sampled_from(NASTY_BYTES), st.binary(min_size=1, max_size=4)))
        if op == "insert":
            data[at:at] = piece
        elif op == "replace":
            data[at: at + len(piece)] = piece
        elif op == "delete":
            del data[at: at + draw(st.integers(1, 20))]
        else:
            del data[at:]
    return bytes(data)


@st.composite
def bombs(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["aliases", "deep_list", "deep_map", "huge_grid", "many_keys", "long_line",
                                 "merge_keys", "huge_width", "anchored_grid"]))
    n = draw(st.integers(2, 12))
    if kind == "aliases":  # a billion laughs: each level n copies of the one below
        lines = [f"a0: &a0 [{', '.join(['x'] * n)}]"]
        lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * n)}]" for i in range(1, n)]
        return ("\n".join(lines) + f"\nname: bomb\ncmd: echo {{v}}\ngrid: {{v: *a{n - 1}}}\n").encode()
    if kind == "anchored_grid":
        return (f"name: g\ncmd: echo {{a}}\ngrid:\n  a: &v {list(range(n * 10))}\n"
                + "".join(f"  k{i}: *v\n" for i in range(n))).encode()
    if kind in ("deep_list", "deep_map"):
        depth = draw(st.sampled_from([100, 1000, 10_000, 100_000]))
        opener, closer = ("[", "]") if kind == "deep_list" else ("{a: ", "}")
        return f"name: deep\ncmd: 'true'\nparams: {{p: {opener * depth}1{closer * depth}}}\n".encode()
    if kind == "huge_grid":
        axes = "\n".join(f"  k{i}: {list(range(n * 3))}" for i in range(n))
        return f"name: huge\ncmd: echo {{k0}}\ngrid:\n{axes}\n".encode()
    if kind == "many_keys":
        return ("name: keys\ncmd: 'true'\nparams:\n" + "".join(f"  p{i}: {i}\n" for i in range(n * 5000))).encode()
    if kind == "long_line":
        return f"name: long\ncmd: echo {'x' * (n * 200_000)}\n".encode()
    if kind == "merge_keys":
        return (b"base: &b {gpus: 1, cmd: 'true'}\nname: m\nphases:\n"
                + b"".join(b"  - {<<: *b, name: p%d}\n" % i for i in range(n * 100)))
    width = 10 ** draw(st.integers(3, 15))
    return f"name: w\ngrid: {{a: [1, 2]}}\ncmd: echo {{a:{width}}}\nid: 'j{{a:>{width}}}'\n".encode()


documents = st.one_of(manifest_like(), mutated(), bombs(), st.binary(max_size=300))


# ------------------------------------------------------------------------------------------ one document


@dataclass
class Outcome:
    kind: str
    """accepted | clean | noline | exqerror | crash | hang | killed"""
    detail: str
    seconds: float
    mb: float


LINE_RE_TEMPLATE = r"^{path}:\d+"


def load_in_child(path: Path, max_seconds: float, max_mb: float) -> Outcome:
    """`exq.api.load_manifest(path)` in a forked child: its outcome, wall time and peak RSS growth."""
    from exq import api
    from exq.errors import ExqError, InputFileError

    read_fd, write_fd = os.pipe()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        code = 0
        try:
            with open("/proc/self/statm") as statm:  # virtual size now, plus room for the document
                vm = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            limit = vm + int(max_mb * 4 * (1 << 20)) + (1 << 30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            try:
                spec = api.load_manifest(path)
                result = {"kind": "accepted", "detail": f"{len(spec.jobs)} jobs"}
            except InputFileError as exc:
                problems = [str(p) for p in exc.problems] or [str(exc)]
                pattern = re.compile(LINE_RE_TEMPLATE.format(path=re.escape(str(path))))
                bad = [p for p in problems if not pattern.match(p)]
                result = {"kind": "noline" if bad else "clean", "detail": (bad or problems)[0][:300]}
            except MemoryError:
                result = {"kind": "killed", "detail": "MemoryError (address space limit)"}
            except ExqError as exc:
                result = {"kind": "exqerror", "detail": f"{type(exc).__name__}: {str(exc)[:300]}"}
            except BaseException as exc:  # the point: anything else is a crash
                frames = traceback.extract_tb(exc.__traceback__)[-2:]
                where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames))
                result = {"kind": "crash", "detail": f"{type(exc).__name__}: {str(exc)[:200]} at {where}"}
            os.write(write_fd, json.dumps(result).encode()[:60000])
        except BaseException:
            code = 3
        os._exit(code)
    os.close(write_fd)
    status, usage = wait_child(pid, max_seconds)
    seconds = time.monotonic() - started
    with os.fdopen(read_fd, "rb") as pipe:
        raw = pipe.read()
    mb = max(0.0, usage.ru_maxrss / 1024 - base_rss) if usage is not None else 0.0
    if status is None:
        return Outcome("hang", f"still running after {max_seconds:g}s (killed)", seconds, mb)
    try:
        result = json.loads(raw)
    except ValueError:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        return Outcome("killed", f"child ended without a result (status {status}, signal {sig}; memory limit?)",
                       seconds, mb)
    return Outcome(result["kind"], result["detail"], seconds, mb)


def wait_child(pid: int, timeout: float) -> tuple[int | None, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got, status, usage = os.wait4(pid, os.WNOHANG)
        if got:
            return status, usage
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, _, usage = os.wait4(pid, 0)
            return None, usage
        time.sleep(0.002)


# ------------------------------------------------------------------------------------------ campaign


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], count=500, timeout=60)
    p.add_argument("--cli-every", type=int, default=25, help="run every Nth document through `exq validate` too")
    p.add_argument("--max-seconds", type=float, default=5.0, help="a document may take this long (default 5)")
    p.add_argument("--max-mb", type=float, default=300.0, help="and this much more memory (default 300 MB)")
    args = p.parse_args(argv)
    return run_main("hostile_manifests", lambda: run(args))


def run(args: Any) -> int:
    with Campaign("hostile_manifests", args, MUST_ZERO, OTHER) as c:
        docs = c.root / "docs"
        docs.mkdir()
        worst: list[tuple[float, float, str, str]] = []
        kinds: dict[str, int] = {}
        groups: dict[str, list[Any]] = {}

        @hyp_seed(args.seed)
        @settings(max_examples=args.count, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(documents)
        def one(data: bytes) -> None:
            number = int(c.fig["documents"])
            c.fig.add("documents")
            path = docs / f"doc{number}.yaml"
            path.write_bytes(data)
            outcome = load_in_child(path, args.max_seconds, args.max_mb)
            record(c, path, data, outcome, kinds, worst, groups)
            if args.cli_every and number % args.cli_every == 0:
                through_cli(c, path, outcome, groups)
            if outcome.kind in ("accepted", "clean"):
                path.unlink()

        one()
        worst.sort(reverse=True)
        c.extra_tables.append("slowest documents:\n" + table(
            ["seconds", "MB", "outcome", "document (start)"], [(s, m, k, d) for s, m, k, d in worst[:5]]))
        c.extra_tables.append("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
        if groups:
            rows = sorted(((n, sig, example) for sig, (n, example) in groups.items()), reverse=True)
            c.extra_tables.append("problems found (same kind of outcome and message grouped):\n"
                                  + table(["documents", "outcome: message", "example document"], rows))
        return c.finish()


def group(groups: dict[str, list[Any]], kind: str, detail: str, path: Path, data: bytes) -> None:
    """Count a problem under its kind and message, with paths and numbers taken out."""
    plain = detail.replace(str(path), "FILE").replace(str(path.parent), "DIR")
    message = re.sub(r"0x[0-9a-f]+|#x[0-9a-f]+|\d+", "N", plain)
    signature = f"{kind}: {message.splitlines()[0][:90] if message else ''}"
    entry = groups.setdefault(signature, [0, repr(data[:50])[2:-1]])
    entry[0] += 1


def record(c: Campaign, path: Path, data: bytes, outcome: Outcome, kinds: dict[str, int],
           worst: list[tuple[float, float, str, str]], groups: dict[str, list[Any]]) -> None:
    kinds[outcome.kind] = kinds.get(outcome.kind, 0) + 1
    c.fig.max("slowest s", round(outcome.seconds, 2))
    c.fig.max("most MB", round(outcome.mb, 1))
    worst.append((round(outcome.seconds, 2), round(outcome.mb, 1), outcome.kind, repr(data[:40])[2:-1]))
    figure = {"accepted": "accepted", "clean": "clean errors", "noline": "errors without file:line",
              "exqerror": "other exit codes", "crash": "crashes", "hang": "too slow", "killed": "too much memory"}
    c.fig.add(figure[outcome.kind])
    if outcome.kind in ("accepted", "clean"):
        if outcome.seconds > c.args.max_seconds:
            c.fig.add("too slow")
            c.note(f"{path.name} took {outcome.seconds:.1f}s: {data[:60]!r}")
        if outcome.mb > c.args.max_mb:
            c.fig.add("too much memory")
            c.note(f"{path.name} took {outcome.mb:.0f} MB: {data[:60]!r}")
    else:
        group(groups, outcome.kind, outcome.detail, path, data)


def through_cli(c: Campaign, path: Path, outcome: Outcome, groups: dict[str, list[Any]]) -> None:
    """`exq validate FILE`: exit 0 or exit 2 with file:line, agreeing with the in-process outcome."""
    c.fig.add("CLI runs")
    result = c.exq("validate", str(path), timeout=c.args.max_seconds * 4)
    data = path.read_bytes()
    if result.timed_out:
        c.fig.add("too slow")
        group(groups, "CLI too slow", f"exq validate ran past {c.args.max_seconds * 4:g}s", path, data)
        return
    expected = {"accepted": 0, "clean": 2}.get(outcome.kind)
    if result.rc not in (0, 2):
        c.fig.add("other exit codes")
        group(groups, f"CLI exit {result.rc}", last_line(result.err), path, data)
    elif result.rc == 2 and not re.search(re.escape(str(path)) + r":\d+", result.err):
        c.fig.add("errors without file:line")
        group(groups, "CLI exit 2 without file:line", last_line(result.err), path, data)
    elif expected is not None and result.rc != expected:
        c.fig.add("CLI disagreements")
        group(groups, f"CLI exit {result.rc}, in-process {outcome.kind}", last_line(result.err), path, data)


if __name__ == "__main__":
    sys.exit(main())
