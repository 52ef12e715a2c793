"""The research-document reader and editors: realistic and messy files, every error, byte-exact edits."""

from __future__ import annotations

import dataclasses
import os
import stat
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

DATA = Path(__file__).parent / "data" / "bridge"
PLAN_HEAD = "| Milestone | Goal | Runs | Decision Gate |\n|---|---|---|---|\n"


def crlf_bom(src: Path, dst: Path) -> Path:
    """A copy of `src` with Windows line endings and a UTF-8 BOM."""
    dst.write_bytes(b"\xef\xbb\xbf" + src.read_bytes().replace(b"\n", b"\r\n"))
    return dst


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(excinfo: pytest.ExceptionInfo[DocumentError]) -> str:
    assert len(excinfo.value.problems) == 1
    return str(excinfo.value.problems[0])


def test_example_plan() -> None:
    plan = load_plan(DATA / "EXPERIMENT_PLAN.md")
    assert plan.problem == "Small vision transformers overfit on CIFAR-100 when trained from scratch."
    assert [(m.id, m.title, m.line) for m in plan.milestones] == [
        ("M0", "Sanity", 39), ("M1", "Baselines", 40), ("M2", "Main", 41), ("M3", "Ablation", 42)]
    m0 = plan.milestones[0]
    assert (m0.goal, m0.runs, m0.gate) == ("Pipeline works", "1 quick run, 2 epochs", "Loss decreases?")
    assert [(b.number, b.title, b.priority, b.line) for b in plan.blocks] == [
        (1, "Main Result", "MUST-RUN", 16), (2, "Ablation", "MUST-RUN", 25), (3, "Longer training", "NICE-TO-HAVE", 31)]
    assert plan.blocks[0].fields["Dataset / split / task"] == "CIFAR-100, standard train/test"


def test_messy_plan() -> None:
    plan = load_plan(DATA / "plan_messy.md")
    assert plan.problem == "小型 ViT 在 CIFAR-100 上从零训练时过拟合 (overfits | badly)"
    assert [(m.id, m.title, m.goal, m.runs, m.gate, m.line) for m in plan.milestones] == [
        ("M0", "", "冒烟测试", "1 quick run | 2 epochs", "Loss decreases?", 44),
        ("M1", "Baselines", "Reproduce baselines", "Block 1 baselines", "Within 1 point?", 45),
        ("M2", "主实验", "Schedule, 3 seeds", "Block 1", "Meets criterion?", 46),
    ]
    assert [(b.number, b.title, b.priority) for b in plan.blocks] == [
        (1, "主结果 Main Result", "MUST-RUN"), (2, "Ablation", None), (3, "Longer training", "NICE-TO-HAVE")]
    assert plan.blocks[0].fields == {"Claim tested": "C1", "Priority": "must-run", "Setup details": "AdamW, lr 1e-3"}


def test_example_tracker() -> None:
    rows = load_tracker(DATA / "EXPERIMENT_TRACKER.md").rows
    assert [r.run_id for r in rows] == [f"R00{i}" for i in range(1, 8)]
    r1, r7 = rows[0], rows[6]
    assert (r1.milestone, r1.purpose, r1.system, r1.priority, r1.status, r1.notes, r1.line) == (
        "M0", "sanity", "vit-tiny, schedule, 2 epochs", "MUST", "TODO", "", 5)
    assert r7.priority == "NICE"
    assert r1.cells["Split"] == "train/test"


def test_messy_tracker() -> None:
    rows = load_tracker(DATA / "tracker_messy.md").rows
    assert [(r.run_id, r.milestone, r.status, r.priority, r.system, r.purpose, r.notes, r.line) for r in rows] == [
        ("R001", "M0", "done", "MUST", "vit-tiny | schedule", "", "", 13),  # Status as written
        ("R002", "M1", "TODO", "NICE", "resnet-18", "", "", 21),
        ("R003", "M2", "running", "", "", "", "", 22),
    ]
    assert rows[0].cells["备注 Comment"] == "损失下降 ✅"
    assert rows[2].cells == {"Run ID": "R003", "Milestone": "M2", "Status": "running", "Priority": "",
                             "Seed": "2", "System/Variant": "", "备注 Comment": ""}


def test_workflows() -> None:
    state = load_workflow(DATA / "workflow-state.md")
    assert (state.current_stage, state.code_edit_permission, len(state.gates)) == (5, "Locked", 9)
    gate = state.gate(5)
    assert gate is not None and (gate.name, gate.status, gate.evidence, gate.line) == (
        "Training & Validation", "Not Started", "", 23)
    messy = load_workflow(DATA / "workflow_messy.md")
    assert (messy.current_stage, messy.code_edit_permission) == (5, "Locked")
    assert [(g.stage, g.name, g.status, g.evidence) for g in messy.gates] == [
        (0, "Bootstrap", "Pass", "requirements.md"), (4, "Implementation", "Pass", "implementation.md"),
        (5, "Training & Validation", "In Progress", ""), (6, "代码评审", "Not Started", "")]


