"""The Scheduler driven in-process with FakeWorkers: a real Store and intake, no processes.

Each test submits a manifest through intake, runs the scheduler's loop (bounded) while it plays the jobs'
part through the fakes, and checks what a user would see in the resulting state (read back from disk).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from fakeworker import SIGTERM_EXIT, Call, Exit, FakeWorker

from exq.daemon.context import SchedulerConfig
from exq.daemon.scheduler import Scheduler
from exq.errors import WorkerError
from exq.model.events import CancelRequested, Launched
from exq.model.manifest import parse_manifest
from exq.model.outcome import Outcome
from exq.model.state import Attempt, Job, JobStatus, QueueState
from exq.store import intake
from exq.store.store import StatePaths, Store, read_state
from exq.workers import LaunchRequest
from exq.workers.base import LaunchRefused

TIMEOUT = 4.0
"""Seconds any one scenario, or the scheduler's loop, may take."""
CONFIG = SchedulerConfig(probe_interval=0.05, intake_poll=0.01, settle_timeout=5.0, kill_grace=0.1,
                         progress_interval=60.0, wait_for_interval=0.05)
OOM_LOG = "step 3\nRuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 24.00 GiB total)\n"
Scenario = Callable[[Store], Awaitable[None]]
"""What the test does while the loop runs: it reads `store.state` live and writes requests to `store.paths`."""


def _all_finished(state: QueueState) -> bool:
    return bool(state.jobs) and all(j.status.finished for j in state.jobs)


def submit(tmp_path: Path, manifest: str) -> StatePaths:
    """Submit `manifest` (as `exq submit` does) to the state directory under `tmp_path`."""
    paths = StatePaths(tmp_path / "state")
    intake.submit(paths, parse_manifest(textwrap.dedent(manifest), str(tmp_path / "exp.yaml")))
    return paths


