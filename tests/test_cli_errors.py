"""No traceback ever reaches a user: every error is one `exq: error: ...` line and a documented exit code,
and every console prints user text (reasons, cmds, metrics, paths) literally, brackets and all."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import Exq

MARKUP = ["[red]x[/red]", "[/]", "[lr]", "[bold]", ":smile:"]
"""Text rich would read as markup or emoji codes: a user's text that must show as it is."""
ERROR = "shard [/data/x] missing"


def _no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr


def _error_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The one `exq: error: ...` line of a command that failed with `code`."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    _no_traceback(proc)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("exq: error: "), proc.stderr
    return lines[0]


def _patched(exq: Exq, patch: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI's entry point in a subprocess after `patch` (Python that replaces an api function)."""
    code = "\n".join(["import sys", "from exq import api", textwrap.dedent(patch), "from exq.cli import main",
                      f"sys.argv = ['exq', *{list(args)!r}]", "main()"])
    return subprocess.run([sys.executable, "-c", code], env=dict(exq.env, **(env or {})), capture_output=True,
                          text=True, timeout=60)


# --- exq logs --attempt ------------------------------------------------------------------------


def test_logs_attempt_out_of_range_names_the_job_and_its_attempts(exq: Exq) -> None:
    exq("run", str(exq.manifest("name: x\ngpus: 0\nid: hello\ncmd: echo hi\n")))
    assert exq("logs", "hello", "--attempt", "1").stdout == "hi\n"
    line = _error_line(exq("logs", "hello", "--attempt", "99", check=False), 5)
    assert line == "exq: error: job 1/hello has no attempt 99: it has 1 (--attempt 1)"
    for bad in ("-1", "0"):
        proc = exq("logs", "hello", "--attempt", bad, check=False)
        assert proc.returncode == 2 and f"{bad} is not in the range x>=1" in proc.stderr
        _no_traceback(proc)


# --- option values -----------------------------------------------------------------------------


@pytest.mark.parametrize(("option", "value", "says"), [
    ("--foreign-threshold", "abc", "expected a size such as 20GiB or 512MiB, got 'abc'"),
    ("--foreign-threshold", "-1GiB", "expected a size such as 20GiB or 512MiB"),
    ("--probe-interval", "0", "0.0 is not in the range x>0"),
    ("--hook-timeout", "-5", "-5.0 is not in the range x>0"),
    ("--progress-interval", "soon", "'soon' is not a valid float"),
])
def test_daemon_refuses_bad_option_values_with_exit_2(exq: Exq, option: str, value: str, says: str) -> None:
    proc = exq("daemon", option, value, check=False)
    assert proc.returncode == 2 and f"Invalid value for '{option}': {says}" in proc.stderr, proc.stderr
    _no_traceback(proc)
    assert not exq.state_dir.exists(), "a refused daemon must not touch the state dir"


def test_daemon_help_shows_the_size_default(exq: Exq) -> None:
    out = exq("daemon", "--help").stdout
    assert "--foreign-threshold SIZE" in out and "500MiB" in out


# --- the state directory -----------------------------------------------------------------------


STATE_COMMANDS = [("status",), ("submit", "M"), ("run", "M"), ("daemon",), ("cancel", "--all"), ("retry", "j"),
                  ("pause",), ("logs", "j")]


@pytest.mark.parametrize("where", ["file", "below-a-file", "/proc", "/sys"])
def test_an_unusable_state_dir_exits_3_for_every_command(exq: Exq, where: str) -> None:
    blocker = exq.root / "not-a-dir"
    blocker.write_text("x")
    state_dir = {"file": blocker, "below-a-file": blocker / "state", "/proc": Path("/proc/exq-state"),
                 "/sys": Path("/sys/exq-state")}[where]
    exq.env["EXQ_STATE_DIR"] = str(state_dir)
    manifest = exq.manifest("name: x\ngpus: 0\nid: j\ncmd: 'true'\n")
    # A state dir that does not exist yet reads as an empty queue; /proc and /sys ones can never be created.
    readers = {("status",), ("logs", "j")}
    for command in STATE_COMMANDS:
        if where in ("/proc", "/sys") and command in readers:
            continue
        args = [str(manifest) if a == "M" else a for a in command]
        line = _error_line(exq(*args, check=False, timeout=30), 3)
        assert str(state_dir) in line or str(blocker) in line, line
    doctor = exq("doctor", "--json", check=False, timeout=60)
    assert doctor.returncode == 1
    _no_traceback(doctor)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)}
    assert checks["state dir"]["status"] == "fail" and checks["state dir"]["fix"]


