"""kill -9 of `exq daemon` at random instants during a mixed run; the daemon is restarted each time.

Each submission has three phases: p1 (GPU jobs: some succeed, some hit a simulated CUDA OOM on their
first run (exit 211) and are retried, some always fail), p2 (CPU jobs `after: [p1]`, `match: [kind]`:
the one behind the failing jobs ends blocked) and p3 (CPU, after p2). New submissions arrive while the
daemon runs and while it is down. A thread reads queue_state.json all along. At the end every
acknowledged submission must be there with all its jobs, each job in the status its behaviour
implies, no attempt's command run twice (per-job marker files outside the state dir), no torn read,
no traceback. `--ssh` adds two real SSH hosts (tests/sshhosts.py; needs root and sshd).

    .venv/bin/python campaigns/crash.py --count 20 [--ssh] [--seed 1] [--json out.json]
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from campaigns._harness import Campaign, SnapshotPoller, manifest_yaml, parser, run_main, start_ssh_hosts

SUBMITTED_RE = re.compile(r"as submission (\S+) \(")
KINDS = ("ok", "oom", "fail")


def expected_jobs() -> dict[str, str]:
    """Job id -> the status it must end in."""
    jobs = {f"p1_{kind}_{i}": "failed" if kind == "fail" else "succeeded" for kind in KINDS for i in (0, 1)}
    jobs |= {f"p2_{kind}": "blocked" if kind == "fail" else "succeeded" for kind in KINDS}
    jobs |= {f"p3_{kind}": "succeeded" for kind in ("ok", "oom")}
    return jobs


def crash_manifest(c: Campaign, name: str) -> str:
    retry = {"oom": {"max": 2, "backoff": "0s"}, "failure": {"max": 1, "backoff": "0s"}}
    return manifest_yaml(name, [
        {"name": "p1", "gpus": 1, "gpu_memory": "8GiB", "share": True, "retry": retry,
         "grid": {"kind": list(KINDS), "i": [0, 1]}, "id": "p1_{kind}_{i}", "cmd": c.job_cmd(7)},
        {"name": "p2", "after": ["p1"], "match": ["kind"], "gpus": 0, "retry": retry,
         "grid": {"kind": list(KINDS)}, "id": "p2_{kind}", "cmd": c.job_cmd(4)},
        {"name": "p3", "after": ["p2"], "match": ["kind"], "gpus": 0,
         "grid": {"kind": ["ok", "oom"]}, "id": "p3_{kind}", "cmd": c.job_cmd(3)},
    ], workdir=str(c.shared))


MUST_ZERO = ["double launches", "unrecorded runs", "lost submissions", "duplicate submissions", "lost jobs",
             "unfinished jobs", "wrong outcomes", "torn reads", "vanished snapshots", "daemon exits",
             "refused submits"]
OTHER = ["kills", "submissions", "jobs", "job runs", "attempts on SSH hosts", "snapshot reads"]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], count=20, timeout=240)
    p.add_argument("--ssh", action="store_true", help="add two real SSH hosts (tests/sshhosts.py; root, sshd)")
    p.add_argument("--max-gap", type=float, default=1.5, help="most seconds between a restart and the next kill")
    args = p.parse_args(argv)
    return run_main("crash", lambda: run(args))


def run(args: Any) -> int:
    with Campaign("crash", args, MUST_ZERO, OTHER) as c:
        if args.ssh:
            start_ssh_hosts(c, [("h1", "2x24GiB"), ("h2", "1x24GiB")])
        rng = c.rng
        acknowledged: dict[str, str] = {}

        def submit() -> None:
            name = f"crash-{len(acknowledged) + 1}-{rng.randrange(10**6)}"
            path = c.root / f"{name}.yaml"
            path.write_text(crash_manifest(c, name))
            result = c.exq("submit", str(path))
            found = SUBMITTED_RE.search(result.out)
            if result.rc == 0 and found:
                acknowledged[found.group(1)] = name
            else:
                c.fig.add("refused submits")
                c.note(f"exq submit exited {result.rc}: {result.err.strip()[-300:]}")

        with SnapshotPoller(c.state_dir / "queue_state.json") as poller:
            daemon = c.start_daemon()
            submit()
            for _ in range(args.count):
                time.sleep(rng.uniform(0.1, args.max_gap))
                if rng.random() < 0.3:
                    submit()
                if not daemon.alive():
                    c.fig.add("daemon exits")
                    c.note(f"daemon {daemon.pid} exited {daemon.proc.returncode} by itself: {daemon.output()[-400:]}")
                daemon.kill9()
                c.fig.add("kills")
                if rng.random() < 0.25:
                    submit()  # while no daemon runs
                if rng.random() < 0.3:
                    time.sleep(rng.uniform(0.0, 1.0))  # jobs end while no daemon watches
                daemon = c.start_daemon()
            expected = expected_jobs()
            settled = c.wait_settled(len(acknowledged) * len(expected), args.timeout)
            if not settled:
                c.note(f"the queue did not settle within {args.timeout:g}s after the last kill")
            if not daemon.alive():
                c.fig.add("daemon exits")
                c.note(f"the last daemon exited {daemon.proc.returncode}: {daemon.output()[-400:]}")
            daemon.stop()
        c.fig.set("snapshot reads", poller.reads)
        c.fig.set("torn reads", poller.torn)
        c.fig.set("vanished snapshots", poller.vanished)
        for example in poller.examples:
            c.note(f"torn read of queue_state.json: {example}")
        c.fig.set("submissions", len(acknowledged))
        check(c, acknowledged, expected)
        c.scan_daemon_logs()
        return c.finish()


def check(c: Campaign, acknowledged: dict[str, str], expected: dict[str, str]) -> None:
    state = c.status()
    if state is None:
        c.fig.add("lost submissions", len(acknowledged))
        return
    names: dict[str, list[str]] = {}
    for sub in state.get("submissions") or []:
        names.setdefault(sub["name"], []).append(sub["id"])
    jobs = {(j["submission"], j["id"]): j for j in state.get("jobs") or []}
    c.fig.set("jobs", len(jobs))
    c.fig.set("attempts on SSH hosts", sum(a.get("host") != "local" for j in jobs.values() for a in j["attempts"]))
    for number, name in acknowledged.items():
        ids = names.get(name, [])
        if number not in ids:
            c.fig.add("lost submissions")
            c.note(f"submission {number} ({name}) was acknowledged but is not in the queue (found as {ids})")
            continue
        if len(ids) > 1:
            c.fig.add("duplicate submissions", len(ids) - 1)
            c.note(f"{name} is in the queue {len(ids)} times: {ids}")
        for job_id, status in expected.items():
            job = jobs.get((number, job_id))
            if job is None:
                c.fig.add("lost jobs")
                c.note(f"job {number}/{job_id} is missing")
            elif job["status"] not in ("succeeded", "failed", "blocked", "cancelled"):
                c.fig.add("unfinished jobs")
                c.note(f"job {number}/{job_id} is still {job['status']}")
            elif job["status"] != status:
                c.fig.add("wrong outcomes")
                reasons = [a.get("reason") for a in job.get("attempts") or []]
                c.note(f"job {number}/{job_id} ended {job['status']} (expected {status}); attempts: {reasons}")
    double, unknown = c.check_runs(state)
    c.fig.set("double launches", double)
    c.fig.set("unrecorded runs", unknown)
    c.fig.set("job runs", sum(len(v) for v in c.runs().values()))


if __name__ == "__main__":
    sys.exit(main())
