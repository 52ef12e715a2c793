"""The transport-neutral worker interface.

A worker owns one host. Every attempt lives in an attempt directory on that host, where a small
POSIX sh runner records what happened (claim, pid, exit status), so an attempt outlives the daemon
and can be re-attached or classified later from those files alone (`parse_record`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from exq.errors import ExqError
from exq.gpus import GpuSnapshot
from exq.model.outcome import Outcome

RUNNER_PATH = Path(__file__).with_name("runner.sh")
"""The attempt runner every worker runs on its host (POSIX sh)."""
START_TIMEOUT = 10.0
"""Seconds a launch waits for the runner to say it started the job."""
LOG_TAIL_BYTES = 256 * 1024
"""How much of the end of an ended attempt's log is read to classify it (an OOM line may be followed
by many KiB of teardown output) and to quote its last line; the same for local and SSH attempts."""
PEEK_LIMIT = 256 * 1024
"""A running job's result file larger than this is not read for live progress (only when it ends)."""
TOMBSTONE = "tombstone"
"""What the claim holds when exq claimed the attempt before its runner did (so it never runs)."""


class LaunchRefused(ExqError):
    """No process can be started with the attempt's command, environment or workdir (a NUL byte, a bad
    variable name, text that is not encodable, too large): the attempt fails, as a retry would too."""


@dataclass(frozen=True)
class Capabilities:
    """What a kind of worker does itself, so the scheduler never tests a host's name or kind."""

    on_daemon_host: bool = False
    """Its host is the daemon's own machine: a job that may run there has its wait_for paths checked
    there, and CPU-only jobs go there first."""
    queue_batch: int = 0
    """Its host keeps launched jobs in its own queue and runs at most `LaunchRequest.max_parallel` of one
    batch at once (a Slurm array's `%N`): up to this many launches of one kind go to it as one batch, counted
    as max_parallel running jobs, not one each. 0: no such queue; max_parallel is enforced by exq alone."""


@dataclass(frozen=True)
class LaunchRequest:
    """Everything a worker needs to start one attempt."""

    attempt_dir: str
    """Directory for this attempt on the worker's host; the worker creates it (mode 0700)."""
    cmd: str
    """The shell command, with parameter values already quoted."""
    workdir: str
    env: dict[str, str]
    """Variables added to the job's environment (CUDA_VISIBLE_DEVICES, EXQ_JOB_ID, ... and the manifest's)."""
    setup: str | None = None
    """Shell prefix run in the same shell before cmd (e.g. '. .venv/bin/activate')."""
    gpus: int = 0
    """How many GPUs the job needs (a worker whose host allocates GPUs itself asks for this many)."""
    timeout: float | None = None
    """The job's timeout in seconds (exq kills it then; a batch system may be given a limit too)."""
    batch: str | None = None
    """Launches with the same batch go to the host's queue together (see `Capabilities.queue_batch`)."""
    max_parallel: int | None = None
    """With `batch`: at most this many of the batch may run at once."""


@dataclass(frozen=True)
class RunRecord:
    """What the runner has recorded in an attempt directory so far."""

    claimed: bool = False
    """True once the runner (or a tombstone) claimed the attempt; an unclaimed attempt never ran."""
    tombstoned: bool = False
    """True when the claim is a tombstone: the attempt was cancelled before the runner started it."""
    runner_pid: int | None = None
    pgid: int | None = None
    """Process group of the job; every process of the job is signalled through it."""
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    """Exit status as the shell reports it (128+N when killed by signal N)."""
    alive: bool = False
    """The runner is still running (re-attachable)."""

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    @property
    def signal(self) -> int | None:
        if self.exit_code is not None and self.exit_code > 128:
            return self.exit_code - 128
        return None


@dataclass(frozen=True)
class AttemptReport:
    """Everything needed to classify an ended attempt, gathered on the attempt's host."""

    record: RunRecord
    log_tail: str
    """The last LOG_TAIL_BYTES of the job's combined stdout/stderr."""
    result: dict[str, Any] | None
    """Contents of EXQ_RESULT_FILE when the job wrote valid JSON there."""
    result_error: str | None = None
    missing_outputs: list[str] = field(default_factory=list)
    """Output globs that matched nothing."""
    verdict: tuple[Outcome, str] | None = None
    """How the host's own scheduler says the attempt ended, when that overrides its exit status (a batch
    system ended it: its node failed, its time limit passed, someone else cancelled it)."""


RESERVED_PAD = "~"
"""What runner.sh pads a reserved record with: no record holds one, so text with one is not (yet) a record."""


def _fields(text: str | None, count: int) -> list[str] | None:
    """The fields of a whole record with at least `count` of them (None: missing, reserved or half written)."""
    if text is None or RESERVED_PAD in text:
        return None
    fields = text.split()
    return fields if len(fields) >= count else None