def test_optional_parts_missing(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path, "p.md", PLAN_HEAD + "| M0 | g | r | q |\n"))
    assert (plan.problem, plan.blocks, [m.id for m in plan.milestones]) == (None, [], ["M0"])
    state = load_workflow(write(tmp_path, "w.md", "## Stage Gates\n| Stage | Gate Status |\n|--|--|\n| 5 | Pass |\n"))
    assert (state.current_stage, state.code_edit_permission) == (None, None)
    assert [(g.stage, g.name, g.status, g.evidence) for g in state.gates] == [(5, "", "Pass", "")]


@pytest.mark.parametrize(("name", "load"), [
    ("EXPERIMENT_PLAN.md", load_plan), ("plan_messy.md", load_plan), ("EXPERIMENT_TRACKER.md", load_tracker),
    ("tracker_messy.md", load_tracker), ("workflow-state.md", load_workflow), ("workflow_messy.md", load_workflow)])
def test_crlf_and_bom_read_the_same(tmp_path: Path, name: str, load: Callable[[Path], Any]) -> None:
    windows = load(crlf_bom(DATA / name, tmp_path / name))
    assert windows == dataclasses.replace(load(DATA / name), path=str(tmp_path / name))


def test_markdown_reader() -> None:
    text = "\ufeff| a | b |\r\n|---|:--:|\r\n| 1 \\| 2 | x | extra\r\nno pipe\r\n## Title ##\r\n```\r\n# no\r\n```\r\n"
    doc = md.parse(text)
    assert doc.headings == (md.Heading(2, "Title", 5),)
    (table,) = doc.tables
    assert (table.line, table.headers, table.end_line) == (1, ("a", "b"), 3)
    assert table.rows == (md.TableRow(3, ("1 | 2", "x", "extra")),)
    assert md.split_row("a|b") == ["a", "b"] and md.split_row("| a |  |") == ["a", ""]
    assert md.normalize("  **Decision   Gate** ") == "decision gate"
    assert md.parse("| a | b |\n| 1 | 2 |\n").tables == ()  # no alignment row: not a table


# ---- errors --------------------------------------------------------------------------------------

RUN_ORDER_FORMS = (
    "looked for a table with columns 'Milestone', 'Goal', 'Runs', 'Decision Gate' (under '## Run Order'); "
    "the same with Chinese headers '里程碑', '目标', '运行内容', '决策关卡' (under '## 运行顺序'); "
    "or milestone headings like '### M0: Sanity', each with its own run table (under '## Run Order and Milestones')")

ERRORS = [
    (load_plan, "# Plan\n\nprose\n", f"p.md:1: no Run Order found; {RUN_ORDER_FORMS}"),
    (load_plan, "# Plan\n\n## Run Order\n\nTBD\n",
     f"p.md:3: no Run Order found under '## Run Order'; {RUN_ORDER_FORMS}"),
    (load_plan, "## Run Order\n\n| Milestone | Goal | Runs |\n|--|--|--|\n",
     "p.md:3: table lacks column(s) 'Decision Gate'"),
    (load_plan, PLAN_HEAD + "| M0 | a | b | c |\n| : x | a | b | c |\n", "p.md:4: empty Milestone cell"),
    (load_plan, PLAN_HEAD + "| M0 | a | b | c |\n| M0: again | a | b | c |\n",
     "p.md:4: milestone M0 listed twice (first at line 3)"),
    (load_tracker, "| Run ID | Status |\n|--|--|\n| R1 | TODO |\n",
     "p.md:3: cannot tell the milestone of run R1: no Milestone cell, and no heading above names one "
     "(like '## M0: Sanity')"),
    (load_tracker, "| Run ID | Milestone | Status |\n|--|--|--|\n| | M0 | TODO |\n", "p.md:3: empty Run ID cell"),
    (load_tracker, "| Run ID | Milestone | Status |\n|--|--|--|\n| R1 | M0 | TODO |\n| R1 | M1 | TODO |\n",
     "p.md:4: run R1 listed twice (first at line 3)"),
    (load_workflow, "# W\n## Stage Gates\nnone yet\n## Log\n| Stage | x |\n|-|-|\n",
     "p.md:5: table lacks column(s) 'Gate Status'"),
    (load_workflow, "# W\n\n## Stage Gates\n\nnone yet\n",
     "p.md:3: no table under '## Stage Gates' with columns 'Stage', 'Gate Status'"),
    (load_workflow, "## Stage Gates\n| Stage | Gate Status |\n|--|--|\n| Review | Pass |\n",
     "p.md:4: Stage cell does not start with a stage number: 'Review'"),
    (load_workflow, "## Current Snapshot\n- Current Stage: five\n## Stage Gates\n| Stage | Gate Status |\n|--|--|\n",
     "p.md:2: Current Stage is not a stage number: 'five'"),
]


