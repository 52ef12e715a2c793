"""exq.torch, the training-side helper, with real torch (CPU): OOM guard, results, and exq runs of examples/."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import Exq

from exq.model.contract import OOM_EXIT_CODE
from exq.torch import BatchPlan, Reporter, batch_plan, param, params, scaled_batch

# Checked without importing torch here: the import costs seconds and warns (no numpy) under filterwarnings=error.
if importlib.util.find_spec("torch") is None:
    pytest.skip("missing: torch; run tests/setup.sh (pip install torch==2.13.0)", allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
TORCH = "import warnings; warnings.filterwarnings('ignore'); import torch\n"


def run_python(code: str, with_torch: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `code` after importing oom_guard (and torch: seconds, so only where the test needs it)."""
    prelude = (TORCH if with_torch else "") + "from exq.torch import oom_guard\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60)


def job_env(exq: Exq) -> None:
    """Jobs run `python3`: make it this interpreter's (the one with torch and exq)."""
    exq.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{exq.env.get('PATH', '')}"


def test_guard_turns_torch_oom_into_the_oom_exit_code() -> None:
    proc = run_python("""
        @oom_guard
        def train():
            raise torch.cuda.OutOfMemoryError("Tried to allocate 2.00 GiB\\nmore detail")
        try:
            train()
        finally:
            print("finally ran")
    """)
    assert proc.returncode == OOM_EXIT_CODE, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "exq: CUDA out of memory: Tried to allocate 2.00 GiB"
    assert "Traceback" not in proc.stderr and "finally ran" in proc.stdout


def test_guard_as_context_manager_catches_cublas_alloc_failures() -> None:
    proc = run_python("""
        with oom_guard():
            raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
    """, with_torch=False)
    assert proc.returncode == OOM_EXIT_CODE
    assert proc.stderr.strip() == ("exq: CUDA out of memory: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling "
                                   "`cublasCreate(handle)`")


def test_guard_lets_other_errors_propagate() -> None:
    proc = run_python("""
        with oom_guard():
            raise RuntimeError("shape mismatch: mat1 and mat2 shapes cannot be multiplied")
    """)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and proc.stderr.strip().endswith(
        "RuntimeError: shape mismatch: mat1 and mat2 shapes cannot be multiplied")
    assert "exq:" not in proc.stderr
    proc = run_python("""
        @oom_guard()
        def main():
            raise ValueError("bad config")
        main()
    """, with_torch=False)
    assert proc.returncode == 1 and proc.stderr.strip().endswith("ValueError: bad config")


def test_scaled_batch_keeps_the_effective_batch() -> None:
    assert scaled_batch(256, 256) == (256, 1)
    assert scaled_batch(64, 256) == (64, 4)
    assert scaled_batch(100, 256) == (86, 3)
    assert scaled_batch(512, 256) == (256, 1)
    with pytest.raises(ValueError):
        scaled_batch(0, 256)


def test_params_and_batch_plan_read_the_attempts_scaled_params(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXQ_PARAMS", raising=False)
    assert params() == {} and param("lr", 0.1) == 0.1
    with pytest.raises(KeyError, match="not run by exq"):
        param("batch_size")
    monkeypatch.setenv("EXQ_PARAMS", json.dumps({"batch_size": 64, "lr": 0.01, "tag": "a b"}))
    monkeypatch.setenv("EXQ_BASE_PARAMS", json.dumps({"batch_size": 256, "lr": 0.01, "tag": "a b"}))
    assert param("tag") == "a b" and param("lr") == 0.01
    with pytest.raises(KeyError, match=r"no param 'seed' in \$EXQ_PARAMS \(params: batch_size, lr, tag\)"):
        param("seed")
    assert batch_plan() == BatchPlan(batch_size=64, effective=256, micro=64, accumulation=4)
    monkeypatch.setenv("EXQ_PARAMS", "{oops")
    with pytest.raises(ValueError, match=r"\$EXQ_PARAMS does not hold JSON"):
        params()


def test_reporter_writes_throttled_progress_then_the_merged_metrics(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    reporter = Reporter(path, interval=3600)
    reporter.report(step=1, total=10, loss=2.5)
    assert json.loads(path.read_text()) == {"step": 1, "total": 10, "loss": 2.5}
    reporter.report(step=2, loss=2.0)   # throttled: not written yet
    assert json.loads(path.read_text())["step"] == 1
    assert reporter.finish(final_loss=float("inf")) == {"step": 2, "total": 10, "loss": 2.0, "final_loss": float("inf")}
    assert json.loads(path.read_text()) == {"step": 2, "total": 10, "loss": 2.0, "final_loss": "inf"}
    assert list(tmp_path.iterdir()) == [path]   # no temporary file left behind
    with pytest.raises(KeyError), Reporter(path) as failing:
        failing.report(loss=1.0)
        raise KeyError("x")
    assert json.loads(path.read_text()) == {"loss": 1.0, "error": "KeyError: 'x'"}


def test_exq_run_retries_a_real_torch_oom_with_a_smaller_batch(exq: Exq) -> None:
    job_env(exq)
    manifest = exq.manifest(f"""
        name: tiny
        workdir: {REPO}
        gpus: 1
        gpu_memory: 1GiB
        params: {{batch_size: 256}}
        retry: {{oom: {{max: 3, backoff: 0.1s}}}}
        on_oom: {{scale: {{param: batch_size, factor: 0.5, min: 8}}}}
        id: job
        cmd: python3 examples/train_tiny.py --oom-above 64 --epochs 2   # batch_plan() reads batch_size
    """)
    exq("run", str(manifest))
    job = exq.jobs()["job"]
    assert [a["outcome"] for a in job["attempts"]] == ["oom", "oom", "succeeded"]
    assert all(f"exit code {OOM_EXIT_CODE}" in a["reason"] for a in job["attempts"][:2])
    assert job["status"] == "succeeded" and job["params"]["batch_size"] == 64
    result = job["result"]
    assert result["batch_size"] == 64 and result["micro_batch"] == 64 and result["accumulation"] == 4
    assert result["final_loss"] < result["initial_loss"] and result["step"] == result["total"]
    log = Path(job["attempts"][0]["log"]).read_text()
    assert "exq: CUDA out of memory: CUDA out of memory. Tried to allocate" in log


def test_torch_teacher_student_manifest_runs(exq: Exq) -> None:
    job_env(exq)
    for name in ("examples/train_tiny.py", "manifests/torch_teacher_student.yaml"):
        (exq.root / name).parent.mkdir(exist_ok=True)
        shutil.copy(REPO / name, exq.root / name)
    exq("run", str(exq.root / "manifests/torch_teacher_student.yaml"))
    jobs = exq.jobs()
    assert {job_id: j["status"] for job_id, j in jobs.items()} == {
        "teacher": "succeeded", "student_s1": "succeeded", "student_s2": "succeeded"}
    assert jobs["student_s1"]["attempts"][0]["launched_at"] >= jobs["teacher"]["attempts"][0]["ended_at"]
    for job_id in ("student_s1", "student_s2"):
        assert jobs[job_id]["result"]["distilled"] is True
        assert (exq.root / f"manifests/runs/torch/{job_id}.pt").exists()
