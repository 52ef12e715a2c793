"""Remote launch: trivial jobs on SSH hosts (real sshd on 127.0.0.x) next to the same jobs on local GPUs.

Every run is `exq run` of N jobs `cmd: "true"` (gpus: 1, share: false) in a fresh temporary state dir
with its own EXQ_CONFIG. The SSH hosts come from tests/sshhosts.py: one `sshd -D` per host on loopback,
one system user each, and the fake `nvidia-smi` test double on its PATH (so the GPUs are simulated on
both sides). The jobs' workdir is a temporary 0777 directory under /tmp, usable by the hosts' users.

    .venv/bin/python bench/remote_launch.py [--jobs 100] [--throughput-jobs 300]

1. local only, EXQ_SIMULATE_GPUS=1x24GiB, no hosts in the config: --jobs jobs on one GPU;
2. one SSH host h1 (1x24GiB), `local: {enabled: false}`: the same jobs;
3. --throughput-jobs jobs on two SSH hosts with 4 GPUs each, local disabled, and the same jobs on local
   only with EXQ_SIMULATE_GPUS=8x24GiB.

For each run it prints the wall time and jobs/s of `exq run`, from `exq status --json` the dispatch
latency (consecutive attempts on one GPU: prev.ended_at -> next.launched_at and -> next.started_at),
the launch latency (launched_at -> started_at) and the mean jobs in flight, and from the journal's event
times where each job's cycle goes. For SSH runs it also counts the SSH sessions (one per remote command)
each sshd logged, and times single commands over one open asyncssh connection for context. Needs root
(the hosts are system users) and /usr/sbin/sshd. Hosts, users and temporary directories are removed.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import itertools
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from _common import (
    add_run_options,
    exq_env,
    journal_events,
    percentile,
    run_exq,
    status_json,
    summary_ms,
    temp_workspace,
)

from exq.gpus.nvidia_smi import PROBE_COMMAND
from exq.workers.ssh import SshWorker

TESTS = Path(__file__).resolve().parent.parent / "tests"
SSH_POLL_INTERVAL: float = inspect.signature(SshWorker).parameters["poll_interval"].default
"""SshWorker's default poll_interval (0.5 s): the sleep between two rounds of its per-host poll command."""


def _sshhosts() -> ModuleType:
    """tests/sshhosts.py (real sshd servers on loopback, one system user each, fake nvidia-smi)."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import sshhosts

    return sshhosts


# ----------------------------------------------------------------------------------- workspace


def write_jobs(path: Path, name: str, n: int, workdir: Path) -> Path:
    """n trivial jobs `true` (gpus: 1, share: false) with an absolute workdir."""
    path.write_text(
        f"name: {name}\nworkdir: {workdir}\ngpus: 1\nshare: false\n"
        f"grid:\n  i: [{', '.join(map(str, range(n)))}]\nid: \"j{{i}}\"\ncmd: \"true\"\n",
        encoding="utf-8",
    )
    return path


def write_config(path: Path, hosts: Any | None) -> Path:
    """EXQ_CONFIG: no hosts (local only), or the SSH hosts of `hosts` with local disabled."""
    if hosts is None:
        path.write_text("hosts: {}\n", encoding="utf-8")
        return path
    lines = ["hosts:"]
    lines += [f"  {h.name}: {{address: {h.name}, ssh_config: {hosts.client_config}}}" for h in hosts]
    lines.append("  local: {enabled: false}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------ one run


@dataclass
class RunResult:
    label: str
    jobs: int
    wall: float
    attempts: list[dict[str, Any]]
    pairs: list[tuple[dict[str, Any], dict[str, Any]]]
    startup: float
    span: float
    in_flight: float
    journal: dict[str, dict[tuple[str, int], float]]
    """Event time per event type ('started', 'ended') and (key, number)."""
    keys: dict[str, str]
    """Job key per attempt dir."""
    sessions: int | None = None

    @property
    def rate(self) -> float:
        return self.jobs / self.wall if self.wall else 0.0


def _pairs(attempts: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(previous, next) attempts, consecutive in launch order on the same host and GPU set."""
    per_gpu: dict[tuple[str, tuple[int, ...]], list[dict[str, Any]]] = defaultdict(list)
    for attempt in attempts:
        per_gpu[attempt["host"], tuple(attempt["gpus"])].append(attempt)
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for group in per_gpu.values():
        group.sort(key=lambda a: a["launched_at"])
        pairs.extend(itertools.pairwise(group))
    return pairs


