"""exq.slurm.client against a real single-node Slurm (tests/slurmcluster.py), plus its pure state mapping."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from conftest import wait_until
from slurmcluster import SlurmCluster, slurm_cluster  # noqa: F401  (slurm_cluster: the `slurm` fixture)

from exq.errors import WorkerError
from exq.model.outcome import Outcome
from exq.slurm.client import (
    SlurmClient,
    SlurmJob,
    SlurmOutcome,
    format_time_limit,
    local_runner,
    parse_exit_status,
    parse_sacct,
    parse_sinfo,
    requeued_outcome,
    slurm_outcome,
)

TIMEOUT = 60.0
POLL = 0.25
names = (f"exq:test{n}" for n in itertools.count())


class Recorder:
    """A Runner that runs commands on the test cluster and remembers them; `blank` commands print nothing."""

    def __init__(self, slurm: SlurmCluster, blank: Sequence[str] = ()) -> None:
        self.run = local_runner(slurm.env, timeout=30)
        self.calls: list[list[str]] = []
        self.blank = set(blank)

    def __call__(self, argv: Sequence[str]) -> tuple[int, str, str]:
        self.calls.append(list(argv))
        if argv[0] in self.blank:
            return 0, "", ""
        return self.run(argv)

    def commands(self) -> list[str]:
        return [call[0] for call in self.calls]


@pytest.fixture
def submit(slurm: SlurmCluster, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """`submit(body, *sbatch_args, name=None, gpus=0, array=None, limit=None) -> job id` with a fresh name;
    cancels every job and returns the node to service after the test."""

    def run(body: str, *args: str, name: str | None = None, gpus: int = 0, array: int | None = None,
               limit: int | None = None) -> str:
        script = tmp_path / f"job{len(list(tmp_path.glob('job*.sh')))}.sh"
        script.write_text("#!/bin/sh\n" + body)
        return SlurmClient(slurm.command).submit(
            str(script), job_name=name or next(names), partition=slurm.partition, gres_gpus=gpus,
            time_limit_s=600, output=str(tmp_path / "slurm-%A_%a.out"), array=array, array_limit=limit,
            extra_args=args)

    yield run
    slurm.run("scancel", f"--partition={slurm.partition}", check=False)
    if slurm.node_state() not in ("idle", "mixed", "allocated", "completing"):
        slurm.resume()


def wait_states(slurm_client: SlurmClient, predicate: Callable[[dict[str, SlurmJob]], bool],
                ids: Sequence[str]) -> dict[str, SlurmJob]:
    """Poll states(ids) (every POLL s, at most TIMEOUT s) until `predicate` holds; returns those states."""
    last: dict[str, SlurmJob] = {}

    def check() -> bool:
        last.clear()
        last.update(slurm_client.states(ids))
        return predicate(last)

    try:
        wait_until(check, TIMEOUT, POLL)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; states: {last}") from None
    return last


def ended(*ids: str) -> Callable[[dict[str, SlurmJob]], bool]:
    return lambda jobs: all(i in jobs and slurm_outcome(jobs[i]).phase == "ended" for i in ids)


def phase_is(phase: str, *ids: str) -> Callable[[dict[str, SlurmJob]], bool]:
    return lambda jobs: all(i in jobs and slurm_outcome(jobs[i]).phase == phase for i in ids)


def test_gres_gives_each_job_its_gpus(slurm: SlurmCluster, submit: Callable[..., str], tmp_path: Path) -> None:
    out = tmp_path / "cvd.txt"
    job = submit(f'echo "$CUDA_VISIBLE_DEVICES" > {out}\n', gpus=2)
    jobs = wait_states(SlurmClient(slurm.command), ended(job), [job])
    assert slurm_outcome(jobs[job]) == SlurmOutcome("ended", Outcome.SUCCEEDED, exit_code=0, reason="succeeded")
    indices = out.read_text().strip().split(",")
    assert len(indices) == 2 and set(indices) <= {"0", "1", "2", "3"}, indices


def test_array_runs_every_task_never_more_than_its_limit(
    slurm: SlurmCluster, submit: Callable[..., str], tmp_path: Path
) -> None:
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    body = (f'start=$(date +%s.%N); sleep 1; echo "$start $(date +%s.%N)" > {stamps}/$SLURM_ARRAY_TASK_ID\n')
    array = submit(body, array=20, limit=4)
    tasks = [f"{array}_{n}" for n in range(20)]
    jobs = wait_states(SlurmClient(slurm.command), ended(*tasks), tasks)
    assert {slurm_outcome(job).outcome for job in jobs.values()} == {Outcome.SUCCEEDED}
    spans = [tuple(map(float, (stamps / str(n)).read_text().split())) for n in range(20)]
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = max(itertools.accumulate(change for _, change in events))
    assert 2 <= most <= 4, spans


def test_states_of_pending_running_and_ended_jobs_in_one_call(slurm: SlurmCluster, submit: Callable[..., str]) -> None:
    pending = submit("sleep 60\n", "--hold")
    running = submit("sleep 60\n")
    done = submit("exit 0\n")
    failed = submit("echo about to fail; exit 3\n")
    ids = [pending, running, done, failed]
    recorder = Recorder(slurm)
    slurm_client = SlurmClient(recorder)
    wait_states(slurm_client, lambda jobs: ended(done, failed)(jobs) and phase_is("running", running)(jobs), ids)
    recorder.calls.clear()
    jobs = slurm_client.states(ids)
    assert recorder.commands() == ["squeue"], recorder.calls  # one call per poll, ended jobs included
    assert slurm_outcome(jobs[pending]) == SlurmOutcome("queued", reason="JobHeldUser")
    assert slurm_outcome(jobs[running]).phase == "running" and jobs[running].nodes == slurm.node
    assert slurm_outcome(jobs[done]) == SlurmOutcome("ended", Outcome.SUCCEEDED, exit_code=0, reason="succeeded")
    assert slurm_outcome(jobs[failed]) == SlurmOutcome("ended", Outcome.FAILED, exit_code=3, reason="exit code 3")

    recorder.calls.clear()
    slurm_client.cancel([pending, running])
    assert recorder.commands() == ["scancel"]
    jobs = wait_states(slurm_client, ended(pending, running), ids)
    assert {slurm_outcome(jobs[i]).outcome for i in (pending, running)} == {Outcome.CANCELLED}
    assert jobs[pending].state == jobs[running].state == "CANCELLED"


def test_ended_jobs_slurm_no_longer_lists_come_from_one_sacct_call(
    slurm: SlurmCluster, submit: Callable[..., str]
) -> None:
    """Past MinJobAge squeue forgets an ended job: the client asks sacct once (here `sacct -c`, the
    jobcomp file, since there is no accounting database), and still knows array tasks by ID_TASK."""
    done, failed = submit("exit 0\n"), submit("exit 3\n")
    array = submit("exit 0\n", array=2)
    ids = [done, failed, f"{array}_0", f"{array}_1"]
    recorder = Recorder(slurm)
    slurm_client = SlurmClient(recorder)
    wait_states(slurm_client, ended(*ids), ids)
    recorder.blank = {"squeue"}  # as if MinJobAge had passed
    recorder.calls.clear()
    jobs = slurm_client.states([*ids, "999999"])
    assert [c[:2] for c in recorder.calls] == [["squeue", "--me"], ["sacct", "-P"], ["sacct", "-c"]], recorder.calls
    assert sorted(jobs) == sorted(ids)
    outcomes = [slurm_outcome(jobs[i]).outcome for i in ids]
    assert outcomes == [Outcome.SUCCEEDED, Outcome.FAILED, Outcome.SUCCEEDED, Outcome.SUCCEEDED]
    assert jobs[failed].exit_code == 3
    recorder.calls.clear()
    assert slurm_client.states(ids) == jobs
    assert [c[:2] for c in recorder.calls] == [["squeue", "--me"], ["sacct", "-c"]]  # jobcomp mode remembered


def test_node_down_requeues_its_jobs_or_loses_them(slurm: SlurmCluster, submit: Callable[..., str]) -> None:
    requeued = submit("sleep 60\n")
    lost = submit("sleep 60\n", "--no-requeue")
    slurm_client = SlurmClient(slurm.command)
    wait_states(slurm_client, phase_is("running", requeued, lost), [requeued, lost])
    assert slurm_client.partition_info(slurm.partition).available()

    slurm.down()
    jobs = wait_states(slurm_client, lambda j: phase_is("requeued", requeued)(j) and ended(lost)(j), [requeued, lost])
    assert jobs[requeued].state == "PENDING" and jobs[requeued].restarts == 1
    assert slurm_outcome(jobs[lost]).outcome == Outcome.LOST and jobs[lost].state == "NODE_FAIL"
    info = slurm_client.partition_info(slurm.partition)
    assert not info.available() and info.gpus_free == 0 and info.gpus_total == slurm.gpus

    assert slurm_client.requeue_cause(requeued) == "NODE_FAIL"  # sacct tells a failed node from a requeue
    assert requeued_outcome(jobs[requeued], "NODE_FAIL") == (Outcome.LOST, "its node failed (Slurm NODE_FAIL)")

    slurm.resume()
    # after Slurm's requeue delay it runs again; to exq that run is still one Slurm took back
    jobs = wait_states(slurm_client, lambda j: j[requeued].state == "RUNNING", [requeued])
    assert jobs[requeued].restarts == 1 and slurm_outcome(jobs[requeued]).phase == "requeued"


def test_scontrol_requeue_maps_to_requeued(slurm: SlurmCluster, submit: Callable[..., str]) -> None:
    job = submit("sleep 60\n")
    slurm_client = SlurmClient(slurm.command)
    wait_states(slurm_client, phase_is("running", job), [job])
    slurm.run("scontrol", "requeue", job)
    jobs = wait_states(slurm_client, phase_is("requeued", job), [job])
    outcome = slurm_outcome(jobs[job])
    assert outcome.outcome is None and "requeued by Slurm (1x)" in outcome.reason
    assert slurm_client.requeue_cause(job) is None
    assert requeued_outcome(jobs[job], None)[0] == Outcome.PREEMPTED  # run again, not a failure


def test_requeue_cause_reads_every_run_from_an_accounting_database() -> None:
    """With slurmdbd, `sacct -D` lists each run of a requeued job; the last one that ended names the cause."""
    calls: list[list[str]] = []

    def run(argv: Sequence[str]) -> tuple[int, str, str]:
        calls.append(list(argv))
        return 0, ("7|7|NODE_FAIL|0:0||n1|exq:a\n7|7|REQUEUED|0:15||n2|exq:a\n7|7|PENDING|0:0|BeginTime||exq:a\n"), ""

    assert SlurmClient(run).requeue_cause("7") == "REQUEUED"
    assert "-D" in calls[0] and calls[0][-2:] == ["-j", "7"]
    assert requeued_outcome(SlurmJob("7", "PREEMPTED"), None) == (Outcome.PREEMPTED, "preempted by Slurm")


def test_find_by_name_and_partition_info(slurm: SlurmCluster, submit: Callable[..., str]) -> None:
    name = next(names)
    single = submit("sleep 60\n", "--hold", name=name)
    array = submit("exit 0\n", array=3, name=name)
    other = submit("exit 0\n")
    slurm_client = SlurmClient(slurm.command)
    wait_states(slurm_client, ended(f"{array}_2", other), [f"{array}_2", other])
    assert slurm_client.find_by_name(name) == sorted([single, array], key=int)
    assert slurm_client.find_by_name("exq:never-submitted") == []
    info = slurm_client.partition_info(slurm.partition)
    assert info.available() and info.gpus_total == slurm.gpus and [n.name for n in info.nodes] == [slurm.node]
    assert not slurm_client.partition_info("no-such-partition").available()


def test_cluster_helpers(slurm: SlurmCluster) -> None:
    job = slurm.sbatch("sleep 60\n", "--job-name=exq:helpers", "--output=/dev/null")
    wait_until(lambda: slurm.squeue().get(job, {}).get("state") == "RUNNING", TIMEOUT, POLL)
    assert slurm.squeue()[job]["name"] == "exq:helpers" and slurm.env["SLURM_CONF"] == str(slurm.conf)
    slurm.run("scancel", job)
    wait_until(lambda: slurm.squeue()[job]["state"] == "CANCELLED", TIMEOUT, POLL)


def test_submit_failure_carries_sbatchs_words(slurm: SlurmCluster, tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\ntrue\n")
    with pytest.raises(WorkerError, match=r"(?i)invalid partition"):
        SlurmClient(slurm.command).submit(str(script), job_name="exq:x", partition="no-such-partition", gres_gpus=0,
                                          time_limit_s=None, output=str(tmp_path / "out"))
    with pytest.raises(ValueError, match="not a Slurm job id"):
        SlurmClient(slurm.command).cancel(["--signal=KILL"])


@pytest.mark.parametrize(("job", "expected"), [
    (SlurmJob("1", "PENDING", reason="Priority"), SlurmOutcome("queued", reason="Priority")),
    (SlurmJob("1", "CONFIGURING"), SlurmOutcome("running", reason="configuring")),
    (SlurmJob("1", "COMPLETING", exit_code=0), SlurmOutcome("running", reason="completing")),
    (SlurmJob("1", "COMPLETED", exit_code=0), SlurmOutcome("ended", Outcome.SUCCEEDED, 0, "succeeded")),
    (SlurmJob("1", "FAILED", exit_code=3), SlurmOutcome("ended", Outcome.FAILED, 3, "exit code 3")),
    (SlurmJob("1", "FAILED", signal=9),
     SlurmOutcome("ended", Outcome.KILLED, None, "killed by signal 9 (Slurm FAILED)")),
    (SlurmJob("1", "OUT_OF_MEMORY", exit_code=0),
     SlurmOutcome("ended", Outcome.HOST_OOM, 0, "out of host memory (Slurm OUT_OF_MEMORY): ask for more with "
                                                "--mem in the host's sbatch_args")),
    (SlurmJob("1", "TIMEOUT"), SlurmOutcome("ended", Outcome.TIMEOUT, None, "time limit reached (Slurm TIMEOUT)")),
    (SlurmJob("1", "NODE_FAIL"), SlurmOutcome("ended", Outcome.LOST, None, "its node failed (Slurm NODE_FAIL)")),
    (SlurmJob("1", "PREEMPTED"), SlurmOutcome("requeued", reason="preempted")),
    (SlurmJob("1", "REQUEUED"), SlurmOutcome("requeued", reason="requeued by Slurm (REQUEUED)")),
    (SlurmJob("1", "PENDING", reason="BeginTime", restarts=2),
     SlurmOutcome("requeued", reason="requeued by Slurm (2x): BeginTime")),
    (SlurmJob("1", "CANCELLED", restarts=1), SlurmOutcome("requeued", reason="requeued by Slurm (1x)")),
    (SlurmJob("1", "CANCELLED", cancelled_by="1000"),
     SlurmOutcome("ended", Outcome.CANCELLED, None, "cancelled in Slurm by 1000")),
])
def test_slurm_states_map_to_exq_outcomes(job: SlurmJob, expected: SlurmOutcome) -> None:
    assert slurm_outcome(job) == expected


def test_parsing_helpers() -> None:
    assert parse_exit_status("768") == (3, None) and parse_exit_status("15") == (None, 15)
    assert parse_exit_status("3:0") == (3, None) and parse_exit_status("0:9") == (None, 9)
    assert format_time_limit(90) == "0-00:01:30" and format_time_limit(90061) == "1-01:01:01"
    info = parse_sinfo("gpu", "n1|mixed|up|gpu:a100:4(S:0-1)|gpu:a100:3(IDX:0-1,3)|\n"
                              "n2|drained|up|gpu:2,gpu:v100:1|gpu:0|\n")
    assert (info.gpus_total, info.gpus_free, info.available()) == (7, 1, True)
    [job] = parse_sacct("12_3|15|CANCELLED by 1000|0:15||node7|exq:a|b\n")
    assert (job.job_id, job.raw_id, job.state, job.cancelled_by, job.signal, job.name) == \
        ("12_3", "15", "CANCELLED", "1000", 15, "exq:a|b")
