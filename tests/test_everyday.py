"""The everyday commands, with a real daemon and real jobs: add, wait, logs -f on a queued job, hold and
release, priority, restart, after across submissions, labels, --json, and the reasons a queued job gives."""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from conftest import EXQ, Exq, wait_until

ROOT = Path(__file__).resolve().parent.parent


def added(exq: Exq, *args: str) -> str:
    """`exq add --json ARGS`: the key of the job it queued."""
    out = json.loads(exq("add", "--json", *args).stdout)
    assert len(out["jobs"]) == 1 and out["jobs"][0].startswith(f"{out['submission']}/")
    key: str = out["jobs"][0]
    return key


def job(exq: Exq, key: str) -> dict[str, Any]:
    found: dict[str, Any] = next(j for j in exq.state()["jobs"] if f"{j['submission']}/{j['id']}" == key)
    return found


def test_add_runs_the_argv_exactly_or_one_shell_line(exq: Exq, tmp_path: Path) -> None:
    exq.start_daemon()
    exact = added(exq, "--gpus", "0", "--", "printf", "%s|", "a b", "{x}", "$HOME", "it's")
    shell = added(exq, "--gpus", "0", "--name", "piped", "echo one two | tr a-z A-Z")
    where = added(exq, "--gpus", "0", "--workdir", str(tmp_path), "--", "pwd")
    assert exq("wait").returncode == 0
    assert exq("logs", exact).stdout == "a b|{x}|$HOME|it's|"
    assert exq("logs", shell).stdout == "ONE TWO\n" and shell.endswith("/piped")
    assert exq("logs", where).stdout == f"{tmp_path}\n"
    assert job(exq, shell)["cmd"] == "echo one two | tr a-z A-Z"