def _journal(state_dir: Path) -> tuple[dict[str, dict[tuple[str, int], float]], dict[str, str]]:
    times: dict[str, dict[tuple[str, int], float]] = {"started": {}, "ended": {}}
    keys: dict[str, str] = {}
    for event in journal_events(state_dir):
        kind = event.get("type")
        if kind in times:
            times[kind][event["key"], event["number"]] = event["at"]
        elif kind == "launched":
            keys[event["attempt"]["dir"]] = event["key"]
    return times, keys


def run_jobs(label: str, root: Path, workdir: Path, n: int, gpus: str | None, hosts: Any | None,
             timeout: float) -> RunResult:
    """`exq run` of n trivial jobs in a fresh state dir; the figures from its state and journal."""
    state_dir = root / f"state-{label}"
    env = exq_env(state_dir, gpus)
    env["EXQ_CONFIG"] = str(write_config(root / f"config-{label}.yaml", hosts))
    manifest = write_jobs(root / f"{label}.yaml", label, n, workdir)
    before = {h.name: h.log.count("Starting session:") for h in hosts} if hosts is not None else {}
    t0 = time.time()
    run = run_exq(["run", str(manifest)], env, timeout, check=False)
    if run.returncode != 0:
        print(f"  warning: exq run exited {run.returncode}: {run.stderr.decode(errors='replace')[-1500:]}")
    state, _ = status_json(env, 60)
    jobs = state["jobs"]
    ok = sum(j["status"] == "succeeded" for j in jobs)
    attempts = [a for j in jobs for a in j["attempts"] if a["ended_at"] is not None and a["started_at"]]
    if ok != n or len(attempts) != n:
        print(f"  warning: {ok} of {n} jobs succeeded, {len(attempts)} finished attempts")
    if not attempts:
        said = run.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"{label}: no attempt finished; exq run said:\n{said}")
    first = min(a["launched_at"] for a in attempts)
    last = max(a["ended_at"] for a in attempts)
    busy = sum(a["ended_at"] - a["launched_at"] for a in attempts)
    times, keys = _journal(state_dir)
    sessions = sum(h.log.count("Starting session:") - before[h.name] for h in hosts) if hosts is not None else None
    return RunResult(label, n, run.seconds, attempts, _pairs(attempts), first - t0, last - first,
                     busy / (last - first) if last > first else 0.0, times, keys, sessions)


# ---------------------------------------------------------------------------------- printing


def _cycle(result: RunResult) -> list[tuple[str, list[float]]]:
    """Each attempt's life from the journal: launch, start, end, Ended committed, next launch."""
    launch_to_start, start_commit, job, end_commit, to_next = [], [], [], [], []
    for a in result.attempts:
        key = result.keys.get(a["dir"])
        started = result.journal["started"].get((key, a["number"])) if key else None
        launch_to_start.append(a["started_at"] - a["launched_at"])
        job.append(a["ended_at"] - a["started_at"])
        if started is not None:
            start_commit.append(started - a["started_at"])
    for prev, nxt in result.pairs:
        key = result.keys.get(prev["dir"])
        ended = result.journal["ended"].get((key, prev["number"])) if key else None
        if ended is not None:
            end_commit.append(ended - prev["ended_at"])
            to_next.append(nxt["launched_at"] - ended)
    return [
        ("launched_at -> started_at (Launched committed, launch sent, runner up)", launch_to_start),
        ("started_at -> Started committed (launch returns: pid seen, answer back)", start_commit),
        ("started_at -> ended_at (the job and its runner)", job),
        ("ended_at -> Ended committed (exit noticed: poll, report, classify, fsync)", end_commit),
        ("Ended committed -> next launched_at (settle, probe, placement pass)", to_next),
    ]