def drive(tmp_path: Path, manifest: str | None, *workers: FakeWorker, scenario: Scenario | None = None,
          config: SchedulerConfig = CONFIG) -> QueueState:
    """Submit `manifest` (None: submitted already), run the scheduler until every job finished (playing
    `scenario` meanwhile), and return the state as a reader finds it on disk afterwards."""
    paths = submit(tmp_path, manifest) if manifest is not None else StatePaths(tmp_path / "state")
    store = Store(paths).open()

    async def main() -> None:
        scheduler = Scheduler(store, {w.name: w for w in workers}, config)
        loop = asyncio.ensure_future(scheduler.run(until=_all_finished))
        try:
            if scenario is not None:
                await asyncio.wait_for(scenario(store), TIMEOUT)
            await asyncio.wait_for(asyncio.shield(loop), TIMEOUT)
        finally:
            if not loop.done():  # a scenario failed: let launches held back start, so the loop ends at once
                for worker in workers:
                    worker.open_gates()
                scheduler.drain()
                await asyncio.wait_for(loop, TIMEOUT)
            for worker in workers:
                await worker.close()

    try:
        asyncio.run(main())
    finally:
        store.close()
    return read_state(paths)


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Return once `condition()` holds (checked every few ms); TimeoutError after `timeout` seconds."""
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


def jobs(state: QueueState) -> dict[str, Job]:
    return {j.id: j for j in state.jobs}


def statuses(state: QueueState) -> dict[str, JobStatus]:
    return {j.id: j.status for j in state.jobs}


def index(calls: list[Call], op: str, job: str) -> int:
    """Where the first `op` of `job` is in `calls`."""
    return next(n for n, c in enumerate(calls) if c.op == op and c.job == job)


def peak_per_gpu(calls: list[Call]) -> tuple[int, int]:
    """(most attempts holding one GPU at once, most GPUs held at once), from launch asked to job ended."""
    holding: dict[int, set[str]] = {}
    worst = busiest = 0
    for call in calls:
        for gpu in call.gpus:
            if call.op == "launch":
                holding.setdefault(gpu, set()).add(call.target)
            elif call.op == "end":
                holding[gpu].discard(call.target)
        worst = max([worst, *(len(held) for held in holding.values())])
        busiest = max(busiest, sum(1 for held in holding.values() if held))
    return worst, busiest


def cancel(store: Store, job: str) -> Path:
    """Ask to cancel `job` through the control request path; returns where the reply will appear."""
    return intake.request(store.paths, intake.ControlRequest(op="cancel", targets=[job]))


def status_of(store: Store, job: str) -> JobStatus | None:
    return next((j.status for j in store.state.jobs if j.id == job), None)


def ends_after(seconds: float) -> Callable[[LaunchRequest], Exit]:
    return lambda request: Exit(0, f"{request.env['EXQ_JOB_ID']} done\n", seconds)


# -- tests -------------------------------------------------------------------------------------------------


def test_phase_b_runs_after_every_job_of_phase_a(tmp_path: Path) -> None:
    worker = FakeWorker("local", gpus=2, on_daemon_host=True, exits=ends_after(0.02))
    state = drive(tmp_path, """
        name: two-phase
        defaults: {gpus: 1}
        phases:
          - name: a
            grid: {i: [0, 1, 2]}
            id: "a{i}"
            cmd: train {i}
          - name: b
            after: [a]
            grid: {i: [0, 1]}
            id: "b{i}"
            cmd: evaluate {i}
        """, worker)

    assert statuses(state) == dict.fromkeys(["a0", "a1", "a2", "b0", "b1"], JobStatus.SUCCEEDED)
    assert sorted(worker.launched()) == ["a0", "a1", "a2", "b0", "b1"]  # each once
    last_a_end = max(index(worker.calls, "end", a) for a in ("a0", "a1", "a2"))
    assert all(index(worker.calls, "launch", b) > last_a_end for b in ("b0", "b1"))
    assert all(j.attempts[0].host == "local" and len(j.attempts) == 1 for j in state.jobs)


def test_exclusive_jobs_never_share_a_gpu(tmp_path: Path) -> None:
    worker = FakeWorker("local", gpus=2, on_daemon_host=True,
                        exits=lambda r: Exit(0, "", 0.01 * (json.loads(r.env["EXQ_PARAMS"])["n"] % 3)))
    state = drive(tmp_path, """
        name: packed
        phases:
          - name: one
            gpus: 1
            grid: {n: [0, 1, 2, 3, 4, 5, 6, 7]}
            id: "one{n}"
            cmd: run {n}
          - name: two
            gpus: 2
            grid: {n: [0, 1]}
            id: "two{n}"
            cmd: run {n}
        """, worker)

    assert set(statuses(state).values()) == {JobStatus.SUCCEEDED} and len(state.jobs) == 10
    worst, busiest = peak_per_gpu(worker.calls)
    assert worst == 1, "two exclusive jobs held one GPU at the same time"
    assert busiest == 2, "the two GPUs were never used at once"
    assert all(len(j.attempts[0].gpus) == (2 if j.phase == "two" else 1) for j in state.jobs)


def test_a_slow_launch_does_not_stop_the_loop(tmp_path: Path) -> None:
    worker = FakeWorker("local", gpus=2, on_daemon_host=True)
    slow = worker.gate("slow")

    async def scenario(store: Store) -> None:
        await until(lambda: worker.running() == ["fast"] and "slow" in worker.launched())
        worker.finish("fast", 0)
        await until(lambda: "after" in worker.running())  # placed on fast's GPU while slow still launches
        assert not slow.is_set() and "slow" not in worker.running()
        worker.finish("after", 0)
        slow.set()
        await until(lambda: "slow" in worker.running())
        worker.finish("slow", 0)

    state = drive(tmp_path, """
        name: slow-launch
        gpus: 1
        grid: {n: [fast, slow, after]}
        id: "{n}"
        cmd: run {n}
        """, worker, scenario=scenario)

    assert statuses(state) == dict.fromkeys(["fast", "slow", "after"], JobStatus.SUCCEEDED)
    assert jobs(state)["after"].attempts[0].gpus == jobs(state)["fast"].attempts[0].gpus
    assert index(worker.calls, "end", "after") < index(worker.calls, "started", "slow")


def test_cancel_of_a_job_still_launching_kills_it_once_started(tmp_path: Path) -> None:
    worker = FakeWorker("local", gpus=1, on_daemon_host=True, exits=lambda r: Exit(0) if "next" in r.cmd else None)
    gate = worker.gate("slow")

    async def scenario(store: Store) -> None:
        await until(lambda: "slow" in worker.launched())
        reply = cancel(store, "slow")
        await until(reply.exists)
        answer = intake.ControlReply.model_validate_json(reply.read_bytes())
        assert answer.ok and answer.affected == ["1/slow"], answer
        assert worker.killed() == [] and worker.running() == []  # the kill waits for the launch
        gate.set()

    state = drive(tmp_path, """
        name: cancel
        gpus: 1
        grid: {n: [slow, next]}
        id: "{n}"
        cmd: run {n}
        """, worker, scenario=scenario)

    slow = jobs(state)["slow"]
    assert slow.status == JobStatus.CANCELLED
    assert len(slow.attempts) == 1 and slow.attempts[0].outcome == Outcome.CANCELLED
    assert slow.attempts[0].exit_code == SIGTERM_EXIT
    assert worker.killed() == ["slow"]
    assert index(worker.calls, "started", "slow") < index(worker.calls, "kill", "slow")
    assert jobs(state)["next"].status == JobStatus.SUCCEEDED  # its GPU was released after the kill


def test_an_oom_is_retried_per_the_manifest(tmp_path: Path) -> None:
    def exits(request: LaunchRequest) -> Exit:
        attempt, job = int(request.env["EXQ_ATTEMPT"]), request.env["EXQ_JOB_ID"]
        return Exit(0, "done\n") if job == "fits" and attempt == 3 else Exit(1, OOM_LOG)

    worker = FakeWorker("local", gpus=1, on_daemon_host=True, exits=exits)
    state = drive(tmp_path, """
        name: oom
        gpus: 1
        retry:
          oom: {max: 2, backoff: 0}
        params: {bs: 64}
        on_oom:
          scale: {param: bs, factor: 0.5}
        grid: {n: [fits, never]}
        id: "{n}"
        cmd: train --bs {bs}
        """, worker)

    fits, never = jobs(state)["fits"], jobs(state)["never"]
    assert fits.status == JobStatus.SUCCEEDED and fits.oom_retries == 2
    assert [a.outcome for a in fits.attempts] == [Outcome.OOM, Outcome.OOM, Outcome.SUCCEEDED]
    assert [a.params["bs"] for a in fits.attempts] == [64, 32, 16]
    assert [a.cmd for a in fits.attempts] == ["train --bs 64", "train --bs 32", "train --bs 16"]
    assert "out of memory" in (fits.attempts[0].reason or "")
    assert never.status == JobStatus.FAILED and len(never.attempts) == 3
    assert all(a.outcome == Outcome.OOM for a in never.attempts)
    assert worker.launched().count("fits") == 3 and worker.launched().count("never") == 3


def test_cpu_jobs_go_to_the_worker_on_the_daemon_host(tmp_path: Path) -> None:
    remote = FakeWorker("remote", gpus=1, exits=ends_after(0.01))
    box = FakeWorker("box", gpus=0, on_daemon_host=True, exits=ends_after(0.01))
    state = drive(tmp_path, """
        name: mixed
        phases:
          - name: cpu
            gpus: 0
            grid: {n: [0, 1, 2]}
            id: "cpu{n}"
            cmd: prep {n}
          - name: gpu
            gpus: 1
            id: train
            cmd: train
        """, remote, box)  # remote first: the choice is by capability, not by order or by name

    assert set(statuses(state).values()) == {JobStatus.SUCCEEDED}
    hosts = {j.id: j.attempts[0].host for j in state.jobs}
    assert hosts == {"cpu0": "box", "cpu1": "box", "cpu2": "box", "train": "remote"}
    assert sorted(box.launched()) == ["cpu0", "cpu1", "cpu2"] and remote.launched() == ["train"]


# -- a cancel wins over an attempt ended without its runner's word (launch failed, host lost, restart) -----


@pytest.mark.parametrize("error", [WorkerError("connection dropped while starting the runner"),
                                   LaunchRefused("the workdir does not exist")], ids=["lost", "refused"])
def test_a_job_cancelled_while_launching_stays_cancelled_if_its_launch_fails(tmp_path: Path, error: Exception) -> None:
    worker = FakeWorker("local", gpus=1, on_daemon_host=True, exits=lambda r: Exit(0, "ran anyway\n", 0.05))
    gate = worker.gate("slow")
    worker.fail("slow", error)

    async def scenario(store: Store) -> None:
        await until(lambda: "slow" in worker.launched())
        await until(cancel(store, "slow").exists)
        gate.set()

    state = drive(tmp_path, "name: cancel-then-launch-fails\ngpus: 1\nid: slow\ncmd: run\n", worker, scenario=scenario)

    assert worker.launched() == ["slow"], "the cancelled job was launched again (and ran to its end)"
    assert jobs(state)["slow"].status == JobStatus.CANCELLED


def test_a_job_cancelled_while_its_host_is_down_is_not_run_again(tmp_path: Path) -> None:
    remote = FakeWorker("remote", gpus=1, exits=lambda r: None if r.env["EXQ_ATTEMPT"] == "1" else Exit(0, "", 0.05))

    async def scenario(store: Store) -> None:
        await until(lambda: remote.running() == ["job"])
        remote.down = True
        await until(lambda: status_of(store, "job") == JobStatus.UNKNOWN)
        await until(cancel(store, "job").exists)
        await until(lambda: jobs(store.state)["job"].attempts[0].outcome is not None)  # past its lost timeout
        remote.down = False

    state = drive(tmp_path, "name: cancel-while-down\ngpus: 1\nid: job\ncmd: run\n", remote, scenario=scenario,
                  config=dataclasses.replace(CONFIG, lost_timeout=0.2))

    assert remote.launched() == ["job"], "the cancelled job was launched again (and ran to its end)"
    assert jobs(state)["job"].status == JobStatus.CANCELLED


def test_a_job_cancelled_before_exq_stopped_mid_launch_is_not_run_after_a_restart(tmp_path: Path) -> None:
    worker = FakeWorker("local", gpus=1, on_daemon_host=True, exits=ends_after(0.05))
    store = Store(submit(tmp_path, "name: restart\ngpus: 1\nid: job\ncmd: run\n")).open()
    Scheduler(store, {})._ingest()
    job, now = store.state.jobs[0], time.time()
    where = worker.attempt_dir(job.submission, job.id, 1)
    attempt = Attempt(number=1, host="local", gpus=[0], params=job.params, cmd=job.cmd, dir=where, log=f"{where}/log",
                      launched_at=now)
    # The launch was recorded and the cancel applied (its kill waits for the start), then exq stopped before the
    # runner claimed the attempt.
    store.commit([Launched(at=now, key=job.key, attempt=attempt), CancelRequested(at=now, keys=[job.key])])
    store.close()

    state = drive(tmp_path, None, worker)

    assert worker.ops("tombstone") and worker.launched() == [], "the cancelled job was launched after the restart"
    assert jobs(state)["job"].status == JobStatus.CANCELLED
