# ruff: noqa: RUF001, RUF002  (Chinese punctuation and dashes are what the documents hold)
"""The document readers on plans, trackers and workflow files as researchers write them (data/bridge/variants/).

The fixtures come in pairs (a plan and its tracker agree on milestones and runs); every loader result is
compared in full, edits byte for byte, and every error by its `file:line: message`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from exq.bridge import markdown as md
from exq.bridge.documents import (
    DocumentError,
    load_plan,
    load_tracker,
    load_workflow,
    set_gate,
    update_tracker,
)
from exq.bridge.status import read_status

VARIANTS = Path(__file__).parent / "data" / "bridge" / "variants"
PAIRS = ("zh", "sections", "deps", "mixed")
WORKFLOWS = ("workflow-annotated.md", "workflow-stage-word.md", "workflow-zh.md", "workflow-software.md")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def flip_endings(src: Path, dst: Path) -> Path:
    """A copy of `src` with CRLF endings and a BOM, or, when it has them, with neither."""
    data = src.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        dst.write_bytes(data[3:].replace(b"\r\n", b"\n"))
    else:
        dst.write_bytes(b"\xef\xbb\xbf" + data.replace(b"\n", b"\r\n"))
    return dst


def error_of(call: Callable[[], object]) -> str:
    with pytest.raises(DocumentError) as excinfo:
        call()
    assert len(excinfo.value.problems) == 1
    return str(excinfo.value.problems[0])


def milestones(path: Path) -> list[tuple[Any, ...]]:
    return [(m.id, m.title, m.goal, m.gate, m.priority, m.line) for m in load_plan(path).milestones]


def plan_runs(path: Path) -> list[tuple[Any, ...]]:
    return [(r.run_id, r.milestone, r.description, r.command, r.depends_on, r.line) for r in load_plan(path).runs]


def tracker_rows(path: Path) -> list[tuple[Any, ...]]:
    return [(r.run_id, r.milestone, r.status, r.notes, r.line) for r in load_tracker(path).rows]


# ---- the pairs ---------------------------------------------------------------------------------------


def test_zh_pair() -> None:
    plan = load_plan(VARIANTS / "zh" / "EXPERIMENT_PLAN.md")
    assert [(m.id, m.title, m.goal, m.runs, m.gate, m.line) for m in plan.milestones] == [
        ("M0", "冒烟测试", "流程跑通", "1 次快速运行，2 个 epoch", "损失下降？", 23),
        ("M1", "基线", "复现固定 dropout 与 ResNet-18", "Block 1 基线", "与论文差距在 1 个点以内？", 24),
        ("M2", "主实验", "调度，3 个种子", "Block 1, Block 2", "达到成功标准？", 25)]
    assert plan.milestones[0].priority is None
    assert plan_runs(VARIANTS / "zh" / "EXPERIMENT_PLAN.md") == [
        ("R001", "M0", "冒烟测试", "python3 train.py --run R001 --epochs 2", (), 31),
        ("R002", "M1", "固定 dropout 基线", "python3 train.py --run R002 --model vit-tiny --dropout 0.1", (), 32),
        ("R003", "M1", "ResNet-18 基线", "python3 train.py --run R003 --model resnet18", (), 33),
        ("R004", "M2", "调度，种子 0", "python3 train.py --run R004 --schedule --seed 0", (), 34),
        ("R005", "M2", "调度，种子 1", "python3 train.py --run R005 --schedule --seed 1", (), 35),
        ("R006", "M2", "400 个 epoch", "python3 train.py --run R006 --schedule --epochs 400", (), 36)]
    rows = load_tracker(VARIANTS / "zh" / "EXPERIMENT_TRACKER.md").rows
    assert [(r.run_id, r.milestone, r.purpose, r.priority, r.status, r.line) for r in rows] == [
        ("R001", "M0", "冒烟测试", "MUST", "DONE", 5), ("R002", "M1", "固定 dropout 基线", "MUST", "TODO", 6),
        ("R003", "M1", "ResNet-18 基线", "MUST", "TODO", 7), ("R004", "M2", "调度，种子 0", "MUST", "TODO", 8),
        ("R005", "M2", "调度，种子 1", "MUST", "", 9), ("R006", "M2", "400 个 epoch", "NICE", "", 10)]
    assert rows[0].notes == "损失从 4.6 降到 2.1，流程正常。"
    assert rows[0].cells["状态"] == "DONE" and rows[0].command is None


def test_sections_pair() -> None:
    plan_path = VARIANTS / "sections" / "EXPERIMENT_PLAN.md"
    assert milestones(plan_path) == [
        ("M0", "Sanity", "The pipeline trains end to end on one GPU.", "Loss decreases within 2 epochs?",
         "MUST-RUN", 18),
        ("M1", "Baselines", "Reproduce fixed dropout and ResNet-18.", "Within 1 point of the published numbers?",
         "MUST-RUN", 30),
        ("M2", "Main", "The schedule beats fixed dropout.", "Meets the success criterion on 3 seeds?", "MUST-RUN", 43)]
    assert plan_runs(plan_path) == [
        ("R001", "M0", "2-epoch smoke run", "python3 train.py --run R001 --epochs 2", (), 26),
        ("R002", "M1", "ViT-Tiny, fixed dropout", "python3 train.py --run R002 --model vit-tiny --dropout 0.1", (), 38),
        ("R003", "M1", "ResNet-18", "python3 train.py --run R003 --model resnet18", (), 39),  # ``double`` marks
        ("R004", "M2", "schedule, seed 0", "python3 train.py --run R004 --schedule --seed 0", (), 51),
        ("R005", "M2", "schedule, seed 1", "python3 train.py --run R005 --schedule --seed 1", (), 52),
        ("R006", "M2", "schedule, seed 2", "python3 train.py --run R006 --schedule --seed 2", (), 53),
        ("R007", "M2", "schedule, 400 epochs", None, (), 54),  # `—`
        ("R008", "M2", "schedule, mixup", "python3 train.py --run R008 --schedule --mixup 0.2", (), 55)]
    plan = load_plan(plan_path)
    assert plan.blocks[0].priority == "MUST-RUN" and plan.problem is not None
    assert plan.runs[0].cells["Success Criterion"] == "loss falls below 3.0"
    rows = load_tracker(VARIANTS / "sections" / "EXPERIMENT_TRACKER.md").rows
    assert [(r.run_id, r.milestone, r.purpose, r.priority, r.status, r.line) for r in rows] == [
        ("R001", "M0", "smoke run", "MUST", "DONE", 15),
        ("R002", "M1", "fixed dropout", "MUST", "**GATE FAILED**", 23),
        ("R003", "M1", "ResNet-18", "MUST", "TODO/REUSE", 24),
        ("R004", "M2", "schedule, seed 0", "MUST", "🟡 RUNNING", 30),
        ("R005", "M2", "schedule, seed 1", "MUST", "⏳ QUEUED", 31),
        ("R006", "M2", "schedule, seed 2", "MUST", "**PAUSED**", 32),
        ("R007", "M2", "schedule, 400 epochs", "NICE", "CANCELLED", 33),
        ("R008", "M2", "schedule, mixup", "NICE", "", 34)]
    assert rows[1].notes == ("Top-1 reached 49.8, under the 52 gate. The warm-up was too short for this recipe; "
                             "see `runs/R002/metrics.json` before rerunning.")
    assert rows[2].notes == "reuse `ckpt/resnet18.pt` if it is still there"
    assert [str(read_status(r.status)) for r in rows] == [
        "DONE", "GATE FAILED", "TODO/REUSE", "RUNNING", "QUEUED", "PAUSED", "CANCELLED", "no status"]


def test_deps_pair() -> None:
    plan_path = VARIANTS / "deps" / "EXPERIMENT_PLAN.md"
    assert milestones(plan_path) == [
        ("M0", "Sanity", "", "Loss decreases?", "MUST-RUN", 9),  # `**Gate**:` is the Decision Gate
        ("M1", "Baselines", "Baselines without the policy.", "", "MUST-RUN", 18),
        ("M2", "Transfer", "The searched policy helps on CIFAR-100.", "+1 top-1 over R003?", "NICE-TO-HAVE", 28)]
    assert plan_runs(plan_path) == [
        ("R001", "M0", "smoke run, 2 epochs", None, (), 16),
        ("R002", "M1", "search the policy on CIFAR-10", None, (), 25),
        ("R003", "M1", "ResNet-18 without the policy", None, ("R002",), 26),
        ("R004", "M2", "ResNet-18 with the policy", None, ("R001", "R003"), 36),
        ("R005", "M2", "ViT-Tiny with the policy", None, ("R004", "R002"), 37),
        ("R006", "M2", "policy at double strength", None, (), 38)]
    assert load_plan(plan_path).runs[3].cells["Gate"] == "+1 top-1"
    rows = load_tracker(VARIANTS / "deps" / "EXPERIMENT_TRACKER.md").rows
    policy = "--policy runs/R002/policy.json"
    assert [(r.run_id, r.milestone, r.purpose, r.command, r.status, r.line) for r in rows] == [
        ("R001", "M0", "sanity", "python3 train.py --run R001 --epochs 2", "DONE", 5),
        ("R002", "M1", "policy search", "python3 search.py --run R002 --dataset cifar10", "TODO", 6),
        ("R003", "M1", "baseline", "python3 train.py --run R003 --model resnet18", "TODO", 7),
        ("R004", "M2", "transfer", f"python3 train.py --run R004 --model resnet18 {policy}", "TODO", 8),
        ("R005", "M2", "transfer", f"python3 train.py --run R005 --model vit-tiny {policy}", "TODO", 9),
        ("R006", "M2", "ablation", f"python3 train.py --run R006 --model resnet18 {policy} --strength 2", "", 10)]
    assert rows[0].cells["Command"] == "`python3 train.py --run R001 --epochs 2`"  # cells stay as written


def test_mixed_pair() -> None:
    """Emoji headings, `## Run Order & Milestones`, `### M0 — Title`, `### M1 - Title`, `### Milestone M2: Title`,
    a fenced example, a nested heading, aliased columns (ID, Cmd, Deps); the tracker is CRLF with a BOM."""
    plan_path = VARIANTS / "mixed" / "EXPERIMENT_PLAN.md"
    assert milestones(plan_path) == [
        ("M0", "Sanity", "The pipeline runs with 20% label noise.", "", "MUST-RUN", 16),
        ("M1", "Baselines", "", "Clean-label accuracy within 1 point of the paper?", "MUST-RUN", 24),
        ("M2", "Main", "Noise-aware loss closes the gap.", "", "NICE-TO-HAVE", 41)]
    assert plan_runs(plan_path) == [
        ("R001", "M0", "smoke run", "python3 train.py --run R001 --noise 0.2 --epochs 2", (), 22),
        ("R002", "M1", "ResNet-18, clean labels", "python3 train.py --run R002 --noise 0", ("R001",), 30),
        ("R003", "M1", "ResNet-18, 20% noise", None, (), 31),
        ("R004", "M1", "ResNet-50, 20% noise", "python3 train.py --run R004 --model resnet50 --noise 0.2", ("R003",),
         39),
        ("R005", "M2", "noise-aware loss", "python3 train.py --run R005 --loss gce --noise 0.2", ("R002", "R003"), 47)]
    tracker = VARIANTS / "mixed" / "EXPERIMENT_TRACKER.md"
    assert tracker.read_bytes().startswith(b"\xef\xbb\xbf# ") and b"\r\n" in tracker.read_bytes()
    assert tracker_rows(tracker) == [
        ("R001", "M0", "DONE", "smoke run ok", 12), ("R002", "M1", "DONE", "acc 94.1", 20),
        ("R003", "M1", "TODO", "", 21), ("R004", "M1", "TODO", "", 22), ("R005", "M2", "", "", 30)]
    assert [r.priority for r in load_tracker(tracker).rows] == ["", "", "", "", "NICE"]


@pytest.mark.parametrize("pair", PAIRS)
def test_pairs_agree(pair: str) -> None:
    """What the end-to-end tests rely on: the plan's milestones and runs are the tracker's."""
    plan = load_plan(VARIANTS / pair / "EXPERIMENT_PLAN.md")
    rows = load_tracker(VARIANTS / pair / "EXPERIMENT_TRACKER.md").rows
    assert [(r.run_id, r.milestone) for r in plan.runs] == [(r.run_id, r.milestone) for r in rows]
    assert [m.id for m in plan.milestones] == ["M0", "M1", "M2"]


@pytest.mark.parametrize("name", [f"{pair}/{doc}" for pair in PAIRS for doc in ("EXPERIMENT_PLAN.md",
                                                                                  "EXPERIMENT_TRACKER.md")]
                         + list(WORKFLOWS))
def test_line_endings_and_bom_read_the_same(tmp_path: Path, name: str) -> None:
    load: Callable[[Path], Any] = (load_plan if "PLAN" in name else load_tracker if "TRACKER" in name
                                   else load_workflow)
    flipped = flip_endings(VARIANTS / name, tmp_path / "doc.md")
    assert load(flipped) == dataclasses.replace(load(VARIANTS / name), path=str(flipped))


# ---- plan and tracker variants in small -----------------------------------------------------------------


CELLS = [  # (Command cell, Depends On cell) -> (command, depends_on)
    ("`python3 train.py --run R001 --x 1`", "—", "python3 train.py --run R001 --x 1", ()),
    ("``python3 train.py --tag `a` ``", "–", "python3 train.py --tag `a`", ()),
    ("python3 train.py --run R003", "-", "python3 train.py --run R003", ()),
    ("—", "none", None, ()),
    ("", "N/A", None, ()),
    ("`x`", "`R001`, `R003`", "x", ("R001", "R003")),
    ("`x`", "R001 and R003", "x", ("R001", "R003")),
    ("`x`", "R001; R002 R003,R001", "x", ("R001", "R002", "R003")),
]


def test_command_and_depends_on_cells_read_alike_in_plan_and_tracker(tmp_path: Path) -> None:
    body = "".join(f"| R{i:03} | M0 | {cmd} | {deps} | TODO |\n"
                   for i, (cmd, deps, _, _) in enumerate(CELLS))
    table = "| Run | Milestone | Cmd | Dependencies | Status |\n|---|---|---|---|---|\n" + body
    plan = load_plan(write(tmp_path, "p.md", "## Run Order\n\n### M0: Sanity\n\n" + table))
    tracker = load_tracker(write(tmp_path, "t.md", table))
    expected = [(f"R{i:03}", command, depends) for i, (_, _, command, depends) in enumerate(CELLS)]
    assert [(r.run_id, r.command, r.depends_on) for r in plan.runs] == expected
    assert [(r.run_id, r.command, r.depends_on) for r in tracker.rows] == expected


def test_annotated_and_aliased_headers(tmp_path: Path) -> None:
    tracker = write(tmp_path, "t.md", (
        "| 实验编号 | Milestone (M0–M2): | 描述 | Status (`TODO` / `DONE`) | 备注 |\n|---|---|---|---|---|\n"
        "| R001 | M0 | smoke | TODO | |\n"))
    (row,) = load_tracker(tracker).rows
    assert (row.run_id, row.milestone, row.purpose, row.status, row.notes) == ("R001", "M0", "smoke", "TODO", "")
    assert update_tracker(tracker, {"R001": {"Status": "DONE", "Notes": "ok"}}) is True
    assert tracker.read_text(encoding="utf-8").endswith("| R001 | M0 | smoke | DONE | ok |\n")
    assert md.set_cells("| Cmd: |\n|--|\n| a |\n", 1, 3, {"Command": "b"}) == "| Cmd: |\n|--|\n| b |\n"


def test_run_order_table_with_a_run_column_and_milestone_headings(tmp_path: Path) -> None:
    """A Run Order table listing runs names each milestone once; `### M1` sections below give priorities."""
    plan = load_plan(write(tmp_path, "p.md", (
        "## Run Order\n\n| Milestone | Run | Goal | Runs | Decision Gate | Command |\n|---|---|---|---|---|---|\n"
        "| M0: Sanity | R001 | works | 1 run | loss falls? | `python3 train.py --run R001` |\n"
        "| M1: Main | R002 | better | 2 runs | +1? | `python3 train.py --run R002` |\n"
        "| M1: Main | R003 | better | 2 runs | +1? | |\n\n"
        "### M1: Main\n\n**Priority**: nice-to-have\n")))
    assert [(m.id, m.title, m.priority, m.line) for m in plan.milestones] == [
        ("M0", "Sanity", None, 5), ("M1", "Main", "NICE-TO-HAVE", 6)]
    assert [(r.run_id, r.milestone, r.description, r.command) for r in plan.runs] == [
        ("R001", "M0", "works", "python3 train.py --run R001"), ("R002", "M1", "better", "python3 train.py --run R002"),
        ("R003", "M1", "better", None)]


def test_tracker_milestone_headings(tmp_path: Path) -> None:
    """The innermost heading naming a milestone counts; a range like `M1–M2` names none; a Milestone cell wins."""
    table = "| Run | Status |\n|---|---|\n"
    tracker = write(tmp_path, "t.md", (
        f"# Tracker\n## M0: Sanity\n### Notes\n{table}| R001 | DONE |\n"
        f"## Milestone M2\n### M1 — Baselines\n{table}| R002 | |\n"
        f"## 🚀 M3\n| Run | Milestone | Status |\n|---|---|---|\n| R003 | M4 | |\n| R004 | | |\n"))
    assert [(r.run_id, r.milestone) for r in load_tracker(tracker).rows] == [
        ("R001", "M0"), ("R002", "M1"), ("R003", "M4"), ("R004", "M3")]
    ranged = write(tmp_path, "r.md", f"## M1–M2\n\n{table}| R001 | |\n")
    assert error_of(lambda: load_tracker(ranged)) == (
        f"{ranged}:5: cannot tell the milestone of run R001: no Milestone cell, and no heading above names one "
        "(like '## M0: Sanity')")


# ---- workflow variants -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "current", "permission", "training", "gate5", "gate4"), [
    ("workflow-annotated.md", 5, "Locked", 5, ("Training & Validation", "Not Started", "", 19), "Pass"),
    ("workflow-stage-word.md", 5, "Locked", 5, ("Training and Validation", "In Progress", "second attempt", 18),
     "Pass"),
    ("workflow-zh.md", 5, "Locked", 5, ("训练与验证", "Not Started", "", 19), "Pass"),
    ("workflow-software.md", 5, "Locked", None, ("Call-Stack Review", "In Progress", "", 19), "Pass"),
])
def test_workflows(name: str, current: int, permission: str, training: int | None, gate5: tuple[Any, ...],
                   gate4: str) -> None:
    state = load_workflow(VARIANTS / name)
    assert (state.current_stage, state.code_edit_permission, state.training_stage) == (current, permission, training)
    gate, before = state.gate(5), state.gate(4)
    assert gate is not None and (gate.name, gate.status, gate.evidence, gate.line) == gate5
    assert before is not None and before.status == gate4


def test_repeated_stage_rows_are_kept_in_order() -> None:
    state = load_workflow(VARIANTS / "workflow-stage-word.md")
    assert [(g.stage, g.status, g.line) for g in state.gates] == [
        (0, "Pass", 14), (4, "Pass", 15), (5, "Fail", 16), (4, "Pass", 17), (5, "In Progress", 18),
        (6, "Not Started", 19)]
    assert state.describe() == "stages 0 Bootstrap, 4 Implementation, 5 Training and Validation, 6 Code Review"
    software = load_workflow(VARIANTS / "workflow-software.md")
    assert "5 Call-Stack Review" in software.describe()


GATES = "## Stage Gates\n| Stage | Name | Gate Status |\n|---|---|---|\n"


@pytest.mark.parametrize(("stage_cell", "name_cell", "training"), [
    ("5 Training & Validation", "", 5), ("`5`", "Training and Validation", 5),
    ("Stage 5: Training/Validation", "", 5), ("**5 training / validation**", "", 5),
    ("5", "训练与验证", 5), ("5", "训练和验证", 5), ("5 (TRAINING & VALIDATION)", "", 5),
    ("5 Training & Validation (evidence gate)", "", 5),
    ("5 Call-Stack Review", "", None), ("5", "Training", None), ("5 Validation & Training", "", None),
])
def test_training_stage_by_name(tmp_path: Path, stage_cell: str, name_cell: str, training: int | None) -> None:
    path = write(tmp_path, "w.md", GATES + f"| 4 Implementation | | Pass |\n| {stage_cell} | {name_cell} | |\n")
    state = load_workflow(path)
    assert state.training_stage == training and [g.stage for g in state.gates] == [4, 5]


@pytest.mark.parametrize("bullet", [
    "- Current Stage: 5", "- Current Stage: `5`", "- Current Stage: Stage 5", "- Current Stage: **5**",
    "- Current Stage: 5 (Training & Validation)", "- **Current Stage**: 5", "* **Current Stage:** `Stage 5`"])
def test_current_stage_forms(tmp_path: Path, bullet: str) -> None:
    path = write(tmp_path, "w.md", f"## Current Snapshot\n{bullet}\n" + GATES + "| 5 | | |\n")
    assert load_workflow(path).current_stage == 5


# ---- edits -------------------------------------------------------------------------------------------


def test_update_a_per_milestone_tracker_changes_only_the_named_cells(tmp_path: Path) -> None:
    path = copy(VARIANTS / "sections" / "EXPERIMENT_TRACKER.md", tmp_path / "t.md")
    original = path.read_text(encoding="utf-8")
    assert update_tracker(path, {"R002": {"Status": "QUEUED"}, "R005": {"Status": "DONE", "Notes": "top-1 54.0"}})
    expected = original.replace("| MUST | **GATE FAILED** | Top-1", "| MUST | QUEUED | Top-1").replace(
        "| R005 | schedule, seed 1 | MUST | ⏳ QUEUED | |", "| R005 | schedule, seed 1 | MUST | DONE | top-1 54.0 |")
    assert expected.count("QUEUED") == 1 and path.read_text(encoding="utf-8") == expected
    assert [(r.run_id, r.milestone, r.status) for r in load_tracker(path).rows][1:5] == [
        ("R002", "M1", "QUEUED"), ("R003", "M1", "TODO/REUSE"), ("R004", "M2", "🟡 RUNNING"), ("R005", "M2", "DONE")]


def test_update_a_crlf_bom_tracker_under_headings(tmp_path: Path) -> None:
    path = copy(VARIANTS / "mixed" / "EXPERIMENT_TRACKER.md", tmp_path / "t.md")
    original = path.read_bytes()
    assert update_tracker(path, {"R003": {"Status": "RUNNING"}, "R005": {"Notes": "later"}}) is True
    expected = original.replace(b"| R003 | TODO | |\r\n", b"| R003 | RUNNING | |\r\n").replace(
        b"| R005 | NICE | | |\r\n", b"| R005 | NICE | | later |\r\n")
    assert expected != original and path.read_bytes() == expected


def test_update_an_aliased_status_column(tmp_path: Path) -> None:
    path = copy(VARIANTS / "zh" / "EXPERIMENT_TRACKER.md", tmp_path / "t.md")
    original = path.read_text(encoding="utf-8")
    assert update_tracker(path, {"R002": {"Status": "🟡 RUNNING"}}) is True
    assert path.read_text(encoding="utf-8") == original.replace(
        "| R002 | M1 | 固定 dropout 基线 | MUST | TODO | |", "| R002 | M1 | 固定 dropout 基线 | MUST | 🟡 RUNNING | |")


def test_set_gate_keeps_backticks(tmp_path: Path) -> None:
    path = copy(VARIANTS / "workflow-annotated.md", tmp_path / "w.md")
    original = path.read_text(encoding="utf-8")
    assert set_gate(path, 5, "in progress", evidence="exq submission 1 (exq-plan.yaml)", updated="2026-05-03")
    row = "| `5 Training & Validation` | `{}` | Run evidence closes the success criteria | {}|"
    expected = original.replace(row.format("Not Started", ""),
                                row.format("In Progress", "exq submission 1 (exq-plan.yaml) ")).replace(
        "- Last Updated: 2026-05-02", "- Last Updated: 2026-05-03")
    assert expected != original and path.read_text(encoding="utf-8") == expected
    assert set_gate(path, 5, "Pass", updated="2026-05-04") is True
    assert row.format("Pass", "exq submission 1 (exq-plan.yaml) ") in path.read_text(encoding="utf-8")
    gate = load_workflow(path).gate(5)
    assert gate is not None and gate.status == "Pass"


def test_set_gate_edits_the_last_row_of_a_repeated_stage(tmp_path: Path) -> None:
    path = copy(VARIANTS / "workflow-stage-word.md", tmp_path / "w.md")
    original = path.read_text(encoding="utf-8")
    assert set_gate(path, 5, "Pass", evidence="R001-R005 DONE", updated="2026-05-05") is True
    assert path.read_text(encoding="utf-8") == original.replace(
        "| In Progress | Run evidence closes the criteria | second attempt |",
        "| Pass | Run evidence closes the criteria | R001-R005 DONE |").replace("2026-05-04", "2026-05-05")
    assert [g.status for g in load_workflow(path).gates if g.stage == 5] == ["Fail", "Pass"]


# ---- errors ------------------------------------------------------------------------------------------


SECTION = "## Run Order and Milestones\n\n### M0: Sanity\n\n| Run | Description |\n|---|---|\n"
ERRORS = [
    (load_plan, SECTION + "| R001 | a |\n\n### M1: Main\n\n| Run | Description |\n|---|---|\n| R001 | b |\n",
     "p.md:13: run R001 listed twice (first at line 7)"),
    (load_plan, SECTION + "| R001 | a |\n\n### M0 — again\n", "p.md:9: milestone M0 listed twice (first at line 3)"),
    (load_plan, SECTION + "| | a |\n", "p.md:7: empty Run ID cell"),
    (load_plan, "## Run Order\n\n| Milestone | Goal | Runs | Decision Gate |\n|---|---|---|---|\n| M0 | a | b | c |\n\n"
     "| Run | Description |\n|---|---|\n| R001 | a |\n",
     "p.md:9: cannot tell the milestone of run R001: no Milestone cell, and no heading above names one "
     "(like '## M0: Sanity')"),
    (load_tracker, "# Tracker\n\n## M0: Sanity\n\n| Run | Status |\n|---|---|\n| R001 | |\n\n## M1: Main\n\n"
     "| Run ID | Status |\n|---|---|\n| R001 | DONE |\n", "p.md:13: run R001 listed twice (first at line 7)"),
    (load_tracker, "# Tracker\n\n| Milestone | Done |\n|---|---|\n| M0 | 1 |\n\n| Run | GPU-hours |\n|---|---|\n",
     "p.md:7: no run table with columns 'Run ID' (or 'Run', 'ID', '实验编号', '运行编号'), 'Status' (or '状态'); "
     "this one lacks 'Status'"),
    (load_tracker, "# Tracker\n\n| Milestone | Status |\n|---|---|\n| M0 | done |\n",
     "p.md:1: no run table with columns 'Run ID' (or 'Run', 'ID', '实验编号', '运行编号'), 'Status' (or '状态')"),
    (load_tracker, "## Notes\n\n| Run | Status |\n|---|---|\n| R001 | TODO |\n",
     "p.md:5: cannot tell the milestone of run R001: no Milestone cell, and no heading above names one "
     "(like '## M0: Sanity')"),
    (load_workflow, "## Stage Gates\n| Stage (number) | Gate Status (`Pass` / `Fail`) |\n|--|--|\n"
     "| `Review` | Pass |\n",
     "p.md:4: Stage cell does not start with a stage number: '`Review`'"),
    (load_workflow, "## Current Snapshot\n- **Current Stage**: `review`\n"
     "## Stage Gates\n| Stage | Gate Status |\n|--|--|\n",
     "p.md:2: Current Stage is not a stage number: '`review`'"),
]


@pytest.mark.parametrize(("load", "text", "message"), ERRORS)
def test_errors_name_file_line_and_what_was_looked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        load: Callable[[str], Any], text: str, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "p.md", text)
    assert error_of(lambda: load("p.md")) == message


def test_editors_find_rows_in_every_table_and_refuse_unknown_ones(tmp_path: Path) -> None:
    path = copy(VARIANTS / "sections" / "EXPERIMENT_TRACKER.md", tmp_path / "t.md")
    before = path.read_bytes()
    assert error_of(lambda: update_tracker(path, {"R008": {"Status": "DONE"}, "R009": {"Status": "DONE"}})) == (
        f"{path}:13: no row with Run ID 'R009'")
    assert error_of(lambda: update_tracker(path, {"R004": {"Command": "x"}})) == (
        f"{path}:28: table lacks column(s) 'Command' (run R004)")
    workflow = copy(VARIANTS / "workflow-software.md", tmp_path / "w.md")
    assert error_of(lambda: set_gate(workflow, 9, "Pass")) == f"{workflow}:12: no gate row for stage 9"
    assert path.read_bytes() == before
