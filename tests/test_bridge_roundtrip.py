"""A research plan's full round trip: compile -> submit -> jobs run on simulated GPUs -> the daemon's hook
syncs the tracker, results, log and workflow gate; metric gates block later milestones; sync is idempotent."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import EXQ, Exq, wait_until
from research import DATA, PLAN, WORKFLOW, exq_plan, research_project

FAKE_TRAIN = """\
import json, os, sys
run, seed, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mode == "crash":
    print("Traceback: something broke", file=sys.stderr)
    sys.exit(3)
final = 2.5 if mode == "diverge" else 1.0
with open(os.environ["EXQ_RESULT_FILE"], "w") as f:
    json.dump({"top1": 70.0 + seed, "initial_loss": 2.0, "final_loss": final}, f)
"""


def runs_file(m0_mode: str) -> str:
    train = f"{sys.executable} scripts/fake_train.py"
    return textwrap.dedent(f"""\
        workdir: ..
        defaults: {{gpus: 1, gpu_memory: 1GiB}}
        seeds: [0, 1]
        key_metric: top1
        milestones:
          M0: {{cmd: "{train} {{run_id}} {{seed}} {m0_mode}", seeds: [0], key_metric: final_loss}}
        runs:
          R007: {{cmd: "{train} {{run_id}} {{seed}} crash"}}
        default: {{cmd: "{train} {{run_id}} {{seed}} ok"}}
        gates:
          M0: [{{metric: final_loss, below: initial_loss}}]
          M2: [{{metric: top1, over: seeds, at_least: 70}}]
        """)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = research_project(tmp_path / "vit-project", runs_file("ok"))
    (root / "scripts").mkdir()
    (root / "scripts" / "fake_train.py").write_text(FAKE_TRAIN)
    (root / "EXPERIMENT_LOG.md").write_text("# Experiment Log\n\nKept by hand before exq; keep this line.\n")
    return root


def run_plan(exq: Exq, project: Path, m0_mode: str, jobs: int) -> dict[str, dict[str, Any]]:
    """Submit the plan, run the daemon until every job finished and the hook synced the last change."""
    (project / "refine-logs" / "runs.yaml").write_text(runs_file(m0_mode))
    submitted = exq_plan(exq, project, "submit", PLAN)
    assert submitted.returncode == 0, submitted.stderr
    exq.start_daemon()
    finished = exq.wait_finished(jobs, timeout=120)

    def synced() -> bool:
        sub = exq.state()["submissions"][0]
        return bool(sub["hook_covered"] == sub["changes"] and sub["hook_error"] is None)

    wait_until(synced, timeout=60, interval=0.2)
    return finished


def files(project: Path) -> dict[str, bytes]:
    return {str(p.relative_to(project)): p.read_bytes() for p in sorted(project.rglob("*.md"))}


def rows(path: Path) -> dict[str, list[str]]:
    """Tracker rows by run id: their cells."""
    return rows_of(path.read_text())


def test_a_plan_runs_end_to_end_and_the_documents_follow(exq: Exq, project: Path) -> None:
    tracker = project / "refine-logs" / "EXPERIMENT_TRACKER.md"
    workflow = project / WORKFLOW
    before = {"tracker": tracker.read_text(), "workflow": workflow.read_text()}
    jobs = run_plan(exq, project, "ok", jobs=15)  # 13 runs x seeds + the M0 and M2 gate jobs
    assert jobs["M0-gate"]["status"] == "succeeded" and jobs["M2-gate"]["status"] == "succeeded"
    assert jobs["R007_s0"]["status"] == "failed"  # NICE: its failure closes no gate

    # Tracker: Status and Notes of each run; every other cell and line as it was.
    cells = rows(tracker)
    assert {run: c[7] for run, c in cells.items()} == {
        "R001": "DONE", "R002": "DONE", "R003": "DONE", "R004": "DONE", "R005": "DONE", "R006": "DONE",
        "R007": "FAILED"}
    assert cells["R001"][8] == "exq: final_loss 1; 1 attempt"
    assert cells["R004"][8] == "exq: top1 70.5 ± 0.71 (2 seeds); 2 attempts"
    assert cells["R007"][8].startswith("exq: failed: R007_s0: exit code 3")
    for run, old in rows_of(before["tracker"]).items():
        assert cells[run][:7] == old[:7]
    assert _without_rows(tracker.read_text()) == _without_rows(before["tracker"])

    # Results: a section per milestone, each PASSED, and the must-run count.
    results = (project / "refine-logs" / "EXPERIMENT_RESULTS.md").read_text()
    for heading in ("### M0: Sanity — PASSED", "### M1: Baselines — PASSED", "### M2: Main — PASSED",
                    "### M3: Ablation — PASSED"):
        assert heading in results
    assert "| R007 | vit-tiny, schedule, 400 epochs |" in results
    assert "- [6/6] must-run experiments completed" in results
    assert "| M2-gate | metric gate | exq: 1 rule(s) met | DONE |" in results

    # Log: the hand-written text stays; one entry per finished run, with a verdict and the command.
    log = (project / "EXPERIMENT_LOG.md").read_text()
    assert log.startswith("# Experiment Log\n\nKept by hand before exq; keep this line.\n\n## R001 — ")
    assert log.count("\n## R0") == 7
    assert "- **Verdict**: positive (gate M0 passed)" in log and "- **Verdict**: inconclusive (the run failed)" in log
    assert f"cd {project.resolve()} && {sys.executable} scripts/fake_train.py R004 1 ok" in log

    # Workflow: the stage 5 gate passed with evidence; no other line changed.
    flow = workflow.read_text()
    gate_line = next(line for line in flow.splitlines() if line.startswith("| 5 Training"))
    assert "| Pass |" in gate_line and "| exq: submission 1: 6/6 must-run done" in gate_line
    assert "M2 PASSED (R004 top1 70.5 ± 0.71 (2 seeds))" in gate_line
    changed = [a for a, b in zip(before["workflow"].splitlines(), flow.splitlines(), strict=True) if a != b]
    assert [line.split(":")[0] for line in changed if not line.startswith("|")] == ["- Last Updated"]

    # Syncing again changes nothing: the hook already brought everything up to date.
    snapshot = files(project)
    for _ in range(2):
        again = exq_plan(exq, project, "sync", PLAN)
        assert again.returncode == 0, again.stderr
        assert "up to date" in again.stdout
    synced = exq_plan(exq, project, "sync", PLAN, "--json")
    assert synced.returncode == 0 and json.loads(synced.stdout)["changed"] == []
    assert json.loads(synced.stdout)["submission"] == "1"
    assert files(project) == snapshot


def test_a_failing_metric_gate_blocks_the_later_milestones(exq: Exq, project: Path) -> None:
    jobs = run_plan(exq, project, "diverge", jobs=15)
    assert jobs["R001_s0"]["status"] == "succeeded" and jobs["M0-gate"]["status"] == "failed"
    assert "final_loss of each job < initial_loss" in jobs["M0-gate"]["reason"]
    assert "R001_s0: 2.5 vs initial_loss 2" in jobs["M0-gate"]["reason"]
    assert all(jobs[j]["status"] == "blocked" for j in jobs if j[:4] in ("R002", "R004", "R007"))
    status = subprocess.run([*EXQ, "status"], env={**exq.env, "COLUMNS": "400"}, capture_output=True, text=True,
                            timeout=60).stdout
    assert "gate M0 failed: final_loss of each job < initial_loss" in status  # the gate job's line says why
    assert "dependency M0-gate failed" in status

    cells = rows(project / "refine-logs" / "EXPERIMENT_TRACKER.md")
    assert cells["R001"][7] == "DONE" and {cells[r][7] for r in cells if r != "R001"} == {"BLOCKED"}
    assert cells["R002"][8].startswith("exq: blocked: R002_s0: dependency M0-gate")
    results = (project / "refine-logs" / "EXPERIMENT_RESULTS.md").read_text()
    assert "### M0: Sanity — FAILED" in results and "### M1: Baselines — PENDING" in results
    assert "- [1/6] must-run experiments completed" in results
    log = (project / "EXPERIMENT_LOG.md").read_text()
    assert log.count("\n## R0") == 1 and "- **Verdict**: negative (gate M0: " in log
    gate_line = next(line for line in (project / WORKFLOW)
                     .read_text().splitlines() if line.startswith("| 5 Training"))
    assert "| Fail |" in gate_line and "re-entry classification left to the human" in gate_line
    assert "M0 FAILED (gate: " in gate_line


def rows_of(text: str) -> dict[str, list[str]]:
    """Tracker rows by run id: their cells."""
    return {c[0]: c for c in ([x.strip() for x in line.strip().strip("|").split("|")]
                              for line in text.splitlines() if line.startswith("| R0"))}


def _without_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("| R0")]


def test_messy_documents_with_windows_line_endings_keep_every_byte_exq_does_not_own(exq: Exq, tmp_path: Path) -> None:
    root = tmp_path / "项目 messy"
    ticket = root / "tickets" / "in-progress" / "t9"
    ticket.mkdir(parents=True)
    for source, target in (("plan_messy.md", root / "PLAN.md"), ("tracker_messy.md", root / "TRACKER.md"),
                           ("workflow_messy.md", ticket / "workflow-state.md")):
        target.write_bytes((DATA / source).read_bytes().replace(b"\n", b"\r\n"))
    (root / "runs.yaml").write_text("defaults: {gpus: 1}\nseeds: [0]\ndefault: {cmd: 'echo {run_id}'}\n")
    before = {p.name: p.read_bytes() for p in (root / "TRACKER.md", ticket / "workflow-state.md")}
    out = exq_plan(exq, root, "submit", "PLAN.md", "--tracker", "TRACKER.md", "--include", "R001,R003")
    assert out.returncode == 0, out.stderr  # R001 `done` and R003 `running` by hand: run again only as asked
    exq.start_daemon()
    exq.wait_finished(3)
    wait_until(lambda: b"| Pass |" in (ticket / "workflow-state.md").read_bytes().replace(b"|Pass|", b"| Pass |"),
               timeout=60, interval=0.2)

    tracker = (root / "TRACKER.md").read_bytes()
    old, new = before["TRACKER.md"].split(b"\r\n"), tracker.split(b"\r\n")
    changed = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
    assert [b.split(b"|")[1].strip() for _, b in changed] == [b"`R001`", b"R002", b"R003"]
    assert b"| `R001` | M0: Sanity | DONE | must-run | 0 | vit-tiny \\| schedule | \xe6\x8d\x9f" in tracker
    assert b"|R003|M2|DONE||2" in tracker
    flow = (ticket / "workflow-state.md").read_bytes()
    assert flow.count(b"\r\n") == before["workflow-state.md"].count(b"\r\n") and b"\n" not in flow.replace(b"\r\n", b"")
    gate = b"|**5 Training & Validation**|Pass|Run evidence closes the criteria| exq: submission 1: 2/2 must-run"
    assert gate in flow
    results = (root / "EXPERIMENT_RESULTS.md").read_text()
    assert "### M2: \u4e3b\u5b9e\u9a8c \u2014 PASSED" in results  # the milestone's own (unicode) title

    snapshot = files(root)
    out = exq_plan(exq, root, "sync", "PLAN.md", "--tracker", "TRACKER.md")
    assert out.returncode == 0 and "up to date" in out.stdout, out.stderr
    assert files(root) == snapshot
