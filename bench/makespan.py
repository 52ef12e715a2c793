"""Makespan: N trivial jobs with `exq run` on simulated GPUs, next to `xargs -P` running the same commands.

exq runs N jobs `cmd: "true"` (gpus: 1, share: false) on 8 simulated GPUs; xargs runs `sh -c true`
N times, 8 at a time. Both are timed as whole processes (wall); for exq the state also says how the
wall time splits into start-up, the scheduling span (first launch to last end) and wind-down.

    .venv/bin/python bench/makespan.py [--jobs 2000] [--gpus 8x24GiB] [--parallel 8]
"""

from __future__ import annotations

import argparse
import subprocess
import time

from _common import add_run_options, exq_env, run_exq, status_json, temp_workspace, write_manifest


def xargs_wall(jobs: int, parallel: int, cmd: str, timeout: float) -> float:
    """Wall time of `xargs -P PARALLEL -L 1 sh -c` over JOBS lines of CMD."""
    lines = (cmd + "\n") * jobs
    started = time.perf_counter()
    subprocess.run(["xargs", "-P", str(parallel), "-L", "1", "sh", "-c"], input=lines.encode(),
                   stdout=subprocess.DEVNULL, check=True, timeout=timeout)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000, help="number of trivial jobs (default 2000)")
    add_run_options(parser, 300.0, "8x24GiB")
    parser.add_argument("--parallel", type=int, default=8, help="xargs -P (default 8, one per GPU)")
    parser.add_argument("--cmd", default="true", help="each job's command (default: true)")
    args = parser.parse_args()

    with temp_workspace(args.keep) as root:
        env = exq_env(root / "state", args.gpus)
        manifest = write_manifest(root / "makespan.yaml", "makespan", args.jobs, cmd=args.cmd)

        base = xargs_wall(args.jobs, args.parallel, args.cmd, args.timeout)
        print(f"xargs -P {args.parallel}: {args.jobs} x `sh -c {args.cmd}`: {base:.2f} s "
              f"({args.jobs / base:.0f} jobs/s)")

        t0 = time.time()
        run = run_exq(["run", str(manifest)], env, args.timeout)
        t1 = time.time()
        print(f"exq run on {args.gpus} (simulated): {args.jobs} x `{args.cmd}`: {run.seconds:.2f} s "
              f"({args.jobs / run.seconds:.1f} jobs/s)")
        print(f"ratio exq/xargs: {run.seconds / base:.1f}x")

        state, _ = status_json(env, 120)
        attempts = [a for j in state["jobs"] for a in j["attempts"]]
        ok = sum(j["status"] == "succeeded" for j in state["jobs"])
        first = min(a["launched_at"] for a in attempts)
        last = max(a["ended_at"] for a in attempts)
        busy = sum(a["ended_at"] - a["launched_at"] for a in attempts)
        print(f"  exq: {ok}/{args.jobs} succeeded in {len(attempts)} attempts")
        print(f"  exq: start-up (process start -> first launch) {first - t0:.2f} s; scheduling span "
              f"(first launch -> last end) {last - first:.2f} s; wind-down (last end -> exit, incl. the "
              f"final {args.jobs}-row table) {t1 - last:.2f} s")
        print(f"  exq: mean jobs in flight over the span {busy / (last - first):.2f} (of {args.parallel} slots)")


if __name__ == "__main__":
    main()
