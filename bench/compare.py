"""Compare: exq next to xargs, task-spooler and HyperQueue on the same trivial jobs, one table of medians.

Every figure is taken `--rounds` times (default 3), the tools interleaved round-robin (exq, xargs, tsp,
hq, exq, xargs, ...) in this process tree; the table gives each figure's median over the rounds and,
for another tool, the ratio exq / that tool. A tool that is not there gets `missing: WHAT (how to
install)` in its cells. All waits are bounded (`--timeout` each); every process started is stopped by
its pid (process group) or its own stop command; temporary directories are removed (`--keep` keeps them).

    .venv/bin/python bench/compare.py [--rounds 3] [--jobs 2000] [--slots 8] [--only makespan,gap,ssh,scale]
                                      [--sizes 1000,10000,100000] [--timeout 600]

makespan: `--jobs` trivial jobs, `--slots` at a time. exq: wall time of the whole `exq run` process
  (manifest of `cmd: "true"`, gpus: 1, share: false, simulated GPUs `SLOTSx24GiB`; exq's runner runs
  `sh -c "$cmd"`), as bench/makespan.py. xargs: wall time of `xargs -P SLOTS -L 1 sh -c` over the jobs'
  lines. tsp: private `TS_SOCKET`, `-S SLOTS`, `tsp -n sh -c true` enqueued by one shell loop; from the
  first enqueue until the last job finished (`tsp -w` on the newest unfinished job until none is left;
  the server is started before and stopped after with `tsp -K`). hq: `hyperqueue.cluster.LocalCluster`
  (server and one worker with SLOTS CPUs, started before) in a subprocess; from building the job of
  `sh -c true` tasks through submit until the job is complete (polled every 10 ms: hq's own wait polls
  once a second).
gap: the idle time of one slot between two jobs. Every tool runs `--gap-jobs` jobs of the same command,
  `echo s $(date +%s.%N) >> F; echo e $(date +%s.%N) >> F`, one at a time (exq on 1 simulated GPU,
  `xargs -P 1`, `tsp -S 1` with all jobs queued behind a gate job first, hq with a 1-CPU worker); the
  gap is the next job's `s` stamp minus the previous job's `e` stamp (so it also holds the start of a
  shell and one `date`, the same for every tool). For exq the state also gives bench/dispatch_latency.py's
  figure, `next.launched_at - prev.ended_at` (exq only: the other tools have no launch time).
ssh: bench/remote_launch.py's one-host run (real sshd on 127.0.0.x, tests/sshhosts.py; needs root and
  /usr/sbin/sshd): `--ssh-jobs` jobs on one SSH host with 1 GPU, local disabled; dispatch p50
  (`prev.ended_at -> next.launched_at` and `-> next.started_at`) against the p50 of one `true` command
  over one open asyncssh connection (`--round-trips` of them).
scale: exq alone, for each of `--sizes` queued jobs (built through the Store, gpus: 1, not paused,
  copied fresh each round): `exq status` wall time on the state just copied (its status index names
  another inode: a full load), restart to first placement (`exq daemon` spawned on 8 simulated GPUs
  until a `launched` event is in the journal), the daemon's RSS then, `exq status` after the daemon
  stopped (its last snapshot and status index current, as on a live node), and `exq submit` of a
  `--submit-jobs` (10,000) job grid (no daemon).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    PYTHON,
    Daemon,
    add_run_options,
    build_state,
    exq_env,
    median,
    run_exq,
    status_json,
    temp_workspace,
    write_manifest,
)
from dispatch_latency import _pairs
from remote_launch import _round_trips, _sshhosts, run_jobs, write_config
from status_scale import _peak_rss
from submit_scale import _submission_id

TOOLS = ("exq", "xargs", "tsp", "hq", "ssh")
HEADERS = {"exq": "exq", "xargs": "xargs", "tsp": "tsp", "hq": "hq", "ssh": "1 cmd, open ssh conn."}
PARTS = ("makespan", "gap", "ssh", "scale")
STAMP = "echo s $(date +%s.%N) >> {f}; echo e $(date +%s.%N) >> {f}"
"""Each gap job's command: its start and end stamps, appended to one file F (the slot runs one job at a time)."""
GATE = "i=0; while [ ! -e {f} ] && [ $i -lt 6000 ]; do sleep 0.01; i=$((i+1)); done"
"""tsp's first gap job: holds the slot until every stamp job is queued (or 60 s)."""
TSP_LOOP = 'i=0; while [ $i -lt "$N" ]; do "$TSP" -n sh -c "$JOB" >/dev/null || exit 1; i=$((i+1)); done'

