"""A plan, a tracker and a runs file compile to a manifest whose phases follow the milestones."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import Exq

from exq.bridge.compile import compile_plan
from exq.bridge.model import Milestone, Plan, Tracker, TrackerRow
from exq.bridge.runs import LoadedRuns, load_runs
from exq.errors import ManifestError
from exq.model.manifest import parse_manifest


def plan(tmp_path: Path) -> Plan:
    ms = [Milestone(f"M{i}", title, "", "", "gate?", 10 + i) for i, title in enumerate(["Sanity", "Main", "Ablation"])]
    return Plan(str(tmp_path / "refine-logs" / "EXPERIMENT_PLAN.md"), None, ms, [])


def row(run_id: str, milestone: str, priority: str = "MUST", line: int = 3) -> TrackerRow:
    return TrackerRow(run_id, milestone, "", "", priority, "TODO", "", line)


def tracker(tmp_path: Path, rows: list[TrackerRow]) -> Tracker:
    return Tracker(str(tmp_path / "refine-logs" / "EXPERIMENT_TRACKER.md"), rows)


def write_runs(tmp_path: Path, text: str) -> LoadedRuns:
    path = tmp_path / "refine-logs" / "runs.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return load_runs(path)


RUNS = """
workdir: ..
seeds: [0, 1]
milestones:
  M0: {cmd: "test {run_id} != R009 && echo sanity {seed} > {run_id}.txt", seeds: [0]}
runs:
  R004: {cmd: "exit 3"}
default: {cmd: "echo {run_id} {seed} {note} > {run_id}_{seed}.txt", params: {note: "it's fine"}}
"""


def test_milestones_become_chained_phases_and_nice_runs_stay_off_the_gate(tmp_path: Path) -> None:
    runs = write_runs(tmp_path, RUNS)
    rows = [row("R001", "M0"), row("R002", "M1"), row("R003", "M1", "NICE"), row("R005", "M2")]
    compiled = compile_plan(plan(tmp_path), tracker(tmp_path, rows), runs)
    phases = {p["name"]: p for p in compiled.manifest["phases"]}
    assert list(phases) == ["M0", "M1", "M1-nice", "M2"]
    assert phases["M1"]["after"] == ["M0"] and phases["M1-nice"]["after"] == ["M0"]
    assert phases["M2"]["after"] == ["M1"] and phases["M1-nice"]["priority"] < 0
    assert compiled.manifest["workdir"] == str(tmp_path.resolve())
    spec = parse_manifest(compiled.yaml_text, str(tmp_path / "m.yaml"))
    ids = [j.id for j in spec.jobs]
    assert ids == ["R001_s0", "R002_s0", "R002_s1", "R003_s0", "R003_s1", "R005_s0", "R005_s1"]
    r002 = next(j for j in spec.jobs if j.id == "R002_s1")
    assert r002.deps == ["R001_s0"]
    assert compiled.yaml_text.startswith("# Compiled by `exq plan compile`")
    assert yaml.safe_load(compiled.yaml_text)["name"]  # plain YAML a person can read and edit


def test_every_run_without_a_command_is_listed_at_once(tmp_path: Path) -> None:
    runs = write_runs(tmp_path, "milestones:\n  M0: {cmd: 'true'}\n")
    rows = [row("R001", "M0"), row("R002", "M1", line=5), row("R003", "M2", line=6), row("R004", "M9", line=7)]
    with pytest.raises(ManifestError) as caught:
        compile_plan(plan(tmp_path), tracker(tmp_path, rows), runs)
    text = str(caught.value)
    assert "EXPERIMENT_TRACKER.md:5: Command: run R002 (M1) has no command: give it a Command column" in text
    assert "EXPERIMENT_TRACKER.md:6: Command: run R003 (M2) has no command" in text
    assert "EXPERIMENT_TRACKER.md:7: Milestone: run R004 names milestone 'M9'" in text


def test_compiled_plan_runs_gates_hold_and_nice_failures_do_not_close_them(exq: Exq, tmp_path: Path) -> None:
    runs = write_runs(tmp_path, RUNS + "defaults: {gpus: 0}\n")
    rows = [row("R001", "M0"), row("R004", "M1", "NICE"), row("R002", "M1"), row("R009", "M2")]
    compiled = compile_plan(plan(tmp_path), tracker(tmp_path, rows), runs)
    manifest = tmp_path / "plan.yaml"
    manifest.write_text(compiled.yaml_text)
    proc = exq("run", str(manifest), check=False)
    assert proc.returncode == 1  # R004 (NICE) failed
    jobs = exq.jobs()
    assert jobs["R004_s0"]["status"] == "failed" and jobs["R002_s1"]["status"] == "succeeded"
    assert jobs["R009_s0"]["status"] == "succeeded"  # the NICE failure did not close M1's gate
    assert (tmp_path / "R002_1.txt").read_text() == "R002 1 it's fine\n"
    assert subprocess.run(["cat", str(tmp_path / "R001.txt")], capture_output=True, text=True).stdout == "sanity 0\n"


def test_a_failing_milestone_blocks_the_later_ones(exq: Exq, tmp_path: Path) -> None:
    runs = write_runs(tmp_path, RUNS + "defaults: {gpus: 0}\n")
    rows = [row("R009", "M0"), row("R002", "M1"), row("R005", "M2")]
    compiled = compile_plan(plan(tmp_path), tracker(tmp_path, rows), runs)
    manifest = tmp_path / "plan.yaml"
    manifest.write_text(compiled.yaml_text)
    exq("run", str(manifest), check=False)
    jobs = exq.jobs()
    assert jobs["R009_s0"]["status"] == "failed"
    assert {jobs[k]["status"] for k in ("R002_s0", "R002_s1", "R005_s0", "R005_s1")} == {"blocked"}
    assert not (tmp_path / "R002_0.txt").exists()


def block_plan(tmp_path: Path) -> Plan:
    ms = [Milestone("M0", "Sanity", "", "1 quick run", "?", 10), Milestone("M1", "Main", "", "Block 1", "?", 11),
          Milestone("M2", "Ablation", "", "Block 2, Block 3", "?", 12)]
    return Plan(str(tmp_path / "refine-logs" / "EXPERIMENT_PLAN.md"), None, ms, [])


BLOCK_RUNS = """
seeds: [0]
blocks:
  B1: {cmd: "main {run_id}"}
  "2": {cmd: "ablate-warmup {run_id}"}
  Block 3: {cmd: "ablate-decay {run_id}"}
