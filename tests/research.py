"""A research project on disk (plan, tracker, runs file, one ticket's workflow state) and `exq plan` on it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from conftest import EXQ, Exq

DATA = Path(__file__).parent / "data" / "bridge"
PLAN = "refine-logs/EXPERIMENT_PLAN.md"
WORKFLOW = "tickets/in-progress/t1/workflow-state.md"


def research_project(root: Path, runs: str) -> Path:
    """`root` with refine-logs/{EXPERIMENT_PLAN.md, EXPERIMENT_TRACKER.md, runs.yaml} and a ticket in stage 5."""
    logs = root / "refine-logs"
    logs.mkdir(parents=True)
    for name in ("EXPERIMENT_PLAN.md", "EXPERIMENT_TRACKER.md"):
        shutil.copy(DATA / name, logs / name)
    (logs / "runs.yaml").write_text(runs)
    (root / WORKFLOW).parent.mkdir(parents=True)
    shutil.copy(DATA / "workflow-state.md", root / WORKFLOW)
    return root


def exq_plan(exq: Exq, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`exq plan ARGS` run in `cwd` against the fixture's state directory."""
    return subprocess.run([*EXQ, "plan", *args], env=exq.env, cwd=cwd, capture_output=True, text=True, timeout=120)