@pytest.mark.parametrize(("load", "text", "message"), ERRORS)
def test_document_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, load: Callable[[str], Any], text: str,
                         message: str) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "p.md", text)
    with pytest.raises(DocumentError) as excinfo:
        load("p.md")
    assert error_of(excinfo) == message


def test_tracker_error_names_the_given_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "refine-logs").mkdir()
    write(tmp_path, "refine-logs/EXPERIMENT_TRACKER.md", "# Tracker\n\n| Run | Notes |\n|--|--|\n")
    with pytest.raises(DocumentError) as excinfo:
        load_tracker("refine-logs/EXPERIMENT_TRACKER.md")
    assert error_of(excinfo) == (
        "refine-logs/EXPERIMENT_TRACKER.md:3: no run table with columns 'Run ID' (or 'Run', 'ID', '实验编号', "
        "'运行编号'), 'Status' (or '状态'); this one lacks 'Status'")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DocumentError) as excinfo:
        load_plan(tmp_path / "nope.md")
    assert error_of(excinfo) == f"{tmp_path / 'nope.md'}: cannot read: No such file or directory"
    (tmp_path / "latin.md").write_bytes(b"# ok\n\ncaf\xe9\n")
    with pytest.raises(DocumentError) as excinfo:
        load_tracker(tmp_path / "latin.md")
    assert error_of(excinfo) == f"{tmp_path / 'latin.md'}:3: not UTF-8 text"


def test_editor_errors_write_nothing(tmp_path: Path) -> None:
    tracker = crlf_bom(DATA / "EXPERIMENT_TRACKER.md", tmp_path / "t.md")
    workflow = write(tmp_path, "w.md", "## Stage Gates\n| Stage | Gate Status |\n|--|--|\n| 5 | Pass |\n")
    before = tracker.read_bytes(), workflow.read_bytes()
    cases: list[tuple[Callable[[], bool], str]] = [
        (lambda: update_tracker(tracker, {"R001": {"Status": "DONE"}, "R999": {"Status": "DONE"}}),
         f"{tracker}:3: no row with Run ID 'R999'"),
        (lambda: update_tracker(tracker, {"R001": {"Status": "DONE", "Seed": "1"}}),
         f"{tracker}:3: table lacks column(s) 'Seed' (run R001)"),
        (lambda: set_gate(workflow, 6, "Pass"), f"{workflow}:2: no gate row for stage 6"),
        (lambda: set_gate(workflow, 5, "Pass", evidence="x"), f"{workflow}:2: table lacks column 'Evidence'"),
    ]
    for call, message in cases:
        with pytest.raises(DocumentError) as excinfo:
            call()
        assert error_of(excinfo) == message
    with pytest.raises(ValueError, match="not one of"):
        set_gate(workflow, 5, "Passed")
    assert (tracker.read_bytes(), workflow.read_bytes()) == before


# ---- editing -------------------------------------------------------------------------------------

R001 = "| R001 | M0 | sanity | vit-tiny, schedule, 2 epochs | train/test | loss | MUST | TODO | |"
R001_DONE = R001.replace("| TODO | |", "| DONE | loss 4.6 → 2.1 \\| ok |")


