"""Dispatch latency: from one job's end to the next job's launch, when jobs queue for one GPU.

Runs N trivial jobs (`cmd: "true"`, gpus: 1, share: false) with `exq run` on simulated GPUs, then reads
`exq status --json`: for consecutive attempts on the same GPU, `next.launched_at - prev.ended_at`
(ended_at is written by the job's runner; launched_at by the scheduler, taken when the placement pass
that launches the job begins, before it walks the ready jobs), and `next.started_at - prev.ended_at`
(started_at: the runner's clock as it starts the job). The journal (kept whole at this size) gives
where the time goes in between.

    .venv/bin/python bench/dispatch_latency.py [--jobs 200] [--gpus 1x24GiB] [--backlog 0]

--backlog N first puts N queued jobs in the state that can never be placed (each needs one GPU more
than there are), as in a long queue waiting for resources: every placement pass still considers them.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections import defaultdict
from typing import Any

from _common import (
    add_run_options,
    build_state,
    exq_env,
    journal_events,
    run_exq,
    status_json,
    summary_ms,
    temp_workspace,
    write_manifest,
)

from exq.gpus.simulated import parse_gpu_spec


def _pairs(jobs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(previous, next) attempts, consecutive in launch order on the same GPU set."""
    per_gpu: dict[tuple[int, ...], list[dict[str, Any]]] = defaultdict(list)
    for job in jobs:
        for attempt in job["attempts"]:
            per_gpu[tuple(attempt["gpus"])].append(attempt)
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for attempts in per_gpu.values():
        attempts.sort(key=lambda a: a["launched_at"])
        pairs.extend(itertools.pairwise(attempts))
    return pairs


def _breakdown(pairs: list[tuple[dict[str, Any], dict[str, Any]]], events: list[dict[str, Any]]) -> None:
    """end -> Ended committed -> next Launched committed, from the journal's event times."""
    ended_at = {(e["key"], e["number"]): e["at"] for e in events if e.get("type") == "ended"}
    by_dir = {e["attempt"]["dir"]: e["key"] for e in events if e.get("type") == "launched"}
    noticed, placed = [], []
    for prev, nxt in pairs:
        key = by_dir.get(prev["dir"])
        committed = ended_at.get((key, prev["number"])) if key else None
        if committed is None or prev["ended_at"] is None:
            continue
        noticed.append(committed - prev["ended_at"])
        placed.append(nxt["launched_at"] - committed)
    if not noticed:
        print("  (journal was compacted; no breakdown)")
        return
    print("where the time goes (journal event times):")
    print("  " + summary_ms("runner end -> Ended committed (exit seen, report, classify)", noticed))
    print("  " + summary_ms("Ended committed -> next placement pass begins (settle, probe)", placed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="number of trivial jobs (default 200)")
    add_run_options(parser, 240.0, "1x24GiB")
    parser.add_argument("--cmd", default="true", help="each job's command (default: true)")
    parser.add_argument("--backlog", type=int, default=0, help="queued jobs that never fit, put there first")
    args = parser.parse_args()

    with temp_workspace(args.keep) as root:
        env = exq_env(root / "state", args.gpus)
        manifest = write_manifest(root / "latency.yaml", "latency", args.jobs, cmd=args.cmd)
        if args.backlog:
            ngpus = len(parse_gpu_spec(args.gpus))
            built = build_state(root / "state", root, args.backlog, gpus=ngpus + 1)
            print(f"backlog: {built.jobs} queued jobs needing {ngpus + 1} GPUs each (built in {built.seconds:.1f} s)")
        print(f"exq run: {args.jobs} jobs `{args.cmd}` (gpus: 1, share: false) on simulated GPUs {args.gpus}")
        t0 = time.time()
        run = run_exq(["run", str(manifest)], env, args.timeout)
        print(f"  exq run wall: {run.seconds:.2f} s ({args.jobs / run.seconds:.1f} jobs/s)")

        state, status_s = status_json(env, 60)
        mine = state["submissions"][-1]["id"]
        jobs = [j for j in state["jobs"] if j["submission"] == mine and j["status"] == "succeeded"]
        if len(jobs) != args.jobs:
            print(f"  warning: {len(jobs)} of {args.jobs} jobs succeeded")
        attempts = [a for j in jobs for a in j["attempts"]]
        first = min(a["launched_at"] for a in attempts)
        last = max(a["ended_at"] for a in attempts)
        print(f"  process start -> first launch: {(first - t0) * 1000:.0f} ms; first launch -> last end: "
              f"{last - first:.2f} s; `exq status --json`: {status_s * 1000:.0f} ms")

        pairs = _pairs(jobs)
        rows = [
            ("dispatch latency, consecutive attempts on one GPU:", None),
            ("prev.ended_at -> next.launched_at", [n["launched_at"] - p["ended_at"] for p, n in pairs]),
            ("prev.ended_at -> next.started_at", [n["started_at"] - p["ended_at"] for p, n in pairs]),
            ("for context:", None),
            ("launched_at -> started_at (placement walk, commit, runner up)",
             [a["started_at"] - a["launched_at"] for a in attempts]),
            ("started_at -> ended_at (the job itself, in its runner)",
             [a["ended_at"] - a["started_at"] for a in attempts]),
        ]
        for label, values in rows:
            print(label if values is None else "  " + summary_ms(label, values))
        _breakdown(pairs, journal_events(root / "state"))


if __name__ == "__main__":
    main()
