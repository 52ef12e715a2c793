"""Plans and trackers in the forms people really write them (tests/data/bridge/variants/), compiled, run on
simulated GPUs and synced: only the runs still to do run, commands come from the documents, Depends On is
seen in the launch order, and a person's words survive every sync byte for byte."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import Exq, wait_until
from research import DATA, exq_plan

VARIANTS = DATA / "variants"
TICKET = "tickets/in-progress/t1/workflow-state.md"
FAKE_SCRIPT = """\
import json, os, sys, time
run = sys.argv[sys.argv.index("--run") + 1]
with open("order.log", "a") as log:
    log.write(f"start {run} {time.time():.3f}\\n")
time.sleep(0.3)
if run in os.environ.get("FAIL_RUNS", "").split(",") and not os.path.exists(f"fixed-{run}"):
    print(f"ValueError: bad data shard for {run}", file=sys.stderr)
    sys.exit(3)
with open(os.environ["EXQ_RESULT_FILE"], "w") as f:
    json.dump({"top1": 70.1}, f)
with open("order.log", "a") as log:
    log.write(f"end {run} {time.time():.3f}\\n")
"""


def project(tmp_path: Path, pair: str, workflow: str | None) -> Path:
    """A project with refine-logs/ holding the pair, fake train/search scripts, and a ticket's workflow."""
    root = tmp_path / pair
    shutil.copytree(VARIANTS / pair, root / "refine-logs")
    for script in ("train.py", "search.py"):
        (root / script).write_text(FAKE_SCRIPT)
    if workflow is not None:
        (root / TICKET).parent.mkdir(parents=True)
        shutil.copy(VARIANTS / workflow, root / TICKET)
    return root


