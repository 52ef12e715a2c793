"""A small typed client for Slurm's commands: sbatch, squeue, sacct, scancel and sinfo.

The client starts no process itself: it is given `run(argv) -> (returncode, stdout, stderr)`, so the
same code runs the commands on this machine (`local_runner`) or over SSH on a login node. Every
command is an argv list, never a shell string, and every job id passed in is checked to be `ID` or
`ID_TASK`, so nothing the caller gives can become an option.

Polling is batched: `states()` makes one `squeue -t all` call for every job of the user (Slurm keeps
ended jobs there for MinJobAge seconds, with their exit codes), and only for asked jobs missing
there one `sacct` call. Without an accounting database (plain sacct answers "accounting storage is
disabled") it uses `sacct -c`, which reads the jobcomp/filetxt file; that file knows array tasks
only by their raw job ids, which the client learns from squeue while the tasks run.

Array tasks are addressed as `ID_TASK` (`12_3`); `find_by_name` returns the base ids that submit
returned. `slurm_outcome` maps a Slurm state to what exq makes of it.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from exq.errors import WorkerError
from exq.model.outcome import Outcome

Runner = Callable[[Sequence[str]], tuple[int, str, str]]
"""Runs one command (an argv) to its end: (returncode, stdout, stderr)."""

JOB_ID = re.compile(r"\d+(?:_\d+)?")
SEP = "|"
SQUEUE_FIELDS = ("JobID", "ArrayJobID", "ArrayTaskID", "State", "Reason", "RestartCnt", "exit_code", "NodeList",
                 "Name")
"""squeue -O fields; the job name last, since it may hold the separator."""
SACCT_FIELDS = ("JobID", "JobIDRaw", "State", "ExitCode", "Reason", "NodeList", "JobName")
SINFO_FIELDS = ("NodeHost", "StateLong", "Available", "Gres", "GresUsed")
ACCOUNTING_DISABLED = "accounting storage is disabled"
FIND_WINDOW = "now-7days"
"""How far back find_by_name asks sacct for ended jobs."""
GPU_GRES = re.compile(r"(?:^|,)gpu(?::[^:,()]+)?:(\d+)")
USABLE_NODE_STATES = frozenset({"idle", "mixed", "allocated", "completing", "planned"})


def local_runner(env: Mapping[str, str] | None = None, timeout: float = 60.0) -> Runner:
    """A Runner that runs commands on this machine (with `env`, else this process's environment)."""

    def run(argv: Sequence[str]) -> tuple[int, str, str]:
        try:
            proc = subprocess.run(list(argv), env=None if env is None else dict(env), capture_output=True,
                                  text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError as exc:
            return 127, "", f"{argv[0]}: command not found ({exc.strerror})"
        except subprocess.TimeoutExpired:
            return 124, "", f"{argv[0]} did not answer within {timeout:g}s"
        return proc.returncode, proc.stdout, proc.stderr

    return run


@dataclass(frozen=True)
class SlurmJob:
    """One Slurm job (or array task) as squeue or sacct reports it."""

    job_id: str
    """`ID`, or `ID_TASK` for an array task."""
    state: str
    """Slurm's state, raw (`PENDING`, `RUNNING`, `NODE_FAIL`, ...), without sacct's `by UID`."""
    reason: str = ""
    """Why it is pending (or how it ended), as Slurm words it; empty for `None`."""
    nodes: str = ""
    name: str = ""
    exit_code: int | None = None
    """The batch script's exit status, once ended (None when killed by a signal, or unknown)."""
    signal: int | None = None
    """The signal that ended it, if one did."""
    restarts: int = 0
    """How many times Slurm requeued it (squeue's RestartCnt)."""
    cancelled_by: str | None = None
    """Who cancelled it (a uid or user name), where Slurm says (sacct's `CANCELLED by UID`)."""
    raw_id: str = ""
    """Slurm's own id of this job record (an array task's differs from `ID_TASK`)."""


@dataclass(frozen=True)
class NodeInfo:
    name: str
    state: str
    gpus_total: int
    gpus_used: int

    @property
    def usable(self) -> bool:
        """The node can run jobs now: up, responding, neither drained nor down."""
        return self.state in USABLE_NODE_STATES


@dataclass(frozen=True)
class PartitionInfo:
    partition: str
    up: bool
    nodes: tuple[NodeInfo, ...]

    @property
    def gpus_total(self) -> int:
        return sum(node.gpus_total for node in self.nodes)

    @property
    def gpus_free(self) -> int:
        """GPUs not allocated on the nodes that can run jobs now."""
        return sum(max(0, n.gpus_total - n.gpus_used) for n in self.nodes if n.usable)

    def available(self) -> bool:
        """The partition exists, is up, and has a node that can run jobs now."""
        return self.up and any(node.usable for node in self.nodes)


Phase = Literal["queued", "running", "requeued", "ended"]


@dataclass(frozen=True)
class SlurmOutcome:
    """What exq makes of a Slurm job's state."""

    phase: Phase
    """queued: waiting; running; requeued: its run was stopped by Slurm (preemption, requeue, node
    failure with requeue) and must run again, which is not a failure; ended: `outcome` says how."""
    outcome: Outcome | None = None
    """How it ended (phase `ended` only)."""
    exit_code: int | None = None
    reason: str = ""


RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "RESIZING",
                            "SUSPENDED", "STOPPED"})
