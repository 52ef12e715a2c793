"""End to end through the real CLI: real processes, simulated GPUs, real signals."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import psutil
from conftest import EXQ as EXQ_CMD
from conftest import Exq, wait_until

from exq.workers.local import group_alive

OOM_SCRIPT = """
import os, sys, time
batch = int(sys.argv[1])
open(os.environ["MARKS"] + "/" + os.environ["EXQ_JOB_ID"], "a").write(f"{batch}\\n")
time.sleep(0.2)
if batch > 64:
    sys.exit("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 24.00 GiB total capacity)")
import json
import os
json.dump({"loss": 0.5, "batch": batch}, open(os.environ["EXQ_RESULT_FILE"], "w"))
"""


def test_grid_runs_every_job_once_with_gpu_env(exq: Exq) -> None:
    manifest = exq.manifest("""
        name: grid
        defaults: {gpus: 1}
        phases:
          - name: train
            grid: {lr: [0.1, 0.01], seed: [0, 1, 2]}
            id: "t_{lr}_{seed}"
            cmd: echo "$EXQ_JOB_ID $CUDA_VISIBLE_DEVICES $CUDA_DEVICE_ORDER $EXQ_ATTEMPT" > out_{lr}_{seed}.txt
    """)
    proc = exq("run", str(manifest))
    assert proc.returncode == 0
    jobs = exq.jobs()
    assert len(jobs) == 6 and {j["status"] for j in jobs.values()} == {"succeeded"}
    for job in jobs.values():
        lr, seed = job["params"]["lr"], job["params"]["seed"]
        text = (exq.root / f"out_{lr}_{seed}.txt").read_text().split()
        assert text[0] == job["id"] and text[1] in {"0", "1"} and text[2] == "PCI_BUS_ID" and text[3] == "1"
        assert job["attempts"][0]["gpus"] == [int(text[1])]


def test_oom_is_retried_with_backoff_and_scaled_batch(exq: Exq) -> None:
    marks = exq.root / "marks"
    marks.mkdir()
    (exq.root / "oom.py").write_text(OOM_SCRIPT)
    manifest = exq.manifest(f"""
        name: oom
        env: {{MARKS: "{marks}"}}
        gpus: 1
        params: {{batch_size: 256}}
        retry: {{oom: {{max: 4, backoff: 0.5s, factor: 2}}}}
        on_oom: {{scale: {{param: batch_size, factor: 0.5, min: 8}}}}
        id: job
        cmd: python3 oom.py {{batch_size}}
    """)
    exq("run", str(manifest))
    job = exq.jobs()["job"]
    assert (marks / "job").read_text().split() == ["256", "128", "64"]
    assert job["status"] == "succeeded" and job["params"]["batch_size"] == 64
    assert job["cmd"].endswith("oom.py 64") and job["oom_retries"] == 2
    assert job["result"] == {"loss": 0.5, "batch": 64}
    assert "batch_size 256->64" in exq("status").stdout
    first, second, third = job["attempts"]
    assert first["outcome"] == "oom" and "CUDA out of memory" in first["reason"]
    assert second["launched_at"] - first["ended_at"] >= 0.45   # backoff 0.5s
    assert third["launched_at"] - second["ended_at"] >= 0.95   # then 1s


def test_oom_retries_stop_at_the_bound(exq: Exq) -> None:
    marks = exq.root / "marks"
    marks.mkdir()
    (exq.root / "oom.py").write_text(OOM_SCRIPT)
    manifest = exq.manifest(f"""
        name: oom
        env: {{MARKS: "{marks}"}}
        params: {{batch_size: 1024}}
        retry: {{oom: {{max: 2, backoff: 0.1s}}}}
        id: job
        cmd: python3 oom.py {{batch_size}}
    """)
    proc = exq("run", str(manifest), check=False)
    assert proc.returncode == 1
    job = exq.jobs()["job"]
    assert job["status"] == "failed" and "gave up after 2 OOM retries" in job["reason"]
    assert len((marks / "job").read_text().split()) == 3


def test_failed_upstream_blocks_downstream_which_never_runs(exq: Exq) -> None:
    manifest = exq.manifest("""
        name: chain
        defaults: {gpus: 0}
        phases:
          - name: teacher
            grid: {n: [1, 2]}
            id: "teacher{n}"
            cmd: test {n} -eq 1
          - name: student
            after: [teacher]
            match: [n]
            grid: {n: [1, 2]}
            id: "student{n}"
            cmd: touch ran_student{n}
    """)
    proc = exq("run", str(manifest), check=False)
    assert proc.returncode == 1
    jobs = exq.jobs()
    assert jobs["teacher1"]["status"] == "succeeded" and jobs["student1"]["status"] == "succeeded"
    assert jobs["teacher2"]["status"] == "failed" and jobs["teacher2"]["reason"] == "exit code 1"
    assert jobs["student2"]["status"] == "blocked" and "teacher2" in jobs["student2"]["reason"]
    assert (exq.root / "ran_student1").exists() and not (exq.root / "ran_student2").exists()


def test_stale_child_left_by_a_job_is_killed(exq: Exq) -> None:
    manifest = exq.manifest("""
        name: stale
        gpus: 0
        id: job
        cmd: sleep 300 & echo $! > child.pid
    """)
    exq("run", str(manifest))
    child = int((exq.root / "child.pid").read_text())
    wait_until(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie", 15)


def test_timeout_kills_the_job(exq: Exq) -> None:
    manifest = exq.manifest("""
        name: slow
        gpus: 0
        timeout: 1s
        id: job
        cmd: sleep 60
    """)
    started = time.monotonic()
    proc = exq("run", str(manifest), check=False)
    assert proc.returncode == 1 and time.monotonic() - started < 30
    job = exq.jobs()["job"]
    assert job["status"] == "failed" and job["attempts"][0]["outcome"] == "timeout"


def test_outputs_missing_fails_the_attempt(exq: Exq) -> None:
    manifest = exq.manifest("""
        name: outs
        gpus: 0
        id: job
        outputs: ["ckpt/*.pt"]
        cmd: "true"
    """)
    exq("run", str(manifest), check=False)
    job = exq.jobs()["job"]
    assert job["status"] == "failed" and job["attempts"][0]["outcome"] == "outputs_missing"
    assert "ckpt/*.pt" in job["reason"]


def test_foreign_process_keeps_its_gpu_free_of_exq_jobs(exq: Exq) -> None:
    load = exq.root / "load.json"
    load.write_text(json.dumps({"0": "3GiB"}))
    exq.env["EXQ_SIMULATE_GPUS_LOAD"] = str(load)
    manifest = exq.manifest("""
        name: foreign
        grid: {i: [1, 2, 3, 4]}
        id: "j{i}"
        cmd: echo $CUDA_VISIBLE_DEVICES > gpu{i}
    """)
    exq("run", str(manifest))
    assert {(exq.root / f"gpu{i}").read_text().strip() for i in range(1, 5)} == {"1"}


def test_cancel_pause_resume_through_the_daemon(exq: Exq) -> None:
    exq.start_daemon()
    exq("pause")
    manifest = exq.manifest("""
        name: ctl
        gpus: 0
        grid: {i: [1, 2]}
        id: "j{i}"
        cmd: sleep 60
    """)
    exq("submit", str(manifest))
    wait_until(lambda: len(exq.jobs()) == 2)
    time.sleep(1.0)
    assert {j["status"] for j in exq.jobs().values()} == {"queued"}
    exq("resume")
    wait_until(lambda: all(j["attempts"] and j["attempts"][0]["pid"] for j in exq.jobs().values()))
    pgid = exq.jobs()["j1"]["attempts"][0]["pid"]
    assert "cancelled 1 job" in exq("cancel", "j1").stdout
    wait_until(lambda: exq.jobs()["j1"]["status"] == "cancelled", 20)
    assert not group_alive(pgid)
    assert exq.jobs()["j2"]["status"] == "running"
    exq("cancel", "--submission", "ctl")
    wait_until(lambda: exq.jobs()["j2"]["status"] == "cancelled", 20)
    missing = exq("cancel", "nope", check=False)
    assert missing.returncode == 5 and "nope" in missing.stderr


def test_retry_requeues_failed_job_and_its_blocked_dependants(exq: Exq) -> None:
    flag = exq.root / "ok"
    manifest = exq.manifest(f"""
        name: rt
        defaults: {{gpus: 0}}
        phases:
          - {{name: a, id: a, cmd: "test -e {flag}"}}
          - {{name: b, after: [a], id: b, cmd: "true"}}
    """)
    exq("run", str(manifest), check=False)
    assert [exq.jobs()[k]["status"] for k in "ab"] == ["failed", "blocked"]
    flag.touch()
    assert "queued 2 job(s) again" in exq("retry", "a").stdout   # no daemon: applied directly
    exq.start_daemon()
    jobs = exq.wait_finished(2)
    assert [jobs[k]["status"] for k in "ab"] == ["succeeded", "succeeded"]


def test_sigterm_drains_and_leaves_jobs_running_then_reattaches(exq: Exq) -> None:
    daemon = exq.start_daemon()
    manifest = exq.manifest("""
        name: drain
        gpus: 1
        id: job
        cmd: >-
          n=0; while [ ! -e go ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done;
          echo finished >> marks
    """)
    exq("submit", str(manifest))
    wait_until(lambda: exq.jobs().get("job", {}).get("attempts") and exq.jobs()["job"]["attempts"][0]["pid"])
    pgid = exq.jobs()["job"]["attempts"][0]["pid"]
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    assert group_alive(pgid)  # still running with no daemon
    assert exq.jobs()["job"]["status"] == "running"
    exq.start_daemon()
    (exq.root / "go").touch()  # the job ends now, watched by the new daemon
    jobs = exq.wait_finished(1)
    assert jobs["job"]["status"] == "succeeded" and len(jobs["job"]["attempts"]) == 1
    assert (exq.root / "marks").read_text() == "finished\n"


def test_a_job_for_hosts_this_daemon_lacks_waits_and_says_so(exq: Exq) -> None:
    exq.start_daemon()
    manifest = exq.manifest("""
        name: where
        defaults: {gpus: 0}
        phases:
          - {name: elsewhere, id: far, hosts: [gpu-box-7], cmd: "true"}
          - {name: here, id: near, hosts: [local, gpu-box-7], cmd: "true"}
    """)
    exq("submit", str(manifest))
    far = wait_until(lambda: (j := exq.jobs().get("far")) and j.get("reason") and j, 30)
    assert far["status"] == "queued"
    assert far["reason"] == "none of its hosts (gpu-box-7) is configured for this daemon (it has: local)"
    wait_until(lambda: exq.jobs()["near"]["status"] == "succeeded", 30)


def test_state_is_versioned_and_agent_one_liner_works(exq: Exq) -> None:
    manifest = exq.manifest("""
        name: small
        gpus: 0
        grid: {i: [1, 2, 3]}
        id: "j{i}"
        cmd: test {i} -ne 2
    """)
    exq("run", str(manifest), check=False)
    state = json.loads((exq.state_dir / "queue_state.json").read_text())
    assert state["version"] == 1
    groups: dict[str, int] = {}
    for job in state["jobs"]:   # jq '.jobs | group_by(.status) | map({(.[0].status): length}) | add'
        groups[job["status"]] = groups.get(job["status"], 0) + 1
    assert groups == {"succeeded": 2, "failed": 1}
    schema = json.loads(exq("schema").stdout)
    assert "jobs" in schema["properties"] and "Job" in schema["$defs"]


def test_submit_without_daemon_is_durable_and_ingested_later(exq: Exq, tmp_path: Path) -> None:
    manifest = exq.manifest("""
        name: later
        gpus: 0
        grid: {i: [1, 2]}
        id: "j{i}"
        cmd: "true"
    """)
    out = exq("submit", str(manifest))
    assert "submission 1" in out.stdout and "no exq daemon" in out.stderr
    assert "waiting for a daemon" in exq("status").stdout
    exq.start_daemon()
    assert {j["status"] for j in exq.wait_finished(2).values()} == {"succeeded"}


def test_multi_gpu_job_gets_gpus_of_one_host_and_priority_goes_first(exq: Exq) -> None:
    manifest = exq.manifest("""
        name: prio
        phases:
          - {name: low, grid: {i: [1, 2]}, id: "low{i}", cmd: "sleep 0.2"}
          - {name: wide, gpus: 2, id: wide, cmd: "echo $CUDA_VISIBLE_DEVICES > wide.txt"}
          - {name: high, priority: 5, grid: {i: [1, 2]}, id: "high{i}", cmd: "sleep 0.2"}
    """)
    exq("run", str(manifest))
    jobs = exq.jobs()
    assert (exq.root / "wide.txt").read_text().strip() == "0,1" and jobs["wide"]["gpus"] == [0, 1]
    start = {k: j["attempts"][0]["launched_at"] for k, j in jobs.items()}
    assert max(start["high1"], start["high2"]) <= min(start["low1"], start["low2"])


def test_gpu_still_held_by_an_escaped_process_is_not_reused(exq: Exq) -> None:
    manifest = exq.manifest("""
        name: escape
        phases:
          - name: leak
            id: leak
            cmd: setsid sleep 60 > /dev/null 2>&1 & echo $! > escaped.pid; echo $CUDA_VISIBLE_DEVICES > leak.gpu
          - name: next
            after: [leak]
            grid: {i: [1, 2, 3]}
            id: "next{i}"
            cmd: echo $CUDA_VISIBLE_DEVICES > next{i}.gpu
    """)
    try:
        exq("run", str(manifest))
        leaked_gpu = (exq.root / "leak.gpu").read_text().strip()
        used = {(exq.root / f"next{i}.gpu").read_text().strip() for i in (1, 2, 3)}
        assert used == {"1" if leaked_gpu == "0" else "0"}
        gpus = {g["index"]: g for g in exq.state()["gpus"]}
        assert gpus[int(leaked_gpu)]["foreign_memory"] >= 2**30
    finally:
        escaped = exq.root / "escaped.pid"
        if escaped.exists():
            os.kill(int(escaped.read_text()), signal.SIGKILL)


def test_concurrent_submits_while_the_daemon_runs(exq: Exq) -> None:
    import subprocess

    exq.start_daemon()
    manifest = exq.manifest("""
        name: many
        gpus: 0
        grid: {i: [1, 2, 3]}
        id: "j{i}"
        cmd: "true"
    """)
    argv = [*EXQ_CMD, "submit", str(manifest)]
    script = f"import subprocess\nfor _ in range(5): subprocess.run({argv!r}, check=True)"
    procs = [subprocess.Popen([sys.executable, "-c", script], env=exq.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(4)]
    assert all(p.wait(120) == 0 for p in procs)
    def all_done() -> dict[str, object] | None:
        state = exq.state()
        done = len(state["jobs"]) == 60 and all(j["status"] == "succeeded" for j in state["jobs"])
        return state if done else None

    state = wait_until(all_done, 90, 0.3)
    assert sorted(int(s["id"]) for s in state["submissions"]) == list(range(1, 21))
    assert len({(j["submission"], j["id"]) for j in state["jobs"]}) == 60
    assert all(len(j["attempts"]) == 1 for j in state["jobs"])


def test_a_lost_counter_never_hands_out_a_taken_number(exq: Exq) -> None:
    manifest = exq.manifest("name: twice\ngpus: 0\nid: j\ncmd: 'true'\n")
    exq("run", str(manifest))
    (exq.state_dir / "intake" / ".counter").unlink()  # e.g. lost in a restore from backup
    assert "submission 2" in exq("submit", str(manifest)).stdout  # the number its jobs will have
    exq.start_daemon()
    state = wait_until(lambda: (s := exq.state()) and len(s["jobs"]) == 2 and s, 30)
    assert sorted(s["id"] for s in state["submissions"]) == ["1", "2"]
    assert "submission 3" in exq("submit", str(manifest)).stdout