def print_run(result: RunResult, slots: int) -> None:
    print(f"  exq run wall: {result.wall:.2f} s ({result.rate:.1f} jobs/s); process start -> first launch "
          f"{result.startup:.2f} s; first launch -> last end {result.span:.2f} s; mean jobs in flight "
          f"{result.in_flight:.2f} of {slots}")
    print("  dispatch latency, consecutive attempts on one GPU:")
    print("    " + summary_ms("prev.ended_at -> next.launched_at", [n["launched_at"] - p["ended_at"]
                                                                        for p, n in result.pairs]))
    print("    " + summary_ms("prev.ended_at -> next.started_at", [n["started_at"] - p["ended_at"]
                                                                       for p, n in result.pairs]))
    print("  launch latency:")
    print("    " + summary_ms("launched_at -> started_at", [a["started_at"] - a["launched_at"]
                                                                for a in result.attempts]))
    if result.sessions is not None:
        print(f"  SSH sessions (remote commands) logged by sshd: {result.sessions} "
              f"({result.sessions / result.jobs:.1f} per job)")


def print_cycle(result: RunResult) -> None:
    rows = _cycle(result)
    if not rows[-1][1]:
        print("  (journal was compacted; no breakdown)")
        return
    print("  where each job's time goes (state and journal event times):")
    for label, values in rows:
        print("    " + summary_ms(label, values))
    total = sum(percentile(values, 50) for _, values in rows if values)
    print(f"    sum of the p50s (one GPU's cycle per job): {total * 1000:.1f} ms")
    noticed = rows[3][1]
    late = sum(v >= SSH_POLL_INTERVAL for v in noticed)
    if late:
        print(f"    ends noticed {SSH_POLL_INTERVAL:g} s or more after the runner ended (a whole SSH poll "
              f"interval): {late} of {len(noticed)} ({100 * late / len(noticed):.0f}%)")


def print_comparison(local: RunResult, remote: RunResult) -> None:
    """p50 / p99 of the main figures side by side."""
    def figures(r: RunResult) -> list[tuple[str, list[float]]]:
        return [
            ("prev.ended_at -> next.launched_at", [n["launched_at"] - p["ended_at"] for p, n in r.pairs]),
            ("prev.ended_at -> next.started_at", [n["started_at"] - p["ended_at"] for p, n in r.pairs]),
            ("launched_at -> started_at", [a["started_at"] - a["launched_at"] for a in r.attempts]),
            *[(label.split(" (")[0], values) for label, values in _cycle(r)[1:] if "job" not in label],
        ]

    print(f"  {'ms':<46} {'local p50':>10} {'p99':>8}  {'ssh p50':>9} {'p99':>8}  {'ratio p50':>9}")
    for (label, lv), (_, rv) in zip(figures(local), figures(remote), strict=True):
        if not lv or not rv:
            continue
        lp, rp = percentile(lv, 50) * 1000, percentile(rv, 50) * 1000
        ratio = f"{rp / lp:.1f}x" if lp > 0 else "-"
        print(f"  {label:<46} {lp:>10.1f} {percentile(lv, 99) * 1000:>8.1f}  {rp:>9.1f} "
              f"{percentile(rv, 99) * 1000:>8.1f}  {ratio:>9}")
    print(f"  {'wall s / jobs/s':<46} {local.wall:>10.2f} {local.rate:>8.1f}  {remote.wall:>9.2f} "
          f"{remote.rate:>8.1f}  {remote.wall / local.wall:>8.1f}x")


# ------------------------------------------------------------------------------ round trips


async def _round_trips(host: Any, count: int) -> dict[str, list[float]]:
    """Wall times of single commands over one open asyncssh connection, as the SSH worker sends them."""
    import asyncssh

    times: dict[str, list[float]] = {"true": [], "nvidia-smi probe": []}
    async with asyncio.timeout(60):
        started = time.perf_counter()
        async with asyncssh.connect(**host.connect_options()) as conn:
            connect = time.perf_counter() - started
            for _ in range(count):
                for label, command in (("true", "true"), ("nvidia-smi probe", PROBE_COMMAND)):
                    t = time.perf_counter()
                    await conn.run(command, check=True)
                    times[label].append(time.perf_counter() - t)
    times["connect + auth (asyncssh)"] = [connect]
    return times


