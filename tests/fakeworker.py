"""An in-memory Worker for driving the Scheduler in-process: no processes, no files.

Jobs "run" from launch until the test ends them (`finish`), until they end on their own (`exits`), or until
`kill`. Every call is recorded in `calls`, in order, for assertions.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from exq.errors import WorkerError
from exq.gpus import GpuInfo, GpuProcess, GpuSnapshot
from exq.units import parse_size
from exq.workers import AttemptReport, Capabilities, LaunchRequest, RunRecord
from exq.workers.base import LOG_TAIL_BYTES

SIGTERM_EXIT = 128 + 15
_pgids = itertools.count(40_000)
"""Fake process groups, distinct across every FakeWorker."""


@dataclass(frozen=True)
class Exit:
    """How a job ends on its own: its exit code, its log, after how many seconds."""

    code: int = 0
    log: str = ""
    after: float = 0.0


@dataclass(frozen=True)
class Call:
    """One thing the scheduler asked for (or a job's start or end), in the order it happened."""

    op: str
    """launch (asked), started (launch returned), failed (launch raised), end, kill, tombstone, report, probe,
    prepare_workdir, close."""
    target: str = ""
    """The attempt directory (or the host name, for probes)."""
    job: str = ""
    gpus: tuple[int, ...] = ()
    at: float = field(default_factory=time.monotonic)


@dataclass
class FakeRun:
    """One started attempt."""

    request: LaunchRequest
    pgid: int
    gpus: tuple[int, ...]
    memory: int
    started_at: float
    done: asyncio.Event = field(default_factory=asyncio.Event)
    ended_at: float | None = None
    exit_code: int | None = None
    log: str = ""
    result: dict[str, Any] | None = None

    @property
    def job(self) -> str:
        return self.request.env.get("EXQ_JOB_ID", "")

    @property
    def alive(self) -> bool:
        return self.ended_at is None

    def record(self) -> RunRecord:
        return RunRecord(claimed=True, runner_pid=self.pgid, pgid=self.pgid, started_at=self.started_at,
                         ended_at=self.ended_at, exit_code=self.exit_code, alive=self.alive)


class FakeWorker:
    """A Worker of one fake host with `gpus` GPUs of `memory` each; each job holds `job_memory` (or its
    gpu_memory) on each of its GPUs while it runs. `exits(request)` says how a job ends on its own (None:
    when the test calls `finish` or the scheduler kills it)."""

    def __init__(self, name: str, gpus: int = 0, memory: str | int = "24GiB", *, on_daemon_host: bool = False,
                 job_memory: str | int = "1GiB", exits: Callable[[LaunchRequest], Exit | None] | None = None) -> None:
        self.name = name
        self.capabilities = Capabilities(on_daemon_host=on_daemon_host)
        self.gpu_count = gpus
        self.memory = parse_size(memory)
        self.job_memory = parse_size(job_memory)
        self.exits = exits
        self.calls: list[Call] = []
        self.runs: dict[str, FakeRun] = {}
        """Started attempts by attempt directory."""
        self._gates: dict[str, asyncio.Event] = {}
        self._failures: dict[str, Exception] = {}
        self.down = False
        """While True the host does not answer: probes and kills raise WorkerError."""
        self._tombstones: set[str] = set()

    # -- test controls ------------------------------------------------------------------------

    def gate(self, job_id: str) -> asyncio.Event:
        """An Event every launch of `job_id` waits for before it starts (set it to let them start)."""
        return self._gates.setdefault(job_id, asyncio.Event())

    def open_gates(self) -> None:
        """Let every launch held back by a gate start."""
        for gate in self._gates.values():
            gate.set()

    def fail(self, job_id: str, error: Exception) -> None:
        """Make the next launch of `job_id` raise `error` (once its gate, if any, is set)."""
        self._failures[job_id] = error

    def finish(self, target: str, exit_code: int = 0, log: str = "", result: dict[str, Any] | None = None) -> None:
        """End the running attempt `target` (an attempt directory, or a job id: its running attempt)."""
        run = self.runs.get(target) or next((r for r in reversed(self.runs.values()) if r.job == target and r.alive),
                                            None)
        if run is None or not run.alive:
            raise KeyError(f"{self.name}: no running attempt {target!r}")
        self._end(run, exit_code, log, result)

    def running(self) -> list[str]:
        """The job ids of the attempts running now."""
        return [r.job for r in self.runs.values() if r.alive]

    def ops(self, op: str) -> list[Call]:
        return [c for c in self.calls if c.op == op]

    def launched(self) -> list[str]:
        """Job ids in the order their launches were asked for."""
        return [c.job for c in self.ops("launch")]

    def killed(self) -> list[str]:
        """Job ids of the attempts the scheduler killed (whether or not they still ran)."""
        return [c.job for c in self.ops("kill")]

    def _end(self, run: FakeRun, code: int, log: str, result: dict[str, Any] | None = None) -> None:
        if not run.alive:
            return
        run.ended_at, run.exit_code, run.log, run.result = time.time(), code, log, result
        self.calls.append(Call("end", run.request.attempt_dir, run.job, run.gpus))
        run.done.set()

    # -- the Worker protocol ------------------------------------------------------------------

    def attempt_dir(self, submission: str, job_id: str, number: int) -> str:
        return f"/fake/{self.name}/{submission}/{job_id}/{number}"

    async def prepare_workdir(self, local: str, dest: str, exclude: list[str]) -> str:
        self.calls.append(Call("prepare_workdir", dest))
        return dest

    def _answer(self) -> None:
        if self.down:
            raise WorkerError(f"{self.name}: not answering")

    async def probe(self) -> GpuSnapshot:
        self.calls.append(Call("probe", self.name))
        self._answer()
        gpus = []
        for index in range(self.gpu_count):
            procs = tuple(GpuProcess(pid=r.pgid, used_memory=r.memory, pgid=r.pgid)
                          for r in self.runs.values() if r.alive and index in r.gpus)
            gpus.append(GpuInfo(index=index, uuid=f"GPU-{self.name}-{index}", name="Fake GPU",
                                memory_total=self.memory, memory_used=sum(p.used_memory for p in procs),
                                processes=procs))
        return GpuSnapshot(backend="fake", gpus=tuple(gpus), taken_at=time.time())

    async def launch(self, request: LaunchRequest) -> RunRecord:
        job, where = request.env.get("EXQ_JOB_ID", ""), request.attempt_dir
        visible = tuple(int(g) for g in request.env.get("CUDA_VISIBLE_DEVICES", "").split(",") if g)
        self.calls.append(Call("launch", where, job, visible))
        if (gate := self._gates.get(job)) is not None:
            await gate.wait()
        if (error := self._failures.pop(job, None)) is not None:
            self.calls.append(Call("failed", where, job, visible))
            raise error
        if where in self._tombstones:
            return RunRecord(claimed=True, tombstoned=True)
        memory = request.env.get("EXQ_GPU_MEMORY")
        run = FakeRun(request, next(_pgids), visible, int(memory) if memory else self.job_memory, time.time())
        self.runs[where] = run
        self.calls.append(Call("started", where, job, visible))
        end = self.exits(request) if self.exits is not None else None
        if end is not None:
            asyncio.get_running_loop().call_later(end.after, self._end, run, end.code, end.log)
        return run.record()

    async def wait(self, attempt_dir: str) -> RunRecord:
        run = self.runs.get(attempt_dir)
        if run is None:
            return await self.read(attempt_dir)
        await run.done.wait()
        return run.record()

    async def read(self, attempt_dir: str) -> RunRecord:
        run = self.runs.get(attempt_dir)
        if run is not None:
            return run.record()
        return RunRecord(claimed=True, tombstoned=True) if attempt_dir in self._tombstones else RunRecord()

    async def kill(self, attempt_dir: str, grace: float = 10.0) -> None:
        run = self.runs.get(attempt_dir)
        self.calls.append(Call("kill", attempt_dir, run.job if run else attempt_dir.rsplit("/", 2)[-2]))
        self._answer()
        if run is not None:
            self._end(run, SIGTERM_EXIT, run.log + "Terminated\n")

    async def tombstone(self, attempt_dir: str) -> bool:
        self.calls.append(Call("tombstone", attempt_dir))
        if attempt_dir in self.runs or attempt_dir in self._tombstones:
            return False
        self._tombstones.add(attempt_dir)
        return True

    async def group_alive(self, pgid: int) -> bool:
        return any(r.alive and r.pgid == pgid for r in self.runs.values())

    async def report(self, attempt_dir: str, workdir: str, result_file: str, outputs: list[str]) -> AttemptReport:
        self.calls.append(Call("report", attempt_dir))
        run = self.runs.get(attempt_dir)
        if run is None:
            return AttemptReport(record=await self.read(attempt_dir), log_tail="", result=None)
        return AttemptReport(record=run.record(), log_tail=run.log[-LOG_TAIL_BYTES:], result=run.result)

    async def missing_paths(self, workdir: str, globs: list[str]) -> list[str]:
        return []

    async def peek_results(self, paths: list[str]) -> dict[str, dict[str, Any]]:
        return {}

    def waiting(self) -> dict[str, str]:
        """Nothing waits in a queue of the host's own: a launch starts the job."""
        return {}

    async def close(self) -> None:
        self.calls.append(Call("close"))
