"""A Slurm partition as an exq host (kind: slurm), against a real single-node Slurm (tests/slurmcluster.py):
a real daemon submits each attempt with sbatch, follows it with squeue, and classifies it from the runner's
files on the shared filesystem. Every wait is bounded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import Exq, wait_until
from slurmcluster import SlurmCluster, slurm_cluster  # noqa: F401  (slurm_cluster: the `slurm` fixture)

TIMEOUT = 120.0


@pytest.fixture
def cluster_exq(exq: Exq, slurm: SlurmCluster, tmp_path: Path) -> Exq:
    """The `exq` fixture with one host, `cluster`, of kind slurm (this machine's own jobs disabled)."""
    config = tmp_path / "config.yaml"
    config.write_text(f"hosts:\n  local: {{enabled: false}}\n"
                      f"  cluster: {{kind: slurm, partition: {slurm.partition}, root: {tmp_path / 'exq-root'}}}\n")
    exq.env.update(slurm.env, EXQ_CONFIG=str(config))
    exq.env.pop("EXQ_SIMULATE_GPUS", None)
    return exq


def slurm_tasks(slurm: SlurmCluster, tmp_path: Path) -> list[tuple[str, str, str]]:
    """(job id, name, state) of every array task the test's daemon submitted that Slurm knows (squeue keeps
    ended ones for MinJobAge; other tests' batches are left out)."""
    ours = {f"exq:{script.stem}" for script in (tmp_path / "exq-root").glob("*/batches/*.sh")}
    out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i %j %T"], env=slurm.env, capture_output=True,
                         text=True, timeout=30, check=True).stdout
    tasks = [line.split() for line in out.splitlines()]
    return [(t[0], t[1], t[2]) for t in tasks if len(t) == 3 and t[1] in ours]


def run_to_the_end(exq: Exq, manifest: Path) -> None:
    """Submit the manifest, start a daemon, and wait (bounded) until every job succeeded."""
    exq("submit", str(manifest))
    exq.start_daemon()
    assert exq("wait", "--timeout", str(TIMEOUT)).returncode == 0


def test_a_two_phase_grid_runs_through_slurm_with_its_gpus(cluster_exq: Exq, slurm: SlurmCluster,
                                                           tmp_path: Path) -> None:
    exq = cluster_exq
    manifest = exq.manifest(f"""
        name: grid
        workdir: {tmp_path}
        phases:
          - name: train
            gpus: 2
            grid: {{x: [1, 2]}}
            id: "t{{x}}"
            cmd: 'echo "$CUDA_VISIBLE_DEVICES" > gpus-{{x}}.txt'
          - name: eval
            gpus: 1
            after: [train]
            match: [x]
            grid: {{x: [1, 2]}}
            id: "e{{x}}"
            cmd: "echo evaluated {{x}}"
    """)
    run_to_the_end(exq, manifest)
    jobs = exq.jobs()
    for key in ("t1", "t2"):
        attempt = jobs[key]["attempts"][0]
        assert attempt["host"] == "cluster" and attempt["started_at"] and attempt["ended_at"]
    for x in (1, 2):  # Slurm gave each two GPUs
        assert len((tmp_path / f"gpus-{x}.txt").read_text().strip().split(",")) == 2
    assert exq("logs", "e2").stdout == "evaluated 2\n"
    tasks = slurm_tasks(slurm, tmp_path)
    assert len(tasks) == 4 and len({t[1] for t in tasks}) <= 3  # the train phase as one array
    hosts = json.loads(exq("hosts", "--json").stdout)
    assert hosts[0]["name"] == "cluster" and hosts[0]["backend"] == "slurm" and "GPUs free" in hosts[0]["message"]
    assert hosts[0]["slots"] == 1024 and hosts[0]["gpus"] == []
    # queue_state.json counts the host's slots and lists only those in use (none now), not 1,024 GPUs
    state = json.loads((exq.state_dir / "queue_state.json").read_text())
    assert [h["slots"] for h in state["hosts"]] == [1024] and state["gpus"] == []