REQUEUED_STATES = frozenset({"REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"})
ENDED_OUTCOMES = {
    "TIMEOUT": (Outcome.TIMEOUT, "time limit reached (Slurm TIMEOUT)"),
    "DEADLINE": (Outcome.TIMEOUT, "deadline reached (Slurm DEADLINE)"),
    "NODE_FAIL": (Outcome.LOST, "its node failed (Slurm NODE_FAIL)"),
    "BOOT_FAIL": (Outcome.LOST, "its node failed to boot (Slurm BOOT_FAIL)"),
    "LAUNCH_FAILED": (Outcome.LOST, "Slurm could not launch it (LAUNCH_FAILED)"),
    "OUT_OF_MEMORY": (Outcome.HOST_OOM, "out of host memory (Slurm OUT_OF_MEMORY): ask for more with --mem "
                                        "in the host's sbatch_args"),
    "REVOKED": (Outcome.CANCELLED, "revoked by Slurm (federation)"),
}


def slurm_outcome(job: SlurmJob) -> SlurmOutcome:
    """Map Slurm's state to exq's: queued, running, requeued (not a failure) or ended with an Outcome.

    A job Slurm restarted is requeued whatever its state now (pending again, cancelled after its
    requeue, or running its second run). OUT_OF_MEMORY (host RAM, the job's memory limit) is HOST_OOM;
    CUDA out-of-memory is found in the log, as everywhere.
    """
    state, reason = job.state, job.reason
    if job.restarts:
        return SlurmOutcome("requeued", reason=_join(f"requeued by Slurm ({job.restarts}x)", reason))
    if state == "PENDING":
        return SlurmOutcome("queued", reason=reason)
    if state in REQUEUED_STATES:
        return SlurmOutcome("requeued", reason=_join(f"requeued by Slurm ({state})", reason))
    if state == "PREEMPTED":
        return SlurmOutcome("requeued", reason=_join("preempted", reason))
    if state in RUNNING_STATES:
        return SlurmOutcome("running", reason="" if state == "RUNNING" else state.lower())
    outcome, why = _ended(job)
    return SlurmOutcome("ended", outcome, exit_code=job.exit_code, reason=why)


def requeued_outcome(job: SlurmJob, cause: str | None) -> tuple[Outcome, str]:
    """What a run Slurm took back (preempted, or requeued: see `requeue_cause`) means to exq: lost when its
    node failed (run again per retry.lost), else preempted (run again, counted against no retry budget)."""
    if cause is not None and ENDED_OUTCOMES.get(cause, (None, ""))[0] == Outcome.LOST:
        return ENDED_OUTCOMES[cause]
    if job.state == "PREEMPTED":
        return Outcome.PREEMPTED, _join("preempted by Slurm", job.reason)
    return Outcome.PREEMPTED, slurm_outcome(job).reason


def _ended(job: SlurmJob) -> tuple[Outcome, str]:
    if job.state in ENDED_OUTCOMES:
        return ENDED_OUTCOMES[job.state]
    if job.state == "CANCELLED":
        return Outcome.CANCELLED, f"cancelled in Slurm by {job.cancelled_by}" if job.cancelled_by else \
            "cancelled in Slurm"
    if job.exit_code == 0 and job.signal is None and job.state == "COMPLETED":
        return Outcome.SUCCEEDED, "succeeded"
    if job.signal is not None:
        return Outcome.KILLED, f"killed by signal {job.signal} (Slurm {job.state})"
    if job.exit_code is not None:
        return Outcome.FAILED, f"exit code {job.exit_code}"
    return Outcome.FAILED, f"Slurm {job.state}"