HQ_SCRIPT = """
import json, sys, time
from hyperqueue import Job
from hyperqueue.cluster import LocalCluster, WorkerConfig

n, cores, argv, workdir = json.loads(sys.argv[1])

class Running(Exception):
    pass

def poll(jobs):
    if not all(j["completed"] for j in jobs.values()):
        raise Running

with LocalCluster(server_dir=workdir, worker_config=WorkerConfig(cores=cores)) as cluster:
    client = cluster.client()
    started = time.perf_counter()
    job = Job(default_workdir=workdir)
    for _ in range(n):
        job.program(argv, stdout=None, stderr=None)
    submitted = client.submit(job)
    deadline = started + float(sys.argv[2])
    while True:
        try:
            failed = client.connection.wait_for_jobs([submitted.id], poll)
            break
        except Running:
            if time.perf_counter() > deadline:
                raise SystemExit("hq: job not complete in time") from None
            time.sleep(0.01)
    took = time.perf_counter() - started
print(json.dumps({"seconds": took, "failed": len(failed)}))
"""
"""Run in a subprocess (its own process group): LocalCluster's server, worker and tasks live in it."""


# ------------------------------------------------------------------------------------ results


@dataclass
class Row:
    label: str
    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    notes: dict[str, str] = field(default_factory=dict)
    """A cell's text instead of a figure: `missing: ...`, `failed`."""


class Table:
    """Figures per row and tool, in the order first seen."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}

    def row(self, key: str, label: str) -> Row:
        return self.rows.setdefault(key, Row(label))

    def add(self, key: str, label: str, tool: str, value: float) -> None:
        self.row(key, label).values[tool].append(value)

    def note(self, key: str, label: str, tool: str, text: str) -> None:
        self.row(key, label).notes.setdefault(tool, text)

    def print(self, rounds: int) -> None:
        used = [t for t in TOOLS if any(t in r.values or t in r.notes for r in self.rows.values())]
        lines = [[f"median of {rounds} round(s); (exq / tool)", *(HEADERS[t] for t in used)]]
        for row in self.rows.values():
            base = median(row.values["exq"]) if row.values.get("exq") else None
            lines.append([row.label, *(_cell(row, t, base) for t in used)])
        widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
        for n, line in enumerate(lines):
            print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths,
                                                                                                 strict=True))))
            if n == 0:
                print("  ".join("-" * w for w in widths))


def _num(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def _cell(row: Row, tool: str, base: float | None) -> str:
    values = row.values.get(tool)
    if not values:
        return row.notes.get(tool, "-")
    value = median(values)
    if tool == "exq" or base is None or value <= 0:
        return _num(value)
    return f"{_num(value)} ({_num(base / value)}x)"


# -------------------------------------------------------------------------------- processes


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_bounded(argv: Sequence[str], timeout: float, *, env: dict[str, str] | None = None,
                stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run argv in its own process group; on timeout the whole group is killed and TimeoutExpired raised."""
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.communicate(timeout=10)
        raise
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


