"""What every fault campaign shares: options, a temporary workspace, running the real exq CLI and
daemon, per-job run markers, traceback scanning, the figures table, and cleaning up on any exit.

One way to do each thing:

- options: `parser(...)` (--count/--duration, --seed, --json, --keep, --timeout) and `Campaign(args)`;
- workspace: `Campaign.root` (`temp_workspace`: under /tmp, mode 0755), with a private `state/` and a
  world-writable `shared/` (job scripts, markers; SSH test hosts log in as other users);
- running exq: `Campaign.exq(...)` (`python -m exq ...` with EXQ_STATE_DIR and EXQ_SIMULATE_GPUS from
  `exq_env`), `Campaign.start_daemon()`; every output is scanned for tracebacks;
- markers: `JOB_SCRIPT` via `Campaign.job_cmd()`: each run of a job appends one line to
  `shared/marks/<submission>-<job id>`; `Campaign.runs()` reads them back;
- figures: `Campaign.fig` (name -> number), must-be-zero names declared up front, `Campaign.finish()`
  prints the table, writes --json and returns the exit code (0 when every must-be-zero figure is 0);
- cleanup: `Campaign` is a context manager; processes it started, job process groups still running in
  its state dir, mounts and anything pushed on `Campaign.stack` are undone on every exit, Ctrl-C and
  SIGTERM included. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _extra in (REPO, REPO / "tests", REPO / "bench"):  # tests/: real sshd test hosts; bench/: the workspace helpers
    if str(_extra) not in sys.path:
        sys.path.insert(0, str(_extra))

from _common import exq_cmd, exq_env, temp_workspace  # noqa: E402  (found through the path above)

TRACEBACK = "Traceback (most recent call last)"
GPUS = "2x24GiB"
FINISHED = frozenset({"succeeded", "failed", "blocked", "cancelled"})
MAX_NOTES = 40

JOB_SCRIPT = r"""#!/bin/sh
# An exq campaign job. Usage: sh job.sh MARKS_DIR N
# Appends one line per run to MARKS_DIR/<submission>-<job id> (so a second run of an attempt shows) and,
# when it ends well, one line to the same name + .done (so a second completion shows). It behaves as its
# id says: *tick* works N ticks of 0.2 s (frozen time is not work done); the others sleep 0.1 .. N/10 s
# (fixed per job), then *oom* exits 211 on its first run, *fail* exits 1, *out* writes 32 KiB to its log.
umask 0
m="$1/$EXQ_SUBMISSION-$EXQ_JOB_ID"
runs=0
[ -f "$m" ] && runs=$(wc -l < "$m")
echo "$EXQ_ATTEMPT $(id -un) $$" >> "$m"
case $EXQ_JOB_ID in
    *tick*) i=0; while [ $i -lt "${2:-9}" ]; do sleep 0.2; i=$((i + 1)); done ;;
    *) n=$(printf '%s' "$EXQ_SUBMISSION/$EXQ_JOB_ID" | cksum | cut -d' ' -f1)
       t=$(( n % ${2:-9} + 1 ))
       sleep "$(( t / 10 )).$(( t % 10 ))" ;;
esac
case $EXQ_JOB_ID in
    *oom*) if [ "$runs" -eq 0 ]; then echo "CUDA out of memory (simulated by the campaign)"; exit 211; fi ;;
    *fail*) echo "failing on purpose"; exit 1 ;;
    *out*) i=0; while [ $i -lt 8 ]; do head -c 4096 /dev/zero | tr '\0' x; echo; i=$((i + 1)); done ;;