@pytest.mark.parametrize("windows", [False, True])
def test_update_tracker_changes_only_the_cells(tmp_path: Path, windows: bool) -> None:
    src = DATA / "EXPERIMENT_TRACKER.md"
    path = crlf_bom(src, tmp_path / "t.md") if windows else write(tmp_path, "t.md", src.read_text())
    os.chmod(path, 0o640)
    original = path.read_bytes()
    assert update_tracker(path, {"R001": {"status": "DONE", "Notes": "loss 4.6 → 2.1 | ok"}}) is True
    expected = original.replace(R001.encode(), R001_DONE.encode())
    assert expected != original and path.read_bytes() == expected
    assert (b"\r\n" in expected) == windows and expected.count(b"\n") == original.count(b"\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert update_tracker(path, {"R001": {"Status": "DONE", "Notes": "loss 4.6 → 2.1 | ok"}}) is False
    assert path.read_bytes() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.md"]
    assert load_tracker(path).rows[0].notes == "loss 4.6 → 2.1 | ok"


def test_update_messy_tracker(tmp_path: Path) -> None:
    path = crlf_bom(DATA / "tracker_messy.md", tmp_path / "t.md")
    original = path.read_bytes().decode()
    update_tracker(path, {"R001": {"Status": "DONE"}, "R002": {"Status": "DONE", "备注 comment": "好"},
                          "R003": {"备注 Comment": "oom\nretry"}})
    expected = (original.replace("| M0: Sanity | done |", "| M0: Sanity | DONE |")
                .replace("|R002|M1|TODO|NICE|1|resnet-18|\r\n", "|R002|M1|DONE|NICE|1|resnet-18| 好 |\r\n")
                .replace("|R003|M2|running||2\r\n", "|R003|M2|running||2 | | oom retry |\r\n"))
    assert path.read_bytes().decode() == expected


def test_aligned_table_keeps_its_widths() -> None:
    text = ("| Run ID | Status  | Notes        |\n|--------|---------|--------------|\n"
            "| R001   | TODO    |              |\n")
    edited = md.set_cells(text, 1, 3, {"Status": "RUNNING", "notes": "ok"})
    assert edited == text.replace("| R001   | TODO    |              |", "| R001   | RUNNING | ok           |")
    assert md.set_cells(edited, 1, 3, {"Status": "RUNNING"}) is edited
    with pytest.raises(ValueError, match="no column 'Seed'"):
        md.set_cells(text, 1, 3, {"Seed": "1"})


@pytest.mark.parametrize("windows", [False, True])
def test_set_gate(tmp_path: Path, windows: bool) -> None:
    src = DATA / "workflow-state.md"
    path = crlf_bom(src, tmp_path / "w.md") if windows else write(tmp_path, "w.md", src.read_text())
    original = path.read_bytes()
    assert set_gate(path, 5, "pass", evidence="R001→R007 DONE", updated="2026-05-03") is True
    expected = original.replace(
        b"| 5 Training & Validation | Not Started | Run evidence closes the success criteria | |",
        "| 5 Training & Validation | Pass | Run evidence closes the success criteria | R001→R007 DONE |".encode(),
    ).replace(b"- Last Updated: 2026-05-02", b"- Last Updated: 2026-05-03")
    assert path.read_bytes() == expected
    assert set_gate(path, 5, "Pass", evidence="R001→R007 DONE", updated="2026-05-04") is False
    assert path.read_bytes() == expected
    gate = load_workflow(path).gate(5)
    assert gate is not None and (gate.status, gate.evidence) == ("Pass", "R001→R007 DONE")


def test_set_gate_messy(tmp_path: Path) -> None:
    path = write(tmp_path, "w.md", (DATA / "workflow_messy.md").read_text(encoding="utf-8"))
    original = path.read_text(encoding="utf-8")
    (tmp_path / "link.md").symlink_to(path)
    assert set_gate(tmp_path / "link.md", 5, "Fail", evidence="R004 diverged", updated="2026-05-03") is True
    assert (tmp_path / "link.md").is_symlink()
    assert path.read_text(encoding="utf-8") == original.replace(
        "|**5 Training & Validation**|In Progress|Run evidence closes the criteria|\n",
        "|**5 Training & Validation**|Fail|Run evidence closes the criteria| R004 diverged |\n",
    ).replace("- Last Updated: 2026-05-02T09:00Z", "- Last Updated: 2026-05-03")


def test_line_helpers() -> None:
    text = "\ufeff# Log\r\n\r\n| A | B |\r\n|---|---|\r\n| 1 | 2 |\r\nafter"
    assert md.newline_of(text) == "\r\n"
    appended = md.append_row(text, 3, {"b": "x|y"})
    assert appended == text.replace("| 1 | 2 |\r\n", "| 1 | 2 |\r\n|  | x\\|y |\r\n")
    assert md.replace_line(text, 1, "# Journal") == text.replace("# Log", "# Journal")
    assert md.replace_line(text, 6, "end") == text.replace("after", "end")
    entry = "## R003\n- **Result**: 71.2\n"
    assert md.append_section(text, entry) == text + "\r\n\r\n## R003\r\n- **Result**: 71.2\r\n"
    assert md.append_section("# Log\n\n", "## R1") == "# Log\n\n## R1\n"
    assert md.append_section("", "## R1") == "## R1\n"
    tail = "| A |\n|---|\n| 1 |"
    assert md.append_row(tail, 1, {"A": "2"}) == tail + "\n| 2 |\n"
    with pytest.raises(ValueError, match="no line 9"):
        md.replace_line(text, 9, "x")