def _join(first: str, reason: str) -> str:
    return f"{first}: {reason}" if reason else first


def check_job_ids(job_ids: Iterable[str]) -> list[str]:
    """The ids, each checked to be `ID` or `ID_TASK` (so none can pass for an option)."""
    ids = [str(job_id) for job_id in job_ids]
    for job_id in ids:
        if not JOB_ID.fullmatch(job_id):
            raise ValueError(f"not a Slurm job id: {job_id!r}")
    return ids


def format_time_limit(seconds: int) -> str:
    """sbatch's `--time` for `seconds` (D-HH:MM:SS; Slurm rounds up to whole minutes)."""
    if seconds <= 0:
        raise ValueError(f"time limit must be positive, not {seconds}")
    minutes, secs = divmod(seconds, 60)
    hours, mins = divmod(minutes, 60)
    days, hrs = divmod(hours, 24)
    return f"{days}-{hrs:02d}:{mins:02d}:{secs:02d}"


def parse_exit_status(status: str) -> tuple[int | None, int | None]:
    """(exit code, signal) from squeue's raw wait status (`768`) or sacct's `CODE:SIGNAL` (`3:0`)."""
    try:
        if ":" in status:
            code, sig = (int(part) for part in status.split(":", 1))
        else:
            raw = int(status)
            code, sig = raw >> 8, raw & 0x7F
    except ValueError:
        return None, None
    return (None, sig) if sig else (code, None)


def _terminal(state: str) -> bool:
    return state not in RUNNING_STATES and state not in REQUEUED_STATES and state != "PENDING"


def _state(raw: str) -> tuple[str, str | None]:
    """(state, who cancelled) from `CANCELLED by 1000` or `RUNNING`."""
    words = raw.split()
    state = words[0].rstrip("+") if words else "UNKNOWN"
    by = words[2] if len(words) >= 3 and words[1] == "by" else None
    return state, by


def _reason(reason: str) -> str:
    """Slurm's text, empty where it says there is none (`None`, `(null)`)."""
    return "" if reason in ("None", "(null)") else reason


def parse_squeue(out: str) -> list[SlurmJob]:
    """squeue `-r -O` lines (SQUEUE_FIELDS, each followed by SEP) as jobs, array tasks as `ID_TASK`."""
    jobs = []
    for line in out.splitlines():
        parts = line.removesuffix(SEP).split(SEP, len(SQUEUE_FIELDS) - 1)
        if len(parts) != len(SQUEUE_FIELDS) or not parts[0].strip().isdigit():
            continue
        raw_id, array_id, task, state, reason, restarts, status, nodes = (p.strip() for p in parts[:-1])
        name = parts[-1]
        job_id = f"{array_id}_{task}" if task.isdigit() else raw_id
        exit_code, sig = parse_exit_status(status) if _terminal(state) else (None, None)
        jobs.append(SlurmJob(job_id=job_id, state=state, reason=_reason(reason), nodes=_reason(nodes), name=name,
                             exit_code=exit_code, signal=sig, restarts=int(restarts) if restarts.isdigit() else 0,
                             raw_id=raw_id))
    return jobs


def parse_sacct(out: str) -> list[SlurmJob]:
    """sacct `-P -n -o SACCT_FIELDS` lines as jobs (in order: a later record of an id is newer)."""
    jobs = []
    for line in out.splitlines():
        parts = line.split(SEP, len(SACCT_FIELDS) - 1)
        if len(parts) != len(SACCT_FIELDS) or not JOB_ID.fullmatch(parts[0]):
            continue
        job_id, raw_id, raw_state, status, reason, nodes, name = parts
        state, by = _state(raw_state)
        exit_code, sig = parse_exit_status(status) if _terminal(state) else (None, None)
        jobs.append(SlurmJob(job_id=job_id, state=state, reason=_reason(reason), nodes=_reason(nodes), name=name,
                             exit_code=exit_code, signal=sig, cancelled_by=by, raw_id=raw_id))
    return jobs


def _gpus(gres: str) -> int:
    return sum(int(count) for count in GPU_GRES.findall(gres))