def test_a_cuda_oom_is_retried_with_a_smaller_batch_on_slurm(cluster_exq: Exq, tmp_path: Path) -> None:
    exq = cluster_exq
    manifest = exq.manifest(f"""
        name: oom
        workdir: {tmp_path}
        id: fit
        params: {{batch: 32}}
        retry: {{oom: {{max: 3, backoff: 0}}}}
        on_oom: {{scale: {{param: batch, factor: 0.5}}}}
        cmd: 'if [ {{batch}} -gt 16 ]; then echo "torch.cuda.OutOfMemoryError: CUDA out of memory" >&2; exit 1; fi'
    """)
    run_to_the_end(exq, manifest)
    attempts = exq.jobs()["fit"]["attempts"]
    assert [a["outcome"] for a in attempts] == ["oom", "succeeded"]
    assert [a["params"]["batch"] for a in attempts] == [32, 16]


def test_cancel_scancels_a_running_job(cluster_exq: Exq, slurm: SlurmCluster, tmp_path: Path) -> None:
    exq = cluster_exq
    manifest = exq.manifest(f"name: c\nworkdir: {tmp_path}\ngpus: 1\nid: long\ncmd: sleep 300\n")
    exq("submit", str(manifest))
    exq.start_daemon()
    wait_until(lambda: exq.jobs()["long"]["attempts"] and exq.jobs()["long"]["attempts"][0]["started_at"],
               TIMEOUT, 0.5)
    exq("cancel", "long")
    wait_until(lambda: exq.jobs()["long"]["status"] == "cancelled", TIMEOUT, 0.5)
    job_id = (Path(exq.jobs()["long"]["attempts"][0]["dir"]) / "slurm").read_text().strip()
    state = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], env=slurm.env,
                           capture_output=True, text=True, timeout=30).stdout.strip()
    assert state in ("CANCELLED", "COMPLETED", "FAILED", "")  # not running any more


def test_kill9_of_the_daemon_with_jobs_pending_and_running_reattaches_them_and_runs_each_once(
        cluster_exq: Exq, slurm: SlurmCluster, tmp_path: Path) -> None:
    exq = cluster_exq
    marks = tmp_path / "marks"
    marks.mkdir()
    manifest = exq.manifest(f"""
        name: crash
        workdir: {tmp_path}
        gpus: 2
        grid: {{i: [0, 1, 2, 3]}}
        id: "j{{i}}"
        cmd: 'echo run >> {marks}/{{i}}; sleep 4'
    """)
    # Someone else's job holds 2 of the 4 GPUs: of the four jobs exq hands to Slurm (2 GPUs each, one array),
    # one runs and three wait in Slurm's queue.
    subprocess.run(["sbatch", f"--partition={slurm.partition}", "--gres=gpu:2", "--job-name=other",
                    "--output=/dev/null", "--wrap", "sleep 10"],
                   env=slurm.env, check=True, capture_output=True, timeout=30)
    exq("submit", str(manifest))
    daemon = exq.start_daemon()

    def one_running_three_pending() -> bool:
        states = sorted(state for _, _, state in slurm_tasks(slurm, tmp_path))
        return states == ["PENDING", "PENDING", "PENDING", "RUNNING"] and len(list(marks.iterdir())) == 1

    wait_until(one_running_three_pending, TIMEOUT, 0.2)
    # exq status says why they have not started: Slurm's own reason
    wait_until(lambda: sum(str(j["reason"]).startswith("pending in Slurm (") for j in exq.jobs().values()) == 3,
               TIMEOUT, 0.5)
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait(10)
    exq.start_daemon()
    assert exq("wait", "--timeout", str(TIMEOUT)).returncode == 0
    assert sorted(p.name for p in marks.iterdir()) == ["0", "1", "2", "3"]
    assert all(p.read_text() == "run\n" for p in marks.iterdir())  # each ran exactly once
    tasks = slurm_tasks(slurm, tmp_path)
    assert len(tasks) == 4 and len({t[1] for t in tasks}) == 1, tasks  # one array, none submitted twice
    results = json.loads(exq("status", "--json").stdout)
    assert all(len(j["attempts"]) == 1 for j in results["jobs"])