def test_an_oserror_about_the_state_dir_exits_3_and_any_other_exits_1(exq: Exq) -> None:
    """Whatever part of exq meets it: an unreadable file in the state dir or above it is exit 3, with path and
    strerror (e.g. a state dir that is not searchable, as non-root users see it); another file's is exit 1."""
    journal = exq.state_dir / "journal.jsonl"
    patch = (f"def status(paths):\n"
             f"    raise PermissionError(13, 'Permission denied', {str(journal)!r})\n"
             f"api.status = status")
    line = _error_line(_patched(exq, patch, "status"), 3)
    assert line == f"exq: error: state directory {exq.state_dir}: {journal}: Permission denied"
    parent = exq.root
    patch = (f"def submit(paths, spec):\n"
             f"    raise PermissionError(13, 'Permission denied', {str(parent)!r})\n"
             f"api.submit = submit")
    manifest = exq.manifest("name: x\ngpus: 0\ncmd: 'true'\n")
    line = _error_line(_patched(exq, patch, "submit", str(manifest)), 3)
    assert line == f"exq: error: state directory {exq.state_dir}: {parent}: Permission denied"
    patch = ("def status(paths):\n"
             "    raise IsADirectoryError(21, 'Is a directory', '/etc')\n"
             "api.status = status")
    line = _error_line(_patched(exq, patch, "status"), 1)
    assert line == "exq: error: /etc: Is a directory"


# --- the last resort ---------------------------------------------------------------------------


def test_an_unexpected_exception_is_one_line_and_a_hint_and_a_traceback_only_when_asked(exq: Exq) -> None:
    patch = ("def status(paths):\n"
             "    raise RuntimeError('boom [bold]x')\n"
             "api.status = status")
    proc = _patched(exq, patch, "status")
    assert proc.returncode == 1
    _no_traceback(proc)
    first, hint = proc.stderr.splitlines()
    assert first == "exq: internal error: RuntimeError: boom [bold]x"
    assert "bug in exq" in hint and "-vv" in hint and "EXQ_DEBUG=1" in hint
    for asked in (_patched(exq, patch, "-vv", "status"), _patched(exq, patch, "status", env={"EXQ_DEBUG": "1"})):
        assert asked.returncode == 1 and "Traceback" in asked.stderr and "RuntimeError: boom [bold]x" in asked.stderr
    interrupted = _patched(exq, patch.replace("RuntimeError('boom [bold]x')", "KeyboardInterrupt"), "status")
    assert interrupted.returncode == 130 and "aborted" in interrupted.stderr
    _no_traceback(interrupted)


# --- exq --host --------------------------------------------------------------------------------


def test_host_without_node_or_command_is_a_usage_error(exq: Exq) -> None:
    line = _error_line(exq("--host", "status", check=False), 2)
    assert "no command after `--host status`" in line and "exq --host NODE status" in line
    assert "needs a NODE" in _error_line(exq("--host=", "status", check=False), 2)
    bare = exq("--host", check=False)
    assert bare.returncode == 2 and "'--host' requires an argument" in bare.stderr
    late = _error_line(exq("--state-dir", str(exq.state_dir), "--host", "gpu1", "status", check=False), 2)
    assert "--host NODE must come first" in late