def parse_sinfo(partition: str, out: str) -> PartitionInfo:
    """sinfo `-N -O SINFO_FIELDS` lines of one partition."""
    nodes: dict[str, NodeInfo] = {}
    up = False
    for line in out.splitlines():
        parts = [p.strip() for p in line.removesuffix(SEP).split(SEP)]
        if len(parts) != len(SINFO_FIELDS):
            continue
        name, state, avail, gres, used = parts
        up = up or avail == "up"
        nodes[name] = NodeInfo(name=name, state=state, gpus_total=_gpus(gres), gpus_used=_gpus(used))
    return PartitionInfo(partition=partition, up=up, nodes=tuple(nodes.values()))


def _format(fields: Sequence[str]) -> str:
    return ",".join(f"{field}:{SEP}" for field in fields)


class SlurmClient:
    """Submits, follows and cancels Slurm jobs through a Runner (see the module's docstring)."""

    def __init__(self, run: Runner) -> None:
        self._run = run
        self._jobcomp: bool | None = None
        """True when sacct has no accounting database and reads the jobcomp file (`sacct -c`)."""
        self._raw_ids: dict[str, str] = {}
        """Array task id (`ID_TASK`) -> its raw job id, learned from squeue (for `sacct -c`)."""

    def _call(self, argv: list[str], what: str) -> str:
        code, out, err = self._run(argv)
        if code != 0:
            raise WorkerError(f"{what} failed (exit code {code}): {err.strip() or out.strip() or 'no output'}")
        return out

    def submit(self, script_path: str, *, job_name: str, partition: str, gres_gpus: int, time_limit_s: int | None,
               output: str, array: int | str | None = None, array_limit: int | None = None,
               extra_args: Sequence[str] = (), account: str | None = None, qos: str | None = None,
               constraint: str | None = None) -> str:
        """sbatch --parsable the script; returns the job id. `array`: a task count or sbatch's spec
        (`0-9,20`); `array_limit`: at most this many tasks at once (`%N`)."""
        argv = ["sbatch", "--parsable", f"--job-name={job_name}", f"--partition={partition}", f"--output={output}"]
        if gres_gpus:
            argv.append(f"--gres=gpu:{gres_gpus}")
        if time_limit_s is not None:
            argv.append(f"--time={format_time_limit(time_limit_s)}")
        if array is not None:
            spec = f"0-{array - 1}" if isinstance(array, int) else array
            argv.append(f"--array={spec}" + (f"%{array_limit}" if array_limit else ""))
        for option, value in (("account", account), ("qos", qos), ("constraint", constraint)):
            if value:
                argv.append(f"--{option}={value}")
        argv += [*extra_args, script_path]
        out = self._call(argv, "sbatch")
        job_id = out.strip().splitlines()[-1].split(";")[0] if out.strip() else ""
        if not job_id.isdigit():
            raise WorkerError(f"sbatch printed no job id: {out.strip()!r}")
        return job_id

    def states(self, job_ids: Iterable[str] | None = None, *, name_prefix: str | None = None) -> dict[str, SlurmJob]:
        """The asked jobs (or every job whose name starts with `name_prefix`) Slurm knows, by id.

        One squeue call; plus one sacct call only for asked ids squeue no longer shows. An id
        neither knows is left out.
        """
        wanted = None if job_ids is None else set(check_job_ids(job_ids))
        if wanted is None and name_prefix is None:
            raise ValueError("states() needs job ids or a name prefix")
        found = {job.job_id: job for job in self._squeue()
                 if (wanted is None or job.job_id in wanted) and job.name.startswith(name_prefix or "")}
        missing = sorted(wanted - found.keys()) if wanted is not None else []
        if missing:
            found.update((job.job_id, job) for job in self._sacct(missing)
                         if job.name.startswith(name_prefix or ""))
        return found

    def _squeue(self) -> list[SlurmJob]:
        out = self._call(["squeue", "--me", "-h", "-r", "-t", "all", "-O", _format(SQUEUE_FIELDS)], "squeue")
        jobs = parse_squeue(out)
        for job in jobs:
            if job.job_id != job.raw_id and (job.state != "PENDING" or job.restarts):  # a started task's own record
                self._raw_ids[job.job_id] = job.raw_id
        return jobs

    def _sacct(self, job_ids: list[str]) -> list[SlurmJob]:
        """The newest sacct record of each id (ids it cannot resolve are left out)."""
        newest = {job.job_id: job for job in self._sacct_history(job_ids, runs=False)}
        return list(newest.values())

    def _sacct_history(self, job_ids: list[str], runs: bool) -> list[SlurmJob]:
        """sacct's records of the ids, oldest first; `runs`: one per run of a requeued job (`-D`), where an
        accounting database keeps them (the jobcomp file always has a line per run that ended or was requeued)."""
        if self._jobcomp:
            return self._sacct_jobcomp(job_ids)
        argv = ["sacct", "-P", "-n", "-X", *(["-D"] if runs else []), "-o", ",".join(SACCT_FIELDS),
                "-j", ",".join(job_ids)]
        code, out, err = self._run(argv)
        if code != 0 and ACCOUNTING_DISABLED in (err + out).lower():
            self._jobcomp = True
            return self._sacct_jobcomp(job_ids)
        if code != 0:
            raise WorkerError(f"sacct failed (exit code {code}): {err.strip() or 'no output'}")
        self._jobcomp = False
        wanted = set(job_ids)
        return [job for job in parse_sacct(out) if job.job_id in wanted]

    def _sacct_jobcomp(self, job_ids: list[str]) -> list[SlurmJob]:
        """`sacct -c`: the jobcomp file, which knows array tasks only by raw id (learned from squeue)."""
        by_raw = {self._raw_ids.get(job_id, job_id): job_id for job_id in job_ids
                  if "_" not in job_id or job_id in self._raw_ids}
        if not by_raw:
            return []
        argv = ["sacct", "-c", "-P", "-n", "-o", ",".join(SACCT_FIELDS), "-j", ",".join(sorted(by_raw))]
        out = self._call(argv, "sacct -c")
        return [replace(job, job_id=by_raw[job.raw_id]) for job in parse_sacct(out) if job.raw_id in by_raw]

    def requeue_cause(self, job_id: str) -> str | None:
        """How the job's last run ended before Slurm requeued it, as sacct recorded it (`NODE_FAIL`,
        `PREEMPTED`, `REQUEUED`), or None where it recorded no such end (`scontrol requeue` leaves the
        jobcomp file a `PENDING` line). A cancel after the requeue (exq's own) is not the cause."""
        ended = [job.state for job in self._sacct_history(check_job_ids([job_id]), runs=True)
                 if job.state not in ("PENDING", "CANCELLED") and job.state not in RUNNING_STATES]
        return ended[-1] if ended else None

    def find_by_name(self, name: str) -> list[str]:
        """The ids (base ids of arrays, as submit returned them) of the user's jobs named `name`:
        squeue's, and sacct's of the last days (with only the jobcomp file, an array task that
        squeue never showed this client appears under its raw id)."""
        ids = {job.job_id.split("_")[0] for job in self._squeue() if job.name == name}
        task_of = {raw: job_id for job_id, raw in self._raw_ids.items()}
        ids.update(task_of.get(job.raw_id, job.job_id).split("_")[0] for job in self._sacct_named(name))
        return sorted(ids, key=int)

    def _sacct_named(self, name: str) -> list[SlurmJob]:
        by_name = ["--name", name] if "," not in name else []  # sacct reads a list there
        argv = ["sacct", "-P", "-n", "-X", "-S", FIND_WINDOW, *by_name, "-o", ",".join(SACCT_FIELDS)]
        if self._jobcomp:
            argv.insert(1, "-c")
        code, out, err = self._run(argv)
        if code != 0 and not self._jobcomp and ACCOUNTING_DISABLED in (err + out).lower():
            self._jobcomp = True
            argv.insert(1, "-c")
            code, out, err = self._run(argv)
        if code != 0:
            raise WorkerError(f"sacct failed (exit code {code}): {err.strip() or 'no output'}")
        return [job for job in parse_sacct(out) if job.name == name]

    def cancel(self, job_ids: Iterable[str]) -> None:
        """scancel the jobs (array tasks as `ID_TASK`, a whole array by its id), in one call."""
        ids = check_job_ids(job_ids)
        if ids:
            self._call(["scancel", *ids], "scancel")

    def test_submit(self, partition: str, extra_args: Sequence[str] = ()) -> str | None:
        """Why sbatch would refuse a one-GPU job on `partition` (`sbatch --test-only`); None when it would take it."""
        code, out, err = self._run(["sbatch", "--test-only", f"--partition={partition}", "--gres=gpu:1",
                                    *extra_args, "--wrap", "true"])
        return None if code == 0 else (err.strip() or out.strip() or f"sbatch --test-only exited {code}")

    def partition_info(self, partition: str) -> PartitionInfo:
        """The partition's nodes, their states and GPUs (total, allocated) as sinfo reports them."""
        out = self._call(["sinfo", "-h", "-N", "-p", partition, "-O", _format(SINFO_FIELDS)], "sinfo")
        return parse_sinfo(partition, out)