def test_a_node_taken_down_mid_run_ends_the_attempt_lost_and_the_job_runs_again_once_back(
        cluster_exq: Exq, slurm: SlurmCluster, tmp_path: Path) -> None:
    exq = cluster_exq
    runs = tmp_path / "runs"
    manifest = exq.manifest(f"name: n\nworkdir: {tmp_path}\ngpus: 1\nid: job\ncmd: 'echo run >> {runs}; sleep 8'\n")
    exq("submit", str(manifest))
    exq.start_daemon()
    wait_until(lambda: runs.exists(), TIMEOUT, 0.2)
    try:
        slurm.down()
        wait_until(lambda: [a["outcome"] for a in exq.jobs()["job"]["attempts"]][:1] == ["lost"], TIMEOUT, 0.5)
        assert exq.jobs()["job"]["status"] in ("queued", "running")  # retry.lost takes it again
    finally:
        slurm.resume()
    assert exq("wait", "--timeout", str(TIMEOUT)).returncode == 0
    attempts = exq.jobs()["job"]["attempts"]
    assert [a["outcome"] for a in attempts] == ["lost", "succeeded"]
    assert runs.read_text() == "run\nrun\n"  # the second run is the one that completed


def test_a_job_slurm_requeues_runs_again_at_once_without_using_a_retry(cluster_exq: Exq, slurm: SlurmCluster,
                                                                       tmp_path: Path) -> None:
    """Preemption as an admin or a preempting job makes it: `scontrol requeue` of the running job. No retry is
    allowed, so only a requeue that counts against no budget lets the job succeed."""
    exq = cluster_exq
    runs = tmp_path / "runs"
    manifest = exq.manifest(f"""
        name: p
        workdir: {tmp_path}
        gpus: 1
        id: job
        retry: {{failure: {{max: 0}}, lost: {{max: 0}}}}
        cmd: 'echo run >> {runs}; sleep 6'
    """)
    exq("submit", str(manifest))
    exq.start_daemon()
    wait_until(lambda: runs.exists(), TIMEOUT, 0.2)
    first = Path(exq.jobs()["job"]["attempts"][0]["dir"])
    job_id = (first / "slurm").read_text().strip()
    slurm.run("scontrol", "requeue", job_id)
    assert exq("wait", "--timeout", str(TIMEOUT)).returncode == 0
    job = exq.jobs()["job"]
    assert [a["outcome"] for a in job["attempts"]] == ["preempted", "succeeded"]
    assert "requeued by Slurm" in job["attempts"][0]["reason"]
    assert job["failure_retries"] == job["lost_retries"] == 0
    assert runs.read_text() == "run\nrun\n"  # the cut run and the whole one: Slurm's requeued copy never ran
    state = slurm.run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T").stdout.strip()
    assert state == "CANCELLED"  # exq took the requeued job back from Slurm


def test_a_job_past_its_timeout_on_slurm_ends_timed_out(cluster_exq: Exq, tmp_path: Path) -> None:
    exq = cluster_exq
    manifest = exq.manifest(f"name: t\nworkdir: {tmp_path}\ngpus: 1\nid: slow\ntimeout: 2s\n"
                            "retry: {failure: {max: 0}}\ncmd: sleep 120\n")
    exq("submit", str(manifest))
    exq.start_daemon()
    assert exq("wait", "--timeout", str(TIMEOUT), check=False).returncode == 1
    attempt = exq.jobs()["slow"]["attempts"][0]
    assert attempt["outcome"] == "timeout" and exq.jobs()["slow"]["status"] == "failed"


