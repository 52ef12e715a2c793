"""What `exq clean` buys after a day's use: `exq status` (default, --all, --json) and queue_state.json's size
on a queue of finished submissions plus a few live jobs, before and after cleaning (no daemon running).

    .venv/bin/python bench/clean_scale.py [--jobs 3000,30000] [--chunk 100] [--live 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from statistics import median

from _common import build_state, exq_env, file_size, run_exq, time_exq, write_manifest


def measure(env: dict[str, str], repeat: int) -> dict[str, float]:
    """Median seconds of each status command."""
    return {name: median(time_exq(args, env, 600, repeat)) for name, args in
            (("status", ["status"]), ("status --all", ["status", "--all"]), ("status --json", ["status", "--json"]))}


def one_size(root: Path, jobs: int, chunk: int, live: int, repeat: int) -> list[tuple[str, str, str]]:
    state = root / f"state-{jobs}"
    built = build_state(state, root, jobs, chunk, succeeded=jobs)
    env = exq_env(state, "2x24GiB")
    run_exq(["submit", str(write_manifest(root / "live.yaml", "live", live, gpus=4))], env, 600)  # never fits
    before, size_before = measure(env, repeat), file_size(state / "queue_state.json")
    started = time.perf_counter()
    reply = json.loads(run_exq(["clean", "--json"], env, 600, capture=True).stdout)
    took = time.perf_counter() - started
    after, size_after = measure(env, repeat), file_size(state / "queue_state.json")
    print(f"  {jobs} finished jobs in {built.submissions} submissions + {live} live: {reply['message']} "
          f"in {took:.2f} s")
    rows = [(f"{name} (s)", f"{before[name]:.2f}", f"{after[name]:.2f}") for name in before]
    rows.append(("queue_state.json (KiB)", f"{size_before / 1024:.0f}", f"{size_after / 1024:.0f}"))
    return [(f"{jobs}: {label}", b, a) for label, b, a in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="3000,30000", help="finished jobs before cleaning (comma-separated)")
    parser.add_argument("--chunk", type=int, default=100, help="jobs per submission")
    parser.add_argument("--live", type=int, default=20, help="queued jobs that stay")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each status command (median)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="exq-clean-bench-"))
    try:
        rows = [row for jobs in args.jobs.split(",") for row in one_size(root, int(jobs), args.chunk, args.live,
                                                                          args.repeat)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'figure'.ljust(width)}  {'before':>8}  {'after':>8}")
    for label, before, after in rows:
        print(f"{label.ljust(width)}  {before:>8}  {after:>8}")


if __name__ == "__main__":
    main()
