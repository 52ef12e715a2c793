"""Submit at scale: `exq submit` of a 10,000-job grid into a queue that already holds 100,000 jobs.

The 100k-job state is built directly through the Store (Submitted events of 10k jobs each, then a
snapshot), already paused (a PausedSet event committed first), so nothing ever runs. Then, with the real
CLI: `exq validate` of the manifest (expansion, plus printing the job table), `exq submit` (wall), and
in-process the parts `exq submit` is made of. Then `exq daemon` starts and the time until the 10k jobs
are ingested and visible in `exq status --json` is measured; a second `exq submit` while the daemon runs
gives the steady-state ingest latency. The daemon is stopped with SIGTERM.

    .venv/bin/python bench/submit_scale.py [--queue 100000] [--jobs 10000]
"""

from __future__ import annotations

import argparse
import io
import re
import time
from pathlib import Path

from _common import (
    Daemon,
    FileWatch,
    add_run_options,
    build_state,
    exq_env,
    fmt_bytes,
    run_exq,
    status_json,
    temp_workspace,
    write_manifest,
)
from rich.console import Console

from exq import api
from exq.model.manifest import load_manifest
from exq.store import intake
from exq.store.store import StatePaths
from exq.views import spec_table


def _submission_id(stdout: bytes) -> str:
    match = re.search(rb"as submission (\S+)", stdout)
    if match is None:
        raise RuntimeError(f"cannot find the submission id in {stdout!r}")
    return match.group(1).decode()


def _timed_parts(manifest: Path, scratch: Path, paths: StatePaths) -> list[tuple[str, float]]:
    """In-process timings of the parts of `exq submit` (expand, durable write, daemon check) and of
    what `exq validate` adds to the expansion (rendering the first 200 rows of the job table)."""
    clock = [time.perf_counter()]

    def lap() -> float:
        clock.append(time.perf_counter())
        return clock[-1] - clock[-2]

    spec = load_manifest(manifest)
    expand_s = lap()
    Console(file=io.StringIO(), width=120).print(spec_table(spec, limit=200))
    render_s = lap()
    intake.submit(StatePaths(scratch), spec)  # an empty state dir: the durable write alone
    write_s = lap()
    api.daemon_alive(paths)  # what `exq submit` calls afterwards, to say whether a daemon runs
    read_s = lap()
    return [
        ("load_manifest (parse + expand)", expand_s),
        ("intake.submit (number + atomic write + fsync)", write_s),
        ("api.daemon_alive (for the 'no daemon' note)", read_s),
        ("[validate only] render the job table (rich)", render_s),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue", type=int, default=100_000, help="jobs already in the queue (default 100000)")
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs in the submitted grid (default 10000)")
    add_run_options(parser, 180.0, "8x24GiB")
    args = parser.parse_args()

    with temp_workspace(args.keep) as root:
        state = root / "state"
        paths = StatePaths(state)
        env = exq_env(state, args.gpus)
        built = build_state(state, root, args.queue, paused=True)
        print(f"queue: {built.jobs} queued jobs in {built.submissions} submissions, paused (built through the "
              f"Store in {built.seconds:.1f} s; snapshot {fmt_bytes(built.snapshot_bytes)})")
        manifest = write_manifest(root / "grid.yaml", "grid", args.jobs)

        print(f"CLI wall times, {args.jobs}-job grid manifest:")
        base = run_exq(["--version"], env, args.timeout).seconds
        print(f"  exq --version (interpreter + imports): {base:.2f} s")
        validate = run_exq(["validate", str(manifest)], env, args.timeout).seconds
        print(f"  exq validate (expand + print the {args.jobs}-row table to /dev/null): {validate:.2f} s")
        submit = run_exq(["submit", str(manifest)], env, args.timeout, capture=True)
        sub_id = _submission_id(submit.stdout)
        print(f"  exq submit (no daemon, {built.jobs} jobs queued): {submit.seconds:.2f} s")
        print("in-process parts of `exq submit` (and `exq validate`):")
        for label, seconds in _timed_parts(manifest, root / "scratch", paths):
            print(f"  {label}: {seconds:.2f} s")
        pending = sorted(paths.intake.glob("[0-9]*.json"))
        print(f"  intake file: {fmt_bytes(pending[-1].stat().st_size) if pending else '?'}")

        print("ingest by `exq daemon` (paused: nothing runs):")
        daemon = Daemon(env).start()
        try:
            ingested = daemon.wait_line(f"submission {sub_id} ", args.timeout) - daemon.started_at
            print(f"  daemon start -> submission {sub_id} ingested (journal event committed): {ingested:.2f} s")
            asked = time.perf_counter()
            data, status_s = status_json(env, args.timeout)
            seen = sum(1 for j in data["jobs"] if j["submission"] == sub_id)
            answered = asked + status_s - daemon.started_at
            print(f"  exq status --json shows {seen}/{args.jobs} of them, {len(data['jobs'])} jobs in all; "
                  f"that call took {status_s:.2f} s (answered {answered:.2f} s after daemon start)")
            del data

            sub2 = str(int(sub_id) + 1)
            landed = FileWatch(paths.intake / f"{int(sub2):09d}.json", args.timeout)
            second = run_exq(["submit", str(manifest)], env, args.timeout, capture=True)
            returned = time.perf_counter()
            if _submission_id(second.stdout) != sub2:
                raise RuntimeError(f"expected submission {sub2}, got {second.stdout!r}")
            print(f"  exq submit while the daemon runs ({built.jobs + args.jobs} jobs queued): {second.seconds:.2f} s")
            taken = daemon.wait_line(f"submission {sub2} ", args.timeout)
            print(f"  intake file written -> submission {sub2} ingested by the running daemon: "
                  f"{taken - landed.wait():.2f} s ({taken - returned:+.2f} s from `exq submit` returning)")
        finally:
            drain = daemon.stop(args.timeout)
        print(f"  SIGTERM -> daemon exited (drain + final snapshot): {drain:.2f} s")


if __name__ == "__main__":
    main()