@pytest.mark.timeout(600)
def test_a_grid_of_200_jobs_goes_in_as_one_array(cluster_exq: Exq, slurm: SlurmCluster, tmp_path: Path) -> None:
    exq = cluster_exq
    values = ", ".join(map(str, range(200)))
    manifest = exq.manifest(f"name: wide\nworkdir: {tmp_path}\ngpus: 1\ngrid: {{i: [{values}]}}\nid: 'w{{i}}'\n"
                            "cmd: 'true'\n")
    exq("submit", str(manifest))
    exq.start_daemon()
    assert exq("wait", "--timeout", "600", timeout=660).returncode == 0
    tasks = slurm_tasks(slurm, tmp_path)
    assert len(tasks) == 200 and len({name for _, name, _ in tasks}) == 1  # one sbatch
    assert {state for _, _, state in tasks} == {"COMPLETED"}


def test_one_manifest_spreads_over_this_machine_and_the_slurm_host(exq: Exq, slurm: SlurmCluster,
                                                                    tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"hosts:\n  cluster: {{kind: slurm, partition: {slurm.partition}, root: {tmp_path / 'root'}}}\n")
    exq.env.update(slurm.env, EXQ_CONFIG=str(config), EXQ_SIMULATE_GPUS="1x24GiB")
    manifest = exq.manifest(f"""
        name: both
        workdir: {tmp_path}
        phases:
          - {{name: here, hosts: [local], gpus: 1, grid: {{i: [0, 1]}}, id: "h{{i}}", cmd: "sleep 1"}}
          - {{name: there, hosts: [cluster], gpus: 1, grid: {{i: [0, 1]}}, id: "c{{i}}", cmd: "sleep 1"}}
          - {{name: after, after: [here, there], gpus: 1, id: done, cmd: "echo all done"}}
    """)
    run_to_the_end(exq, manifest)
    jobs = exq.jobs()
    assert {jobs[k]["attempts"][0]["host"] for k in ("h0", "h1")} == {"local"}
    assert {jobs[k]["attempts"][0]["host"] for k in ("c0", "c1")} == {"cluster"}
    assert exq("logs", "done").stdout == "all done\n"


def test_hosts_and_doctor_report_the_partition_and_whether_sbatch_takes_jobs(cluster_exq: Exq, slurm: SlurmCluster,
                                                                            tmp_path: Path) -> None:
    exq = cluster_exq
    host = json.loads(exq("hosts", "--json").stdout)[0]
    assert host["up"] and host["backend"] == "slurm"
    assert f"Slurm partition {slurm.partition}: 1 node(s), 4/4 GPUs free" in host["message"]
    assert "sbatch refuses" not in host["message"]
    # The shared-filesystem check: a job copies a token exq wrote under its root; the first look starts it, later
    # processes follow that job rather than submit another, and once it passed it is remembered.
    assert "checking that the nodes share" in host["message"]
    [job_file] = list((tmp_path / "exq-root").glob("*/fscheck.job"))
    first_check = job_file.read_text()
    wait_until(lambda: "checking" not in json.loads(exq("hosts", "--json").stdout)[0]["message"], TIMEOUT, 0.5)
    assert (job_file.parent / "fscheck.seen").read_text() == (job_file.parent / "fscheck.token").read_text()
    assert "do not share" not in json.loads(exq("hosts", "--json").stdout)[0]["message"]
    assert job_file.read_text() == first_check  # one check job, whatever the number of looks
    doctor = exq("doctor", "--json", check=False)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)}
    assert checks["host cluster"]["status"] == "ok" and "slurm: 1024 slot(s); Slurm partition" in \
        checks["host cluster"]["detail"]
    config = Path(exq.env["EXQ_CONFIG"])
    config.write_text(config.read_text().replace("partition: gpu", "partition: nosuch"))
    broken = json.loads(exq("hosts", "--json", check=False).stdout)[0]
    assert "no usable node" in broken["message"] and "sbatch refuses a one-GPU job" in broken["message"]