def test_host_that_cannot_be_reached_exits_6(exq: Exq) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = exq.root / "config.yaml"
    config.write_text(f"hosts:\n  gpu9: {{address: 127.0.0.1, port: {port}, connect_timeout: 5s}}\n")
    exq.env["EXQ_CONFIG"] = str(config)
    line = _error_line(exq("--host", "gpu9", "status", check=False, timeout=60), 6)
    assert line.startswith("exq: error: host gpu9 (127.0.0.1) unreachable: ")


# --- literal text ------------------------------------------------------------------------------


def _literal_manifest(exq: Exq) -> Path:
    payload = json.dumps({"error": ERROR})
    writer = f"{sys.executable} -c 'import json, os, sys; json.dump(dict(tag=sys.argv[1]), " \
             f"open(os.environ[\"EXQ_RESULT_FILE\"], \"w\"))'"
    return exq.manifest(
        "name: literal\n"
        "defaults: {gpus: 0}\n"
        "phases:\n"
        "  - name: broken\n"
        "    id: broken\n"
        f"    params: {{payload: {json.dumps(payload)}}}\n"
        "    cmd: printf %s {payload} > \"$EXQ_RESULT_FILE\"; exit 1\n"
        "  - name: tags\n"
        "    grid:\n"
        f"      zip: [{{n: {list(range(len(MARKUP)))}, tag: {json.dumps(MARKUP)}}}]\n"
        "    id: 'tag{n}'\n"
        f"    cmd: {json.dumps(writer + ' {tag} model.layers=[a,b]')}\n")


def test_bracketed_reasons_and_metrics_show_literally_in_run_and_status(exq: Exq) -> None:
    exq.env["COLUMNS"] = "250"
    run = exq("run", str(_literal_manifest(exq)), check=False)
    assert run.returncode == 1, run.stderr  # `broken` failed, on purpose
    _no_traceback(run)
    jobs = exq.jobs()
    assert jobs["broken"]["reason"] == f"exit code 1: {ERROR}"
    assert [jobs[f"tag{n}"]["result"] for n in range(len(MARKUP))] == [{"tag": t} for t in MARKUP]
    for proc in (run, exq("status"), exq("status", "--all")):
        _no_traceback(proc)
        assert f"exit code 1: {ERROR}" in proc.stdout, proc.stdout
        for n, tag in enumerate(MARKUP):
            row = next(line for line in proc.stdout.splitlines() if f"1/tag{n} " in line)
            assert f"tag={tag}" in row, row


def test_validate_shows_cmds_and_params_literally(exq: Exq) -> None:
    exq.env["COLUMNS"] = "400"
    manifest = _literal_manifest(exq)
    for proc in (exq("validate", str(manifest)), exq("submit", "--dry-run", str(manifest))):
        _no_traceback(proc)
        assert proc.stdout.count("model.layers=[a,b]") == len(MARKUP), proc.stdout
        for tag in MARKUP:
            assert tag in proc.stdout
        assert "printf %s '{\"error\": \"shard [/data/x] missing\"}'" in proc.stdout


def test_doctor_shows_a_bracketed_state_dir_path_literally(exq: Exq) -> None:
    state_dir = exq.root / "st[lr]ate [bold]:smile:"
    exq.env.update(EXQ_STATE_DIR=str(state_dir), EXQ_CONFIG=str(exq.root / "no-config.yaml"), COLUMNS="300")
    proc = exq("doctor", timeout=60)
    _no_traceback(proc)
    assert f"exq doctor: {state_dir}" in [line.rstrip() for line in proc.stdout.splitlines()], proc.stdout
    assert f"{state_dir} does not exist yet" in proc.stdout
    assert not state_dir.exists()


def test_error_messages_show_user_text_literally(exq: Exq) -> None:
    line = _error_line(exq("logs", "[red]x[/red]", check=False), 5)
    assert line == "exq: error: no job '[red]x[/red]' in the queue"