def plan(exq: Exq, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    out = exq_plan(exq, root, args[0], "refine-logs/EXPERIMENT_PLAN.md", *args[1:])
    assert out.returncode == 0, out.stderr
    return out


def run_until_synced(exq: Exq, root: Path, jobs: int) -> None:
    """Run the daemon until every job ended, the hook's sync decided the workflow's training gate, and the hook
    ran for the last change (an earlier run may have decided the gate while a NICE run was still going)."""
    exq.start_daemon()
    exq.wait_finished(jobs, timeout=90)
    wait_until(lambda: "must-run done" in (root / TICKET).read_text(), 60, 0.2)
    wait_until(lambda: all(sub["hook_covered"] == sub["changes"] for sub in exq.state()["submissions"]), 60, 0.2)


def order(root: Path) -> dict[str, float]:
    """`start R001` / `end R001` -> when, from the fake script's log."""
    events = (line.split() for line in (root / "order.log").read_text().splitlines())
    return {f"{what} {run}": float(when) for what, run, when in events}


def changed_lines(before: str, after: str) -> dict[str, str]:
    """Each line that differs, by its first cell (the run id), as it reads now; the line count must not change."""
    old, new = before.splitlines(), after.splitlines()
    assert len(old) == len(new)
    return {b.split("|")[1].strip(): b for a, b in zip(old, new, strict=True) if a != b}


def test_per_milestone_sections_compile_only_runs_to_do_and_keep_every_persons_word(exq: Exq, tmp_path: Path) -> None:
    root = project(tmp_path, "sections", "workflow-annotated.md")
    tracker, workflow = root / "refine-logs" / "EXPERIMENT_TRACKER.md", root / TICKET
    before = tracker.read_text()
    dry = plan(exq, root, "submit", "--dry-run")
    assert "R002 (M1, **GATE FAILED**): left alone: GATE FAILED; --rerun-failed takes it" in dry.stderr
    for left in ("R001 (M0, DONE): left alone", "R004 (M2, 🟡 RUNNING): left alone",
                 "R006 (M2, **PAUSED**): left alone", "R007 (M2, CANCELLED): left alone"):
        assert left in dry.stderr
    assert ("R003 (M1, TODO/REUSE): to do (TODO/REUSE); command from EXPERIMENT_PLAN.md:39 (Command): "
            "python3 train.py --run R003 --model resnet18") in dry.stderr
    assert tracker.read_text() == before and not (root / "refine-logs" / "exq-plan.yaml").exists()

    exq.env["FAIL_RUNS"] = "R008"
    plan(exq, root, "submit")
    run_until_synced(exq, root, jobs=3)  # R008 is NICE: its failure closes no gate
    assert set(exq.jobs()) == {"R003", "R005", "R008"}
    assert set(order(root)) == {"start R003", "end R003", "start R005", "end R005", "start R008"}
    rows = changed_lines(before, tracker.read_text())
    assert rows == {
        "R003": "| R003 | ResNet-18 | MUST | DONE | reuse `ckpt/resnet18.pt` if it is still there · exq: top1 70.1; "
                "1 attempt |",
        "R005": "| R005 | schedule, seed 1 | MUST | DONE | exq: top1 70.1; 1 attempt |",
        "R008": "| R008 | schedule, mixup | NICE | FAILED | exq: failed: R008: exit code 3: ValueError: bad data shard "
                "for R008; 1 attempt |"}
    gate = next(line for line in workflow.read_text().splitlines() if "Training & Validation" in line)
    assert gate.startswith("| `5 Training & Validation` | `Pass` | Run evidence closes the success criteria | "
                           "exq: submission 1: 2/2 must-run done; M1 PASSED (R003 top1 70.1)")

    synced = tracker.read_bytes()
    assert "up to date" in plan(exq, root, "sync").stdout and tracker.read_bytes() == synced

    # A person adds to R008's Notes and has it retried: only exq's part of the cell changes.
    by_hand = tracker.read_text().replace("| FAILED | exq: failed", "| FAILED | Fixed the shard list. · exq: failed")
    tracker.write_text(by_hand)
    (root / "fixed-R008").touch()
    exq("retry", "1/R008")
    wait_until(lambda: "| R008 | schedule, mixup | NICE | DONE |" in tracker.read_text(), 60, 0.2)
    assert changed_lines(by_hand, tracker.read_text()) == {
        "R008": "| R008 | schedule, mixup | NICE | DONE | Fixed the shard list. · exq: top1 70.1; 2 attempts |"}


def test_depends_on_is_seen_in_the_launch_order(exq: Exq, tmp_path: Path) -> None:
    root = project(tmp_path, "deps", "workflow-stage-word.md")
    exq.env["EXQ_SIMULATE_GPUS"] = "4x24GiB"  # room for everything at once: only dependencies hold runs back
    dry = plan(exq, root, "submit", "--dry-run")
    assert "run R004 depends on R001 (DONE), which is not compiled: counted as met" in dry.stderr
    plan(exq, root, "submit")
    run_until_synced(exq, root, jobs=5)
    at = order(root)
    assert at["end R002"] <= at["start R003"]  # R003 depends on R002, in the same milestone
    assert at["end R003"] <= at["start R004"]  # R004: `R001,R003`
    assert at["end R004"] <= at["start R005"] and at["end R002"] <= at["start R005"]  # R005: R004 and R002
    assert at["end R003"] <= at["start R006"]  # M2 after M1, milestone order on top
    assert "R001" not in exq.jobs()
    gate = next(line for line in (root / TICKET).read_text().splitlines()[::-1] if "Training and Validation" in line)
    assert gate.startswith("| Stage 5: Training and Validation | Pass | Run evidence closes the criteria | "
                           "second attempt · exq: submission 1: 2/2 must-run done")  # the person's evidence stays


def test_a_chinese_plan_and_tracker_run_from_the_plans_commands(exq: Exq, tmp_path: Path) -> None:
    root = project(tmp_path, "zh", "workflow-zh.md")
    tracker = root / "refine-logs" / "EXPERIMENT_TRACKER.md"
    before = tracker.read_text()
    plan(exq, root, "submit")
    run_until_synced(exq, root, jobs=5)
    assert set(exq.jobs()) == {"R002", "R003", "R004", "R005", "R006"}
    rows = changed_lines(before, tracker.read_text())
    assert set(rows) == {"R002", "R003", "R004", "R005", "R006"}  # R001 (DONE, a person's sentence) untouched
    assert rows["R005"] == "| R005 | M2 | 调度，种子 1 | MUST | DONE | exq: top1 70.1; 1 attempt |"  # noqa: RUF001
    results = (root / "refine-logs" / "EXPERIMENT_RESULTS.md").read_text()
    assert "### M2: 主实验 — PASSED" in results and "- [4/4] must-run experiments completed" in results
    assert "| 5 | 训练与验证 | Pass |" in (root / TICKET).read_text()


def test_a_workflow_without_a_training_stage_is_refused_and_never_written(exq: Exq, tmp_path: Path) -> None:
    root = project(tmp_path, "zh", "workflow-software.md")
    before = (root / TICKET).read_bytes()
    out = exq_plan(exq, root, "submit", "refine-logs/EXPERIMENT_PLAN.md")
    assert out.returncode == 1 and "this workflow has no Training & Validation stage" in out.stderr
    assert "Call-Stack Review" in out.stderr and "Traceback" not in out.stderr
    forced = exq_plan(exq, root, "submit", "refine-logs/EXPERIMENT_PLAN.md", "--force")
    assert forced.returncode == 1 and (root / TICKET).read_bytes() == before
    assert exq_plan(exq, root, "submit", "refine-logs/EXPERIMENT_PLAN.md", "--no-workflow").returncode == 0
    assert (root / TICKET).read_bytes() == before


@pytest.mark.parametrize("pair", ["sections", "deps", "zh", "mixed"])
def test_every_pair_compiles_and_validates(exq: Exq, tmp_path: Path, pair: str) -> None:
    root = project(tmp_path, pair, None)
    if pair == "mixed":  # its R003 has a command nowhere in the documents: the runs file's default gives it one
        runs = "workdir: ..\ndefault: {cmd: 'python3 train.py --run {run_id}'}\n"
        (root / "refine-logs" / "runs.yaml").write_text(runs)
    out = exq_plan(exq, root, "compile", "refine-logs/EXPERIMENT_PLAN.md", "-o", "plan.yaml")
    assert out.returncode == 0, out.stderr
    assert exq("validate", str(root / "plan.yaml"), check=False).returncode == 0


def test_crlf_tracker_with_a_bom_and_emoji_headings_keeps_every_byte_it_does_not_own(exq: Exq, tmp_path: Path) -> None:
    root = project(tmp_path, "mixed", None)
    (root / "refine-logs" / "runs.yaml").write_text("workdir: ..\nseeds: [0]\n"
                                                    "default: {cmd: 'python3 train.py --run {run_id}'}\n")
    tracker = root / "refine-logs" / "EXPERIMENT_TRACKER.md"
    before = tracker.read_bytes()
    submitted = plan(exq, root, "submit", "--no-workflow")
    assert "R003 (M1, TODO): to do (TODO); command from runs.yaml default" in submitted.stderr
    exq.start_daemon()
    exq.wait_finished(3, timeout=90)
    wait_until(lambda: tracker.read_bytes().count(b"| DONE | exq:") == 3, 60, 0.2)
    at = order(root)
    assert at["end R003"] <= at["start R004"] and at["end R003"] <= at["start R005"]
    after = tracker.read_bytes()
    assert after.startswith(b"\xef\xbb\xbf") and after.count(b"\r\n") == before.count(b"\r\n")
    assert b"\n" not in after.replace(b"\r\n", b"")
    rows = changed_lines(before.decode(), after.decode())
    assert rows == {"R003": "| R003 | DONE | exq: top1 70.1; 1 attempt |",
                    "R004": "| R004 | DONE | exq: top1 70.1; 1 attempt |",
                    "R005": "| R005 | NICE | DONE | exq: top1 70.1; 1 attempt |"}
    assert "up to date" in plan(exq, root, "sync", "--no-workflow").stdout and tracker.read_bytes() == after