def test_more_launches_than_slurm_takes_in_one_array_go_in_as_several(tmp_path: Path) -> None:
    """Slurm's default MaxArraySize takes 1,000 tasks: 1,001 attempts launched together are two arrays."""
    import asyncio

    from exq.config import HostConfig
    from exq.workers.slurm import SlurmWorker

    class Client:
        def __init__(self) -> None:
            self.arrays: list[int] = []

        def submit(self, script: str, **options: object) -> str:
            self.arrays.append(int(str(options["array"])))
            return str(len(self.arrays))

    client = Client()
    worker = SlurmWorker("c", HostConfig(kind="slurm", partition="gpu", root=str(tmp_path / "r")), "node",
                         client=client)
    dirs = [tmp_path / "r" / "jobs" / str(i) for i in range(1001)]
    for d in dirs:
        d.mkdir(parents=True)

    async def launch_all() -> list[str]:
        return await asyncio.gather(*(worker._join_batch(d, (1, None, None, None)) for d in dirs))

    ids = asyncio.run(launch_all())
    assert client.arrays == [1000, 1]
    assert ids[0] == "1_0" and ids[999] == "1_999" and ids[1000] == "2_0"
    assert (dirs[1000] / "slurm.pending").read_text().split()[1] == "0"


def test_nodes_that_do_not_see_exqs_root_are_found_and_the_host_takes_no_jobs(slurm: SlurmCluster,
                                                                             tmp_path: Path) -> None:
    """The check job stands in for a node without the shared filesystem: its script cannot see the token."""
    import asyncio

    from exq.config import HostConfig
    from exq.slurm.client import SlurmClient
    from exq.workers.slurm import SlurmWorker

    worker = SlurmWorker("c", HostConfig(kind="slurm", partition=slurm.partition, root=str(tmp_path / "r")), "node",
                         client=SlurmClient(slurm.command))
    worker._files_check.submit = lambda script: slurm.sbatch("#!/bin/sh\ntrue\n", f"--partition={slurm.partition}",
                                                                      "--output=/dev/null")

    async def probe_until_known() -> tuple[int, str]:
        for _ in range(int(TIMEOUT)):
            snapshot = await worker.probe()
            if "checking" not in snapshot.message:
                return len(snapshot.gpus), snapshot.message
            await asyncio.sleep(1)
        raise AssertionError("the check did not end")

    slots, message = asyncio.run(probe_until_known())
    assert slots == 0 and "exq keeps up to 0 GPUs of jobs there" in message
    assert f"the compute nodes do not share {tmp_path / 'r' / 'node'}" in message and "(COMPLETED)" in message


def test_a_job_whose_node_cannot_see_its_attempt_says_so(cluster_exq: Exq, slurm: SlurmCluster,
                                                         tmp_path: Path) -> None:
    """Its batch's map file gone before the task starts stands in for a node that does not see exq's root."""
    exq = cluster_exq
    manifest = exq.manifest(f"name: fs\nworkdir: {tmp_path}\ngpus: 1\nid: job\nretry: {{lost: {{max: 0}}}}\n"
                            "cmd: 'true'\n")
    slurm.run("scontrol", "update", f"partitionname={slurm.partition}", "state=down")
    try:
        exq("submit", str(manifest))
        exq.start_daemon()
        maps = wait_until(lambda: list((tmp_path / "exq-root").glob("*/batches/*.map")), TIMEOUT, 0.2)
        for path in maps:
            path.unlink()
    finally:
        slurm.run("scontrol", "update", f"partitionname={slurm.partition}", "state=up")
    assert exq("wait", "--timeout", str(TIMEOUT), check=False).returncode == 1
    job = exq.jobs()["job"]
    assert job["status"] == "failed" and job["attempts"][0]["outcome"] == "lost"
    assert "without its runner starting: is " in job["reason"] and "on a filesystem the nodes share?" in job["reason"]