esac
echo "$EXQ_ATTEMPT $(id -un) $$" >> "$m.done"
exit 0
"""


# ------------------------------------------------------------------------------- workspace + exq
# The same conventions as bench/_common.py (temp_workspace, exq_env, exq_cmd), written here because
# bench/_common.py imports exq internals (Store, events, intake) at module level: a campaign must run
# against the CLI alone, whatever is changing inside exq.


# ------------------------------------------------------------------------------------------ options


def parser(description: str, *, count: int | None = None, duration: float | None = None,
           timeout: float = 120.0) -> argparse.ArgumentParser:
    """The options every campaign takes; `count` and/or `duration` give the size of the run."""
    p = argparse.ArgumentParser(description=description)
    if count is not None:
        p.add_argument("--count", type=int, default=count, help=f"how many faults/cases/documents (default {count})")
    if duration is not None:
        p.add_argument("--duration", type=float, default=duration,
                       help=f"seconds to keep making faults (default {duration:g})")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1): the same seed, the same faults")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    p.add_argument("--timeout", type=float, default=timeout,
                   help=f"bound on each wait for the queue to settle, seconds (default {timeout:g})")
    p.add_argument("--keep", action="store_true", help="keep the temporary workspace (its path is printed)")
    p.add_argument("--gpus", default=GPUS, help=f"EXQ_SIMULATE_GPUS (default {GPUS})")
    return p


def needs_root(name: str) -> int | None:
    """Exit code 2 with a message when not root (mounts, chown, other users and sshd need it); else None."""
    if os.geteuid() == 0:
        return None
    print(f"{name}: needs root (it mounts tmpfs / creates users / starts sshd); run it as root", file=sys.stderr)
    return 2


# ------------------------------------------------------------------------------------------ results


@dataclass
class Result:
    """One finished exq command."""

    args: tuple[str, ...]
    rc: int
    out: str
    err: str
    seconds: float
    timed_out: bool = False

    @property
    def text(self) -> str:
        return self.out + self.err


@dataclass
class Figures:
    """Named numbers in declaration order; `must_zero` ones decide the exit code."""

    values: dict[str, float] = field(default_factory=dict)
    must_zero: list[str] = field(default_factory=list)

    def declare(self, names: Sequence[str], must_zero: bool) -> None:
        for name in names:
            self.values.setdefault(name, 0)
            if must_zero and name not in self.must_zero:
                self.must_zero.append(name)

    def add(self, name: str, n: float = 1) -> None:
        self.values[name] = self.values.get(name, 0) + n

    def set(self, name: str, value: float) -> None:
        self.values[name] = value

    def max(self, name: str, value: float) -> None:
        self.values[name] = max(self.values.get(name, 0), value)

    def __getitem__(self, name: str) -> float:
        return self.values.get(name, 0)

    @property
    def failed(self) -> list[str]:
        return [n for n in self.must_zero if self.values.get(n, 0)]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table, columns padded, numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(row[i]) for row in rows) and bool(rows) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        pairs = enumerate(zip(row, widths, strict=True))
        parts = [c.rjust(w) if numeric[i] and n else c.ljust(w) for i, (c, w) in pairs]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if not value.is_integer() else str(int(value))
    return str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------------ daemon


@dataclass
class Daemon:
    """One `exq daemon` process, its output in a log file of the workspace."""

    proc: subprocess.Popen[bytes]
    log: Path
    started: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(20)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (drain), bounded; SIGKILL after `timeout`. Returns the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.proc.returncode

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


# ------------------------------------------------------------------------------------------ campaign


class Interrupted(Exception):
    """SIGTERM (or SIGHUP) arrived: clean up as for Ctrl-C."""


class Campaign:
    """A workspace, the exq commands run in it, its figures, and its cleanup. Use as a context manager."""

    def __init__(self, name: str, args: argparse.Namespace, must_zero: Sequence[str],
                 other: Sequence[str] = ()) -> None:
        self.name = name
        self.args = args
        self.rng = random.Random(args.seed)
        self.fig = Figures()
        self.fig.declare(other, must_zero=False)
        self.fig.declare(must_zero, must_zero=True)
        self.fig.declare(["tracebacks"], must_zero=True)
        self.notes: list[str] = []
        self.stack = contextlib.ExitStack()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.daemons: list[Daemon] = []
        self.state_dirs: list[Path] = []
        self.extra_tables: list[str] = []
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.root = Path()
        self.env: dict[str, str] = {}

    # -- lifecycle

    def __enter__(self) -> Campaign:
        self._old_handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        if threading.current_thread() is threading.main_thread():
            for sig in self._old_handlers:  # Ctrl-C too, even when started with SIGINT ignored (`... &`)
                signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else self._on_signal)
        self.root = self.stack.enter_context(temp_workspace(keep=self.args.keep, prefix=f"exq-{self.name}-",
                                                            mode=0o755))
        self.shared = self.root / "shared"
        self.marks = self.shared / "marks"
        for directory in (self.shared, self.marks):
            directory.mkdir()
            directory.chmod(0o777)
        self.job_script = self.shared / "job.sh"
        self.job_script.write_text(JOB_SCRIPT)
        self.job_script.chmod(0o755)
        self.state_dir = self.root / "state"
        self.use_state(self.state_dir)
        self.stack.callback(self._stop_everything)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stack.close()
        finally:
            if threading.current_thread() is threading.main_thread():
                for sig, handler in self._old_handlers.items():
                    signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        raise Interrupted(f"signal {signum}")

    def use_state(self, state_dir: Path, gpus: str | None = None) -> dict[str, str]:
        """Point `self.env` at `state_dir` (tracked for cleanup of its job process groups)."""
        self.state_dir = state_dir
        self.env = exq_env(state_dir, gpus or self.args.gpus)
        self.env["EXQ_CONFIG"] = str(self.root / "no-hosts.yaml")  # never the user's own SSH hosts
        self.env["PYTHONUNBUFFERED"] = "1"
        if state_dir not in self.state_dirs:
            self.state_dirs.append(state_dir)
        return self.env

    def _stop_everything(self) -> None:
        for daemon in self.daemons:
            if daemon.alive():
                daemon.kill9()
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
        for state_dir in self.state_dirs:
            kill_job_groups(state_dir)

    # -- running exq

    def exq(self, *args: str, timeout: float = 60.0, env: dict[str, str] | None = None, stdin: bytes | None = None,
            cwd: Path | None = None, where: str | None = None, umask: int = -1) -> Result:
        """Run `python -m exq ARGS` to completion (bounded); count any traceback in its output."""
        started = time.monotonic()
        proc = subprocess.Popen(exq_cmd(*args), env=env or self.env, cwd=cwd,
                                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, umask=umask)
        with self._lock:
            self.procs.append(proc)
        timed_out = False
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            out, err = proc.communicate(timeout=10)
        result = Result(tuple(args), proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"),
                        time.monotonic() - started, timed_out)
        with self._lock:
            self.procs.remove(proc)
        self.scan(result.text, where or f"exq {' '.join(args)}")
        if timed_out:
            self.note(f"exq {' '.join(args)} did not finish within {timeout:g}s (killed)")
        return result

    def spawn(self, *args: str, env: dict[str, str] | None = None, log: Path | None = None,
              umask: int = -1) -> subprocess.Popen[bytes]:
        """Start `python -m exq ARGS` in the background (its own session), output to `log` or a pipe."""
        if log is not None:
            with log.open("ab") as handle:
                proc = subprocess.Popen(exq_cmd(*args), env=env or self.env, stdin=subprocess.DEVNULL,
                                        stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                                        umask=umask)
        else:
            proc = subprocess.Popen(exq_cmd(*args), env=env or self.env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                    umask=umask)
        with self._lock:
            self.procs.append(proc)
        return proc

    def start_daemon(self, *extra: str, env: dict[str, str] | None = None, umask: int = -1) -> Daemon:
        """`exq -v daemon --probe-interval 0.5` in the background; does not wait for it to be ready."""
        log = self.root / f"daemon{len(self.daemons)}.log"
        proc = self.spawn("-v", "daemon", "--probe-interval", "0.5", *extra, env=env, log=log, umask=umask)
        daemon = Daemon(proc, log, time.monotonic())
        self.daemons.append(daemon)
        return daemon

    def wait_daemon_ready(self, daemon: Daemon, timeout: float = 30.0) -> bool:
        """Until queue_state.json names this daemon (True) or it exits / `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        snapshot = Path(self.env["EXQ_STATE_DIR"]) / "queue_state.json"
        while time.monotonic() < deadline and daemon.alive():
            state = read_json(snapshot)
            if state and (state.get("daemon") or {}).get("pid") == daemon.pid:
                return True
            time.sleep(0.05)
        return False

    def status(self, env: dict[str, str] | None = None, timeout: float = 60.0) -> dict[str, Any] | None:
        """`exq status --json`, parsed; None (and a note) when it failed."""
        result = self.exq("status", "--json", env=env, timeout=timeout)
        if result.rc != 0:
            self.note(f"exq status --json exited {result.rc}: {last_line(result.err)}")
            return None
        try:
            data: dict[str, Any] = json.loads(result.out)
        except ValueError as exc:
            self.note(f"exq status --json printed no JSON: {exc}")
            return None
        return data

    def wait_settled(self, expect_jobs: int, timeout: float, state_dir: Path | None = None,
                     poll: float = 0.3) -> bool:
        """Until queue_state.json has >= `expect_jobs` jobs, every one finished (bounded by `timeout`)."""
        snapshot = (state_dir or Path(self.env["EXQ_STATE_DIR"])) / "queue_state.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = read_json(snapshot)
            if state:
                jobs = state.get("jobs") or []
                if len(jobs) >= expect_jobs and all(j.get("status") in FINISHED for j in jobs):
                    return True
            time.sleep(poll)
        return False

    # -- markers

    def job_cmd(self, max_tenths: int = 9) -> str:
        """The manifest `cmd` of a campaign job (no placeholders): marks each run, behaves as its id says."""
        return f"sh {self.job_script} {self.marks} {max_tenths}"

    def runs(self, done: bool = False) -> dict[str, list[int]]:
        """`<submission>-<job id>` -> the attempt number of each run of the job's command, in order
        (`done`: of each run that completed)."""
        found: dict[str, list[int]] = {}
        for path in self.marks.iterdir():
            if path.name.endswith(".done") != done:
                continue
            numbers = []
            for line in path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError, IndexError):
                    numbers.append(int(line.split()[0]))
            found[path.name.removesuffix(".done")] = numbers
        return found

    def check_runs(self, state: dict[str, Any]) -> tuple[int, int]:
        """(double launches, runs of attempts the state does not know) from the markers against `state`.

        A double launch: one attempt's command ran twice (its number appears twice in the marker file).
        Only the jobs `state` has are looked at (markers of other state dirs may share the directory).
        """
        attempts = {f"{j['submission']}-{j['id']}": {a["number"] for a in j.get("attempts") or []}
                    for j in state.get("jobs") or []}
        double = unknown = 0
        for key, numbers in self.runs().items():
            if key not in attempts:
                continue
            for number in set(numbers):
                if numbers.count(number) > 1:
                    double += numbers.count(number) - 1
                    self.note(f"double launch: {key} attempt {number} ran {numbers.count(number)} times")
                if number not in attempts[key]:
                    unknown += 1
                    self.note(f"unrecorded run: {key} ran attempt {number}, which the state does not have")
        return double, unknown

    # -- tracebacks, notes

    def scan(self, text: str, where: str) -> int:
        """Count (and note) tracebacks in `text`."""
        found = text.count("Traceback")
        if found:
            self.fig.add("tracebacks", found)
            at = text.find("Traceback")
            tail = text[at:at + 2000].strip().splitlines()
            self.note(f"traceback in {where}: {tail[-1] if tail else ''}")
        return found

    def scan_daemon_logs(self) -> None:
        for daemon in self.daemons:
            self.scan(daemon.output(), f"daemon log {daemon.log.name}")

    def note(self, message: str) -> None:
        with self._lock:
            if len(self.notes) < MAX_NOTES:
                self.notes.append(message)
            elif len(self.notes) == MAX_NOTES:
                self.notes.append("(more notes left out)")

    # -- the end

    def finish(self) -> int:
        """Print the figures (and notes), write --json, return 0 when every must-be-zero figure is 0."""
        self.fig.set("seconds", round(time.monotonic() - self.started, 1))
        failed = self.fig.failed
        size = " ".join(f"--{k} {getattr(self.args, k)}" for k in ("count", "duration") if hasattr(self.args, k))
        print(f"\n{self.name}: seed {self.args.seed}, {size}".rstrip(", "))
        for extra in self.extra_tables:
            print(extra)
            print()
        rows = [(name, value, "yes" if name in self.fig.must_zero else "") for name, value in self.fig.values.items()]
        print(table(["figure", "value", "must be 0"], rows))
        if self.notes:
            print("\nnotes:")
            for note in self.notes:
                print(f"  - {note}")
        print(f"\nresult: {'FAIL (' + ', '.join(failed) + ')' if failed else 'PASS'}")
        if self.args.json:
            self.args.json.write_text(json.dumps({
                "campaign": self.name, "seed": self.args.seed,
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()},
                "figures": self.fig.values, "must_be_zero": self.fig.must_zero, "failed": failed,
                "ok": not failed, "notes": self.notes,
            }, indent=2) + "\n")
        return 1 if failed else 0


def run_main(name: str, body: Callable[[], int]) -> int:
    """Run a campaign's body: Ctrl-C / SIGTERM end it with exit 130 after its cleanup ran."""
    try:
        return body()
    except (KeyboardInterrupt, Interrupted):
        print(f"\n{name}: interrupted; processes, mounts and the workspace were cleaned up", file=sys.stderr)
        return 130


# ------------------------------------------------------------------------------------------ helpers


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None when missing or not (yet) whole."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def kill_job_groups(state_dir: Path) -> int:
    """SIGKILL the process group of every attempt in `state_dir` that has no exit file yet."""
    killed = 0
    for pid_file in state_dir.glob("jobs/*/*/*/pid"):
        if (pid_file.parent / "exit").exists():
            continue
        try:
            pgid = int(pid_file.read_text().split()[1])
            os.killpg(pgid, signal.SIGKILL)
            killed += 1
        except (ValueError, IndexError, ProcessLookupError, PermissionError, OSError):
            continue
    return killed


class SnapshotPoller:
    """Reads queue_state.json in a loop from a thread and counts reads, torn reads and vanishings."""

    def __init__(self, path: Path, interval: float = 0.01) -> None:
        self.path, self.interval = path, interval
        self.reads = self.torn = self.vanished = 0
        self.examples: list[str] = []
        self._seen = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SnapshotPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                if self._seen:
                    self.vanished += 1
                continue
            self._seen = True
            self.reads += 1
            try:
                whole = json.loads(data)
                if not isinstance(whole, dict) or "version" not in whole:
                    raise ValueError("not a state object")
            except ValueError as exc:
                self.torn += 1
                if len(self.examples) < 3:
                    self.examples.append(f"{len(data)} bytes: {exc}")


def manifest_yaml(name: str, phases: Sequence[dict[str, Any]], **top: Any) -> str:
    """A manifest as YAML text (JSON is YAML): `name`, top-level settings, then `phases`."""
    return json.dumps({"name": name, **top, "phases": list(phases)}, indent=1) + "\n"


def start_ssh_hosts(c: Campaign, specs: list[tuple[str, str]], *, lost_timeout: str = "60s",
                    local: bool = True) -> Any:
    """Real sshd test hosts (tests/sshhosts.py, closed with the campaign), and EXQ_CONFIG naming them.

    Raises SystemExit(2) with the reason when they cannot run here (not root, no sshd)."""
    from sshhosts import skip_reason, start_hosts, write_hosts_config

    if (reason := skip_reason()) is not None:
        print(f"{c.name}: {reason}", file=sys.stderr)
        raise SystemExit(2)
    hosts = c.stack.enter_context(start_hosts(c.root / "ssh", specs))
    c.env["EXQ_CONFIG"] = str(write_hosts_config(c.root / "hosts.yaml", hosts, lost_timeout=lost_timeout,
                                                 local=local))
    return hosts


__all__ = [
    "FINISHED", "GPUS", "REPO", "TRACEBACK", "Campaign", "Daemon", "Figures", "Result", "SnapshotPoller",
    "kill_job_groups", "last_line", "manifest_yaml", "needs_root", "parser",
    "read_json", "run_main", "start_ssh_hosts", "table",
]