def parse_record(read: Callable[[str], str | None], runner_alive: Callable[[int, float | None], bool]) -> RunRecord:
    """What an attempt directory records; `read(NAME)` is file NAME's text there (None: missing).

    Both workers read in this order: claim, pid, whether the runner lives (`runner_alive(pid,
    started_at)`), then the end, so that a runner seen gone has recorded its end already if it ever
    will. runner.sh reserves `pid` and `exit` ("pending" padded with '~') and overwrites them in place in
    one write: text with a '~' is a reservation, or a record half written, and never parses as one.
    Records of older runners read the same: they wrote `*.tmp` and renamed it into place, so while `exit`
    is missing and such a runner is gone, `exit.tmp` counts if it holds a whole record.
    """
    claim = read("claim")
    if claim is None:
        return RunRecord()
    if claim.strip() == TOMBSTONE:
        return RunRecord(claimed=True, tombstoned=True)
    runner_pid = pgid = exit_code = None
    started_at = ended_at = None
    with contextlib.suppress(ValueError):
        if (pid := _fields(read("pid"), 3)) is not None:
            runner_pid, pgid, started_at = int(pid[0]), int(pid[1]), float(pid[2])
        elif (by := _fields(claim, 2)) is not None and by[0] == "runner":
            runner_pid = int(by[1])
    alive = runner_pid is not None and runner_alive(runner_pid, started_at)
    end = read("exit")
    if end is None and not alive:
        end = read("exit.tmp")
    with contextlib.suppress(ValueError):
        if (ended := _fields(end, 2)) is not None:
            exit_code, ended_at = int(ended[0]), float(ended[1])
    return RunRecord(claimed=True, runner_pid=runner_pid, pgid=pgid, started_at=started_at,
                     ended_at=ended_at, exit_code=exit_code, alive=alive)


def parse_result(data: bytes, path: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the JSON object, None) a result file holds, or (None, why it does not hold one).

    An empty file holds nothing, without error: the runner creates it so, private, for the job.
    """
    if not data.strip():
        return None, None
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return None, f"cannot read result file {path}: {exc}"
    except ValueError as exc:
        return None, f"invalid JSON in result file {path}: {exc}"
    if not isinstance(value, dict):
        return None, f"result file {path} does not hold a JSON object"
    return value, None


class Worker(Protocol):
    """One host's executor (LocalWorker, SshWorker). Knows nothing of the scheduler."""

    name: str
    capabilities: Capabilities

    def attempt_dir(self, submission: str, job_id: str, number: int) -> str:
        """Where attempt `number` of a job lives on this worker's host (absolute path there)."""
        ...

    async def prepare_workdir(self, local: str, dest: str, exclude: list[str]) -> str:
        """Make directory `local` of the daemon's machine available at `dest` on this host (copying
        what changed, skipping `exclude` globs); returns the workdir jobs use there."""
        ...

    async def probe(self) -> GpuSnapshot:
        """The host's GPUs now, with each GPU process's pgid where it can be read."""
        ...

    async def launch(self, request: LaunchRequest) -> RunRecord:
        """Start the attempt detached (its own session), returning once the runner recorded its pid."""
        ...

    async def wait(self, attempt_dir: str) -> RunRecord:
        """Return when the attempt has ended (launched here or re-attached after a restart)."""
        ...

    async def read(self, attempt_dir: str) -> RunRecord:
        """What the attempt directory records now, and whether the runner is alive."""
        ...

    async def kill(self, attempt_dir: str, grace: float = 10.0) -> None:
        """SIGTERM the job's process group, SIGKILL whatever is left after `grace` seconds."""
        ...

    async def tombstone(self, attempt_dir: str) -> bool:
        """Claim an attempt the runner has not claimed, so it can never start. True if the claim was ours."""
        ...

    async def group_alive(self, pgid: int) -> bool:
        """Whether any process of process group `pgid` still exists on the host."""
        ...

    async def report(self, attempt_dir: str, workdir: str, result_file: str, outputs: list[str]) -> AttemptReport:
        """Gather the record, log tail, result JSON and missing outputs of an ended attempt."""
        ...

    async def missing_paths(self, workdir: str, globs: list[str]) -> list[str]:
        """The globs (relative to `workdir` on the host) that match nothing there now, in order.

        A workdir that does not exist there matches nothing.
        """
        ...

    async def peek_results(self, paths: list[str]) -> dict[str, dict[str, Any]]:
        """The JSON objects these result files (absolute paths on the host) hold now, by path.

        For live progress: files missing, unreadable, over PEEK_LIMIT bytes or not holding a JSON
        object are left out.
        """
        ...

    def waiting(self) -> dict[str, str]:
        """Attempts launched here that the host's own queue still holds (a batch system), and why, by attempt
        directory: what was last seen, without asking the host again."""
        ...

    async def close(self) -> None: ...
