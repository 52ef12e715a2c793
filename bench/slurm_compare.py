"""exq on a Slurm host against plain sbatch (one per job) and one `sbatch --array`, on the same single-node
test Slurm (tests/slurmcluster.py: four fake GPUs), in one run: N trivial jobs of one GPU each, from the first
submission until every job has ended; then, with a limit N (`--limit`), `sbatch --array=...%N` against exq with
`max_parallel: N`, counting the sbatch calls exq made. Needs root and Debian's slurm-wlm and munge
(`sh tests/setup.sh`).

    .venv/bin/python bench/slurm_compare.py [--sizes 200,2000] [--limit 2] [--timeout 1800]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import exq_env, run_exq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from slurmcluster import SlurmCluster, skip_reason, start_cluster  # the tests' cluster


def wait_done(cluster: SlurmCluster, name: str, count: int, timeout: float) -> None:
    """Until squeue shows `count` tasks named `name`, all ended (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = cluster.run("squeue", "-h", "-r", "-t", "all", "-n", name, "-o", "%T").stdout.split()
        if len(out) >= count and all(state not in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING")
                                     for state in out):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{name}: not all {count} jobs ended within {timeout:g}s")


def plain_sbatch(cluster: SlurmCluster, n: int, timeout: float) -> float:
    started = time.perf_counter()
    for _ in range(n):
        cluster.run("sbatch", "--parsable", f"--partition={cluster.partition}", "--gres=gpu:1", "--job-name=plain",
                    "--output=/dev/null", "--wrap", "true")
    wait_done(cluster, "plain", n, timeout)
    return time.perf_counter() - started


def array_sbatch(cluster: SlurmCluster, n: int, timeout: float, limit: int = 0) -> float:
    """Arrays of at most 1,000 tasks (Slurm's default MaxArraySize), as a user must split them; `%limit` each
    (run one after the other then, so that the limit holds over all)."""
    started = time.perf_counter()
    name = f"array{limit}"
    for first in range(0, n, 1000):
        size = min(1000, n - first)
        throttle = f"%{limit}" if limit else ""
        cluster.run("sbatch", "--parsable", f"--partition={cluster.partition}", "--gres=gpu:1", f"--job-name={name}",
                    f"--array=0-{size - 1}{throttle}", "--output=/dev/null", "--wrap", "true")
        if limit:
            wait_done(cluster, name, first + size, timeout)
    wait_done(cluster, name, n, timeout)
    return time.perf_counter() - started


def exq_run(cluster: SlurmCluster, root: Path, n: int, timeout: float, limit: int = 0) -> tuple[float, int]:
    """Seconds, and how many sbatch calls exq made (its batch scripts)."""
    config = root / "config.yaml"
    config.write_text(f"hosts:\n  local: {{enabled: false}}\n"
                      f"  cluster: {{kind: slurm, partition: {cluster.partition}, root: {root / 'exq-root'}}}\n")
    manifest = root / "grid.yaml"
    manifest.write_text(f"name: bench\nworkdir: {root}\ngpus: 1\ngrid: {{i: [{', '.join(map(str, range(n)))}]}}\n"
                        + (f"max_parallel: {limit}\n" if limit else "") + "cmd: 'true'\n")
    env = {**exq_env(root / "state", None), **cluster.env, "EXQ_CONFIG": str(config)}
    seconds = run_exq(["run", str(manifest)], env, timeout).seconds
    return seconds, len(list((root / "exq-root").glob("*/batches/*.sh")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200,2000", help="job counts (comma-separated)")
    parser.add_argument("--limit", type=int, default=2, help="N of the throttled pair (0: skip it)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="bound on each measurement, seconds")
    args = parser.parse_args()
    if (why := skip_reason()) is not None:
        sys.exit(f"slurm_compare: {why}")
    root = Path(tempfile.mkdtemp(prefix="exq-slurm-bench-", dir="/tmp"))
    cluster = start_cluster(root / "slurm")
    rows: list[tuple[int, float, float, float, int]] = []
    limited: list[tuple[int, float, float, int]] = []
    try:
        for n in map(int, args.sizes.split(",")):
            work = root / f"n{n}"
            work.mkdir()
            plain = plain_sbatch(cluster, n, args.timeout)
            print(f"  {n} jobs, sbatch each: {plain:.1f} s")
            array = array_sbatch(cluster, n, args.timeout)
            print(f"  {n} jobs, sbatch --array: {array:.1f} s")
            seconds, calls = exq_run(cluster, work, n, args.timeout)
            print(f"  {n} jobs, exq on the Slurm host: {seconds:.1f} s, {calls} sbatch call(s)")
            rows.append((n, plain, array, seconds, calls))
            if args.limit:
                array = array_sbatch(cluster, n, args.timeout, args.limit)
                print(f"  {n} jobs, sbatch --array %{args.limit}: {array:.1f} s")
                (work / "limited").mkdir()
                seconds, calls = exq_run(cluster, work / "limited", n, args.timeout, args.limit)
                print(f"  {n} jobs, exq with max_parallel {args.limit}: {seconds:.1f} s, {calls} sbatch call(s)")
                limited.append((n, array, seconds, calls))
    except (subprocess.SubprocessError, TimeoutError, RuntimeError, AssertionError) as exc:
        print(f"slurm_compare: {exc}")
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{'jobs':>6}  {'sbatch each (s)':>16}  {'sbatch --array (s)':>19}  {'exq (s)':>8}  exq / array  "
          "exq's sbatch calls")
    for n, plain, array, exq, calls in rows:
        print(f"{n:>6}  {plain:>16.1f}  {array:>19.1f}  {exq:>8.1f}  {exq / array:>10.2f}x  {calls}")
    if limited:
        print(f"\n{'jobs':>6}  {f'--array %{args.limit} (s)':>19}  {f'exq max_parallel {args.limit} (s)':>24}  "
              "exq / array  exq's sbatch calls")
        for n, array, exq, calls in limited:
            print(f"{n:>6}  {array:>19.1f}  {exq:>24.1f}  {exq / array:>10.2f}x  {calls}")


if __name__ == "__main__":
    main()
