"""`exq status` as a user sees it: filters, collapsed reasons, the terminal's height, unwrapped piped output,
phase bars that show failures, and `--watch`'s refresh time."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

from conftest import EXQ, Exq, wait_until
from rich.console import Console

from exq import api
from exq.model.jobspec import JobSpec
from exq.model.state import Attempt, Job, JobStatus, QueueState, Submission
from exq.views import JobFilter, phase_bar, status_renderable

TERMINAL = {"TTY_COMPATIBLE": "1", "COLUMNS": "120", "LINES": "16", "TERM": "xterm"}
"""What makes rich (so the CLI) draw for a terminal of 120 x 16 although stdout is a pipe."""
ANSI = re.compile(r"\x1b\[[0-9;]*m")
FAIL_LONG = ("import json, os; json.dump(dict(error='the loss diverged at step ' + 'x' * 150 + ' end'), "
             "open(os.environ['EXQ_RESULT_FILE'], 'w')); raise SystemExit(3)")


def _rows(out: str, marker: str) -> list[str]:
    """The lines of `out` that name `marker` (a job key prefix)."""
    return [line for line in out.splitlines() if marker in line]


def _keys(out: str) -> set[str]:
    return set(re.findall(r"\b\d+/[a-z]+\d\b", out))


def _two_submissions(exq: Exq) -> None:
    """Submission 1 (label sweep): phase train (t0..t2, t1 fails) and phase eval (label final); submission 2,
    unlabelled, one job. All run on the local host."""
    exq("submit", str(exq.manifest("""
        name: alpha
        labels: [sweep]
        defaults: {gpus: 0}
        phases:
          - {name: train, grid: {i: [0, 1, 2]}, id: 't{i}', cmd: 'test {i} != 1'}
          - {name: eval, labels: [final], id: e0, cmd: 'true'}
    """, "alpha.yaml")))
    exq("submit", str(exq.manifest("name: beta\ngpus: 0\nid: b0\ncmd: 'true'\n", "beta.yaml")))
    exq.wait_finished(5)


def test_filters_by_submission_phase_status_label_and_host(exq: Exq) -> None:
    exq.start_daemon()
    _two_submissions(exq)
    everything = {"1/t0", "1/t1", "1/t2", "1/e0", "2/b0"}
    assert _keys(exq("status").stdout) == everything
    assert _keys(exq("status", "--phase", "train").stdout) == {"1/t0", "1/t1", "1/t2"}
    assert _keys(exq("status", "--status", "failed").stdout) == {"1/t1"}
    assert _keys(exq("status", "--status", "failed", "--status", "succeeded", "1").stdout) == everything - {"2/b0"}
    assert _keys(exq("status", "--label", "sweep").stdout) == everything - {"2/b0"}
    assert _keys(exq("status", "--label", "final").stdout) == {"1/e0"}
    assert _keys(exq("status", "2").stdout) == {"2/b0"}
    assert _keys(exq("status", "--host", "local").stdout) == everything
    nowhere = exq("status", "--host", "gpu9").stdout
    assert _keys(nowhere) == set() and "no job matches" in nowhere
    phases = exq("status", "--phase", "eval").stdout
    assert "eval" in phases and "train" not in phases  # the phase table shows the phases of the matching jobs

    data = json.loads(exq("status", "--json", "--status", "failed").stdout)
    assert [(job["submission"], job["id"], job["status"]) for job in data["jobs"]] == [("1", "t1", "failed")]
    assert "jobs" in data and set(data) == {"jobs"}
    assert "submissions" in json.loads(exq("status", "--json").stdout)  # unfiltered: the whole state as before


def test_unknown_submission_or_phase_exits_5_and_a_bad_status_2(exq: Exq) -> None:
    exq("run", str(exq.manifest("name: x\ngpus: 0\nid: a0\ncmd: 'true'\n")))
    for args, message in [(("9",), "no submission '9' in the queue"),
                          (("--phase", "nope"), "no phase 'nope' in any submission"),
                          (("1", "--phase", "nope", "--json"), "no phase 'nope' in submission 1")]:
        proc = exq("status", *args, check=False)
        assert proc.returncode == 5, args
        assert proc.stderr == f"exq: error: {message}\n" and proc.stdout == ""
    bad = exq("status", "--status", "done", check=False)
    assert bad.returncode == 2 and "not a job status (one of queued, running," in bad.stderr


def test_jobs_waiting_for_the_same_reason_share_one_line(exq: Exq) -> None:
    """12 jobs that need 8 GPUs on the fixture's 2 are one line naming the reason and the first ids; piped,
    no line is wrapped, however long the reason."""
    exq.start_daemon()
    exq("submit", str(exq.manifest(f"""
        name: wide
        phases:
          - {{name: big, gpus: 8, grid: {{i: [{", ".join(map(str, range(12)))}]}}, id: 'big{{i}}', cmd: 'true'}}
          - name: long
            gpus: 0
            id: loud0
            cmd: {json.dumps(f"{sys.executable} -c {json.dumps(FAIL_LONG)}")}
    """)))

    def same_reason() -> str | None:
        jobs = exq.jobs()
        reasons = {job["reason"] for key, job in jobs.items() if key.startswith("big")}
        done = jobs.get("loud0", {}).get("status") == "failed"
        return reasons.pop() if done and len(reasons) == 1 and None not in reasons else None

    reason = wait_until(same_reason)
    out = exq("status").stdout
    rows = _rows(out, "12 jobs")
    assert len(rows) == 1 and reason in rows[0] and "queued" in rows[0]
    assert "1/big0, 1/big1, 1/big2 and 9 more" in rows[0]
    assert not _rows(out, "1/big5")
    loud = _rows(out, "1/loud0")
    assert len(loud) == 1 and "the loss diverged at step " + "x" * 150 + " end" in loud[0]
    every = exq("status", "--all").stdout  # --all lists every job
    assert len(_rows(every, "1/big")) == 12 and not _rows(every, "12 jobs")


def test_the_view_fits_the_terminal_and_counts_what_does_not(exq: Exq) -> None:
    grid = ", ".join(map(str, range(30)))
    manifest = exq.manifest(f"name: many\ngpus: 0\ngrid: {{i: [{grid}]}}\nid: 'f{{i}}'\ncmd: 'exit 1'\n")
    assert exq("run", str(manifest), check=False).returncode == 1
    exq.env.update(TERMINAL)
    out = ANSI.sub("", exq("status").stdout)
    lines = out.splitlines()
    shown = len(_rows(out, "1/f"))
    assert len(lines) <= 15 and 0 < shown < 30
    assert lines[-1] == f"... {30 - shown} more jobs (exq status --all)"
    assert len(_rows(ANSI.sub("", exq("status", "--all").stdout), "1/f")) == 30
    for name in TERMINAL:
        exq.env.pop(name)
    piped = exq("status").stdout
    assert len(_rows(piped, "1/f")) == 30 and "more jobs" not in piped


def test_a_failed_phase_bar_is_not_all_green(exq: Exq) -> None:
    exq.env.update(TERMINAL)
    manifest = exq.manifest("name: x\ngpus: 0\ngrid: {i: [0, 1, 2]}\nid: 'j{i}'\ncmd: 'test {i} != 1'\n")
    assert exq("run", str(manifest), check=False).returncode == 1
    row = next(line for line in exq("status").stdout.splitlines() if "2 succeeded" in ANSI.sub("", line))
    assert "\x1b[32m" + "\u2501" * 8 in row and "\x1b[31m" + "\u2501" * 4 in row  # 8 cells green, 4 red
    assert "3/3" in row


def test_phase_bar_parts_and_colours() -> None:
    def parts(**counts: int) -> list[tuple[str, int]]:
        bar = phase_bar(Counter({JobStatus(status): n for status, n in counts.items()}))
        assert bar.plain == "\u2501" * 12
        return [(str(span.style), span.end - span.start) for span in bar.spans if span.end > span.start]

    assert parts(succeeded=5) == [("green", 12)]
    assert parts(succeeded=999, failed=1) == [("green", 11), ("red", 1)]
    assert parts(succeeded=1, blocked=2, failed=1) == [("green", 3), ("red", 9)]
    assert parts(succeeded=2, cancelled=1, running=1, queued=2) == [("green", 4), ("dim", 2), ("grey23", 6)]
    assert parts(queued=3) == [("grey23", 12)]


def _job(sub: str, job_id: str, labels: list[str], host: str | None) -> Job:
    spec = JobSpec(id=job_id, phase="p", cmd_template="true", params={}, cmd="true", workdir="/tmp", labels=labels)
    attempts = [Attempt(number=1, host=host, gpus=[], params={}, cmd="true", dir="/x", log="/x/log",
                        launched_at=1.0)] if host else []
    return Job(id=job_id, submission=sub, phase="p", params={}, cmd="true", order=0, submitted_at=1.0, spec=spec,
               attempts=attempts, status=JobStatus.RUNNING if host else JobStatus.QUEUED)


def _view() -> api.StatusView:
    subs = [Submission(id=sub, name=sub, source="/m.yaml", submitted_at=1.0, phases=["p"], jobs=1, labels=labels)
            for sub, labels in (("1", ["team"]), ("2", []))]
    jobs = [_job("1", "a", [], "gpu1"), _job("2", "b", ["team"], None), _job("2", "c", [], "local")]
    return api.StatusView(QueueState(submissions=subs, jobs=jobs), [], False)


def test_a_label_matches_the_job_or_its_submission_and_a_host_the_current_attempt() -> None:
    view = _view()
    assert [job.key for job in JobFilter(labels=("team",)).select(view)] == ["1/a", "2/b"]
    assert [job.key for job in JobFilter(hosts=("gpu1", "local")).select(view)] == ["1/a", "2/c"]
    assert [job.key for job in JobFilter(("2",), labels=("team",)).select(view)] == ["2/b"]
    assert not JobFilter() and JobFilter(statuses=("queued",))


def test_watch_says_when_it_last_refreshed(exq: Exq) -> None:
    """The renderable `--watch` redraws each second starts with the time it was read; the live command shows it
    and ends cleanly on Ctrl-C."""
    with open(os.devnull, "w") as sink:
        console = Console(width=100, record=True, file=sink)
        console.print(status_renderable(_view(), refreshed=45296.0))
        out = console.export_text()
    stamp = time.strftime("%H:%M:%S", time.localtime(45296.0))
    assert out.splitlines()[0] == f"refreshed {stamp}"
    exq("run", str(exq.manifest("name: x\ngpus: 0\nid: a0\ncmd: 'true'\n")))
    proc = subprocess.Popen([*EXQ, "status", "--watch"], env=dict(exq.env, **TERMINAL), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        os.set_blocking(fd, False)
        seen = b""
        deadline = time.monotonic() + 60
        while b"1/a0" not in seen and time.monotonic() < deadline and proc.poll() is None:  # it has drawn once
            try:
                seen += os.read(fd, 65536)
            except BlockingIOError:
                time.sleep(0.1)
        time.sleep(1.5)  # and redraws
        proc.send_signal(signal.SIGINT)
        os.set_blocking(fd, True)
        out, err = proc.communicate(timeout=30)
        out = seen.decode(errors="replace") + out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, err
    assert re.search(r"refreshed \d\d:\d\d:\d\d", ANSI.sub("", out)) and "1/a0" in out
