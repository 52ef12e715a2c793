"""exq on a Slurm host against plain sbatch (one per job) and one `sbatch --array`, on the same single-node
test Slurm (tests/slurmcluster.py: four fake GPUs), in one run: N trivial jobs of one GPU each, from the first
submission until every job has ended. Needs root and Debian's slurm-wlm and munge (`sh tests/setup.sh`).

    .venv/bin/python bench/slurm_compare.py [--sizes 200,2000] [--timeout 1800]
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


def array_sbatch(cluster: SlurmCluster, n: int, timeout: float) -> float:
    """Arrays of at most 1,000 tasks (Slurm's default MaxArraySize), as a user must split them."""
    started = time.perf_counter()
    for first in range(0, n, 1000):
        size = min(1000, n - first)
        cluster.run("sbatch", "--parsable", f"--partition={cluster.partition}", "--gres=gpu:1", "--job-name=array",
                    f"--array=0-{size - 1}", "--output=/dev/null", "--wrap", "true")
    wait_done(cluster, "array", n, timeout)
    return time.perf_counter() - started


def exq_run(cluster: SlurmCluster, root: Path, n: int, timeout: float) -> float:
    config = root / "config.yaml"
    config.write_text(f"hosts:\n  local: {{enabled: false}}\n"
                      f"  cluster: {{kind: slurm, partition: {cluster.partition}, root: {root / 'exq-root'}}}\n")
    manifest = root / "grid.yaml"
    manifest.write_text(f"name: bench\nworkdir: {root}\ngpus: 1\ngrid: {{i: [{', '.join(map(str, range(n)))}]}}\n"
                        "cmd: 'true'\n")
    env = {**exq_env(root / "state", None), **cluster.env, "EXQ_CONFIG": str(config)}
    return run_exq(["run", str(manifest)], env, timeout).seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200,2000", help="job counts (comma-separated)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="bound on each measurement, seconds")
    args = parser.parse_args()
    if (why := skip_reason()) is not None:
        sys.exit(f"slurm_compare: {why}")
    root = Path(tempfile.mkdtemp(prefix="exq-slurm-bench-", dir="/tmp"))
    cluster = start_cluster(root / "slurm")
    rows: list[tuple[int, float, float, float]] = []
    try:
        for n in map(int, args.sizes.split(",")):
            work = root / f"n{n}"
            work.mkdir()
            figures = []
            for measure in (plain_sbatch, array_sbatch):
                figures.append(measure(cluster, n, args.timeout))
                print(f"  {n} jobs, {measure.__name__}: {figures[-1]:.1f} s")
            figures.append(exq_run(cluster, work, n, args.timeout))
            print(f"  {n} jobs, exq on the Slurm host: {figures[-1]:.1f} s")
            rows.append((n, *figures))
    except (subprocess.SubprocessError, TimeoutError, RuntimeError, AssertionError) as exc:
        print(f"slurm_compare: {exc}")
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{'jobs':>6}  {'sbatch each (s)':>16}  {'sbatch --array (s)':>19}  {'exq (s)':>8}  exq / array")
    for n, plain, array, exq in rows:
        print(f"{n:>6}  {plain:>16.1f}  {array:>19.1f}  {exq:>8.1f}  {exq / array:.2f}x")


if __name__ == "__main__":
    main()