def print_round_trips(host: Any, count: int) -> None:
    try:
        times = asyncio.run(_round_trips(host, count))
    except Exception as exc:  # context only: a failure here must not hide the runs' figures
        print(f"  (round trips not measured: {exc})")
        return
    print(f"  context, one asyncssh connection to {host.name} ({count} commands each, one at a time):")
    for label, values in times.items():
        print("    " + summary_ms(label, values))


# ------------------------------------------------------------------------------------- main


def _with_hosts(root: Path, specs: list[tuple[str, str]]) -> Any:
    started = time.perf_counter()
    hosts = _sshhosts().start_hosts(root / f"ssh-{'-'.join(name for name, _ in specs)}", specs)
    print(f"  (started {', '.join(f'{n} {g}' for n, g in specs)} in {time.perf_counter() - started:.1f} s)")
    return hosts


def latency_part(args: argparse.Namespace, root: Path, workdir: Path) -> None:
    print(f"== 1. local only: {args.jobs} jobs `true` (gpus: 1) on simulated 1x24GiB ==")
    local = run_jobs("local1", root, workdir, args.jobs, "1x24GiB", None, args.timeout)
    print_run(local, 1)
    print_cycle(local)

    print(f"\n== 2. one SSH host h1 (1x24GiB, fake nvidia-smi), local disabled: {args.jobs} jobs ==")
    hosts = _with_hosts(root, [("h1", "1x24GiB")])
    try:
        remote = run_jobs("ssh1", root, workdir, args.jobs, None, hosts, args.timeout)
        print_run(remote, 1)
        print_cycle(remote)
        print_round_trips(hosts["h1"], args.round_trips)
    finally:
        hosts.close()
    print("\n== local vs SSH, one GPU ==")
    print_comparison(local, remote)


def throughput_part(args: argparse.Namespace, root: Path, workdir: Path) -> None:
    n = args.throughput_jobs
    print(f"\n== 3. throughput: {n} jobs over 2 SSH hosts h1, h2 with 4x24GiB each, local disabled ==")
    hosts = _with_hosts(root, [("h1", "4x24GiB"), ("h2", "4x24GiB")])
    try:
        remote = run_jobs("ssh2x4", root, workdir, n, None, hosts, args.timeout)
    finally:
        hosts.close()
    print_run(remote, 8)
    per_host = defaultdict(int)
    for a in remote.attempts:
        per_host[a["host"]] += 1
    print(f"  attempts per host: {dict(sorted(per_host.items()))}")
    print_cycle(remote)

    print(f"\n   the same {n} jobs on local only, simulated 8x24GiB:")
    local = run_jobs("local8", root, workdir, n, "8x24GiB", None, args.timeout)
    print_run(local, 8)
    print_cycle(local)
    print(f"\n== throughput, 8 slots: local {local.wall:.2f} s ({local.rate:.1f} jobs/s, {local.in_flight:.2f} "
          f"in flight) vs SSH {remote.wall:.2f} s ({remote.rate:.1f} jobs/s, {remote.in_flight:.2f} in flight): "
          f"SSH/local wall {remote.wall / local.wall:.1f}x ==")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100, help="jobs of runs 1 and 2, one GPU (default 100)")
    parser.add_argument("--throughput-jobs", type=int, default=300,
                        help="jobs of run 3, 8 GPUs (default 300; 0 skips run 3)")
    parser.add_argument("--round-trips", type=int, default=20, help="single commands timed for context (default 20)")
    add_run_options(parser, 300.0)
    args = parser.parse_args()
    reason = _sshhosts().skip_reason()
    if reason:
        sys.exit(f"cannot start SSH hosts: {reason}")

    started = time.perf_counter()
    with temp_workspace(args.keep) as root, temp_workspace(args.keep, "exq-bench-remote-", 0o777) as workdir:
        if args.jobs > 0:
            latency_part(args, root, workdir)
        if args.throughput_jobs > 0:
            throughput_part(args, root, workdir)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
