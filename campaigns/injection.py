"""Hostile values in every placeholder position, in workdirs and in state-dir paths, run for real with
`exq run`.

Each value (`$(touch PWNED)`, backticks, quotes, `;`, newlines, `*`, spaces, unicode, `--flag`, ...)
goes into a job's `params` and its `cmd` prints it back with printf, the placeholder bare, inside
"...", inside '...' and as `--x={v}`. Each (value, position) is first loaded with
`exq.api.load_manifest`; the ones refused there are checked with `exq validate` (exit 2 with
file:line), all accepted ones run in one `exq run`, and each job's log must hold exactly the value
(`--x=` + value for the flag). Then each value that can be a file name becomes part of a workdir and
of a state-dir path (`exq run` again, the job printing `pwd` and `$EXQ_STATE_DIR`). No file named
PWNED may appear anywhere in the workspace.

    .venv/bin/python campaigns/injection.py [--count 28] [--seed 1] [--json out.json]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from campaigns._harness import Campaign, Result, last_line, manifest_yaml, parser, run_main, table

VALUES = [
    "$(touch PWNED)", "`touch PWNED`", "'", '"', "a'b\"c", "; touch PWNED", "&& touch PWNED #", "| touch PWNED",
    "> PWNED", "a\nb", "*", "a b  c", " lead", "trail ", "é✓ü日本", "--flag", "-n", "\\", "\\'", "$HOME",
    "${IFS}x", "!", "~", "%s%n", "x\ty", "", "'$(touch PWNED)'", "\"$(touch PWNED)\"",
]
POSITIONS = {
    "bare": ("printf '%s\\n' {v}", ""),
    "dq": ("printf '%s\\n' \"{v}\"", ""),
    "sq": ("printf '%s\\n' '{v}'", ""),
    "flag": ("printf '%s\\n' --x={v}", "--x="),
}
MUST_ZERO = ["wrong output", "PWNED files", "unclean refusals", "CLI disagreements", "other exits"]
OTHER = ["values", "cases", "printed exactly", "refused at validate", "path cases", "paths printed exactly",
         "paths refused"]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], count=len(VALUES), timeout=120)
    args = p.parse_args(argv)
    return run_main("injection", lambda: run(args))


def run(args: Any) -> int:
    with Campaign("injection", args, MUST_ZERO, OTHER) as c:
        values = list(VALUES)
        c.rng.shuffle(values)
        values = sorted(values[: args.count], key=VALUES.index)
        c.fig.set("values", len(values))
        outcome: dict[tuple[int, str], str] = {}
        accepted = classify(c, values, outcome)
        run_placeholders(c, values, accepted, outcome)
        path_outcome = {i: run_paths(c, i, v) for i, v in enumerate(values) if "/" not in v and "\0" not in v}
        pwned = [p for p in [*c.root.rglob("*"), *Path.cwd().iterdir()] if p.name == "PWNED"]
        c.fig.set("PWNED files", len(pwned))
        for path in pwned[:5]:
            c.note(f"PWNED file appeared: {path}")
        rows = [[repr(v)[:24]] + [outcome.get((i, pos), "-") for pos in POSITIONS] + [path_outcome.get(i, "-")]
                for i, v in enumerate(values)]
        c.extra_tables.append(table(["value", *POSITIONS, "workdir + state dir"], rows))
        c.scan_daemon_logs()
        return c.finish()


def one_manifest(c: Campaign, cases: list[tuple[int, str, str]], name: str) -> Path:
    phases = [{"name": f"{pos}{i}", "gpus": 0, "params": {"v": value}, "id": f"{pos}{i}",
               "cmd": POSITIONS[pos][0]} for i, pos, value in cases]
    path = c.root / f"{name}.yaml"
    path.write_text(manifest_yaml(name, phases, workdir=str(c.shared)), encoding="utf-8")
    return path


def classify(c: Campaign, values: list[str], outcome: dict[tuple[int, str], str]) -> list[tuple[int, str, str]]:
    """The (index, position, value) cases load_manifest accepts; the refused ones checked with `exq validate`."""
    from exq import api
    from exq.errors import InputFileError

    accepted = []
    for i, value in enumerate(values):
        for pos in POSITIONS:
            c.fig.add("cases")
            path = one_manifest(c, [(i, pos, value)], f"v{i}-{pos}")
            try:
                api.load_manifest(path)
                accepted.append((i, pos, value))
                continue
            except InputFileError:
                pass
            result = c.exq("validate", str(path))
            if result.rc == 2 and f"{path}:" in result.err:
                c.fig.add("refused at validate")
                outcome[(i, pos)] = "refused"
            elif result.rc == 0:
                c.fig.add("CLI disagreements")
                outcome[(i, pos)] = "CLI accepts"
            else:
                c.fig.add("unclean refusals")
                outcome[(i, pos)] = f"exit {result.rc}"
                c.note(f"{value!r} {pos}: exq validate exited {result.rc}: {last_line(result.err)}")
    return accepted


def run_placeholders(c: Campaign, values: list[str], accepted: list[tuple[int, str, str]],
                     outcome: dict[tuple[int, str], str]) -> None:
    if not accepted:
        return
    manifest = one_manifest(c, accepted, "injection")
    result = c.exq("run", str(manifest), timeout=c.args.timeout, cwd=c.shared)
    state = c.status()
    logs = job_logs(state)
    for i, pos, value in accepted:
        expected = POSITIONS[pos][1] + value + "\n"
        got = logs.get(f"{pos}{i}")
        if got == expected.encode():
            c.fig.add("printed exactly")
            outcome[(i, pos)] = "exact"
        else:
            c.fig.add("wrong output")
            outcome[(i, pos)] = "WRONG"
            c.note(f"{value!r} {pos}: printed {got!r}, expected {expected!r}")
    if result.rc not in (0, 1):
        c.fig.add("other exits")
        c.note(f"exq run exited {result.rc}: {last_line(result.err)}")


def job_logs(state: dict[str, Any] | None) -> dict[str, bytes]:
    logs: dict[str, bytes] = {}
    for job in (state or {}).get("jobs") or []:
        if job.get("attempts"):
            try:
                logs[job["id"]] = Path(job["attempts"][-1]["log"]).read_bytes()
            except (OSError, KeyError, TypeError):
                continue
    return logs


def run_paths(c: Campaign, i: int, value: str) -> str:
    """`exq run` with the value in the workdir's and the state dir's names; the job prints both."""
    c.fig.add("path cases")
    workdir = c.shared / f"wd{i} {value}"
    state_dir = c.root / f"st{i} {value}"
    try:
        workdir.mkdir(mode=0o755)
    except OSError as exc:
        return f"no such dir ({exc.strerror})"
    env = c.use_state(state_dir)
    manifest = c.root / f"paths{i}.yaml"
    manifest.write_text(manifest_yaml(f"paths{i}", [{"name": "p", "gpus": 0, "id": "where",
                                                      "cmd": "pwd; printf '%s\\n' \"$EXQ_STATE_DIR\""}],
                                      workdir=str(workdir)), encoding="utf-8")
    result: Result = c.exq("run", str(manifest), env=env, timeout=c.args.timeout, cwd=c.shared)
    if result.rc in (2, 3) and "Traceback" not in result.text:
        c.fig.add("paths refused")
        return f"refused (exit {result.rc})"
    state = c.status(env=env)
    got = job_logs(state).get("where")
    expected = f"{os.path.realpath(workdir)}\n{state_dir}\n".encode()
    if got == expected:
        c.fig.add("paths printed exactly")
        return "exact"
    c.fig.add("wrong output")
    c.note(f"paths with {value!r}: exq run exited {result.rc}, printed {got!r}, expected {expected!r}; "
           f"{last_line(result.err)}")
    return "WRONG" if result.rc in (0, 1) else f"exit {result.rc}"


if __name__ == "__main__":
    sys.exit(main())