def test_add_reports_a_bad_value_by_its_option_and_queues_nothing(exq: Exq) -> None:
    proc = exq("add", "--gpu-memory", "lots", "--name", "a b", "--", "true", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--gpu-memory: expected a size" in proc.stderr and "--name: expected a name" in proc.stderr
    missing = exq("add", "--after", "9/nope", "--", "true", check=False)
    assert missing.returncode == 5 and "after: no job '9/nope' in the queue" in missing.stderr
    assert exq.state()["jobs"] == [] and not list(exq.state_dir.glob("intake/*.json"))


def test_wait_exits_0_when_all_succeeded_else_1_naming_them_and_124_on_timeout(exq: Exq) -> None:
    good = added(exq, "--gpus", "0", "--label", "grid", "--", "sleep", "0.5")
    bad = added(exq, "--gpus", "0", "--label", "grid", "--", "sh", "-c", "echo boom >&2; exit 3")
    slow = added(exq, "--gpus", "0", "--", "sleep", "30")
    exq.start_daemon()
    ok = exq("wait", good)
    assert ok.returncode == 0 and ok.stdout == ""
    both = exq("wait", "--label", "grid", "--json", check=False)
    assert both.returncode == 1
    report = json.loads(both.stdout)
    assert report["succeeded"] == [good] and [j["job"] for j in report["not_succeeded"]] == [bad]
    assert "boom" in (report["not_succeeded"][0]["reason"] or "") or report["not_succeeded"][0]["status"] == "failed"
    started = time.monotonic()
    timed_out = exq("wait", slow, "--timeout", "1", check=False)
    assert timed_out.returncode == 124 and slow in timed_out.stderr and time.monotonic() - started < 20
    exq("cancel", slow)
    whole = exq("wait", "--submission", slow.split("/")[0], check=False)
    assert whole.returncode == 1 and f"{slow}: cancelled" in whole.stdout
    assert exq("wait", "nope", check=False).returncode == 5


def test_logs_follow_on_a_queued_job_waits_for_its_start(exq: Exq) -> None:
    key = added(exq, "--gpus", "0", "--", "sh", "-c", "echo started-late")
    follower = subprocess.Popen([*EXQ, "logs", "-f", key], env=exq.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        assert follower.poll() is None  # still waiting: no daemon yet
        exq.start_daemon()
        out, err = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0 and out == "started-late\n"
    assert f"{key} has not started; waiting for it to start" in err


def test_hold_keeps_a_job_queued_with_its_reason_until_release(exq: Exq) -> None:
    key = added(exq, "--gpus", "0", "--", "true")
    held = json.loads(exq("hold", "--json", key).stdout)
    assert held == {"ok": True, "message": "held 1 job(s)", "affected": [key]}
    exq.start_daemon()
    wait_until(lambda: job(exq, key)["reason"] == "held: not placed until `exq release`")
    time.sleep(1.0)
    assert job(exq, key)["status"] == "queued"
    exq("release", key)
    assert exq("wait", key).returncode == 0


def test_priority_changes_which_queued_job_starts_first(exq: Exq) -> None:
    exq.env["EXQ_SIMULATE_GPUS"] = "1x24GiB"
    exq("pause")
    keys = [added(exq, "--", "sleep", "0.3") for _ in range(3)]
    reply = json.loads(exq("priority", "--json", "5", keys[2]).stdout)
    assert reply["affected"] == [keys[2]]
    exq.start_daemon()
    wait_until(lambda: job(exq, keys[0])["reason"] == "waiting: the queue is paused (`exq resume`)")
    exq("resume")
    exq("wait", *keys)
    started = {k: job(exq, k)["attempts"][0]["started_at"] for k in keys}
    assert started[keys[2]] < started[keys[0]] < started[keys[1]]


def test_restart_runs_a_succeeded_job_again_with_a_changed_param_and_keeps_its_history(exq: Exq) -> None:
    manifest = exq.manifest("name: r\ngpus: 0\nparams: {lr: 0.1}\nid: train\ncmd: echo lr={lr}\n")
    exq("submit", str(manifest))
    exq.start_daemon()
    assert exq("wait", "1/train").returncode == 0
    bad = exq("restart", "1/train", "--set", "nope=1", check=False)
    assert bad.returncode == 5 and "has no param 'nope'; its params: lr" in bad.stderr
    reply = json.loads(exq("restart", "--json", "1/train", "--set", "lr=0.5").stdout)
    assert reply["affected"] == ["1/train"]
    assert exq("wait", "1/train").returncode == 0
    restarted = job(exq, "1/train")
    assert [a["number"] for a in restarted["attempts"]] == [1, 2]
    assert exq("logs", "1/train", "--attempt", "1").stdout == "lr=0.1\n"
    assert exq("logs", "1/train").stdout == "lr=0.5\n"


def test_after_names_jobs_of_other_submissions_and_labels_and_blocks_on_failure(exq: Exq) -> None:
    first = added(exq, "--gpus", "0", "--label", "prep", "--", "sh", "-c", "sleep 0.5; exit 1")
    manifest = exq.manifest(f"""
        name: downstream
        gpus: 0
        after: ["{first}"]
        cmd: "true"
    """)
    out = json.loads(exq("submit", "--json", str(manifest)).stdout)
    by_label = added(exq, "--gpus", "0", "--after", "label:prep", "--", "true")
    by_number = added(exq, "--gpus", "0", "--after", first.split("/")[0], "--", "true")
    exq.start_daemon()
    assert exq("wait", check=False).returncode == 1
    for key in (*out["jobs"], by_label, by_number):
        found = job(exq, key)
        assert found["status"] == "blocked" and found["reason"] == f"dependency {first} failed", key
    unknown = exq.manifest("name: x\ngpus: 0\nafter: [label:nothing]\ncmd: 'true'\n", name="x.yaml")
    proc = exq("submit", str(unknown), check=False)
    assert proc.returncode == 5 and "no job in the queue has label 'nothing'" in proc.stderr


def test_cancel_by_label_affects_only_the_labelled_jobs(exq: Exq) -> None:
    manifest = exq.manifest("""
        name: lab
        defaults: {gpus: 0}
        labels: [sweep]
        phases:
          - {name: a, id: a, cmd: "true", labels: [first]}
          - {name: b, id: b, cmd: "true"}
    """)
    exq("submit", str(manifest))
    other = added(exq, "--gpus", "0", "--", "true")
    reply = json.loads(exq("cancel", "--json", "--label", "first").stdout)
    assert reply["affected"] == ["1/a"]
    reply = json.loads(exq("cancel", "--json", "--label", "sweep").stdout)
    assert reply["affected"] == ["1/b"]
    assert job(exq, other)["status"] == "queued"
    assert job(exq, "1/a")["spec"]["labels"] == ["sweep", "first"]


def test_a_job_in_retry_backoff_says_when_it_retries(exq: Exq) -> None:
    manifest = exq.manifest("name: b\ngpus: 0\nid: flaky\nretry: {failure: {max: 1, backoff: 60}}\n"
                            "cmd: 'echo flaky >&2; exit 1'\n")
    exq("submit", str(manifest))
    exq.start_daemon()
    wait_until(lambda: "retrying at" in str(job(exq, "1/flaky")["reason"]))
    reason = str(job(exq, "1/flaky")["reason"])
    assert reason.startswith("exit code 1") and reason.endswith("(backoff)")


def test_manifest_schema_accepts_the_example_manifests_and_rejects_a_wrong_type(exq: Exq) -> None:
    schema = json.loads(exq("schema", "--manifest").stdout)
    validator = jsonschema.Draft202012Validator(schema)
    examples = sorted((ROOT / "manifests").glob("*.yaml"))
    assert examples
    for path in examples:
        document = yaml.safe_load(path.read_text())
        if "name" in document:  # a manifest (runs.example.yaml is a bridge file)
            assert not list(validator.iter_errors(document)), path
    wrong = {"name": "x", "cmd": "true", "gpus": "many", "labels": "one"}
    errors = list(validator.iter_errors(wrong))
    assert [list(e.path) for e in errors] == [["gpus"]]


@pytest.mark.parametrize("command", ["hold", "release", "restart", "cancel", "retry"])
def test_control_commands_without_targets_are_usage_errors(exq: Exq, command: str) -> None:
    proc = exq(command, check=False)
    assert proc.returncode == 2 and "name at least one job" in proc.stderr


def test_submit_warns_of_jobs_that_can_never_run_and_strict_refuses_them(exq: Exq) -> None:
    manifest = exq.manifest("name: big\nphases:\n  - {name: huge, gpus: 4, cmd: 'true'}\n"
                            "  - {name: fat, gpu_memory: 80GiB, cmd: 'true'}\n  - {name: fine, cmd: 'true'}\n")
    refused = exq("submit", "--strict", str(manifest), check=False)
    assert refused.returncode == 2 and "submission refused (--strict)" in refused.stderr
    assert "phase huge: 1 job(s) can never run: needs 4 GPU(s) on one host; the most any allowed host has is 2" \
        in refused.stderr
    assert "phase fat: 1 job(s) can never run: needs 1 GPU(s) with 80GiB each" in refused.stderr
    assert "phase fine" not in refused.stderr and exq.state()["jobs"] == []
    warned = exq("submit", str(manifest))
    assert "submitted 3 job(s)" in warned.stdout and "phase huge: 1 job(s) can never run" in warned.stderr
    exq.start_daemon()  # the daemon says the same of the queued job
    wait_until(lambda: job(exq, "1/huge")["reason"] == "cannot fit: needs 4 GPUs on one host, the largest host has 2")


def test_daemon_logs_its_start_recovery_drain_and_stop(exq: Exq) -> None:
    key = added(exq, "--gpus", "0", "--", "sleep", "30")
    daemon = exq.start_daemon()
    wait_until(lambda: job(exq, key)["status"] == "running")
    daemon.send_signal(15)
    daemon.wait(30)
    log = (exq.root / "daemon0.log").read_text()
    started, recovered = log.index(" started (pid "), log.index("recovered: 0 attempt(s) still running")
    drain, stop = log.index("draining: no new jobs are placed; 1 running job(s) keep running"), log.index("stopped;")
    assert started < recovered < drain < stop
    exq.start_daemon()
    wait_until(lambda: "recovered: 1 attempt(s) still running re-attached" in (exq.root / "daemon1.log").read_text())
    exq("cancel", key)


def test_completion_scripts_load_and_complete_job_keys_and_phases(exq: Exq) -> None:
    manifest = exq.manifest("name: c\ndefaults: {gpus: 0}\nphases:\n  - {name: prep, id: p, cmd: 'true'}\n"
                            "  - {name: train, id: t, after: [prep], cmd: 'true'}\n")
    exq("submit", str(manifest))
    for shell in ("bash", "zsh", "fish"):
        assert "_EXQ_COMPLETE" in exq("completion", shell).stdout
    script = exq("completion", "bash").stdout
    loaded = subprocess.run(["bash", "-c", 'eval "$1"; complete -p exq', "_", script], capture_output=True,
                            text=True, timeout=30)
    assert loaded.returncode == 0 and "_exq_completion" in loaded.stdout

    def complete(words: str) -> list[str]:
        current = len(words.split()) - (0 if words.endswith(" ") else 1)  # the word being completed
        env = dict(exq.env, _EXQ_COMPLETE="bash_complete", COMP_WORDS=words, COMP_CWORD=str(current))
        out = subprocess.run(EXQ, env=env, capture_output=True, text=True, timeout=60).stdout
        return [line.split(",", 1)[1] for line in out.splitlines()]

    assert complete("exq logs ") == ["1/p", "1/t"]
    assert complete("exq cancel 1/t") == ["1/t"]
    assert complete("exq status --phase ") == ["prep", "train"]


def test_validate_run_and_report_speak_json(exq: Exq) -> None:
    manifest = exq.manifest("name: j\ngpus: 1\ngrid: {x: [1, 2]}\nid: 'j{x}'\ncmd: 'test {x} = 1'\n")
    spec = json.loads(exq("validate", "--json", str(manifest)).stdout)
    assert [j["id"] for j in spec["jobs"]] == ["j1", "j2"] and spec["jobs"][0]["cmd"] == "test 1 = 1"
    assert json.loads(exq("submit", "--dry-run", "--json", str(manifest)).stdout) == spec
    ran = exq("run", "--json", str(manifest), check=False)
    assert ran.returncode == 1
    result = json.loads(ran.stdout)
    assert result["submission"] == "1"
    assert [(j["job"], j["status"]) for j in result["jobs"]] == [("1/j1", "succeeded"), ("1/j2", "failed")]
    figures = json.loads(exq("report", "--json").stdout)
    assert sum(lane["attempts"] for lane in figures["lanes"]) == 2
    assert {lane["gpu"] for lane in figures["lanes"]} == {0, 1}
    assert [(p["phase"], p["jobs"], p["succeeded"], p["failed"]) for p in figures["phases"]] == [("j", 2, 1, 1)]


def test_add_max_parallel_limits_the_running_jobs_of_its_label_across_submissions(exq: Exq) -> None:
    assert exq("add", "--max-parallel", "1", "--", "true", check=False).returncode == 2  # needs --label
    keys = [added(exq, "--gpus", "0", "--label", "grp", "--max-parallel", "1", "--", "sleep", "2")
            for _ in range(3)]
    free = added(exq, "--gpus", "0", "--", "sleep", "2")
    exq.start_daemon()
    wait_until(lambda: job(exq, keys[1])["reason"] == "waiting: max_parallel 1 of label grp reached")
    exq("wait")
    spans = sorted((a["started_at"], a["ended_at"]) for k in keys for a in job(exq, k)["attempts"])
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))
    first = min(s for s, _ in spans)
    assert job(exq, free)["attempts"][0]["started_at"] < first + 2
