"""SSH host faults with real sshd hosts (tests/sshhosts.py): a host killed, a host frozen past its
`lost_timeout`, and sshd-only partitions (sshd killed, the jobs go on) shorter and longer than it.

Each round starts a fresh state dir and daemon on local (2 simulated GPUs) + h1 + h2 (1 GPU each,
`lost_timeout` 3s), submits three `tick` jobs (each works N ticks of 0.2 s: time spent frozen is not
work done; one GPU stays free for a job to move to), and once one runs on an SSH host makes the fault
there, then brings the host back. Every job must
end succeeded having completed exactly once (per-job .done markers written by the job itself): a job
moved elsewhere while its host was away must have its old copy killed when the host answers again.
Needs root and /usr/sbin/sshd.

    sudo .venv/bin/python campaigns/ssh_faults.py --count 4 [--scenarios kill,freeze,partition,long_partition]
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from campaigns._harness import (
    Campaign,
    manifest_yaml,
    needs_root,
    parser,
    read_json,
    run_main,
    start_ssh_hosts,
    table,
)

LOST_TIMEOUT = 3.0
SCENARIOS = ("kill", "freeze", "partition", "long_partition")
MUST_ZERO = ["double completions", "lost jobs", "double launches", "unsettled rounds"]
OTHER = ["rounds", "faults", "jobs", "moved jobs"]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], count=4, timeout=90)
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    p.add_argument("--ticks", type=int, default=60, help="0.2 s ticks of work per job (default 60)")
    args = p.parse_args(argv)
    if (code := needs_root("ssh_faults")) is not None:
        return code
    return run_main("ssh_faults", lambda: run(args))


def run(args: Any) -> int:
    chosen = [s for s in args.scenarios.split(",") if s]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        print(f"ssh_faults: unknown scenario(s) {sorted(unknown)}; choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    with Campaign("ssh_faults", args, MUST_ZERO, OTHER) as c:
        hosts = start_ssh_hosts(c, [("h1", "1x24GiB"), ("h2", "1x24GiB")], lost_timeout=f"{LOST_TIMEOUT:g}s")
        config = c.env["EXQ_CONFIG"]
        rows = []
        for n in range(args.count):
            scenario = chosen[n % len(chosen)]
            c.use_state(c.root / f"state{n}", gpus="2x24GiB")
            c.env["EXQ_CONFIG"] = config
            rows.append((n, scenario, *one_round(c, hosts, scenario, n)))
            c.fig.add("rounds")
        c.extra_tables.append(table(["round", "fault", "host", "jobs", "moved", "completions", "outcome"], rows))
        c.scan_daemon_logs()
        return c.finish()


def one_round(c: Campaign, hosts: Any, scenario: str, n: int) -> tuple[str, int, int, str, str]:
    manifest = c.root / f"round{n}.yaml"
    manifest.write_text(manifest_yaml(f"round{n}", [{
        "name": "p", "gpus": 1, "grid": {"i": [0, 1, 2]}, "id": f"r{n}_tick{{i}}", "cmd": c.job_cmd(c.args.ticks),
        "retry": {"lost": {"max": 3, "backoff": "0s"}}}], workdir=str(c.shared)))
    daemon = c.start_daemon()
    c.exq("submit", str(manifest))
    on = wait_running_on(c, ("h1", "h2"), 30)
    if on is None:
        c.note(f"round {n}: no job started on an SSH host within 30s")
    else:
        time.sleep(1.0)  # some work done there
        make_fault(c, hosts[on], scenario)
    settled = c.wait_settled(3, c.args.timeout)
    if not settled:
        c.fig.add("unsettled rounds")
        c.note(f"round {n} ({scenario}): the jobs did not all finish within {c.args.timeout:g}s")
    time.sleep(LOST_TIMEOUT)  # an old copy that was not killed would complete meanwhile
    daemon.stop()
    return (on or "-", *check_round(c, n, scenario))


def wait_running_on(c: Campaign, names: tuple[str, ...], timeout: float) -> str | None:
    """The first of the hosts `names` seen running a job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_json(c.state_dir / "queue_state.json") or {}
        for job in state.get("jobs") or []:
            if job.get("status") == "running" and job.get("host") in names:
                return str(job["host"])
        time.sleep(0.1)
    return None


def make_fault(c: Campaign, host: Any, scenario: str) -> None:
    c.fig.add("faults")
    if scenario == "kill":  # the machine dies: every process of its user, and sshd
        host.kill()
        time.sleep(LOST_TIMEOUT + 2)
        host.restart()
    elif scenario == "freeze":  # the machine hangs past lost_timeout, then wakes up
        host.stop()
        time.sleep(LOST_TIMEOUT + 3)
        host.cont()
    else:  # sshd dies, the jobs go on; it comes back before / after lost_timeout
        kill_sshd_only(host)
        time.sleep(1.0 if scenario == "partition" else LOST_TIMEOUT + 2)
        host.start()


def kill_sshd_only(host: Any) -> None:
    """SIGKILL the host's sshd listener and its sshd session processes, not the jobs."""
    if host.process is None or host.process.poll() is not None:
        return
    listener = psutil.Process(host.process.pid)
    victims = [listener]
    with contextlib.suppress(psutil.Error):
        victims += [p for p in listener.children(recursive=True) if p.name().startswith("sshd")]
    for proc in victims:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
    host.process.wait(10)


def check_round(c: Campaign, n: int, scenario: str) -> tuple[int, int, str, str]:
    state = c.status() or {}
    jobs = {j["id"]: j for j in state.get("jobs") or []}
    completions = c.runs(done=True)
    moved = 0
    parts = []
    problems = []
    for job_id, job in sorted(jobs.items()):
        c.fig.add("jobs")
        hosts = [a.get("host") for a in job.get("attempts") or []]
        if len(set(hosts)) > 1:
            moved += 1
        done = completions.get(f"{job['submission']}-{job_id}", [])
        parts.append(f"{job_id}:{len(done)}")
        if len(done) > 1:
            c.fig.add("double completions")
            problems.append(f"{job_id} completed {len(done)}x")
            c.note(f"round {n} ({scenario}): {job_id} completed {len(done)} times; attempts on {hosts}, "
                   f"outcomes {[a.get('outcome') for a in job['attempts']]}")
        if job["status"] != "succeeded" or not done:
            c.fig.add("lost jobs")
            problems.append(f"{job_id} {job['status']}")
            c.note(f"round {n} ({scenario}): {job_id} ended {job['status']} ({job.get('reason')}), "
                   f"{len(done)} completion(s)")
    c.fig.add("moved jobs", moved)
    double, unknown = c.check_runs(state)
    c.fig.add("double launches", double + unknown)
    return len(jobs), moved, " ".join(parts), "ok" if not problems else "; ".join(problems)


if __name__ == "__main__":
    sys.exit(main())