default: {cmd: "sanity {run_id}"}
"""


def test_a_run_takes_its_blocks_command_from_its_milestone_or_its_block_column(tmp_path: Path) -> None:
    runs = write_runs(tmp_path, BLOCK_RUNS)
    in_block_3 = TrackerRow("R005", "M2", "", "", "MUST", "TODO", "", 7, {"Run ID": "R005", "Block": "B3"})
    rows = [row("R001", "M0"), row("R002", "M1"), in_block_3]
    compiled = compile_plan(block_plan(tmp_path), tracker(tmp_path, rows), runs)
    commands = {p["name"]: p["grid"]["zip"][0]["run_cmd"] for p in compiled.manifest["phases"]}
    assert commands == {"M0": ["sanity R001"], "M1": ["main R002"], "M2": ["ablate-decay R005"]}


def test_a_run_that_could_be_in_two_blocks_is_an_error_naming_its_tracker_line(tmp_path: Path) -> None:
    runs = write_runs(tmp_path, BLOCK_RUNS)
    with pytest.raises(ManifestError) as caught:
        compile_plan(block_plan(tmp_path), tracker(tmp_path, [row("R006", "M2", line=9)]), runs)
    assert "EXPERIMENT_TRACKER.md:9: Block: run R006 could belong to blocks 2, Block 3" in str(caught.value)


def test_metric_gates_add_a_gate_job_the_next_milestone_waits_for(tmp_path: Path) -> None:
    runs = write_runs(tmp_path, RUNS + "gates:\n  M0: [{metric: final_loss, below: initial_loss}]\n")
    rows = [row("R001", "M0"), row("R002", "M1"), row("R003", "M1", "NICE")]
    compiled = compile_plan(plan(tmp_path), tracker(tmp_path, rows), runs, on_job_end="exq plan sync x")
    phases = {p["name"]: p for p in compiled.manifest["phases"]}
    assert list(phases) == ["M0", "M0-gate", "M1", "M1-nice"]
    gate = phases["M0-gate"]
    assert gate["after"] == ["M0"] and gate["gpus"] == 0 and gate["hosts"] == ["local"]
    assert gate["cmd"].endswith(f"-m exq plan gate {tmp_path / 'refine-logs' / 'runs.yaml'} M0")
    assert phases["M1"]["after"] == ["M0-gate"] and phases["M1-nice"]["after"] == ["M0-gate"]
    spec = parse_manifest(compiled.yaml_text, str(tmp_path / "m.yaml"))
    assert spec.on_job_end is not None and spec.on_job_end.cmd == "exq plan sync x"


@pytest.mark.parametrize(("gates", "message"), [
    ("  M0: [{metric: loss, below: 1, above: 0}]\n",
     "runs.yaml:10:8: gates.M0[0]: give exactly one of above, below, at_least, at_most (got above, below)"),
    ("  M0: [{metric: loss, over: median, below: 1}]\n", "runs.yaml:10:"),
    ("  M7: [{metric: loss, below: 1}]\n", "runs.yaml:10:3: gates.M7: milestone M7 is not in the Run Order"),
    ("  M1: [{metric: loss, below: 1, runs: [R003]}]\n",
     "gates.M1[0].runs: R003 is not a MUST run of M1; its MUST runs: R002"),
])
def test_bad_gate_rules_name_the_runs_file_line_and_field(tmp_path: Path, gates: str, message: str) -> None:
    with pytest.raises(ManifestError) as caught:
        runs = write_runs(tmp_path, RUNS + "gates:\n" + gates)
        compile_plan(plan(tmp_path), tracker(tmp_path, [row("R001", "M0"), row("R002", "M1"),
                                                        row("R003", "M1", "NICE")]), runs)
    assert message in str(caught.value)


def test_the_example_runs_file_is_valid() -> None:
    runs = load_runs(Path(__file__).parent.parent / "manifests" / "runs.example.yaml").file
    assert runs.command("R004", "M3", "B2") is runs.blocks["B2"]
    assert [r.describe() for r in runs.gates["M2"]] == ["mean top1 over seeds of each run >= 71.5",
                                                        "mean top1 over all jobs > 70 (runs R004)"]
