"""Live progress: what a running job reports (exq.torch.Reporter) shows in `exq status` while it runs."""

from __future__ import annotations

import json
import shlex
import sys
import time
from typing import Any

from conftest import Exq, wait_until

from exq.model.state import Progress

# Reports steps 1 and 2 of 3, each time waiting (bounded) for the test to create <go dir>/<step>,
# then finishes with final metrics. No torch needed: exq.torch never imports it.
JOB = """\
import sys, time
from pathlib import Path
from exq.torch import Reporter

go, reporter = Path(sys.argv[1]), Reporter(interval=0)
for step in (1, 2):
    reporter.report(step=step, total=3, loss=1.0 / step, stage="warmup" if step == 1 else "main")
    deadline = time.monotonic() + 60
    while not (go / str(step)).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
reporter.finish(step=3, final_loss=0.125)
"""


def test_progress_and_metrics_appear_in_status_while_the_job_runs(exq: Exq) -> None:
    script, go = exq.root / "job.py", exq.root / "go"
    script.write_text(JOB)
    go.mkdir()
    manifest = exq.manifest(f"""
        name: live
        workdir: .
        gpus: 1
        id: train
        cmd: {shlex.quote(sys.executable)} job.py {shlex.quote(str(go))}
    """)
    exq.env["COLUMNS"] = "200"  # the job table on one line
    exq.start_daemon("--progress-interval", "0.2")
    exq("submit", str(manifest))

    def progress_at(step: int) -> dict[str, Any] | None:
        job = exq.jobs()["train"]
        progress = job.get("progress")
        return job if progress and progress["step"] == step else None

    job = wait_until(lambda: progress_at(1), 30, 0.1)
    assert job["status"] == "running" and job["result"] is None
    progress = job["progress"]
    assert (progress["step"], progress["total"], progress["metrics"]) == (1, 3, {"loss": 1.0, "stage": "warmup"})
    assert time.time() - 30 < progress["updated_at"] <= time.time()
    table = exq("status").stdout
    assert "1/3" in table and "loss=1 stage=warmup" in table

    (go / "1").touch()
    job = wait_until(lambda: progress_at(2), 30, 0.1)
    assert job["progress"]["metrics"] == {"loss": 0.5, "stage": "main"}
    assert "2/3" in exq("status").stdout

    (go / "2").touch()
    job = exq.wait_finished(1, 30)["train"]
    assert job["status"] == "succeeded" and job["progress"] is None
    assert job["result"] == {"step": 3, "total": 3, "loss": 0.5, "stage": "main", "final_loss": 0.125}
    assert "final_loss=0.125" in exq("status").stdout


def test_a_retried_job_does_not_show_the_progress_of_its_failed_attempt(exq: Exq) -> None:
    # Attempt 1 reports step 5, waits for go/1 and fails; attempt 2 reports nothing and waits for go/2.
    script, go = exq.root / "job.py", exq.root / "go"
    script.write_text("""\
import json, os, sys, time
from pathlib import Path
attempt = os.environ["EXQ_ATTEMPT"]
if attempt == "1":
    json.dump({"step": 5, "total": 9}, open(os.environ["EXQ_RESULT_FILE"], "w"))
deadline = time.monotonic() + 60
while not Path(sys.argv[1], attempt).exists() and time.monotonic() < deadline:
    time.sleep(0.05)
sys.exit(3 if attempt == "1" else 0)
""")
    go.mkdir()
    manifest = exq.manifest(f"""
        name: retry
        workdir: .
        gpus: 1
        retry: {{failure: {{max: 1, backoff: 0s}}}}
        id: train
        cmd: {shlex.quote(sys.executable)} job.py {shlex.quote(str(go))}
    """)
    exq.start_daemon("--progress-interval", "0.2")
    exq("submit", str(manifest))
    wait_until(lambda: (exq.jobs()["train"].get("progress") or {}).get("step") == 5, 30, 0.1)
    (go / "1").touch()
    wait_until(lambda: (j := exq.jobs()["train"])["status"] == "running" and len(j["attempts"]) == 2, 30)
    time.sleep(1.0)  # several progress reads of attempt 2, which wrote nothing
    job = exq.jobs()["train"]
    assert len(job["attempts"]) == 2 and job["status"] == "running" and job["progress"] is None, job
    (go / "2").touch()
    assert exq.wait_finished(1, 30)["train"]["status"] == "succeeded"


def test_progress_keeps_when_it_was_first_seen_until_the_values_change() -> None:
    first = Progress.from_result({"step": 2, "total": 10, "loss": 0.5}, now=100.0)
    assert (first.step, first.total, first.metrics, first.fraction) == (2, 10, {"loss": 0.5}, 0.2)
    assert Progress.from_result({"step": 2, "total": 10, "loss": 0.5}, now=200.0, previous=first) is first
    moved = Progress.from_result({"step": 3, "total": 10, "loss": 0.4}, now=300.0, previous=first)
    assert (moved.step, moved.updated_at) == (3, 300.0)
    # Not numbers (or booleans, or not finite): kept as metrics, no step or total.
    odd = Progress.from_result({"step": "warmup", "total": True, "acc": 0.9}, now=1.0)
    assert (odd.step, odd.total, odd.fraction) == (None, None, None)
    assert odd.metrics == {"step": "warmup", "total": True, "acc": 0.9}
    assert Progress.from_result({"step": 12, "total": 10}, now=1.0).fraction == 1.0
    assert Progress.from_result(json.loads('{"step": NaN, "total": 0}'), now=1.0).fraction is None
