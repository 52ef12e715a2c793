"""max_parallel, devices, wait_for, foreign_threshold and job ids in `after`, honoured by real daemons on
simulated GPUs; every wait is bounded."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from conftest import Exq, wait_until

from exq.daemon.waitfor import PathWaits

HOLD = 'n=0; while [ ! -e "$MARKS/go" ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done'
"""Shell: wait until the test creates marks/go (at most 60 s)."""
SPAN = (f'echo "start $(date +%s.%N)" >> "$MARKS/$EXQ_JOB_ID"; {HOLD}; sleep 0.3; '
        'echo "end $(date +%s.%N)" >> "$MARKS/$EXQ_JOB_ID"')
"""Shell: record when the job started and ended in marks/<job id>, holding until marks/go exists."""


def marks_dir(exq: Exq) -> Path:
    path = exq.root / "marks"
    path.mkdir(exist_ok=True)
    return path


def spans(marks: Path) -> dict[str, tuple[float, float]]:
    """Job id -> (start, end) as the job itself recorded them."""
    found = {}
    for path in marks.iterdir():
        if path.name != "go":
            times = dict(line.split() for line in path.read_text().splitlines())
            found[path.name] = (float(times["start"]), float(times["end"]))
    return found


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals overlapping at any instant (an end before a start at the same instant)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


def reasons(exq: Exq) -> dict[str, str | None]:
    return {job_id: job["reason"] for job_id, job in exq.jobs().items()}


def test_max_parallel_of_a_phase_and_of_the_submission(exq: Exq) -> None:
    exq.env["EXQ_SIMULATE_GPUS"] = "8x24GiB"
    marks = marks_dir(exq)
    exq.start_daemon()
    exq("submit", str(exq.manifest(f"""
        name: lim
        max_parallel: 3
        env: {{MARKS: "{marks}"}}
        phases:
          - name: train
            max_parallel: 2
            grid: {{i: [1, 2, 3, 4]}}
            cmd: '{SPAN}'
          - name: eval
            grid: {{i: [1, 2, 3]}}
            cmd: '{SPAN}'
    """)))
    seen = wait_until(lambda: (r := reasons(exq)) and sum(j["status"] == "running" for j in exq.jobs().values()) == 3
                      and r["train_i3"] == r["train_i4"] == "waiting: max_parallel 2 of phase train reached"
                      and r["eval_i2"] == "waiting: max_parallel 3 of the submission reached" and r, 30, 0.2)
    assert seen["eval_i3"] == "waiting: max_parallel 3 of the submission reached"
    time.sleep(1.0)  # the limits hold while the jobs run
    assert sum(j["status"] == "running" for j in exq.jobs().values()) == 3
    (marks / "go").touch()
    jobs = exq.wait_finished(7, timeout=60)
    assert {j["status"] for j in jobs.values()} == {"succeeded"}
    found = spans(marks)
    assert most_at_once([s for job_id, s in found.items() if job_id.startswith("train")]) == 2
    assert most_at_once(list(found.values())) == 3


def test_max_parallel_of_a_single_phase_manifest(exq: Exq) -> None:
    exq.env["EXQ_SIMULATE_GPUS"] = "4x24GiB"
    marks = marks_dir(exq)
    (marks / "go").touch()
    exq("run", str(exq.manifest(f"""
        name: one
        max_parallel: 2
        env: {{MARKS: "{marks}"}}
        grid: {{i: [1, 2, 3, 4, 5]}}
        cmd: '{SPAN}'
    """)))
    assert most_at_once(list(spans(marks).values())) == 2


def test_devices_restrict_the_gpus_jobs_get(exq: Exq) -> None:
    exq.env["EXQ_SIMULATE_GPUS"] = "4x24GiB"
    exq.start_daemon()
    exq("submit", str(exq.manifest("""
        name: dev
        phases:
          - name: a
            devices: {local: [1, 3], elsewhere: [0]}
            grid: {i: [1, 2, 3, 4]}
            cmd: echo "$CUDA_VISIBLE_DEVICES $EXQ_JOB_ID" > gpu_{i}; sleep 0.5
          - name: wide
            gpus: 2
            devices: {local: [2]}
            cmd: "true"
    """)))
    jobs = wait_until(lambda: (j := exq.jobs()) and all(j[f"a_i{i}"]["status"] == "succeeded" for i in range(1, 5))
                      and j, 60, 0.2)
    seen = {(exq.root / f"gpu_{i}").read_text().split()[0] for i in range(1, 5)}
    assert seen == {"1", "3"}
    assert all(job["attempts"][0]["gpus"][0] in (1, 3) for job_id, job in jobs.items() if job_id.startswith("a_"))
    wide = wait_until(lambda: (j := exq.jobs()["wide"])["reason"] and j, 20, 0.2)
    assert wide["status"] == "queued" and wide["reason"] == "cannot fit: needs 2 GPUs, devices allows 1 on local"
    exq("cancel", "wide")


def test_wait_for_holds_the_job_until_its_path_exists(exq: Exq) -> None:
    (exq.root / "ckpt").mkdir()
    exq.start_daemon()
    exq("submit", str(exq.manifest("""
        name: wf
        grid: {w: [192]}
        id: "main_w{w}"
        wait_for: ["ckpt/pre_w{w}.pt"]
        cmd: date +%s.%N > started
    """)))
    reason = "waiting for ckpt/pre_w192.pt to exist"
    wait_until(lambda: exq.jobs().get("main_w192", {}).get("reason") == reason, 30, 0.2)
    time.sleep(2.5)  # rechecked meanwhile: still missing
    job = exq.jobs()["main_w192"]
    assert (job["status"], job["reason"], job["attempts"]) == ("queued", reason, [])
    created = time.time()
    (exq.root / "ckpt" / "pre_w192.pt").touch()
    job = exq.wait_finished(1, timeout=30)["main_w192"]
    assert job["status"] == "succeeded"
    started = float((exq.root / "started").read_text())
    assert created <= started < created + 15


def test_foreign_threshold_of_a_submission_overrides_the_daemons(exq: Exq) -> None:
    load = exq.root / "load.json"
    load.write_text(json.dumps({"0": "3GiB", "1": "1GiB"}))
    exq.env["EXQ_SIMULATE_GPUS_LOAD"] = str(load)
    exq.start_daemon()  # --foreign-threshold 500MiB: both GPUs count as taken
    exq("submit", str(exq.manifest("""
        name: strict
        id: strict
        cmd: "true"
    """, "strict.yaml")))
    exq("submit", str(exq.manifest("""
        name: tolerant
        foreign_threshold: 2GiB
        grid: {i: [1, 2]}
        cmd: echo $CUDA_VISIBLE_DEVICES > tolerant_{i}
    """, "tolerant.yaml")))
    jobs = wait_until(lambda: (j := exq.jobs()) and all(j[f"tolerant_i{i}"]["status"] == "succeeded" for i in (1, 2))
                      and j, 60, 0.2)
    assert {(exq.root / f"tolerant_{i}").read_text().strip() for i in (1, 2)} == {"1"}
    strict = jobs["strict"]
    assert strict["status"] == "queued"
    assert strict["reason"] == "waiting for 1 free GPU(s); 2 held by other users' processes"
    exq("cancel", "strict")


def test_after_naming_a_job_waits_for_that_job_only(exq: Exq) -> None:
    exq.env["EXQ_SIMULATE_GPUS"] = "4x24GiB"
    manifest = exq.manifest("""
        name: ids
        phases:
          - name: pre
            grid: {w: [1, 2]}
            id: "pre_w{w}"
            cmd: test {w} = 1 || sleep 4
          - name: main
            after: [pre_w1]
            cmd: "true"
    """)
    exq("run", str(manifest))
    jobs = exq.jobs()
    assert jobs["main"]["deps"] == ["pre_w1"]
    pre1, pre2, main = (jobs[j]["attempts"][0] for j in ("pre_w1", "pre_w2", "main"))
    assert pre1["ended_at"] <= main["launched_at"] and main["ended_at"] < pre2["ended_at"]


def test_after_naming_a_job_that_fails_blocks_the_phase(exq: Exq) -> None:
    manifest = exq.manifest("""
        name: ids
        defaults: {gpus: 0}
        phases:
          - name: pre
            grid: {w: [1, 2]}
            id: "pre_w{w}"
            cmd: test {w} = 2
          - name: main
            after: [pre_w1]
            cmd: touch main_ran
    """)
    assert exq("run", str(manifest), check=False).returncode == 1
    jobs = exq.jobs()
    assert jobs["pre_w1"]["status"] == "failed" and jobs["pre_w2"]["status"] == "succeeded"
    assert jobs["main"]["status"] == "blocked" and jobs["main"]["reason"] == "dependency pre_w1 failed"
    assert not (exq.root / "main_ran").exists()


def check_errors(exq: Exq, text: str, expected: list[tuple[int, str]]) -> list[str]:
    """`exq validate` of manifest `text` fails with exit 2 and one error per (line, field) of `expected`."""
    manifest = exq.manifest(text)
    proc = exq("validate", str(manifest), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    for (number, field), line in zip(expected, lines, strict=True):
        assert line.startswith(f"exq: error: {manifest}:{number}:") and f": {field}: " in line, line
    return lines


def test_validate_names_file_line_and_field_of_each_new_setting(exq: Exq) -> None:
    check_errors(exq, """
        name: bad
        max_parallel: 0
        defaults:
          devices: {local: [0, 0]}
          foreign_threshold: -1GiB
        phases:
          - name: a
            max_parallel: many
            cmd: run
    """, [(3, "max_parallel"), (5, "defaults.devices.local"), (6, "defaults.foreign_threshold"),
          (9, "phases[0].max_parallel")])
    lines = check_errors(exq, """
        name: bad
        phases:
          - name: a
            wait_for: ["ckpt/{nope}"]
            cmd: run
          - name: b
            after: [nowhere]
            cmd: run
    """, [(5, "phases[0].wait_for[0]"), (8, "phases[1].after[0]")])
    assert lines[-1].endswith("unknown phase 'nowhere'; phases: a, b (job ids of this submission are accepted too, "
                              "SUB/ID for a job of another submission, label:NAME for labelled jobs)")


def test_workdir_only_on_ssh_hosts_is_noted_not_refused(exq: Exq) -> None:
    manifest = exq.manifest("""
        name: far
        workdir: /nonexistent/exq-far
        hosts: [gpu-a]
        cmd: run
    """)
    note = ("note: workdir /nonexistent/exq-far is not on this machine; every job runs on gpu-a, where it is "
            "checked when each job launches")
    proc = exq("validate", str(manifest))
    assert note in proc.stderr and "far" in proc.stdout
    proc = exq("submit", str(manifest))
    assert note in proc.stderr and "submitted 1 job(s)" in proc.stdout
    here = exq.manifest("name: near\nworkdir: /nonexistent/exq-far\nhosts: [gpu-a, local]\ncmd: run\n", "near.yaml")
    proc = exq("validate", str(here), check=False)
    assert proc.returncode == 2 and "workdir: workdir /nonexistent/exq-far does not exist" in proc.stderr


class CountingWorker:
    """A worker whose missing_paths counts its calls, answers `missing`, or hangs."""

    name = "h1"

    def __init__(self, missing: list[str], hang: bool = False) -> None:
        self.calls = 0
        self.missing = missing
        self.hang = hang

    async def missing_paths(self, workdir: str, globs: list[str]) -> list[str]:
        self.calls += 1
        if self.hang:
            await asyncio.sleep(3600)
        return list(self.missing)


def test_wait_for_checks_are_shared_rate_limited_and_never_block() -> None:
    async def go() -> None:
        worker, woken = CountingWorker(["a/*.pt"]), []
        waits = PathWaits({"h1": worker}, interval=0.3, timeout=0.2, on_done=lambda: woken.append(1))
        for _ in range(50):  # many jobs with the same globs, many passes: one check in flight
            assert waits.reason("h1", "/w", ["a/*.pt"], time.time()) == "waiting: checking its wait_for paths on h1"
        await asyncio.sleep(0.05)
        assert worker.calls == 1 and woken
        for _ in range(50):
            assert waits.reason("h1", "/w", ["a/*.pt"], time.time()) == "waiting for a/*.pt to exist on h1"
        assert worker.calls == 1
        due = waits.next_due(time.time() - 0.01)
        assert due is not None and due <= time.time() + 0.3
        await asyncio.sleep(0.3)
        worker.missing = []
        waits.reason("h1", "/w", ["a/*.pt"], time.time())
        await asyncio.sleep(0.05)
        assert worker.calls == 2 and waits.reason("h1", "/w", ["a/*.pt"], time.time()) is None
        hung = CountingWorker([], hang=True)
        waits = PathWaits({"h1": hung}, interval=0.3, timeout=0.2, on_done=lambda: None)
        started = time.monotonic()
        assert waits.reason("h1", "/w", ["x"], time.time()) == "waiting: checking its wait_for paths on h1"
        assert time.monotonic() - started < 0.05
        await asyncio.sleep(0.3)
        assert waits.reason("h1", "/w", ["x"], time.time()).startswith(  # type: ignore[union-attr]
            "waiting: cannot check its wait_for paths on h1: no answer within 0.2s")
        waits.cancel()

    asyncio.run(asyncio.wait_for(go(), 10))


def test_a_throttled_batch_counts_as_its_limit_until_fewer_of_its_jobs_are_left() -> None:
    """A host with its own queue runs at most `limit` jobs of a batch: the batch counts as that many running
    jobs (or as its active jobs, once fewer), and jobs elsewhere as one each, so that both stay within
    max_parallel together."""
    from exq.daemon.limits import Running
    from exq.daemon.placement import Batch
    from exq.model.jobspec import JobSpec
    from exq.model.state import Job, JobStatus, Submission

    def job(number: int, status: JobStatus = JobStatus.RUNNING) -> Job:
        spec = JobSpec(id=f"j{number}", phase="train", cmd_template="true", params={}, cmd="true", workdir="/tmp")
        return Job(id=f"j{number}", submission="1", phase="train", params={}, cmd="true", order=number,
                   submitted_at=1.0, spec=spec, status=status)

    submission = Submission(id="1", name="s", source="m.yaml", submitted_at=0.0, phases=["train"], jobs=9,
                            phase_max_parallel={"train": 5})
    batch = Batch("b1", "cluster", limit=3)
    running = Running([(job(1), batch), (job(2), batch), (job(3), batch), (job(4), batch), (job(5), None)])
    assert running.room(job(9), submission) == 1  # 3 for the batch of 4, 1 here
    running.add(job(6))
    assert running.room(job(9), submission) == 0 and running.held_back(job(9), submission) is not None
    ended = JobStatus.SUCCEEDED
    fewer = Running([(job(1), batch), (job(2, ended), batch), (job(3, ended), batch), (job(5), None)])
    assert fewer.room(job(9), submission) == 3  # one of the batch left: it counts as one
    assert Running().room(job(9), submission.model_copy(update={"phase_max_parallel": {}})) is None  # no limit
