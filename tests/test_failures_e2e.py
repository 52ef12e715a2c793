"""End to end, what a user sees of jobs that fail: through a real daemon on simulated GPUs, and on an SSH host.

An OOM line followed by 9 KB of teardown output is still found; a failure matching `retry.transient` is
retried and then succeeds; a failed job's reason quotes the last meaningful line of its log.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from conftest import Exq
from sshhosts import SshHosts, write_hosts_config

SCRIPT = """
import os, sys
mode = sys.argv[1]
count = os.path.join(os.environ["MARKS"], os.environ["EXQ_JOB_ID"])
with open(count, "a") as f:
    f.write("run\\n")
runs = len(open(count).read().split())
if mode == "oom" and runs == 1:
    print("step 1 loss 4.61", flush=True)
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
          "capacity of 23.64 GiB of which 1.19 GiB is free.", file=sys.stderr, flush=True)
    for i in range(140):  # 9.6 KB of teardown after the OOM line
        print(f"[rank0] closing dataloader worker {i:3d}: released pinned host buffers", file=sys.stderr)
    sys.exit(1)
if mode == "transient" and runs <= 2:
    print("RuntimeError: CUDA error: unknown error", file=sys.stderr)
    print("CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace "
          "below might be incorrect.", file=sys.stderr)
    print("For debugging consider passing CUDA_LAUNCH_BLOCKING=1", file=sys.stderr)
    sys.exit(1)
if mode == "bad":
    print("loading shard 7", flush=True)
    raise ValueError("bad data shard 7 (checksum mismatch)")
print("done")
"""


def test_oom_after_long_teardown_transient_retries_and_error_lines(exq: Exq) -> None:
    marks = exq.root / "marks"
    marks.mkdir()
    (exq.root / "job.py").write_text(SCRIPT)
    python = shlex.quote(sys.executable)
    manifest = exq.manifest(f"""
        name: failures
        env: {{MARKS: "{marks}"}}
        defaults:
          gpus: 1
          gpu_memory: 4GiB
          share: true
          retry:
            oom: {{max: 2, backoff: 0.1s}}
            transient: {{match: ["CUDA error: unknown error", "NCCL WARN .* Connection reset"], max: 2, backoff: 0.5s}}
            failure: {{max: 0}}
        phases:
          - name: p
            grid: {{mode: [oom, transient, bad]}}
            id: "{{mode}}"
            cmd: {python} job.py {{mode}}
    """)
    exq.start_daemon()
    exq("submit", str(manifest))
    jobs = exq.wait_finished(3, timeout=90)

    oom = jobs["oom"]
    first_log = Path(oom["attempts"][0]["log"]).read_text()
    assert len(first_log.split("CUDA out of memory", 1)[1].encode()) > 9000  # the OOM line is 9 KB from the end
    assert [a["outcome"] for a in oom["attempts"]] == ["oom", "succeeded"] and oom["status"] == "succeeded"
    assert oom["attempts"][0]["reason"] == "CUDA out of memory (torch.OutOfMemoryError)" and oom["oom_retries"] == 1

    flaky = jobs["transient"]
    assert flaky["status"] == "succeeded" and (marks / "transient").read_text() == "run\n" * 3
    assert [a["outcome"] for a in flaky["attempts"]] == ["transient", "transient", "succeeded"]
    assert (flaky["transient_retries"], flaky["failure_retries"]) == (2, 0)
    assert flaky["attempts"][0]["reason"] == ("transient error (log matches 'CUDA error: unknown error'); "
                                              "exit code 1: RuntimeError: CUDA error: unknown error")
    assert flaky["attempts"][1]["launched_at"] - flaky["attempts"][0]["ended_at"] >= 0.45  # backoff 0.5s

    bad = jobs["bad"]
    reason = "exit code 1: ValueError: bad data shard 7 (checksum mismatch)"
    assert bad["status"] == "failed" and bad["reason"] == reason and len(bad["attempts"]) == 1
    exq.env["COLUMNS"] = "250"  # the whole reason on one line of the table
    assert reason in exq("status").stdout


SH_SCRIPT = """
echo run >> "marks/$EXQ_JOB_ID"
runs=$(wc -l < "marks/$EXQ_JOB_ID")
case $1 in
    oom) if [ "$runs" -eq 1 ]; then
            echo "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB" >&2
            i=0; while [ $i -lt 160 ]; do echo "[rank0] closing dataloader worker $i: released pinned buffers" >&2
            i=$((i + 1)); done; exit 1; fi ;;
    bad) printf 'Traceback (most recent call last):\\nValueError: bad data shard 7\\n\\n' >&2; exit 3 ;;
esac
"""


def test_the_same_on_an_ssh_host(exq: Exq, ssh_hosts: Callable[..., SshHosts]) -> None:
    shared = Path(tempfile.mkdtemp(prefix="exq-e2e-", dir="/tmp"))  # the host's login is another user
    try:
        for path in (shared, shared / "marks"):
            path.mkdir(exist_ok=True)
            path.chmod(0o777)
        (shared / "job.sh").write_text(SH_SCRIPT)
        config = write_hosts_config(exq.root / "config.yaml", ssh_hosts([("h1", "1x24GiB")]), local=False)
        exq.env["EXQ_CONFIG"] = str(config)
        manifest = exq.manifest(f"""
            name: remote
            workdir: {shared}
            retry: {{oom: {{max: 1, backoff: 0.1s}}}}
            grid: {{mode: [oom, bad]}}
            id: "{{mode}}"
            cmd: sh job.sh {{mode}}
        """)
        assert exq("run", str(manifest), check=False, timeout=120).returncode == 1  # `bad` failed
        jobs = exq.jobs()
        assert {job["host"] for job in jobs.values()} == {"h1"}
        oom = jobs["oom"]
        assert oom["status"] == "succeeded" and [a["outcome"] for a in oom["attempts"]] == ["oom", "succeeded"]
        assert oom["attempts"][0]["reason"] == "CUDA out of memory (torch.OutOfMemoryError)"
        bad = jobs["bad"]
        assert bad["status"] == "failed" and bad["reason"] == "exit code 3: ValueError: bad data shard 7"
    finally:
        shutil.rmtree(shared, ignore_errors=True)
