"""Hostile manifests are refused by `exq validate`/`submit` (exit 2, file:line:col and field, no traceback),
values are quoted for the shell context of their placeholder, and a job no process can be started for
fails with its reason instead of stopping the daemon."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from textwrap import dedent

import pytest
from conftest import Exq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exq.model.jobspec import JobSpec, Resources, SubmissionSpec
from exq.model.manifest import MAX_JOBS, parse_manifest
from exq.model.template import command_placeholders, render
from exq.store.intake import submit as write_intake
from exq.store.store import StatePaths


def refused(exq: Exq, text: str | bytes, *args: str, command: str = "validate") -> str:
    """Run `exq COMMAND m.yaml` on `text`; assert it is refused as a user would see it; return stderr."""
    path = exq.root / "m.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    proc = exq(command, *args, str(path), check=False, timeout=60)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    return proc.stderr


def where(exq: Exq, line: int, column: int, field: str = "") -> str:
    """The start of the message for a problem at line:column (and field) of m.yaml."""
    return f"{exq.root / 'm.yaml'}:{line}:{column}: {field + ': ' if field else ''}"


# ---------------------------------------------------------------- values no process can receive


@pytest.mark.parametrize("text, line, column, field, message", [
    ('name: v\ngpus: 0\nenv: {GOOD: "a\\0b"}\ncmd: echo hi\n', 3, 13, "env.GOOD", "contains a NUL byte"),
    ('name: v\ngpus: 0\nenv: {"A=B": x}\ncmd: echo hi\n', 3, 7, "env.A=B",
     "bad key: expected an environment variable name"),
    ('name: v\ngpus: 0\nenv: {1X: x}\ncmd: echo hi\n', 3, 7, "env.1X", "bad key: expected an environment variable"),
    ('name: v\ngpus: 0\nparams: {p: "\\x00"}\ncmd: echo {p}\n', 3, 13, "params.p", "contains a NUL byte"),
    ('name: v\ngpus: 0\ncmd: "echo \\0"\n', 3, 6, "cmd", "contains a NUL byte"),
    ('name: v\ngpus: 0\nsetup: "true\\0"\ncmd: echo\n', 3, 8, "setup", "contains a NUL byte"),
    ('name: v\nworkdir: "sub\\0dir"\ncmd: echo\n', 2, 10, "workdir", "contains a NUL byte"),
    ('name: v\ngpus: 0\ngrid: {x: [ok, "\\ud83d"]}\ncmd: echo {x}\n', 3, 16, "grid.x[1]", "lone surrogate"),
    ('name: v\ngpus: 0\nenv: {"\\ud83d": x}\ncmd: echo\n', 3, 7, "env.\\ud83d", "key contains"),
], ids=["env-nul", "env-name-equals", "env-name-digit", "param-nul", "cmd-nul", "setup-nul", "workdir-nul",
        "grid-surrogate", "key-surrogate"])
def test_values_no_process_can_receive_are_refused(exq: Exq, text: str, line: int, column: int, field: str,
                                                    message: str) -> None:
    for command in ("validate", "submit"):
        err = refused(exq, text, command=command)
        assert where(exq, line, column, field) in err and message in err, err
    assert not list(exq.state_dir.glob("intake/*.json")), "a refused manifest was submitted"


# ---------------------------------------------------------------- documents that would exhaust time or memory


def billion_laughs(levels: int = 9) -> str:
    lines = ["name: v", 'l0: &l0 "lol"']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join([*lines, "cmd: echo"]) + "\n"


@pytest.mark.parametrize("text, line, column, message", [
    ("name: v\ncmd: echo\ngrid: {x: " + "[" * 1000 + "]" * 1000 + "}\n", 3, 73, "nested deeper than 64 levels"),
    (billion_laughs(), 8, 5, "the document holds more than 1,000,000 values (aliases expanded)"),
    ("name: v\na: &a 1\nb: [" + ", ".join(["*a"] * 1001) + "]\ncmd: echo\n", 3, 5 + 4 * 1000,
     "more than 1000 aliases"),
    ("name: v\na: &a [*a]\ncmd: echo\n", 2, 8, "recursive aliases are not supported"),
    ("name: v\ncmd: echo\ngrid: {x: [" + "1" * 5000 + "]}\n", 3, 12, "a number of more than 100 characters"),
    ("name: v\ncmd: echo\ngrid: {x: [1:" + ":".join(["1"] * 40000) + "]}\n", 3, 12,
     "a number of more than 100 characters"),
    ("name: v\ncmd: echo\ngrid: {d: [2024-13-45]}\n", 3, 12, "cannot read '2024-13-45'"),
    ("name: v\ncmd: echo\n# " + "x" * (8 * 1024 * 1024) + "\n", 3, 8 * 1024 * 1024 - 17,
     "the document is larger than 8 MiB"),
], ids=["depth-1000", "billion-laughs", "aliases-1001", "recursive-alias", "5000-digit-int", "sexagesimal",
        "bad-date", "9-MiB"])
def test_documents_beyond_the_limits_are_refused_quickly(exq: Exq, text: str, line: int, column: int,
                                                         message: str) -> None:
    started = time.monotonic()
    err = refused(exq, text)
    assert where(exq, line, column) + "invalid YAML: " + message in err, err
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("data, line, column, byte", [
    (b"name: v\ncmd: echo\ngrid: {x: [caf\xe9]}\n", 3, 15, "0xe9"),
    (b"name: v\n\xff\n", 2, 1, "0xff"),
    (b"name: v\ncmd: echo \xed\xa0\xbd\n", 2, 11, "0xed"),  # an encoded surrogate is not UTF-8 either
])
def test_non_utf8_is_reported_at_the_first_bad_byte(exq: Exq, data: bytes, line: int, column: int,
                                                    byte: str) -> None:
    err = refused(exq, data)
    assert where(exq, line, column) + f"invalid YAML: not UTF-8 text: byte {byte}" in err, err


def test_a_raw_nul_byte_in_the_text_is_reported_at_its_position(exq: Exq) -> None:
    err = refused(exq, b"name: v\ncmd: echo \x00\n")
    assert where(exq, 2, 11) + "invalid YAML: character U+0000 is not allowed in YAML text" in err, err


def test_a_ten_billion_job_grid_is_refused_before_expanding(exq: Exq) -> None:
    axes = "\n".join(f"  k{i}: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]" for i in range(10))
    started = time.monotonic()
    err = refused(exq, f"name: v\ncmd: echo\ngrid:\n{axes}\n", command="submit")
    assert time.monotonic() - started < 20
    assert where(exq, 4, 3, "grid") + "the grid gives 10,000,000,000 jobs (10 x 10 x 10 x 10 x 10 x 10 x 10 x " \
        "10 x 10 x 10); a submission may have at most 100,000 (--max-jobs raises it)" in err, err
    assert not list(exq.state_dir.glob("intake/*.json"))


def test_the_job_limit_counts_every_phase_and_can_be_raised(exq: Exq, tmp_path: Path) -> None:
    text = dedent("""
        name: v
        phases:
          - {name: a, grid: {x: [1, 2, 3]}, cmd: echo}
          - {name: b, grid: {x: [1, 2], y: [1, 2]}, include: [{x: 3, y: 3}], cmd: echo}
    """)
    err = refused(exq, text, "--max-jobs", "7")
    assert "phases[1].grid: the grid gives 5 jobs (2 x 2 + 1 included), on top of 3 jobs of earlier phases; " \
        "a submission may have at most 7" in err, err
    assert "8 jobs" in exq("validate", "--max-jobs", "8", str(exq.root / "m.yaml")).stdout
    assert len(parse_manifest(text, str(tmp_path / "m.yaml"), max_jobs=8).jobs) == 8
    assert MAX_JOBS == 100_000


def test_a_huge_format_width_is_refused(exq: Exq) -> None:
    err = refused(exq, 'name: v\ncmd: echo\ngrid: {x: [1]}\nid: "j{x:0>1000000000}"\n')
    assert where(exq, 4, 5, "id") + "placeholder {x:0>1000000000}: a width or precision above 1000 is not " \
        "allowed" in err, err


def test_a_grid_value_with_a_trailing_newline_is_not_a_valid_job_id(exq: Exq) -> None:
    err = refused(exq, 'name: v\ncmd: echo\ngrid: {x: ["a\\n"]}\nid: "j{x}"\n')
    assert where(exq, 4, 5, "id") + "id 'ja\\n' of the job with x='a\\n' is not a valid job id" in err, err


def test_a_rendered_command_over_64_kib_is_refused(exq: Exq) -> None:
    err = refused(exq, f'name: v\ncmd: "echo {"{x}" * 30}"\ngrid: {{x: ["{"y" * 3000}"]}}\n')
    assert where(exq, 2, 6, "cmd") + "the rendered text is longer than 64 KiB" in err, err


def test_a_string_over_64_kib_is_refused(exq: Exq) -> None:
    err = refused(exq, f'name: v\ncmd: echo\nenv: {{BIG: "{"y" * 70000}"}}\n')
    assert where(exq, 3, 12, "env.BIG") + "is 70,000 bytes long; at most 64 KiB" in err, err


# ---------------------------------------------------------------- shell quoting of values, by context

HOSTILE = ["$(touch pwned)", "`touch pwned`", '"', "'", "\\", "a\nb", "x;touch pwned", "*", "a  b", "", "ünï ☃ 🙂",
           "-n", "$HOME", "A=1", "'$(touch pwned)'", '"$(touch pwned)"', "\\'", "'\\''", "\n\n", " ", "~", "#x",
           "a\\\nb", "${IFS}", "$((1+1))", "!x", "}{", "{x}"]

CONTEXTS: list[tuple[str, str, str]] = [
    # (template of one argument, what comes before the value, what comes after it)
    ("{v}", "", ""),
    ('"{v}"', "", ""),
    ("'{v}'", "", ""),
    ("--x={v}", "--x=", ""),
    ('"--name={v}.txt"', "--name=", ".txt"),
    ("'<{v}>'", "<", ">"),
    ("a{v}'b'\"c\"", "a", "bc"),
    ("{v}{v}", "", "", ),
    ('"$(printf %s {v})"', "", ""),
    ("\"$(printf %s \"{v}\")\"", "", ""),
    ("\"$(printf %s '{v}')\"", "", ""),
    ("$(printf %s {v}|od -An -tx1|tr -d ' \\n')", "", ""),
]
"""Each renders one argument to `printf '%s\\0'`; in the last one the value goes through od, as hex."""

COMMAND = "# it's a comment with \"quotes\" and `ticks`\n" + "\n".join(
    f"printf '%s\\0' {template}" for template, _, _ in CONTEXTS)


def expected(value: str) -> list[str]:
    """What the shell must print for COMMAND with `value`: the value itself in every context."""
    out = []
    for template, before, after in CONTEXTS:
        if template == "{v}{v}":
            out.append(value + value)
        elif template.startswith("$(printf %s {v}|od"):
            out.append(value.encode().hex())
        elif template.startswith('"$('):
            out.append(value.rstrip("\n"))  # command substitution drops trailing newlines
        else:
            out.append(before + value + after)
    return out


SHELLS = [shell for shell in ("/bin/sh", shutil.which("bash"), shutil.which("dash")) if shell]


def run_rendered(value: str, cwd: Path) -> None:
    """Render COMMAND with `value`, run it with every shell, and check what it printed and that nothing ran."""
    command = render(COMMAND, {"v": value}, quote=True)
    for shell in SHELLS:
        proc = subprocess.run([shell, "-c", command], cwd=cwd, capture_output=True, timeout=30)
        printed = proc.stdout.decode().split("\0")[:-1]
        assert (proc.returncode, printed) == (0, expected(value)), (shell, command, proc.stderr)
        assert not list(cwd.iterdir()), f"{shell} ran something of the value: {command!r}"


def test_every_context_is_understood() -> None:
    assert command_placeholders(COMMAND) == ["v"]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_reach_the_program_unchanged_in_every_context(value: str, tmp_path: Path) -> None:
    run_rendered(value, tmp_path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"), max_size=12))
def test_any_value_reaches_the_program_unchanged_in_every_context(value: str, tmp_path: Path) -> None:
    for leftover in tmp_path.iterdir():
        leftover.unlink()
    run_rendered(value, tmp_path)


def test_a_placeholder_exq_cannot_quote_is_refused_with_a_fix(exq: Exq) -> None:
    err = refused(exq, "name: v\ngrid: {v: [a]}\ncmd: echo `ls {v}`\n")
    assert where(exq, 3, 6, "cmd") + "placeholder {v} is inside `...` (use $(...) instead), where exq cannot " \
        "quote a value" in err, err


# ---------------------------------------------------------------- the daemon survives what validation would refuse


def poisoned(job_id: str, workdir: Path, **spec: object) -> SubmissionSpec:
    """A submission of one CPU job with `spec`'s fields, as no manifest could produce it."""
    fields: dict[str, object] = {"cmd_template": "true", "params": {}, "cmd": "true", "workdir": str(workdir),
                                 "resources": Resources(gpus=0), **spec}
    job = JobSpec.model_validate({"id": job_id, "phase": "p", **fields})
    return SubmissionSpec(name=job_id, source=str(workdir / "m.yaml"), phases=["p"], jobs=[job])


