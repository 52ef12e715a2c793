"""Status at scale: `exq status` / `exq status --json` wall time, daemon start-up and RSS at 100,000 jobs.

The queue is built directly through the Store (Submitted events of 10k jobs each, then a snapshot);
`--succeeded K` also gives the first K jobs one finished attempt each. Then, with the real CLI:
`exq status` and `exq status --json` (median of 3), `exq pause` with no daemon (applied offline), the
lock + recovery time of a fresh `Store.open()`, and `exq daemon`: time from spawn to its first snapshot
(after loading the state), its RSS then, and its drain on SIGTERM. Paused, so nothing runs.

    .venv/bin/python bench/status_scale.py [--queue 100000] [--succeeded 0] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from _common import (
    PYTHON,
    Daemon,
    add_run_options,
    build_state,
    exq_env,
    file_size,
    file_version,
    fmt_bytes,
    median,
    run_exq,
    temp_workspace,
    time_exq,
)

RECOVERY = """
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
import psutil
from exq.store.store import StatePaths, Store
t1 = time.perf_counter()
store = Store(StatePaths(Path(sys.argv[1]))).open()
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "open": t2 - t1, "jobs": len(store.state.jobs),
                  "rss": psutil.Process().memory_info().rss}))
"""
"""Run in a fresh interpreter: lock + snapshot load + journal replay, then exit (the lock goes with it)."""


def _peak_rss(pid: int) -> int | None:
    """VmHWM (peak resident set) of a Linux process, in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _times(label: str, values: list[float]) -> str:
    return f"  {label}: median {median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue", type=int, default=100_000, help="jobs in the queue (default 100000)")
    parser.add_argument("--succeeded", type=int, default=0, help="of which finished with one attempt (default 0)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per status command (default 3)")
    add_run_options(parser, 180.0, "8x24GiB")
    args = parser.parse_args()

    with temp_workspace(args.keep) as root:
        state = root / "state"
        env = exq_env(state, args.gpus)
        built = build_state(state, root, args.queue, succeeded=args.succeeded)
        print(f"queue: {built.jobs} jobs ({built.succeeded} succeeded, the rest queued) in {built.submissions} "
              f"submissions, built through the Store in {built.seconds:.1f} s")
        print(f"  queue_state.json {fmt_bytes(built.snapshot_bytes)}, journal.jsonl {fmt_bytes(built.journal_bytes)}")

        print("CLI wall times (no daemon):")
        print(f"  exq --version (interpreter + imports): {run_exq(['--version'], env, args.timeout).seconds:.2f} s")
        print(_times("exq status", time_exq(["status"], env, args.timeout, args.repeat)))
        print(_times("exq status --json", time_exq(["status", "--json"], env, args.timeout, args.repeat)))
        pause = run_exq(["pause"], env, args.timeout).seconds
        print(f"  exq pause (applied offline: recover, commit, snapshot): {pause:.2f} s")

        out = subprocess.run([PYTHON, "-c", RECOVERY, str(state)], env=env, capture_output=True, check=True,
                             timeout=args.timeout)
        rec = json.loads(out.stdout)
        print(f"Store.open() in a fresh interpreter (lock + snapshot load + journal replay): {rec['open']:.2f} s "
              f"for {rec['jobs']} jobs (imports {rec['import']:.2f} s); RSS then {fmt_bytes(rec['rss'])}")

        print("exq daemon (paused):")
        before = file_version(state / "queue_state.json")
        daemon = Daemon(env).start()
        try:
            up = daemon.wait_file_change(state / "queue_state.json", before, args.timeout) - daemon.started_at
            assert daemon.proc is not None
            rss, peak = daemon.rss(), _peak_rss(daemon.proc.pid)
            print(f"  spawn -> first snapshot written (imports, lock, recovery, probe, first turn, snapshot): "
                  f"{up:.2f} s")
            print(f"  RSS after the first snapshot: {fmt_bytes(rss)}"
                  + (f" (peak so far {fmt_bytes(peak)})" if peak else ""))
            print(f"  queue_state.json now {fmt_bytes(file_size(state / 'queue_state.json'))}")
        finally:
            drain = daemon.stop(args.timeout)
        print(f"  SIGTERM -> daemon exited (drain + final snapshot): {drain:.2f} s")


if __name__ == "__main__":
    main()
