"""What a compile takes from the documents: which runs (by their Status), each run's command and where it came
from, and run-level dependencies; and the cells sync shares with a person."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from test_bridge_compile import plan, row, tracker, write_runs

from exq.bridge.compile import compile_plan
from exq.bridge.model import PlanRun
from exq.bridge.owned import exq_part, merge, person_part
from exq.bridge.runs import load_runs
from exq.bridge.status import Intent, read_status
from exq.errors import ManifestError, UsageError
from exq.model.manifest import parse_manifest

STATUSES = {
    "": Intent.TODO, "TODO": Intent.TODO, "⏳ QUEUED": Intent.TODO, "PENDING": Intent.TODO, "TODO/REUSE": Intent.TODO,
    "`todo`": Intent.TODO, "Not started": Intent.TODO,
    "DONE": Intent.LEFT_ALONE, "✅ DONE (2026-05-02)": Intent.LEFT_ALONE, "REUSE(D)": Intent.LEFT_ALONE,
    "REUSED": Intent.LEFT_ALONE, "SKIPPED": Intent.LEFT_ALONE, "CANCELLED": Intent.LEFT_ALONE,
    "**PAUSED**": Intent.LEFT_ALONE, "BLOCKED": Intent.LEFT_ALONE, "🟡 RUNNING": Intent.LEFT_ALONE,
    "**GATE FAILED**": Intent.FAILED, "FAILED": Intent.FAILED, "gate_failed": Intent.FAILED,
    "WAITING ON DATA": Intent.LEFT_ALONE,  # a word exq does not know: never run on a guess
}


@pytest.mark.parametrize(("cell", "intent"), STATUSES.items())
def test_a_status_cell_is_read_through_its_decorations(cell: str, intent: Intent) -> None:
    assert read_status(cell).intent == intent


def status_rows() -> list:  # type: ignore[type-arg]
    cells = ["TODO", "**GATE FAILED**", "**PAUSED**", "BLOCKED", "CANCELLED", "🟡 RUNNING", "DONE", "⏳ QUEUED",
             "TODO/REUSE", ""]
    return [replace(row(f"R00{i}", "M0", line=3 + i), status=cell) for i, cell in enumerate(cells)]


def test_only_runs_still_to_do_are_compiled_and_the_others_are_listed_with_their_status(tmp_path: Path) -> None:
    runs = write_runs(tmp_path, "seeds: [0]\ndefault: {cmd: 'echo {run_id}'}\n")
    compiled = compile_plan(plan(tmp_path), tracker(tmp_path, status_rows()), runs)
    ids = [job for phase in compiled.manifest["phases"] for job in phase["grid"]["zip"][0]["job"]]
    assert ids == ["R000_s0", "R007_s0", "R008_s0", "R009_s0"]
    report = {c.row.run_id: c.describe() for c in compiled.runs}
    assert report["R001"].startswith("R001 (M0, **GATE FAILED**): left alone: GATE FAILED; --rerun-failed takes it")
    assert report["R002"] == "R002 (M0, **PAUSED**): left alone: PAUSED; --include R002 forces it in"
    assert report["R007"] == "R007 (M0, ⏳ QUEUED): to do (QUEUED); command from runs.yaml default: echo R007"
    assert report["R009"].startswith("R009 (M0, no status): to do (no status)")


def test_include_and_rerun_failed_take_runs_in_and_an_unknown_include_is_refused(tmp_path: Path) -> None:
    runs = write_runs(tmp_path, "seeds: [0]\ndefault: {cmd: 'echo {run_id}'}\n")
    compiled = compile_plan(plan(tmp_path), tracker(tmp_path, status_rows()), runs, include=["R006"],
                            rerun_failed=True)
    ids = {job for phase in compiled.manifest["phases"] for job in phase["grid"]["zip"][0]["job"]}
    assert ids == {"R000_s0", "R001_s0", "R006_s0", "R007_s0", "R008_s0", "R009_s0"}
    with pytest.raises(UsageError, match=r"--include R042: no such run in .*EXPERIMENT_TRACKER\.md"):
        compile_plan(plan(tmp_path), tracker(tmp_path, status_rows()), runs, include=["R042"])


def test_a_command_comes_from_the_runs_file_then_the_plan_then_the_tracker_then_the_default(tmp_path: Path) -> None:
    runs = write_runs(tmp_path, "seeds: [0, 1]\nruns:\n  R001: {cmd: 'from-runs {seed}'}\n"
                                "default: {cmd: 'from-default {run_id}'}\n")
    doc = plan(tmp_path)
    doc = replace(doc, runs=[PlanRun("R001", "M0", "", "plan-ignored", (), 20),
                             PlanRun("R002", "M0", "", "python3 train.py --run R002 --x '{a}'", (), 21)])
    rows = [row("R001", "M0"), row("R002", "M0", line=4),
            replace(row("R003", "M0", line=5), command="python3 tracked.py --run R003"), row("R004", "M0", line=6)]
    compiled = compile_plan(doc, tracker(tmp_path, rows), runs)
    zipped = compiled.manifest["phases"][0]["grid"]["zip"][0]
    assert dict(zip(zipped["job"], zipped["run_cmd"], strict=True)) == {
        "R001_s0": "from-runs 0", "R001_s1": "from-runs 1",
        "R002": "python3 train.py --run R002 --x '{a}'",  # a document's command runs as written, once
        "R003": "python3 tracked.py --run R003",
        "R004_s0": "from-default R004", "R004_s1": "from-default R004"}
    sources = {c.row.run_id: c.source for c in compiled.runs}
    assert sources == {"R001": "runs.yaml runs.R001", "R002": "EXPERIMENT_PLAN.md:21 (Command)",
                       "R003": "EXPERIMENT_TRACKER.md:5 (Command)", "R004": "runs.yaml default"}
    spec = parse_manifest(compiled.yaml_text, str(tmp_path / "m.yaml"))
    quoted = "sh -c 'python3 train.py --run R002 --x '\"'\"'{a}'\"'\"''"
    assert next(j for j in spec.jobs if j.id == "R002").cmd == quoted


def test_without_a_runs_file_the_documents_give_every_command_and_the_project_is_the_workdir(tmp_path: Path) -> None:
    runs = load_runs(tmp_path / "refine-logs" / "runs.yaml", required=False)
    rows = [replace(row("R001", "M0"), command="true")]
    compiled = compile_plan(plan(tmp_path), tracker(tmp_path, rows), runs)
    assert compiled.manifest["workdir"] == str(tmp_path.resolve())
    assert "(none: commands from the documents)" in compiled.yaml_text
    with pytest.raises(ManifestError, match=r"EXPERIMENT_TRACKER.md:3: Command: run R002 \(M0\) has no command"):
        compile_plan(plan(tmp_path), tracker(tmp_path, [row("R002", "M0")]), runs)


def deps_rows() -> list:  # type: ignore[type-arg]
    return [replace(row("R001", "M0"), command="true"),
            replace(row("R002", "M1", line=4), command="true"),
            replace(row("R003", "M1", line=5), command="true", status="DONE"),
            replace(row("R004", "M1", line=6), command="true", depends_on=("R002", "R003")),
            replace(row("R005", "M2", line=7), command="true", depends_on=("R001",)),
            replace(row("R006", "M1", "NICE", line=8), command="true", depends_on=("R004",))]


def test_depends_on_gives_a_run_its_own_phase_after_the_jobs_it_needs(tmp_path: Path) -> None:
    runs = load_runs(tmp_path / "runs.yaml", required=False)
    compiled = compile_plan(plan(tmp_path), tracker(tmp_path, deps_rows()), runs)
    phases = {p["name"]: p.get("after", []) for p in compiled.manifest["phases"]}
    assert phases == {"M0": [], "M1": ["M0"], "M1-R004": ["M0", "R002"], "M1-R006-nice": ["M0", "R004"],
                      "M2-R005": ["M1", "M1-R004", "R001"]}
    assert "run R004 depends on R003 (DONE), which is not compiled: counted as met" in compiled.notes
    spec = parse_manifest(compiled.yaml_text, str(tmp_path / "m.yaml"))
    deps = {j.id: sorted(j.deps) for j in spec.jobs}
    assert deps["R004"] == ["R001", "R002"] and deps["R006"] == ["R001", "R004"]
    assert deps["R005"] == ["R001", "R002", "R004"]


@pytest.mark.parametrize(("changes", "message"), [
    ({"R002": ("R404",)}, "EXPERIMENT_TRACKER.md:4: Depends On: run R002 depends on R404, which"),
    ({"R001": ("R002",)},
     "EXPERIMENT_TRACKER.md:3: Depends On: run R001 (M0) depends on R002 of the later milestone M1"),
    ({"R002": ("R004",)}, "Depends On: runs depend on each other in a cycle: R002 -> R004 -> R002"),
])
def test_bad_dependencies_name_the_line(tmp_path: Path, changes: dict[str, tuple[str, ...]], message: str) -> None:
    rows = [replace(r, depends_on=changes.get(r.run_id, r.depends_on)) for r in deps_rows()]
    with pytest.raises(ManifestError) as caught:
        compile_plan(plan(tmp_path), tracker(tmp_path, rows), load_runs(tmp_path / "runs.yaml", required=False))
    assert message in str(caught.value)


@pytest.mark.parametrize(("cell", "ours", "expected"), [
    ("", "top1 70.1", "exq: top1 70.1"),
    ("Loss spiked; see `logs/r1.txt`.", "top1 70.1", "Loss spiked; see `logs/r1.txt`. · exq: top1 70.1"),
    ("Loss spiked. · exq: top1 69", "top1 70.1", "Loss spiked. · exq: top1 70.1"),
    ("exq: top1 69", "", ""),
    ("mentions exq: inline, not at the start", "x", "mentions exq: inline, not at the start · exq: x"),
    ("exq submission 4 (exq-plan.yaml)", "submission 5 (exq-plan.yaml)", "exq: submission 5 (exq-plan.yaml)"),
])
def test_exq_owns_only_its_own_part_of_a_shared_cell(cell: str, ours: str, expected: str) -> None:
    merged = merge(cell, ours)
    assert merged == expected
    assert merge(merged, ours) == merged and exq_part(merged) == ours
    assert person_part(merged) == person_part(cell)


def test_a_gate_rule_naming_a_run_left_alone_is_reported(tmp_path: Path) -> None:
    runs = write_runs(tmp_path, "seeds: [0]\ndefault: {cmd: 'true'}\n"
                                "gates:\n  M0: [{metric: top1, above: 1, runs: [R001]}]\n")
    rows = [replace(row("R001", "M0"), status="DONE"), row("R002", "M0", line=4)]
    compiled = compile_plan(plan(tmp_path), tracker(tmp_path, rows), runs)
    assert ("gates.M0: a rule names R001 (DONE), which is not compiled: that rule fails, as it finds no job of it "
            "(--include it, or drop it from the rule)") in compiled.notes
