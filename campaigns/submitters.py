"""Concurrent `exq submit` processes, some killed with SIGKILL at random instants, while a daemon runs
(and is itself kill -9'd and restarted now and then).

Every submit that exited 0 printed "as submission K": submission K must be in the queue, once, under
its manifest's name, with all its jobs; no manifest may be in the queue twice (a killed submit may
land or not, but at most once); no intake file may be left half-written (renamed *.bad); every job
runs once.

    .venv/bin/python campaigns/submitters.py --count 60 [--wave 8] [--seed 1] [--json out.json]
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from campaigns._harness import FINISHED, Campaign, Daemon, manifest_yaml, parser, read_json, run_main

SUBMITTED_RE = re.compile(r"as submission (\S+) \(")

MUST_ZERO = ["lost submissions", "duplicate submissions", "number mismatches", "missing jobs", "refused submits",
             "bad intake files", "double launches", "unsettled"]
OTHER = ["submits", "acknowledged", "killed submitters", "killed but landed", "daemon kills", "jobs"]


@dataclass
class Submitter:
    name: str
    jobs: list[str]
    proc: subprocess.Popen[bytes]
    kill_at: float | None
    killed: bool = False
    rc: int | None = None
    out: str = ""


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], count=60, timeout=120)
    p.add_argument("--wave", type=int, default=8, help="submitters started at once (default 8)")
    p.add_argument("--kill-fraction", type=float, default=0.3, help="share of submitters SIGKILLed (default 0.3)")
    args = p.parse_args(argv)
    return run_main("submitters", lambda: run(args))


def run(args: Any) -> int:
    with Campaign("submitters", args, MUST_ZERO, OTHER) as c:
        daemon = c.start_daemon()
        done: list[Submitter] = []
        while len(done) < args.count:
            wave = [start(c, len(done) + i) for i in range(min(args.wave, args.count - len(done)))]
            daemon = run_wave(c, wave, daemon)
            done.extend(wave)
        expected = sum(len(s.jobs) for s in done if s.rc == 0)
        if not wait_drained(c, expected, args.timeout):
            c.fig.add("unsettled")
            c.note(f"intake not drained or jobs not finished within {args.timeout:g}s")
        daemon.stop()
        check(c, done)
        c.scan_daemon_logs()
        return c.finish()


def start(c: Campaign, number: int) -> Submitter:
    name = f"s{number}-{c.rng.randrange(10**6)}"
    jobs = [f"{name}_j{i}" for i in range(c.rng.randint(1, 3))]
    path = c.root / f"{name}.yaml"
    path.write_text(manifest_yaml(name, [{"name": "p", "gpus": 0, "grid": {"j": jobs}, "id": "{j}",
                                          "cmd": c.job_cmd(2)}], workdir=str(c.shared)))
    proc = c.spawn("submit", str(path))
    kill_at = time.monotonic() + c.rng.uniform(0.0, 3.0) if c.rng.random() < c.args.kill_fraction else None
    c.fig.add("submits")
    return Submitter(name, jobs, proc, kill_at)


def run_wave(c: Campaign, wave: list[Submitter], daemon: Daemon) -> Daemon:
    """Wait for the wave's submitters (bounded), killing the chosen ones, and maybe the daemon, on time."""
    daemon_kill = time.monotonic() + c.rng.uniform(0.0, 1.5) if c.rng.random() < 0.4 else None
    deadline = time.monotonic() + 60
    while any(s.proc.poll() is None for s in wave) and time.monotonic() < deadline:
        now = time.monotonic()
        for s in wave:
            if s.kill_at is not None and now >= s.kill_at and s.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(s.proc.pid, signal.SIGKILL)
                s.killed = True
        if daemon_kill is not None and now >= daemon_kill:
            daemon.kill9()
            c.fig.add("daemon kills")
            daemon, daemon_kill = c.start_daemon(), None
        time.sleep(0.01)
    for s in wave:
        if s.proc.poll() is None:
            s.proc.kill()
            c.note(f"submit of {s.name} did not end within 60s (killed)")
        out, err = s.proc.communicate(timeout=10)
        s.rc, s.out = s.proc.returncode, out.decode(errors="replace")
        c.scan(out.decode(errors="replace") + err.decode(errors="replace"), f"exq submit {s.name}")
        if s.killed and s.rc == -signal.SIGKILL:
            c.fig.add("killed submitters")
        elif s.rc != 0:
            c.fig.add("refused submits")
            c.note(f"exq submit {s.name} exited {s.rc}: {err.decode(errors='replace').strip()[-300:]}")
    if daemon_kill is not None:
        daemon.kill9()
        c.fig.add("daemon kills")
        daemon = c.start_daemon()
    return daemon


def wait_drained(c: Campaign, expected_jobs: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    intake = c.state_dir / "intake"
    while time.monotonic() < deadline:
        state = read_json(c.state_dir / "queue_state.json")
        waiting = list(intake.glob("[0-9]*.json"))
        if state and not waiting:
            jobs = state.get("jobs") or []
            if len(jobs) >= expected_jobs and all(j.get("status") in FINISHED for j in jobs):
                return True
        time.sleep(0.3)
    return False


def check(c: Campaign, done: list[Submitter]) -> None:
    state = c.status()
    if state is None:
        c.fig.add("lost submissions", sum(s.rc == 0 for s in done))
        return
    by_name: dict[str, list[str]] = {}
    for sub in state.get("submissions") or []:
        by_name.setdefault(sub["name"], []).append(sub["id"])
    ids = [sub["id"] for sub in state.get("submissions") or []]
    if len(ids) != len(set(ids)):
        c.fig.add("duplicate submissions", len(ids) - len(set(ids)))
        c.note(f"a submission number is in the queue twice: {sorted(ids)}")
    jobs: dict[str, set[str]] = {}
    for job in state.get("jobs") or []:
        jobs.setdefault(job["submission"], set()).add(job["id"])
    c.fig.set("jobs", sum(len(v) for v in jobs.values()))
    for s in done:
        landed = by_name.get(s.name, [])
        if len(landed) > 1:
            c.fig.add("duplicate submissions", len(landed) - 1)
            c.note(f"{s.name} is in the queue {len(landed)} times: {landed}")
        if s.rc != 0:
            if landed:
                c.fig.add("killed but landed")
                check_jobs(c, s, landed[0], jobs)
            continue
        c.fig.add("acknowledged")
        found = SUBMITTED_RE.search(s.out)
        told = found.group(1) if found else None
        if not landed:
            c.fig.add("lost submissions")
            c.note(f"{s.name}: acknowledged as submission {told}, not in the queue")
        elif told not in landed:
            c.fig.add("number mismatches")
            c.note(f"{s.name}: exq submit said submission {told}, the queue has it as {landed}")
        else:
            check_jobs(c, s, told, jobs)
    bad = list((c.state_dir / "intake").glob("*.bad"))
    c.fig.set("bad intake files", len(bad))
    double, unknown = c.check_runs(state)
    c.fig.set("double launches", double + unknown)


def check_jobs(c: Campaign, s: Submitter, number: str, jobs: dict[str, set[str]]) -> None:
    have = jobs.get(number, set())
    if have != set(s.jobs):
        c.fig.add("missing jobs", len(set(s.jobs) - have))
        c.note(f"submission {number} ({s.name}) has jobs {sorted(have)}, expected {s.jobs}")


if __name__ == "__main__":
    sys.exit(main())
