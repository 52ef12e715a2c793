"""The state directory's disk filled to the last byte and freed again, over and over, while a daemon
runs jobs that write their output into the state's job directories and `exq submit` / `exq cancel` run;
now and then the daemon is kill -9'd while the disk is full and started again on the full disk.

Needs root (it mounts a small tmpfs; always unmounted). A submit or cancel on a full disk may refuse
with exit 3 (never another code, never a traceback); every one that exited 0 must hold: the
submission is in the queue with all its jobs, each job ran exactly once (per-job marker files outside
the tmpfs) and ended succeeded, or cancelled when a cancel named it; the daemon never exits.

    sudo .venv/bin/python campaigns/full_disk.py --count 10 [--size 4m] [--seed 1] [--json out.json]
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from campaigns._harness import Campaign, Daemon, Result, last_line, manifest_yaml, needs_root, parser, run_main

SUBMITTED_RE = re.compile(r"as submission (\S+) \(")
CANCELLED_RE = re.compile(r"cancelled (\d+) job")

MUST_ZERO = ["unexpected exits", "lost submissions", "lost jobs", "double runs", "wrong outcomes", "daemon exits",
             "unsettled"]
OTHER = ["fills", "kill -9 on a full disk", "submits", "acknowledged", "refused submits", "cancels",
         "refused cancels", "jobs", "daemon full-disk messages"]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], count=10, timeout=120)
    p.add_argument("--size", default="4m", help="size of the tmpfs holding the state dir (default 4m)")
    args = p.parse_args(argv)
    if (code := needs_root("full_disk")) is not None:
        return code
    return run_main("full_disk", lambda: run(args))


def run(args: Any) -> int:
    from faults import fill_disk, small_tmpfs  # tests/faults.py

    with Campaign("full_disk", args, MUST_ZERO, OTHER) as c:
        fs = c.stack.enter_context(small_tmpfs(c.root / "fs", args.size))
        env = c.use_state(fs / "state")
        c.stack.callback(c._stop_everything)  # before the unmount: nothing may hold the tmpfs open
        acknowledged: dict[str, tuple[str, list[str]]] = {}
        cancelled: set[str] = set()

        def submit(tag: str) -> None:
            name = f"{tag}-{len(acknowledged)}-{c.rng.randrange(10**6)}"
            jobs = [f"out{i}" for i in range(c.rng.randint(1, 3))] + ["gpu_out"]
            path = c.root / f"{name}.yaml"
            path.write_text(manifest_yaml(name, [
                {"name": "cpu", "gpus": 0, "grid": {"j": jobs[:-1]}, "id": "{j}", "cmd": c.job_cmd(15)},
                {"name": "gpu", "gpus": 1, "gpu_memory": "4GiB", "share": True, "id": "gpu_out",
                 "cmd": c.job_cmd(10)}], workdir=str(c.shared)))
            result = c.exq("submit", str(path), env=env)
            c.fig.add("submits")
            if judge(c, result, "refused submits"):
                acknowledged[SUBMITTED_RE.search(result.out).group(1)] = (name, jobs)  # type: ignore[union-attr]

        def cancel(_tag: str = "") -> None:
            if not acknowledged:
                return
            number = c.rng.choice(sorted(acknowledged))
            result = c.exq("cancel", "--submission", number, env=env)
            c.fig.add("cancels")
            if judge(c, result, "refused cancels") and (m := CANCELLED_RE.search(result.out)) and int(m.group(1)):
                cancelled.add(number)

        submit("warm")
        daemon = c.start_daemon(env=env)
        for _ in range(args.count):
            time.sleep(c.rng.uniform(0.2, 1.5))
            filler = fill_disk(fs)
            c.fig.add("fills")
            for _ in range(c.rng.randint(1, 3)):
                c.rng.choice([submit, submit, cancel])("full")
            daemon = while_full(c, daemon, env)
            filler.unlink()
            submit("free")
            if c.rng.random() < 0.5:
                cancel()  # with room again: an acknowledged cancel must cancel
        if not c.wait_settled(sum(len(j) for _, j in acknowledged.values()), args.timeout):
            c.fig.add("unsettled")
            c.note(f"the queue did not settle within {args.timeout:g}s")
        if not daemon.alive():
            c.fig.add("daemon exits")
        daemon.stop()
        c.fig.set("daemon full-disk messages", sum(d.output().count("cannot write") for d in c.daemons))
        check(c, env, acknowledged, cancelled)
        c.scan_daemon_logs()
        return c.finish()


def while_full(c: Campaign, daemon: Daemon, env: dict[str, str]) -> Daemon:
    """Let the daemon face the full disk a while; sometimes kill -9 it and start it again on the full disk."""
    time.sleep(c.rng.uniform(0.0, 1.0))
    if c.rng.random() < 0.3:
        daemon.kill9()
        c.fig.add("kill -9 on a full disk")
        daemon = c.start_daemon(env=env)
        time.sleep(c.rng.uniform(0.5, 1.5))
    if not daemon.alive():
        c.fig.add("daemon exits")
        c.note(f"the daemon exited {daemon.proc.returncode} on a full disk: {last_line(daemon.output())}")
        daemon = c.start_daemon(env=env)
    return daemon


def judge(c: Campaign, result: Result, refused: str) -> bool:
    """True when the command succeeded; counts exit 3 as `refused`, anything else as unexpected."""
    if result.rc == 0:
        if "submit" in result.args:
            c.fig.add("acknowledged")
        return True
    if result.rc == 3:
        c.fig.add(refused)
        if "No space left" not in result.err and "full" not in result.err:
            c.note(f"exq {' '.join(result.args[:1])} refused with exit 3 but no word of a full disk: "
                   f"{last_line(result.err)}")
        return False
    c.fig.add("unexpected exits")
    c.note(f"exq {' '.join(result.args)} exited {result.rc}: {last_line(result.err)}")
    return False


def check(c: Campaign, env: dict[str, str], acknowledged: dict[str, tuple[str, list[str]]],
          cancelled: set[str]) -> None:
    state = c.status(env=env)
    if state is None:
        c.fig.add("lost submissions", len(acknowledged))
        return
    names = {s["id"]: s["name"] for s in state.get("submissions") or []}
    jobs = {(j["submission"], j["id"]): j for j in state.get("jobs") or []}
    c.fig.set("jobs", len(jobs))
    runs = c.runs()
    for number, (name, ids) in acknowledged.items():
        if names.get(number) != name:
            c.fig.add("lost submissions")
            c.note(f"submission {number} ({name}) acknowledged, the queue has {names.get(number)!r}")
            continue
        for job_id in ids:
            job = jobs.get((number, job_id))
            if job is None:
                c.fig.add("lost jobs")
                c.note(f"job {number}/{job_id} is missing")
                continue
            ran = runs.get(f"{number}-{job_id}", [])
            if len(ran) > 1:
                c.fig.add("double runs")
                c.note(f"{number}/{job_id} ran {len(ran)} times (attempts {ran}); reasons: "
                       f"{[a.get('reason') for a in job['attempts']]}")
            ok = {"succeeded", "cancelled"} if number in cancelled else {"succeeded"}
            if job["status"] not in ok:
                c.fig.add("wrong outcomes")
                c.note(f"{number}/{job_id} ended {job['status']} after {len(ran)} run(s): {job.get('reason')}")


if __name__ == "__main__":
    sys.exit(main())