def test_a_job_no_process_can_be_started_for_fails_and_the_daemon_goes_on(exq: Exq) -> None:
    paths = StatePaths(exq.state_dir)
    write_intake(paths, poisoned("nul", exq.root, env={"GOOD": "a\0b"}))
    write_intake(paths, poisoned("eq", exq.root, env={"A=B": "x"}))
    write_intake(paths, poisoned("cmd", exq.root, cmd="echo \0"))
    write_intake(paths, poisoned("x" * 300, exq.root))  # its attempt directory's name is too long
    good = exq.manifest("name: good\ngpus: 0\ncmd: echo ok > ok.txt\n")
    exq("submit", str(good))
    daemon = exq.start_daemon()
    jobs = {job_id[:4]: job for job_id, job in exq.wait_finished(5).items()}
    assert {key: job["status"] for key, job in jobs.items()} == {
        "nul": "failed", "eq": "failed", "cmd": "failed", "xxxx": "failed", "good": "succeeded"}
    assert jobs["nul"]["reason"] == "launch failed: environment variable GOOD contains a NUL byte (\\0)"
    assert jobs["eq"]["reason"] == "launch failed: invalid environment variable name 'A=B'"
    assert jobs["cmd"]["reason"] == "launch failed: the command contains a NUL byte (\\0)"
    assert jobs["xxxx"]["reason"].startswith("launch failed: OSError: [Errno 36] File name too long")
    assert (exq.root / "ok.txt").read_text() == "ok\n"
    assert daemon.poll() is None, "the daemon stopped"
    exq.stop_all()
    exq.start_daemon()  # and it starts again over that state
    assert exq.state()["daemon"] is not None