def test_slurm_commands_run_on_a_login_node_over_ssh(exq: Exq, slurm: SlurmCluster, ssh_hosts: Any,
                                                     tmp_path: Path) -> None:
    """`login: NAME`: sbatch, squeue, sacct and scancel run over SSH there (a real sshd on loopback, host key
    verified). This daemon has no SLURM_CONF, so a Slurm command it ran itself would fail."""
    hosts = ssh_hosts([("login", "0x0")], root_login=["login"], env={"SLURM_CONF": str(slurm.conf)})
    config = tmp_path / "config.yaml"
    config.write_text(f"hosts:\n  local: {{enabled: false}}\n"
                      f"  cluster: {{kind: slurm, partition: {slurm.partition}, login: login, "
                      f"ssh_config: {hosts.client_config}, root: {tmp_path / 'exq-root'}}}\n")
    exq.env.update(EXQ_CONFIG=str(config))
    exq.env.pop("EXQ_SIMULATE_GPUS", None)
    exq.env.pop("SLURM_CONF", None)
    manifest = exq.manifest(f"""
        name: remote
        workdir: {tmp_path}
        gpus: 1
        grid: {{i: [0, 1]}}
        id: "r{{i}}"
        cmd: 'echo "$SLURM_JOB_ID" > job-{{i}}.txt; sleep 2'
    """)
    run_to_the_end(exq, manifest)
    assert all((tmp_path / f"job-{i}.txt").read_text().strip().isdigit() for i in (0, 1))
    host = json.loads(exq("hosts", "--json").stdout)[0]
    assert host["up"] and f"Slurm partition {slurm.partition}: 1 node(s)" in host["message"]
    # cancel goes through the login node too
    exq("add", "--name", "long", "--gpus", "1", "--host", "cluster", "--", "sleep", "300")
    wait_until(lambda: exq.jobs()["long"]["attempts"] and exq.jobs()["long"]["attempts"][0]["started_at"],
               TIMEOUT, 0.5)
    exq("cancel", "long")
    wait_until(lambda: exq.jobs()["long"]["status"] == "cancelled", TIMEOUT, 0.5)
    job_id = (Path(exq.jobs()["long"]["attempts"][0]["dir"]) / "slurm").read_text().strip()
    assert slurm.run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T").stdout.strip() == "CANCELLED"


def test_max_parallel_goes_to_slurm_as_the_arrays_limit(exq: Exq, slurm: SlurmCluster, tmp_path: Path) -> None:
    """A phase limited to 3 running jobs, of 8 that may run here (one simulated GPU) or on the cluster: this
    machine's GPU takes the first (a GPU that runs a job at once comes before Slurm's queue), the other 7 go in
    as one array with `%2`, the room the limit has left, and never more than 3 run at once over both hosts."""
    from test_limits import SPAN, marks_dir, most_at_once, spans

    config = tmp_path / "config.yaml"
    config.write_text(f"hosts:\n  cluster: {{kind: slurm, partition: {slurm.partition}, "
                      f"root: {tmp_path / 'exq-root'}}}\n")
    exq.env.update(slurm.env, EXQ_CONFIG=str(config), EXQ_SIMULATE_GPUS="1x24GiB")
    marks = marks_dir(exq)
    exq.env["MARKS"] = str(marks)
    manifest = exq.manifest(f"""
        name: limited
        workdir: {tmp_path}
        phases:
          - name: train
            gpus: 1
            max_parallel: 3
            grid: {{i: [0, 1, 2, 3, 4, 5, 6, 7]}}
            id: "t{{i}}"
            cmd: '{SPAN}'
    """)
    exq("submit", str(manifest))
    exq.start_daemon()
    (marks / "go").touch()
    assert exq("wait", "--timeout", str(TIMEOUT)).returncode == 0
    hosts = {key: job["attempts"][0]["host"] for key, job in exq.jobs().items()}
    assert sorted(hosts.values()) == ["cluster"] * 7 + ["local"]
    assert most_at_once(list(spans(marks).values())) <= 3
    batches = {script.stem: script for script in (tmp_path / "exq-root").glob("*/batches/*.sh")}
    arrays = [line.split() for line in slurm.run("squeue", "-h", "-t", "all", "-o", "%F %j").stdout.splitlines()]
    ours = {array for array, name in arrays if name.removeprefix("exq:") in batches}
    limits = {slurm.run("scontrol", "show", "job", array).stdout.split("ArrayTaskThrottle=")[1].split()[0]
              for array in ours}
    assert len(ours) == 1 and limits == {"2"}  # one sbatch for the 7, throttled to the limit's room
