"""What a user sees from the CLI: help, validation, GPU listing, logs, exit codes."""

from __future__ import annotations

import json
import subprocess

from conftest import EXQ, Exq, wait_until


def test_help_lists_every_command(exq: Exq) -> None:
    out = exq("--help").stdout
    for command in ("daemon", "run", "submit", "status", "logs", "cancel", "retry", "pause", "resume",
                    "validate", "schema", "gpus"):
        assert command in out


def test_invalid_manifest_exits_2_naming_file_line_and_field(exq: Exq) -> None:
    manifest = exq.manifest("name: x\ngpus: many\ncmd: echo {nope}\n")
    proc = exq("submit", str(manifest), check=False)
    assert proc.returncode == 2
    assert f"{manifest}:2:7: gpus:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (exq.state_dir / "intake").exists() or not list((exq.state_dir / "intake").glob("*.json"))


def test_dry_run_prints_jobs_and_submits_nothing(exq: Exq) -> None:
    manifest = exq.manifest("name: x\ngrid: {a: [1, 2]}\nid: 'j{a}'\ncmd: echo {a}\n")
    out = exq("submit", "--dry-run", str(manifest)).stdout
    assert "j1" in out and "j2" in out and "2 jobs" in out
    assert exq.state()["jobs"] == [] and not list(exq.state_dir.glob("intake/*.json"))


def test_gpus_labels_simulation_and_says_plainly_when_there_is_no_gpu(exq: Exq) -> None:
    out = exq("gpus", "--json").stdout
    data = json.loads(out)
    assert data["backend"] == "simulated" and data["simulated"] and len(data["gpus"]) == 2
    assert "SIMULATED" in exq("gpus").stdout
    exq.env.pop("EXQ_SIMULATE_GPUS")
    data = json.loads(exq("gpus", "--json").stdout)
    assert data["backend"] == "none" and data["gpus"] == []
    assert "no NVIDIA driver" in data["message"]


def test_gpu_jobs_wait_and_cpu_jobs_run_without_any_gpu(exq: Exq) -> None:
    exq.env.pop("EXQ_SIMULATE_GPUS")
    exq.start_daemon()
    manifest = exq.manifest("""
        name: nogpu
        phases:
          - {name: cpu, gpus: 0, id: cpu, cmd: "true"}
          - {name: gpu, gpus: 1, id: gpu, cmd: "true"}
    """)
    exq("submit", str(manifest))
    wait_until(lambda: exq.jobs().get("cpu", {}).get("status") == "succeeded")
    wait_until(lambda: exq.jobs()["gpu"]["reason"] == "waiting: no GPU on any host (needs 1)")
    assert exq.jobs()["gpu"]["status"] == "queued"
    assert exq.state()["hosts"][0]["backend"] == "none"


def test_logs_prints_the_latest_attempt_and_unknown_job_exits_5(exq: Exq) -> None:
    manifest = exq.manifest("name: x\ngpus: 0\nid: hello\ncmd: echo hello-from-the-job\n")
    exq("run", str(manifest))
    assert exq("logs", "hello").stdout == "hello-from-the-job\n"
    assert exq("logs", "1/hello", "-f").stdout == "hello-from-the-job\n"
    missing = exq("logs", "nope", check=False)
    assert missing.returncode == 5 and "no job 'nope'" in missing.stderr


def test_run_refuses_while_a_daemon_holds_the_state_dir(exq: Exq) -> None:
    exq.start_daemon()
    manifest = exq.manifest("name: x\ngpus: 0\ncmd: 'true'\n")
    proc = exq("run", str(manifest), check=False)
    assert proc.returncode == 4 and "exq submit" in proc.stderr


def test_submit_reads_a_manifest_from_stdin(exq: Exq) -> None:
    text = "name: piped\ngpus: 0\nid: j\ncmd: 'true'\n"
    proc = subprocess.run([*EXQ, "submit", "-", "--stdin-name", "piped.yaml"], input=text, text=True,
                          env=exq.env, capture_output=True, cwd=exq.root, timeout=60)
    assert proc.returncode == 0 and "submitted 1 job(s)" in proc.stdout
    bad = subprocess.run([*EXQ, "submit", "-", "--stdin-name", "piped.yaml"], input="name: x\ncmd: 3\n", text=True,
                         env=exq.env, capture_output=True, cwd=exq.root, timeout=60)
    assert bad.returncode == 2 and f"{exq.root / 'piped.yaml'}:2:6: cmd:" in bad.stderr


def test_run_of_a_large_grid_lists_what_did_not_succeed_first_and_counts_the_rest(exq: Exq) -> None:
    """`exq run` ends with at most 50 job rows (a table of thousands took seconds to draw): the failed
    job is among them, the rest are counted."""
    values = ", ".join(map(str, range(60)))
    manifest = exq.manifest(f"name: wide\ngpus: 0\ngrid: {{i: [{values}]}}\nid: 'w{{i}}'\ncmd: 'test {{i}} != 37'\n")
    proc = exq("run", str(manifest), check=False)
    assert proc.returncode == 1
    rows = [line for line in proc.stdout.splitlines() if "1/w" in line]
    assert len(rows) == 50 and "failed" in rows[0] and "w37" in rows[0]
    assert "... 10 more jobs (exq status --all)" in proc.stdout