def _checked(argv: Sequence[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    done = run_bounded(argv, timeout, **kw)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {done.returncode}: {done.stderr.decode(errors='replace')[-800:]}")
    return done


def stamp_gaps(path: Path) -> list[float]:
    """Next job's start stamp minus the previous job's end stamp, from a file of `s T` / `e T` lines."""
    marks = [(kind, float(t)) for kind, t in (line.split() for line in path.read_text().splitlines() if line)]
    return [b[1] - a[1] for a, b in itertools.pairwise(marks) if a[0] == "e" and b[0] == "s"]


# ------------------------------------------------------------------------------------- tools


def tsp_binary() -> tuple[str | None, str]:
    """task-spooler's binary (`tsp` on Debian/Ubuntu, `ts` elsewhere; moreutils' `ts` is another tool)."""
    for name in ("tsp", "ts"):
        path = shutil.which(name)
        if path is None:
            continue
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([path, "-V"], capture_output=True, timeout=5, check=False)
            if b"spooler" in (out.stdout + out.stderr).lower():
                return path, ""
    return None, "missing: task-spooler (apt-get install task-spooler)"


def hq_missing() -> str:
    if importlib.util.find_spec("hyperqueue") is None:
        return "missing: hyperqueue (pip install -e .[bench])"
    return ""


def ssh_missing() -> str:
    """Short, for a cell; tests/sshhosts.py's full reason is printed."""
    try:
        reason = _sshhosts().skip_reason()
    except ImportError as exc:
        return f"missing: {exc.name} (pip install -e .[dev])"
    if not reason:
        return ""
    print(f"ssh: {reason}")
    if "openssh-server" in reason:
        return "missing: sshd (apt-get install openssh-server)"
    if os.geteuid() != 0:
        return "missing: root (SSH test hosts add users)"
    return "missing: " + reason.removeprefix("missing: ").split(" (")[0].split(";")[0]


class TaskSpooler:
    """A private task-spooler server (its own TS_SOCKET and TMPDIR), stopped with `tsp -K`."""

    def __init__(self, binary: str, root: Path, slots: int, jobs: int, timeout: float) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.binary, self.timeout = binary, timeout
        self.env = {**os.environ, "TS_SOCKET": str(root / "ts.sock"), "TS_MAXFINISHED": str(jobs + 10),
                    "TS_SLOTS": str(slots), "TMPDIR": str(root)}
        _checked([binary, "-S", str(slots)], 30, env=self.env)  # starts the server

    def enqueue(self, job: str, n: int) -> None:
        """n jobs `sh -c JOB`, queued by one shell loop (one tsp client process per job)."""
        env = {**self.env, "N": str(n), "TSP": self.binary, "JOB": job}
        _checked(["sh", "-c", TSP_LOOP], self.timeout, env=env)

    def pending(self) -> list[int]:
        listing = _checked([self.binary, "-l"], 60, env=self.env).stdout.decode().splitlines()[1:]
        return sorted(int(f[0]) for f in (line.split() for line in listing)
                      if len(f) > 1 and f[0].isdigit() and f[1] not in ("finished", "skipped"))

    def wait_all(self, deadline: float) -> float:
        """perf_counter time the last job was seen finished: `tsp -w` on the newest unfinished job until none."""
        end = time.perf_counter()
        while jobs := self.pending():
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"tsp: {len(jobs)} jobs not finished in time")
            run_bounded([self.binary, "-w", str(jobs[-1])], left, env=self.env)
            end = time.perf_counter()
        return end

    def close(self) -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            run_bounded([self.binary, "-K"], 30, env=self.env)


def tsp_makespan(binary: str, root: Path, jobs: int, slots: int, timeout: float) -> float:
    spooler = TaskSpooler(binary, root, slots, jobs, timeout)
    try:
        started = time.perf_counter()
        spooler.enqueue("true", jobs)
        return spooler.wait_all(started + timeout) - started
    finally:
        spooler.close()


def tsp_gaps(binary: str, root: Path, jobs: int, timeout: float) -> list[float]:
    spooler = TaskSpooler(binary, root, 1, jobs + 1, timeout)
    gate, stamps = root / "gate", root / "stamps"
    try:
        spooler.enqueue(GATE.format(f=gate), 1)
        spooler.enqueue(STAMP.format(f=stamps), jobs)
        gate.touch()
        spooler.wait_all(time.perf_counter() + timeout)
    finally:
        spooler.close()
    return stamp_gaps(stamps)


def xargs_run(jobs: int, slots: int, cmd: str, timeout: float) -> float:
    """Wall time of `xargs -P SLOTS -n 1 sh -c` over JOBS lines of CMD (one line = one argument)."""
    started = time.perf_counter()
    _checked(["xargs", "-d", "\n", "-P", str(slots), "-n", "1", "sh", "-c"], timeout,
             stdin=(cmd + "\n").encode() * jobs)
    return time.perf_counter() - started


def hq_run(root: Path, jobs: int, cores: int, cmd: str, timeout: float) -> float:
    """Seconds from building the job to its completion, in a LocalCluster in a subprocess (own TMPDIR)."""
    root.mkdir(parents=True, exist_ok=True)
    spec = json.dumps([jobs, cores, ["sh", "-c", cmd], str(root)])
    done = _checked([PYTHON, "-c", HQ_SCRIPT, spec, str(timeout)], timeout + 30,
                    env={**os.environ, "TMPDIR": str(root)}, cwd=root)
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    if result["failed"]:
        raise RuntimeError(f"hq: {result['failed']} failed job(s)")
    return float(result["seconds"])


def exq_local_env(root: Path, state: str, gpus: str) -> dict[str, str]:
    """exq_env plus an EXQ_CONFIG with no hosts, so only the simulated local GPUs are used."""
    env = exq_env(root / state, gpus)
    env["EXQ_CONFIG"] = str(write_config(root / "config.yaml", None))
    return env


def exq_succeeded(env: dict[str, str], jobs: int) -> list[dict[str, Any]]:
    state, _ = status_json(env, 300)
    done = [j for j in state["jobs"] if j["status"] == "succeeded"]
    if len(done) != jobs:
        print(f"    warning: exq: {len(done)} of {jobs} jobs succeeded")
    return done


# -------------------------------------------------------------------------------------- parts


@dataclass
class Context:
    args: argparse.Namespace
    root: Path
    table: Table
    tsp: str | None
    missing: dict[str, str]


def _attempt(ctx: Context, key: str, label: str, tool: str, measure: Callable[[], float]) -> None:
    """One figure of one tool in one round; an error is printed and the cell says `failed`."""
    _attempt_rows(ctx, [(key, label)], tool, lambda: [measure()])


def _attempt_rows(ctx: Context, rows: Sequence[tuple[str, str]], tool: str,
                  measure: Callable[[], Sequence[float]]) -> None:
    """The figures of several rows (key, label) one measurement of one tool gives; an error is printed and
    every cell says `failed`."""
    try:
        values = measure()
    except Exception as exc:
        print(f"    {tool}: failed: {type(exc).__name__}: {str(exc)[-600:]}")
        for key, label in rows:
            ctx.table.note(key, label, tool, "failed")
        return
    for (key, label), value in zip(rows, values, strict=True):
        print(f"    {tool}: {label}: {_num(value)}")
        ctx.table.add(key, label, tool, value)


def makespan_round(ctx: Context, r: int) -> None:
    args, root = ctx.args, ctx.root / f"makespan-{r}"
    key, label = "makespan", f"makespan: {args.jobs} x true, {args.slots} slots (s)"

    def exq() -> float:
        env = exq_local_env(root, "state", f"{args.slots}x24GiB")
        manifest = write_manifest(root / "makespan.yaml", "makespan", args.jobs)
        took = run_exq(["run", str(manifest)], env, args.timeout).seconds
        exq_succeeded(env, args.jobs)
        return took

    root.mkdir()
    _attempt(ctx, key, label, "exq", exq)
    _attempt(ctx, key, label, "xargs", lambda: xargs_run(args.jobs, args.slots, "true", args.timeout))
    _tsp_hq(ctx, key, label, lambda tsp: tsp_makespan(tsp, root / "tsp", args.jobs, args.slots, args.timeout),
            lambda: hq_run(root / "hq", args.jobs, args.slots, "true", args.timeout))
    shutil.rmtree(root, ignore_errors=True)


def _tsp_hq(ctx: Context, key: str, label: str, tsp: Callable[[str], float], hq: Callable[[], float]) -> None:
    binary = ctx.tsp
    if binary is None:
        ctx.table.note(key, label, "tsp", ctx.missing["tsp"])
    else:
        _attempt(ctx, key, label, "tsp", lambda: tsp(binary))
    if ctx.missing["hq"]:
        ctx.table.note(key, label, "hq", ctx.missing["hq"])
    else:
        _attempt(ctx, key, label, "hq", hq)


def gap_round(ctx: Context, r: int) -> None:
    args, root = ctx.args, ctx.root / f"gap-{r}"
    key, label = "gap", f"gap between jobs, 1 slot, p50 of {args.gap_jobs} (ms)"
    dkey, dlabel = "gap-dispatch", "  exq: prev.ended_at -> next.launched_at p50 (ms)"
    ctx.table.row(key, label)
    ctx.table.row(dkey, dlabel)
    root.mkdir()

    def ms(gaps: list[float]) -> float:
        if not gaps:
            raise RuntimeError("no gaps measured")
        if len(gaps) != args.gap_jobs - 1:
            print(f"    warning: {len(gaps)} gaps from {args.gap_jobs} jobs")
        return median(gaps) * 1000

    def exq() -> float:
        env = exq_local_env(root, "state", "1x24GiB")
        stamps = root / "stamps-exq"
        manifest = write_manifest(root / "gap.yaml", "gap", args.gap_jobs, cmd=STAMP.format(f=stamps))
        run_exq(["run", str(manifest)], env, args.timeout)
        pairs = _pairs(exq_succeeded(env, args.gap_jobs))
        ctx.table.add(dkey, dlabel, "exq", ms([n["launched_at"] - p["ended_at"] for p, n in pairs]))
        return ms(stamp_gaps(stamps))

    def xargs() -> float:
        stamps = root / "stamps-xargs"
        xargs_run(args.gap_jobs, 1, STAMP.format(f=stamps), args.timeout)
        return ms(stamp_gaps(stamps))

    def hq() -> float:
        stamps = root / "stamps-hq"
        hq_run(root / "hq", args.gap_jobs, 1, STAMP.format(f=stamps), args.timeout)
        return ms(stamp_gaps(stamps))

    _attempt(ctx, key, label, "exq", exq)
    _attempt(ctx, key, label, "xargs", xargs)
    _tsp_hq(ctx, key, label, lambda tsp: ms(tsp_gaps(tsp, root / "tsp", args.gap_jobs, args.timeout)), hq)
    shutil.rmtree(root, ignore_errors=True)


def ssh_part(ctx: Context) -> None:
    args = ctx.args
    rows = [("ssh-launched", "SSH host: prev.ended_at -> next.launched_at p50 (ms)", "launched_at"),
            ("ssh-started", "SSH host: prev.ended_at -> next.started_at p50 (ms)", "started_at")]
    if ctx.missing["ssh"]:
        for key, label, _ in rows:
            for tool in ("exq", "ssh"):
                ctx.table.note(key, label, tool, ctx.missing["ssh"])
        return
    with temp_workspace(args.keep, "exq-bench-compare-", 0o777) as workdir:
        started = time.perf_counter()
        try:
            hosts = _sshhosts().start_hosts(ctx.root / "ssh", [("h1", "1x24GiB")])
        except Exception as exc:
            print(f"  SSH host did not start: {type(exc).__name__}: {str(exc)[-800:]}")
            for key, label, _ in rows:
                for tool in ("exq", "ssh"):
                    ctx.table.note(key, label, tool, "failed: no SSH host")
            return
        print(f"  (started SSH host h1 in {time.perf_counter() - started:.1f} s)")
        try:
            for r in range(args.rounds):
                print(f"  round {r + 1}/{args.rounds}")
                ssh_round(ctx, r, hosts, workdir, rows)
        finally:
            hosts.close()


def ssh_round(ctx: Context, r: int, hosts: Any, workdir: Path, rows: list[tuple[str, str, str]]) -> None:
    args = ctx.args
    labels = [(key, label) for key, label, _ in rows]

    def dispatch() -> list[float]:
        result = run_jobs(f"ssh1-{r}", ctx.root, workdir, args.ssh_jobs, None, hosts, args.timeout)
        return [median([n[field_] - p["ended_at"] for p, n in result.pairs]) * 1000 for _, _, field_ in rows]

    def round_trip() -> list[float]:
        trips = asyncio.run(_round_trips(hosts["h1"], args.round_trips))["true"]
        return [median(trips) * 1000] * len(rows)

    _attempt_rows(ctx, labels, "exq", dispatch)
    _attempt_rows(ctx, labels, "ssh", round_trip)


LAUNCHED = re.compile(rb'"type":\s*"launched"')


def wait_launched(daemon: Daemon, journal: Path, timeout: float, poll: float = 0.005) -> float:
    """perf_counter time a `launched` event was first seen in journal.jsonl (read on from where it was)."""
    deadline, offset = time.perf_counter() + timeout, 0
    while time.perf_counter() < deadline:
        with contextlib.suppress(FileNotFoundError), journal.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size < offset:
                offset = 0  # the journal started anew after a snapshot
            f.seek(max(0, offset - 64))  # an event cut by the last read is read whole this time
            if LAUNCHED.search(f.read()):
                return time.perf_counter()
            offset = size
        if daemon.proc is not None and daemon.proc.poll() is not None:
            said = "\n".join(line for _, line in daemon.lines[-10:])
            raise RuntimeError(f"daemon exited {daemon.proc.returncode} before launching a job:\n{said}")
        time.sleep(poll)
    raise RuntimeError(f"daemon: no job launched within {timeout:g}s")


def scale_round(ctx: Context, r: int, templates: dict[int, Path], manifest: Path) -> None:
    args = ctx.args
    for size in templates:
        state = ctx.root / f"scale-{r}-{size}"
        shutil.copytree(templates[size] / "state", state)
        env = exq_local_env(ctx.root, state.name, "8x24GiB")
        tag = f"{size:,} queued"
        for key, label in (("status", "exq status"), ("cold", "exq status, state just copied (full load)"),
                           ("restart", "restart -> first placement"), ("rss", "daemon RSS at first placement")):
            ctx.table.row(f"{key}-{size}", f"{label}, {tag} ({'MiB' if key == 'rss' else 's'})")
        # A copied state dir has no current status_index.json (it names the snapshot's inode): a full load.
        _attempt(ctx, f"cold-{size}", f"exq status, state just copied (full load), {tag} (s)", "exq",
                 lambda env=env: run_exq(["status"], env, args.timeout).seconds)
        _attempt(ctx, f"restart-{size}", f"restart -> first placement, {tag} (s)", "exq",
                 lambda env=env, state=state, size=size: restart(ctx, env, state, size))
        # The daemon wrote its last snapshot and index as it stopped: what `exq status` reads on a live node.
        _attempt(ctx, f"status-{size}", f"exq status, {tag} (s)", "exq",
                 lambda env=env: run_exq(["status"], env, args.timeout).seconds)
        _attempt(ctx, f"submit-{size}", f"exq submit of {args.submit_jobs:,} jobs, {tag} (s)", "exq",
                 lambda env=env: submit(env, manifest, args.timeout))
        shutil.rmtree(state, ignore_errors=True)


def restart(ctx: Context, env: dict[str, str], state: Path, size: int) -> float:
    """Spawn `exq daemon` on the queue; seconds until its first placement; notes its RSS then."""
    daemon = Daemon(env).start()
    try:
        took = wait_launched(daemon, state / "journal.jsonl", ctx.args.timeout) - daemon.started_at
        assert daemon.proc is not None
        rss, peak = daemon.rss(), _peak_rss(daemon.proc.pid)
    finally:
        daemon.stop(ctx.args.timeout)
    tag = f"{size:,} queued"
    ctx.table.add(f"rss-{size}", f"daemon RSS at first placement, {tag} (MiB)", "exq", rss / 2**20)
    print(f"    exq: RSS {rss / 2**20:.0f} MiB" + (f" (peak {peak / 2**20:.0f} MiB)" if peak else ""))
    return took


def submit(env: dict[str, str], manifest: Path, timeout: float) -> float:
    done = run_exq(["submit", str(manifest)], env, timeout, capture=True)
    _submission_id(done.stdout)  # it was accepted
    return done.seconds


def scale_part(ctx: Context) -> None:
    args, templates = ctx.args, {}
    manifest = write_manifest(ctx.root / "submit.yaml", "submit", args.submit_jobs)
    for size in args.sizes:
        tdir = ctx.root / f"template-{size}"
        tdir.mkdir()
        built = build_state(tdir / "state", tdir, size, gpus=1)
        templates[size] = tdir
        print(f"  queue of {built.jobs:,} jobs (gpus: 1) built through the Store in {built.seconds:.1f} s")
    for r in range(args.rounds):
        print(f"  round {r + 1}/{args.rounds}")
        scale_round(ctx, r, templates, manifest)
    for tdir in templates.values():
        shutil.rmtree(tdir, ignore_errors=True)


# --------------------------------------------------------------------------------------- main


def _csv(kind: type, choices: Sequence[str] | None = None) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        items = [kind(x.strip().replace("_", "")) for x in text.split(",") if x.strip()]
        bad = [x for x in items if choices is not None and x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(choices or ['ints'])}")
        return items
    return parse


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every figure (default 3)")
    parser.add_argument("--jobs", type=int, default=2000, help="makespan: trivial jobs (default 2000)")
    parser.add_argument("--slots", type=int, default=8, help="makespan: parallel slots / simulated GPUs (default 8)")
    parser.add_argument("--gap-jobs", type=int, default=200, help="gap: jobs on one slot (default 200)")
    parser.add_argument("--ssh-jobs", type=int, default=50, help="ssh: jobs on one SSH host (default 50)")
    parser.add_argument("--round-trips", type=int, default=20, help="ssh: single commands timed (default 20)")
    parser.add_argument("--sizes", type=_csv(int), default=[1000, 10_000, 100_000],
                        help="scale: queued jobs (default 1000,10000,100000)")
    parser.add_argument("--submit-jobs", type=int, default=10_000,
                        help="scale: jobs of the submitted grid (default 10000)")
    parser.add_argument("--only", type=_csv(str, PARTS), default=list(PARTS),
                        help=f"parts to run (default {','.join(PARTS)})")
    add_run_options(parser, 600.0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    tsp, tsp_why = tsp_binary()
    missing = {"tsp": tsp_why, "hq": hq_missing(), "ssh": ssh_missing() if "ssh" in args.only else ""}
    for tool, why in missing.items():
        if why and tool != "ssh":
            print(f"{tool}: {why}")
    started = time.perf_counter()
    with temp_workspace(args.keep, "exq-bench-compare-") as root:
        ctx = Context(args, root, Table(), tsp, missing)
        rounds = {"makespan": makespan_round, "gap": gap_round}
        for part in args.only:
            print(f"== {part} ==")
            try:
                if part in rounds:
                    for r in range(args.rounds):
                        print(f"  round {r + 1}/{args.rounds}")
                        rounds[part](ctx, r)
                else:
                    (ssh_part if part == "ssh" else scale_part)(ctx)
            except Exception as exc:  # the other parts' figures still get printed
                print(f"  {part}: failed: {type(exc).__name__}: {str(exc)[-800:]}")
        print(f"\n== exq vs other tools ({time.perf_counter() - started:.0f} s) ==")
        ctx.table.print(args.rounds)


if __name__ == "__main__":
    main()
