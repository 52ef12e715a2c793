"""The Slurm worker: a cluster is one more host. Each attempt is one Slurm batch job running the same
runner.sh on a compute node, in an attempt directory on the filesystem the daemon's machine (the login node)
shares with the compute nodes, so its claim, pid, exit and result files read as a local attempt's do.

Slurm allocates the GPUs (`--gres=gpu:N`) and sets CUDA_VISIBLE_DEVICES; exq's probe of a Slurm host reports
`slots` GPU slots (how many GPUs' worth of exq jobs Slurm may hold at once, queued or running: Slurm's queue
is the buffer) and never picks indices. The attempts launched within BATCH_WINDOW that need the same GPUs and
time limit go in as one job array, each task finding its attempt directory in the batch's map file. One
`squeue` call per poll covers every watched job.

Jobs are requeueable (preemption, `scontrol requeue`, a failed node), but a run Slurm takes back ends its
attempt: exq cancels the requeued Slurm job, whose attempt directory's claim is taken, and runs the job again
in a new attempt, per `retry.lost` when its node failed (sacct says), else at once and counted against no
retry budget (preempted). Across a daemon crash, an attempt is found by its Slurm job id (the `slurm` file in
its directory) or, when sbatch may have run without that file being written, by its batch's job name and its
index there (`slurm.pending`, written before sbatch).
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from exq.config import HostConfig
from exq.errors import WorkerError
from exq.gpus import GpuInfo, GpuSnapshot
from exq.model import contract
from exq.model.outcome import Outcome
from exq.slurm.client import (
    RUNNING_STATES,
    SlurmClient,
    SlurmJob,
    local_runner,
    requeued_outcome,
    slurm_outcome,
)
from exq.slurm.login import SshLogin
from exq.workers.attempts import (
    log_tail,
    make_private_dirs,
    missing_paths,
    peek_results,
    read_result,
    read_text,
    runner_env,
    write_private,
    write_tombstone,
)
from exq.workers.base import (
    RUNNER_PATH,
    AttemptReport,
    Capabilities,
    LaunchRequest,
    RunRecord,
    parse_record,
)
from exq.workers.slurm_fscheck import CHECK_NAME, CHECK_TIME_LIMIT, SharedFilesCheck

log = logging.getLogger("exq.slurm")
_BatchKey = tuple[int, int | None, str | None, int | None]
"""(GPUs, time limit, exq's batch, its max_parallel): launches that may go in as one array."""
T = TypeVar("T")

POLL = 1.0
"""Seconds between two squeue calls (one call serves every attempt being watched)."""
JOB_ID_FILE = "slurm"
"""The attempt's Slurm job id (`ARRAY_TASK`), written once sbatch returned it."""
PENDING_FILE = "slurm.pending"
"""`BATCH_NAME INDEX`: the array the attempt goes in as task INDEX, written before sbatch."""
BATCH_WINDOW = 0.05
"""Seconds the first launch of a batch waits for others to join it (one placement pass launches at once)."""
ARRAY_MAX = 1000
"""Tasks per array at most: Slurm's default MaxArraySize (1001) allows indices 0-1000."""
RUNNER_VARS_FILE = "launch.env"
"""The runner's variables (the job's environment and EXQ_RUNNER_*), shell-quoted."""
TIME_LIMIT_MARGIN = 60
"""Seconds added to a job's timeout for Slurm's --time: exq kills it first; Slurm's limit holds while exq is down."""
SLOT_MEMORY = 2**50
"""The memory a slot reports: Slurm does not say per GPU, so any gpu_memory fits (the partition decides)."""
WAITING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", *RUNNING_STATES})
"""Slurm states of a job that has not ended."""


class SlurmWorker:
    """The Worker for a Slurm partition reached from this machine (the login node)."""

    capabilities = Capabilities(queue_batch=ARRAY_MAX)

    def __init__(self, name: str, host: HostConfig, node_id: str, client: SlurmClient | None = None) -> None:
        if not host.partition:
            raise WorkerError(f"host {name}: kind slurm needs a partition")
        self.name = name
        self.host = host
        self._login = SshLogin(name, host) if host.login != "local" and client is None else None
        self.client = client or SlurmClient(self._login or local_runner())
        self.root = Path.home() / host.root / node_id
        self.jobs = self.root / "jobs"
        self._states: dict[str, SlurmJob] = {}
        self._polled_at = 0.0
        self._watched: set[str] = set()
        self._sbatch_refuses: str | None = None
        """Why `sbatch --test-only` refused a one-GPU job ("": it did not), asked at the first probe."""
        self._files_check = SharedFilesCheck(self.client, self.root, lambda script: self._sbatch(
            script, job_name=CHECK_NAME, gpus=0, time_limit_s=CHECK_TIME_LIMIT, output="/dev/null"))
        self._dirs: dict[str, str] = {}
        """Attempt directory of each watched job id."""
        self._lock = asyncio.Lock()
        self._batches: dict[_BatchKey, list[tuple[Path, asyncio.Future[str]]]] = {}
        """Launches waiting to go in as one array, by (GPUs, time limit, exq's batch, its max_parallel)."""

    async def _slurm(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A client call, off the event loop (whose SSH connection to the login node, if any, runs its commands)."""
        if self._login is not None:
            self._login.bind(asyncio.get_running_loop())
        return await asyncio.to_thread(call, *args, **kwargs)

    # -- placement --------------------------------------------------------------------------------

    def attempt_dir(self, submission: str, job_id: str, number: int) -> str:
        return str(self.jobs / submission / job_id / str(number))

    async def prepare_workdir(self, local: str, dest: str, exclude: list[str]) -> str:
        """The compute nodes share this machine's filesystem: jobs run in the workdir itself."""
        return local

    async def probe(self) -> GpuSnapshot:
        """The partition's GPUs as slots (Slurm picks the real ones); none while the compute nodes are found
        not to share exq's root (see SharedFilesCheck)."""
        info = await self._slurm(self.client.partition_info, self.host.partition or "")
        if self._sbatch_refuses is None:  # asked once: whether sbatch takes a job there at all
            why = await self._slurm(self.client.test_submit, info.partition, self.host.sbatch_args)
            self._sbatch_refuses = why or ""
        shared, note = (None, "") if self._sbatch_refuses else await self._slurm(self._files_check.step)
        slots = () if shared is False else tuple(
            GpuInfo(index=i, uuid=f"slurm-{self.name}-{i}", name=f"{info.partition} slot",
                    memory_total=SLOT_MEMORY, memory_used=0) for i in range(self.host.slots))
        message = (f"Slurm partition {info.partition}: {len(info.nodes)} node(s), {info.gpus_free}/{info.gpus_total} "
                   f"GPUs free; exq keeps up to {len(slots)} GPUs of jobs there"
                   + ("" if info.available() else "; no usable node")
                   + (f"; sbatch refuses a one-GPU job: {self._sbatch_refuses}" if self._sbatch_refuses else "")
                   + (f"; {note}" if note else ""))
        return GpuSnapshot(backend="slurm", gpus=slots, taken_at=time.time(), message=message, slots=True)

    # -- launching --------------------------------------------------------------------------------

    async def launch(self, request: LaunchRequest) -> RunRecord:
        """Submit the attempt (with the others launched with it, as one array), then wait (as long as Slurm keeps
        it pending) until its runner recorded the job's start, or the job ended without starting."""
        d = Path(request.attempt_dir)
        env = {k: v for k, v in request.env.items() if k != "CUDA_VISIBLE_DEVICES"}  # Slurm sets it
        added = runner_env(request, env, self.host.cleanup_grace, self.name)
        make_private_dirs(d)
        write_private(d / RUNNER_VARS_FILE,
                       "".join(f"export {name}={shlex.quote(value)}\n" for name, value in added.items()))
        limit = None if request.timeout is None else int(request.timeout) + TIME_LIMIT_MARGIN
        job_id = await self._join_batch(d, (request.gpus, limit, request.batch, request.max_parallel))
        write_private(d / JOB_ID_FILE, job_id + "\n")
        while True:
            record = await self.read(str(d))
            if record.pgid is not None or not record.alive:
                return record
            await self._refresh()

    async def _join_batch(self, d: Path, key: _BatchKey) -> str:
        """The job id (`ARRAY_TASK`) of attempt `d` once its batch was submitted."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        batch = self._batches.setdefault(key, [])
        batch.append((d, future))
        if len(batch) == 1:
            asyncio.get_running_loop().call_later(BATCH_WINDOW, self._submit_soon, key)
        return await future

    def _submit_soon(self, key: _BatchKey) -> None:
        batch = self._batches.pop(key, [])
        for first in range(0, len(batch), ARRAY_MAX):
            task = asyncio.ensure_future(self._submit(batch[first:first + ARRAY_MAX], *key))
            task.add_done_callback(lambda done: done.exception() if not done.cancelled() else None)

    async def _submit(self, batch: list[tuple[Path, asyncio.Future[str]]], gpus: int, limit: int | None,
                      _batch: str | None, max_parallel: int | None) -> None:
        """One sbatch --array for the batch; each attempt's future gets its task's id (or the error)."""
        try:
            name, script = self._write_batch([d for d, _ in batch])
            array_id = await self._slurm(self._sbatch, str(script), job_name=name, gpus=gpus, time_limit_s=limit,
                                         output=str(script.with_suffix(".%a.out")), array=len(batch),
                                         array_limit=max_parallel)
        except Exception as exc:  # every launch of the batch fails with it, as one launch would
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for index, (_, future) in enumerate(batch):
            if not future.done():
                future.set_result(f"{array_id}_{index}")

    def _sbatch(self, script: str, *, job_name: str, gpus: int, time_limit_s: int | None, output: str,
                array: int | None = None, array_limit: int | None = None) -> str:
        """sbatch `script` to the host's partition, with its account, qos, constraint and sbatch_args: the job id."""
        host = self.host
        return self.client.submit(script, job_name=job_name, partition=host.partition or "", gres_gpus=gpus,
                                  time_limit_s=time_limit_s, output=output, array=array, array_limit=array_limit,
                                  extra_args=["--requeue", *host.sbatch_args], account=host.account, qos=host.qos,
                                  constraint=host.constraint)

    def _write_batch(self, dirs: list[Path]) -> tuple[str, Path]:
        """The batch's name, map file and script (private, under the worker's root), and each attempt's note
        of its place in it: an array task reads its attempt directory from line TASK+1 of the map."""
        runner = self.root / "runner.sh"
        if not runner.exists() or runner.read_bytes() != RUNNER_PATH.read_bytes():
            make_private_dirs(self.root)
            shutil.copyfile(RUNNER_PATH, runner)
        batches = self.root / "batches"
        make_private_dirs(batches)
        name = f"exq:{uuid.uuid4().hex[:12]}"
        stem = batches / name.removeprefix("exq:")
        write_private(stem.with_suffix(".map"), "".join(f"{d}\n" for d in dirs))
        script = stem.with_suffix(".sh")
        mapped = shlex.quote(str(stem.with_suffix(".map")))
        write_private(script, "#!/bin/sh\n"
                               f'd=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {mapped})\n'
                               f'. "$d/{RUNNER_VARS_FILE}"\n'
                               f'exec sh {shlex.quote(str(runner))} "$d"\n')
        for index, d in enumerate(dirs):
            write_private(d / PENDING_FILE, f"{name} {index}\n")
        return name, script

    # -- following ----------------------------------------------------------------------------------

    async def wait(self, attempt_dir: str) -> RunRecord:
        while True:
            record = await self.read(attempt_dir)
            if not record.alive:
                return record
            await self._refresh()

    async def read(self, attempt_dir: str) -> RunRecord:
        """The attempt's files, alive while Slurm has not ended its job. A job Slurm still holds counts as
        claimed before its runner claimed it (it will, when it starts), so it is never tombstoned."""
        d = Path(attempt_dir)
        job = await self._job(d)
        waiting = job is not None and job.state in WAITING_STATES and slurm_outcome(job).phase != "requeued"
        record = parse_record(lambda name: read_text(str(d / name)), lambda _pid, _started: waiting)
        if not record.claimed and waiting:
            return RunRecord(claimed=True, alive=True)
        return record

    async def _job(self, d: Path) -> SlurmJob | None:
        """What Slurm says of the attempt's job now (None: no job, or Slurm has forgotten it)."""
        job_id = _job_id(d)
        if job_id is None:
            pending = (read_text(str(d / PENDING_FILE)) or "").split()
            if len(pending) != 2:
                return None  # never submitted
            found = await self._slurm(self.client.find_by_name, pending[0])
            if not found:
                return None
            job_id = f"{found[-1]}_{pending[1]}"
            write_private(d / JOB_ID_FILE, job_id + "\n")
        self._watched.add(job_id)
        self._dirs[job_id] = str(d)
        if job_id not in self._states or time.monotonic() - self._polled_at > POLL:
            await self._refresh(at_once=job_id not in self._states)
        job = self._states.get(job_id)
        if job is not None and job.state not in WAITING_STATES:
            self._watched.discard(job_id)
            self._dirs.pop(job_id, None)
        return job

    def waiting(self) -> dict[str, str]:
        """The attempts Slurm still keeps pending, with its reason (as of the last poll)."""
        found: dict[str, str] = {}
        for job_id, d in self._dirs.items():
            job = self._states.get(job_id)
            if job is not None and job.state == "PENDING":
                found[d] = f"pending in Slurm ({job.reason or 'queued'}), job {job_id}"
        return found

    async def _refresh(self, at_once: bool = False) -> None:
        """One squeue call for every watched job, at most every POLL seconds unless `at_once`; every caller
        waiting meanwhile is served by the same call."""
        asked = time.monotonic()
        async with self._lock:
            if self._polled_at > asked:
                return  # polled after this caller asked
            wait = POLL - (time.monotonic() - self._polled_at)
            if wait > 0 and not at_once:
                await asyncio.sleep(wait)
            ids = sorted(self._watched)
            self._states.update(await self._slurm(self.client.states, ids) if ids else {})
            self._polled_at = time.monotonic()

    async def kill(self, attempt_dir: str, grace: float = 10.0) -> None:
        """scancel the job: Slurm sends SIGTERM (the runner passes it to the job and records its end), then
        SIGKILL after its KillWait."""
        job_id = _job_id(Path(attempt_dir))
        if job_id is not None:
            await self._slurm(self.client.cancel, [job_id])

    async def tombstone(self, attempt_dir: str) -> bool:
        return write_tombstone(Path(attempt_dir))

    async def group_alive(self, pgid: int) -> bool:
        """Slurm ends every process of a job when it ends: no group outlives it."""
        return False

    async def report(self, attempt_dir: str, workdir: str, result_file: str, outputs: list[str]) -> AttemptReport:
        d = Path(attempt_dir)
        result, result_error = read_result(Path(workdir, result_file))
        job = await self._job(d)
        record = await self.read(attempt_dir)
        return AttemptReport(record=record, log_tail=log_tail(d / contract.LOG), result=result,
                             result_error=result_error, missing_outputs=missing_paths(workdir, outputs),
                             verdict=None if job is None else await self._verdict(job, record, d))

    async def _verdict(self, job: SlurmJob, record: RunRecord, d: Path) -> tuple[Outcome, str] | None:
        """Slurm's word on how the job ended, when Slurm ended it (the runner's exit status then only says it was
        signalled): its node failed, its time ran out, it was preempted, requeued or cancelled outside exq. A
        requeued job is cancelled first: Slurm must not run it again in this attempt. A job that ended without its
        runner claiming the attempt most likely ran where the attempt's directory is not seen."""
        mapped = slurm_outcome(job)
        if mapped.phase == "requeued":
            cause = None if job.state == "PREEMPTED" else await self._slurm(self.client.requeue_cause,
                                                                                   job.job_id)
            if job.state in WAITING_STATES:
                await self._slurm(self.client.cancel, [job.job_id])
            log.info("Slurm job %s was requeued; its last run ended %s", job.job_id, cause or "unrecorded")
            return requeued_outcome(job, cause)
        if mapped.phase != "ended" or mapped.outcome is None:
            return None
        if mapped.outcome in (Outcome.SUCCEEDED, Outcome.FAILED, Outcome.KILLED) and not record.claimed:
            return Outcome.LOST, (f"Slurm job {job.job_id} ended ({job.state}) on {job.nodes or 'its node'} without "
                                  f"its runner starting: is {d} on a filesystem the nodes share?")
        if mapped.outcome in (Outcome.SUCCEEDED, Outcome.FAILED, Outcome.KILLED):
            return None  # the runner's records say it better (exit code, signal, the log's OOM)
        return mapped.outcome, mapped.reason

    async def missing_paths(self, workdir: str, globs: list[str]) -> list[str]:
        return await asyncio.to_thread(missing_paths, workdir, globs)

    async def peek_results(self, paths: list[str]) -> dict[str, dict[str, Any]]:
        return await asyncio.to_thread(peek_results, paths)

    async def close(self) -> None:
        """Close the connection to the login node, if any: the jobs stay with Slurm."""
        if self._login is not None:
            await self._login.close()


def _job_id(d: Path) -> str | None:
    text = read_text(str(d / JOB_ID_FILE))
    return text.strip() or None if text is not None else None


def make_worker(name: str, host: HostConfig, node_id: str) -> SlurmWorker:
    return SlurmWorker(name, host, node_id)
