"""Manifest loading: grid expansion, settings merge, dependencies, quoting, and every error kind."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from textwrap import dedent

import pytest

from exq.errors import InputProblem, ManifestError
from exq.model.jobspec import SubmissionSpec
from exq.model.manifest import load_manifest, parse_manifest, workdir_note

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def src(tmp_path: Path) -> str:
    return str(tmp_path / "exp.yaml")


def parse(src: str, text: str) -> SubmissionSpec:
    return parse_manifest(dedent(text), src)


def problems(src: str, text: str) -> list[InputProblem]:
    with pytest.raises(ManifestError) as info:
        parse(src, text)
    assert all(p.file == src for p in info.value.problems)
    return info.value.problems


def one(src: str, text: str) -> InputProblem:
    found = problems(src, text)
    assert len(found) == 1, [str(p) for p in found]
    return found[0]


def line(text: str, needle: str) -> int:
    """1-based number of the first line of dedent(text) containing needle."""
    lines = dedent(text).splitlines()
    return next(i for i, ln in enumerate(lines, 1) if needle in ln)


def ids(spec: SubmissionSpec, phase: str | None = None) -> list[str]:
    return [j.id for j in spec.jobs if phase is None or j.phase == phase]


# ---------------------------------------------------------------- expansion


def test_cartesian_product_in_key_order_last_key_fastest(src: str) -> None:
    spec = parse(src, """
        name: sweep
        cmd: train --lr {lr} --bs {bs}
        grid: {lr: [0.1, 0.01], bs: [32, 64]}
    """)
    assert [j.params for j in spec.jobs] == [
        {"lr": 0.1, "bs": 32}, {"lr": 0.1, "bs": 64}, {"lr": 0.01, "bs": 32}, {"lr": 0.01, "bs": 64}]
    assert ids(spec) == ["sweep_lr0.1_bs32", "sweep_lr0.1_bs64", "sweep_lr0.01_bs32", "sweep_lr0.01_bs64"]
    assert spec.jobs[1].cmd == "train --lr 0.1 --bs 64"
    assert list(spec.jobs[0].params) == ["lr", "bs"]


def test_zip_groups_advance_in_lock_step(src: str) -> None:
    spec = parse(src, """
        name: z
        cmd: run
        grid:
          model: [small, large]
          zip:
            - {lr: [0.1, 0.2, 0.3], bs: [8, 16, 32]}
            - {seed: [1, 2]}
    """)
    combos = [(j.params["model"], j.params["lr"], j.params["bs"], j.params["seed"]) for j in spec.jobs]
    assert len(combos) == 2 * 3 * 2
    assert combos[:3] == [("small", 0.1, 8, 1), ("small", 0.1, 8, 2), ("small", 0.2, 16, 1)]
    assert {(lr, bs) for _, lr, bs, _ in combos} == {(0.1, 8), (0.2, 16), (0.3, 32)}


def test_zip_as_a_single_mapping(src: str) -> None:
    spec = parse(src, """
        name: z
        cmd: run
        grid:
          zip: {lr: [0.1, 0.2], bs: [8, 16]}
    """)
    assert [j.params for j in spec.jobs] == [{"lr": 0.1, "bs": 8}, {"lr": 0.2, "bs": 16}]


def test_exclude_drops_every_matching_combination(src: str) -> None:
    spec = parse(src, """
        name: e
        cmd: run
        grid: {model: [a, b], lr: [1, 2], seed: [0, 1]}
        exclude:
          - {model: b, lr: 2}
    """)
    assert len(spec.jobs) == 6
    assert not any(j.params["model"] == "b" and j.params["lr"] == 2 for j in spec.jobs)


def test_include_appends_extra_combinations(src: str) -> None:
    spec = parse(src, """
        name: i
        cmd: run {lr} {bs}
        grid: {lr: [1, 2], bs: [8]}
        include:
          - {bs: 1024, lr: 5}
    """)
    assert [j.params for j in spec.jobs][-1] == {"lr": 5, "bs": 1024}
    assert spec.jobs[-1].cmd == "run 5 1024"
    assert len(spec.jobs) == 3


def test_single_phase_shorthand(src: str, tmp_path: Path) -> None:
    spec = parse(src, """
        name: quick
        gpus: 2
        priority: 5
        params: {epochs: 3}
        cmd: python train.py --epochs {epochs} --seed {seed}
        grid: {seed: [0, 1]}
    """)
    assert spec.name == "quick" and spec.phases == ["quick"] and spec.source == src
    assert ids(spec) == ["quick_seed0", "quick_seed1"]
    job = spec.jobs[0]
    assert (job.phase, job.resources.gpus, job.priority) == ("quick", 2, 5)
    assert job.params == {"seed": 0, "epochs": 3}
    assert job.cmd == "python train.py --epochs 3 --seed 0"
    assert job.workdir == str(tmp_path)
    assert job.cmd_template == "python train.py --epochs {epochs} --seed {seed}"


def test_defaults_merge_with_phase_overrides(src: str, tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    spec = parse(src, """
        name: d
        workdir: code
        env: {A: top, B: top, FLAG: true}
        setup: source .venv/bin/activate
        defaults:
          gpus: 0
          timeout: 2h30m
          gpu_memory: 20GiB
          env: {B: defaults, C: 3}
          retry:
            oom: {max: 5, factor: 3}
            failure: {max: 2, backoff: 1m}
          on_oom: {scale: {param: bs, factor: 0.5, min: 8}}
          outputs: ["ckpt/{id}.pt"]
        phases:
          - name: plain
            params: {bs: 64}
            cmd: run
          - name: custom
            gpus: 2
            share: true
            env: {C: phase}
            setup: conda activate x
            retry:
              oom: {max: 1, backoff: 90s}
            on_oom: null
            cmd: run
    """)
    plain, custom = spec.jobs
    assert plain.workdir == custom.workdir == str(tmp_path / "code")
    assert plain.resources.model_dump() == {"gpus": 0, "gpu_memory": 20 * 1024**3, "share": False,
                                            "timeout": 9000.0}
    assert plain.env == {"A": "top", "B": "defaults", "C": "3", "FLAG": "true"}
    assert plain.setup == "source .venv/bin/activate"
    assert plain.outputs == ["ckpt/plain.pt"]
    assert (plain.retry.oom.max, plain.retry.oom.factor, plain.retry.oom.backoff) == (5, 3.0, 10.0)
    assert (plain.retry.failure.max, plain.retry.failure.backoff) == (2, 60.0)
    assert plain.oom_scale is not None and plain.oom_scale.next_value(64) == 32
    assert custom.resources.gpus == 2 and custom.resources.share is True
    assert custom.env["C"] == "phase" and custom.setup == "conda activate x"
    assert (custom.retry.oom.max, custom.retry.oom.factor, custom.retry.oom.backoff) == (1, 3.0, 90.0)
    assert custom.retry.failure.max == 2
    assert custom.oom_scale is None


TEACHER_STUDENT = """
    name: ts
    phases:
      - name: teacher
        grid: {N: [128, 384], seed: [0, 1]}
        cmd: teach {N} {seed}
      - name: student
        after: [teacher]
        MATCH
        grid: {N: [128, 384]}
        cmd: learn {N}
"""


def test_match_depends_only_on_upstream_jobs_with_equal_values(src: str) -> None:
    spec = parse(src, TEACHER_STUDENT.replace("MATCH", "match: [N]"))
    assert spec.phases == ["teacher", "student"]
    deps = {j.id: j.deps for j in spec.jobs}
    assert deps["student_N384"] == ["teacher_N384_seed0", "teacher_N384_seed1"]
    assert deps["student_N128"] == ["teacher_N128_seed0", "teacher_N128_seed1"]
    assert deps["teacher_N128_seed0"] == []


def test_without_match_depends_on_all_upstream_jobs(src: str) -> None:
    spec = parse(src, TEACHER_STUDENT.replace("MATCH", ""))
    assert {j.id: j.deps for j in spec.jobs}["student_N384"] == ids(spec, "teacher")


def test_example_manifest_runs_with_sh(tmp_path: Path) -> None:
    shutil.copy(REPO / "manifests" / "teacher_student.yaml", tmp_path / "ts.yaml")
    spec = load_manifest(tmp_path / "ts.yaml")
    assert spec.phases == ["teacher", "student"]
    assert {j.id: j.deps for j in spec.jobs}["student_N384"] == ["teacher_N384_seed0", "teacher_N384_seed1"]
    for job in spec.jobs:  # file order is a valid order here: teachers first
        env = {**os.environ, **job.env}
        subprocess.run(["sh", "-c", job.cmd], cwd=job.workdir, env=env, check=True, timeout=20)
        assert all((tmp_path / out).is_file() for out in job.outputs)
    assert (tmp_path / "runs/student/student_N384.txt").read_text() == "3840 64\n3841 64\ntemperature 2.0\n"


# ---------------------------------------------------------------- templates


@pytest.mark.parametrize("value", ["two words", "it's \"quoted\"", "$(touch pwned) `x` $HOME", "l1\nl2"])
def test_cmd_values_are_shell_quoted(src: str, tmp_path: Path, value: str) -> None:
    spec = parse_manifest(dedent("""
        name: q
        cmd: printf '%s' {v}
        id: q
    """) + f"params: {{v: {_yaml_str(value)}}}\n", src)
    job = spec.jobs[0]
    assert job.params["v"] == value
    out = subprocess.run(["sh", "-c", job.cmd], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout == value
    assert not (tmp_path / "pwned").exists()


def _yaml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def test_format_spec_literal_braces_and_builtin_names(src: str) -> None:
    spec = parse(src, """
        name: f
        cmd: echo {lr:.0e} {{not a key}} {phase} {id} {flag}
        grid: {lr: [1e-3, 0.0003]}
        params: {flag: true}
        id: "{phase}-lr{lr:g}"
    """)
    assert ids(spec) == ["f-lr0.001", "f-lr0.0003"]
    assert spec.jobs[0].cmd == "echo 1e-03 {not a key} f f-lr0.001 true"


def test_default_id_is_sanitised(src: str) -> None:
    spec = parse(src, """
        name: s
        cmd: run
        grid: {model: ["gpt 2/small"]}
    """)
    assert ids(spec) == ["s_modelgpt-2-small"]


# ---------------------------------------------------------------- errors


def test_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path / "missing.yaml")
    (p,) = info.value.problems
    assert p.file == str(tmp_path / "missing.yaml") and "not found" in p.message


def test_yaml_syntax_error_has_line_and_column(src: str) -> None:
    text = """
        name: x
        cmd: [unclosed
        grid: {a: [1]}
    """
    p = one(src, text)
    assert p.line is not None and p.line >= line(text, "unclosed")
    assert p.column is not None and "invalid YAML" in p.message


def test_duplicate_yaml_key(src: str) -> None:
    text = """
        name: x
        cmd: a
        cmd: b
    """
    p = one(src, text)
    assert (p.line, p.column) == (line(text, "cmd: b"), 1)
    assert "duplicate key 'cmd'" in p.message


@pytest.mark.parametrize("text, expected", [("- a\n- b\n", "got a list"), ("", "got an empty file")])
def test_top_level_not_a_mapping(src: str, text: str, expected: str) -> None:
    p = one(src, text)
    assert "expected a mapping at the top level" in p.message and expected in p.message


def test_wrong_type_message_format(src: str) -> None:
    text = """
        name: x
        phases:
          - name: a
            gpus: two
            cmd: run
    """
    p = one(src, text)
    assert (p.field, p.line, p.column) == ("phases[0].gpus", line(text, "gpus: two"), 11)
    assert str(p) == f"{src}:{p.line}:11: phases[0].gpus: expected an integer >= 0, got 'two'"


def test_unknown_field_suggests_the_close_one(src: str) -> None:
    text = """
        name: x
        defaults:
          gpu: 2
        cmd: run
    """
    p = one(src, text)
    assert (p.field, p.line, p.column) == ("defaults.gpu", line(text, "gpu: 2"), 3)
    assert p.message.startswith("unknown field 'gpu' (did you mean 'gpus'?); expected one of ")
    assert ("gpu_memory, gpus, hosts, label_max_parallel, labels, on_oom, outputs, params, priority, retry, setup,"
            " share, timeout"
            in p.message)


def test_missing_required_fields_point_at_the_mapping(src: str) -> None:
    text = """
        phases:
          - name: a
            gpus: 1
    """
    found = {p.field: p for p in problems(src, text)}
    assert set(found) == {"name", "phases[0].cmd"}
    assert found["phases[0].cmd"].line == line(text, "name: a")
    assert found["phases[0].cmd"].message == "missing required field 'cmd'"
    assert found["name"].line == line(text, "phases:")


def test_no_phases_and_no_cmd(src: str) -> None:
    p = one(src, "name: x\ngpus: 1\n")
    assert p.line == 1 and "'phases'" in p.message and "'cmd'" in p.message


@pytest.mark.parametrize("field, value, expected", [
    ("gpu_memory", "20 gigs", "expected a size such as 20GiB"),
    ("timeout", "soon", "expected a duration such as 30s"),
    ("timeout", "0s", "expected a positive duration"),
])
def test_bad_size_and_duration(src: str, field: str, value: str, expected: str) -> None:
    text = f"""
        name: x
        cmd: run
        {field}: {value}
    """
    p = one(src, text)
    assert (p.field, p.line, p.column) == (field, line(text, value), len(field) + 3)
    assert expected in p.message and repr(value) in p.message


def test_nested_retry_error_path(src: str) -> None:
    text = """
        name: x
        phases:
          - name: a
            cmd: run
          - name: b
            cmd: run
            retry:
              oom: {max: -1, backoff: 3 weeks}
    """
    found = problems(src, text)
    assert [p.field for p in found] == ["phases[1].retry.oom.max", "phases[1].retry.oom.backoff"]
    assert all(p.line == line(text, "oom:") for p in found)
    assert "expected an integer >= 0, got -1" in found[0].message
    assert "expected a duration" in found[1].message


def test_retry_transient_from_defaults_and_phases(src: str) -> None:
    spec = parse(src, """
        name: t
        defaults:
          retry:
            transient: {match: ["CUDA error: unknown error", "NCCL WARN .* Connection reset"], max: 2}
        phases:
          - name: a
            cmd: run
          - name: b
            cmd: run
            retry:
              transient: {backoff: 1m}
          - name: c
            cmd: run
            retry:
              transient: {match: ["^Bus error$"]}
    """)
    a, b, c = (job.retry.transient for job in spec.jobs)
    assert (a.match, a.max, a.backoff) == (["CUDA error: unknown error", "NCCL WARN .* Connection reset"], 2, 10.0)
    assert (b.match, b.max, b.backoff) == (a.match, 2, 60.0)
    assert (c.match, c.max) == (["^Bus error$"], 2)
    plain = parse(src, "name: p\ncmd: run\n").jobs[0].retry.transient
    assert (plain.match, plain.max, plain.backoff) == ([], 3, 10.0)


def test_retry_transient_patterns_are_checked(src: str) -> None:
    text = """
        name: x
        cmd: run
        retry:
          transient:
            match: ["ok", "NCCL (", 3, "x*"]
    """
    found = problems(src, text)
    assert [p.field for p in found] == [f"retry.transient.match[{i}]" for i in (1, 2, 3)]
    assert all(p.line == line(text, "match:") for p in found)
    assert "invalid regular expression 'NCCL ('" in found[0].message and "missing )" in found[0].message
    assert "expected a regular expression (a string), got 3" in found[1].message
    assert "'x*' matches an empty text" in found[2].message
    assert f"{src}:{line(text, 'match:')}:" in str(ManifestError(found))


def test_empty_grid_list(src: str) -> None:
    text = """
        name: x
        cmd: run
        grid:
          lr: []
    """
    p = one(src, text)
    assert (p.field, p.line) == ("grid.lr", line(text, "lr: []"))
    assert "expected a non-empty list of values" in p.message


def test_zip_group_of_unequal_lengths(src: str) -> None:
    text = """
        name: x
        cmd: run
        grid:
          zip:
            - {lr: [1, 2, 3], bs: [8, 16]}
    """
    p = one(src, text)
    assert (p.field, p.line) == ("grid.zip[0]", line(text, "- {lr"))
    assert "equal lengths" in p.message and "lr has 3" in p.message and "bs has 2" in p.message


def test_exclude_key_not_in_grid(src: str) -> None:
    text = """
        name: x
        cmd: run
        grid: {lr: [1, 2]}
        exclude:
          - {lr: 1, bs: 8}
    """
    p = one(src, text)
    assert (p.field, p.line) == ("exclude[0].bs", line(text, "bs: 8"))
    assert "'bs' is not a grid key" in p.message and "lr" in p.message


def test_exclude_leaving_no_jobs(src: str) -> None:
    text = """
        name: x
        cmd: run
        grid: {lr: [1, 2], bs: [8]}
        exclude:
          - {bs: 8}
    """
    p = one(src, text)
    assert (p.field, p.line) == ("exclude", line(text, "- {bs: 8}"))
    assert "removes all 2 combinations" in p.message


def test_include_missing_a_grid_key(src: str) -> None:
    text = """
        name: x
        cmd: run
        grid: {lr: [1, 2], bs: [8]}
        include:
          - {lr: 3}
    """
    p = one(src, text)
    assert (p.field, p.line) == ("include[0]", line(text, "- {lr: 3}"))
    assert "lacks grid key(s) bs" in p.message


def test_unknown_placeholder_in_cmd_lists_available_names(src: str) -> None:
    text = """
        name: x
        phases:
          - name: a
            grid: {lr: [1]}
            params: {bs: 8}
            cmd: train --lr {lr} --bs {batch}
    """
    p = one(src, text)
    assert (p.field, p.line) == ("phases[0].cmd", line(text, "cmd: train"))
    assert p.message == "unknown placeholder {batch}; available: lr, bs, phase, id"


def test_unknown_placeholder_in_id(src: str) -> None:
    text = """
        name: x
        cmd: run
        grid: {lr: [1]}
        id: "run-{seed}-{id}"
    """
    found = problems(src, text)
    assert [p.field for p in found] == ["id", "id"]
    assert found[0].line == line(text, 'id: "')
    assert "unknown placeholder {seed}; available: lr, phase" in found[0].message
    assert "unknown placeholder {id}" in found[1].message


def test_malformed_placeholder(src: str) -> None:
    p = one(src, "name: x\ncmd: run {a.b}\ngrid: {a: [1]}\n")
    assert (p.field, p.line) == ("cmd", 2) and "attribute and index access" in p.message


def test_invalid_id_characters_name_the_job_values(src: str) -> None:
    text = """
        name: x
        cmd: run
        grid: {model: [ok, "bad name"]}
        id: "{model}"
    """
    p = one(src, text)
    assert (p.field, p.line) == ("id", line(text, 'id: "'))
    assert "id 'bad name'" in p.message and "model=bad name" in p.message
    assert "not a valid job id" in p.message


def test_duplicate_job_id_names_both_parameter_sets(src: str) -> None:
    text = """
        name: x
        cmd: run
        grid: {lr: [1, 2], seed: [0]}
        id: "run-s{seed}"
    """
    p = one(src, text)
    assert (p.field, p.line) == ("id", line(text, 'id: "'))
    assert "duplicate job id 'run-s0'" in p.message
    assert "lr=1, seed=0" in p.message and "lr=2, seed=0" in p.message


def test_param_also_in_grid(src: str) -> None:
    text = """
        name: x
        cmd: run
        grid: {lr: [1, 2]}
        params: {lr: 3}
    """
    p = one(src, text)
    assert (p.field, p.line, p.column) == ("params.lr", line(text, "params:"), 10)
    assert "'lr' is also a grid key" in p.message


def test_unknown_after_phase(src: str) -> None:
    text = """
        name: x
        phases:
          - name: a
            cmd: run
          - name: b
            after: [a, teacher]
            cmd: run
    """
    p = one(src, text)
    assert (p.field, p.line) == ("phases[1].after[1]", line(text, "after:"))
    assert p.message == ("unknown phase 'teacher'; phases: a, b (job ids of this submission are accepted too, "
                         "SUB/ID for a job of another submission, label:NAME for labelled jobs)")


def test_cycle_in_after(src: str) -> None:
    text = """
        name: x
        phases:
          - name: a
            after: [c]
            cmd: run
          - name: b
            after: [a]
            cmd: run
          - name: c
            after: [b]
            cmd: run
    """
    p = one(src, text)
    assert p.field.endswith(".after") and "cycle in after: " in p.message
    assert all(name in p.message for name in ("a", "b", "c"))


def test_match_key_missing_from_a_phase(src: str) -> None:
    text = TEACHER_STUDENT.replace("MATCH", "match: [N, lr]")
    found = problems(src, text)
    assert {p.field for p in found} == {"phases[1].match[1]"}
    assert found[0].line == line(text, "match:")
    assert any("'lr' is not a param or grid key of phase 'student'" in p.message for p in found)
    assert any("of upstream phase 'teacher'" in p.message for p in found)


def test_match_without_upstream_job_names_the_job(src: str) -> None:
    text = TEACHER_STUDENT.replace("MATCH", "match: [N]").replace("{N: [128, 384]}", "{N: [128, 512]}")
    p = one(src, text)
    assert (p.field, p.line) == ("phases[1].match", line(text, "match:"))
    assert p.message == "job 'student_N512' (N=512) matches no job of phase 'teacher'"


def test_on_oom_scale_param_absent_or_not_numeric(src: str) -> None:
    text = """
        name: x
        defaults:
          on_oom: {scale: {param: bs, factor: 0.5}}
        phases:
          - name: a
            cmd: run
          - name: b
            grid: {bs: [64, auto]}
            cmd: run
    """
    first, second = problems(src, text)
    assert (first.field, first.line) == ("defaults.on_oom.scale.param", line(text, "param: bs"))
    assert "'bs' is not a param or grid key of phase 'a'" in first.message
    assert second.field == "defaults.on_oom.scale.param"
    assert "must be numeric" in second.message and "b_bsauto" in second.message


def test_workdir_missing(src: str, tmp_path: Path) -> None:
    text = """
        name: x
        workdir: nowhere
        cmd: run
    """
    p = one(src, text)
    assert (p.field, p.line) == ("workdir", line(text, "workdir:"))
    assert str(tmp_path / "nowhere") in p.message and "does not exist" in p.message


def test_phases_and_top_level_cmd_together(src: str) -> None:
    text = """
        name: x
        cmd: run
        phases:
          - name: a
            cmd: run
    """
    p = one(src, text)
    assert (p.field, p.line) == ("cmd", line(text, "cmd: run"))
    assert "only allowed without 'phases'" in p.message


def test_all_validation_problems_are_reported_at_once(src: str) -> None:
    text = """
        name: x
        defaults:
          timeout: later
        phases:
          - name: a
            gpus: -1
            cmd: run
          - name: b
            retyr: {}
    """
    found = problems(src, text)
    fields = [p.field for p in found]
    assert fields == ["defaults.timeout", "phases[0].gpus", "phases[1].cmd", "phases[1].retyr"]
    assert [p.line for p in found] == sorted(p.line or 0 for p in found)
    assert "phases[1].retyr: unknown field 'retyr' (did you mean 'retry'?)" in str(ManifestError(found))


def test_expansion_problems_of_several_phases_are_reported_at_once(src: str) -> None:
    text = """
        name: x
        phases:
          - name: a
            grid: {lr: [1]}
            cmd: run {bs}
          - name: b
            after: [zz]
            cmd: run
    """
    assert [p.field for p in problems(src, text)] == ["phases[0].cmd", "phases[1].after[0]"]


# ---------------------------------------------------------------- max_parallel, devices, wait_for, foreign_threshold

GiB = 1024**3


def test_new_settings_merge_from_defaults_and_phases(src: str) -> None:
    spec = parse(src, """
        name: limits
        max_parallel: 3
        defaults:
          devices: {local: [0, 2], gpu1: [1]}
          wait_for: ["ckpt/pre_{w}.pt"]
          foreign_threshold: 2GiB
        phases:
          - name: pre
            grid: {w: [64]}
            max_parallel: 1
            cmd: run
          - name: main
            grid: {w: [64]}
            devices: {gpu2: [3]}
            wait_for: "out/{id}/*.done"
            cmd: run
    """)
    pre, main = spec.jobs
    assert spec.max_parallel == 3 and spec.phase_max_parallel == {"pre": 1}
    assert pre.devices == {"local": [0, 2], "gpu1": [1]} and main.devices == {"gpu2": [3]}  # a phase replaces
    assert pre.wait_for == ["ckpt/pre_64.pt"] and main.wait_for == ["out/main_w64/*.done"]
    assert pre.foreign_threshold == main.foreign_threshold == 2 * GiB


def test_single_phase_max_parallel_limits_the_submission(src: str) -> None:
    spec = parse(src, "name: one\nmax_parallel: 2\ngrid: {i: [1, 2, 3]}\ncmd: run\n")
    assert (spec.max_parallel, spec.phase_max_parallel) == (2, {})
    assert spec.jobs[0].devices == {} and spec.jobs[0].wait_for == [] and spec.jobs[0].foreign_threshold is None


@pytest.mark.parametrize(("setting", "field", "message"), [
    ("devices: {local: [0, -1]}", "devices.local[1]", "expected an integer >= 0, got -1"),
    ("devices: {local: [1, 0, 1]}", "devices.local", "GPU index 1 appears more than once"),
    ("devices: {local: []}", "devices.local", "expected a non-empty list of GPU indices, got an empty list"),
    ("devices: {local: 0}", "devices.local", "expected a list, got 0"),
    ("devices: [0, 1]", "devices", "expected a mapping, got a list"),
    ("wait_for: ['ckpt/{nope}.pt']", "wait_for[0]", "unknown placeholder {nope}"),
    ("foreign_threshold: 0", "foreign_threshold", "expected a positive size such as 500MiB or 2GiB, got 0"),
    ("foreign_threshold: lots", "foreign_threshold", "expected a size such as 20GiB"),
    ("max_parallel: 0", "max_parallel", "expected an integer >= 1, got 0"),
    ("max_parallel: two", "max_parallel", "expected an integer >= 1, got 'two'"),
])
def test_new_settings_errors_name_file_line_and_field(src: str, setting: str, field: str, message: str) -> None:
    text = f"""
        name: x
        grid: {{w: [1]}}
        {setting}
        cmd: run
    """
    p = one(src, text)
    assert (p.file, p.line, p.field) == (src, line(text, setting.split(":")[0] + ":"), field)
    assert message in p.message
    assert str(ManifestError([p])).startswith(f"{src}:{p.line}:")


def test_max_parallel_is_not_a_default(src: str) -> None:
    text = """
        name: x
        defaults: {max_parallel: 2}
        phases:
          - {name: a, cmd: run}
    """
    p = one(src, text)
    assert (p.field, p.line) == ("defaults.max_parallel", line(text, "defaults:"))
    assert "unknown field 'max_parallel'" in p.message


def test_after_may_name_a_job_of_another_phase(src: str) -> None:
    spec = parse(src, """
        name: x
        phases:
          - name: pre
            grid: {w: [64, 192]}
            id: "pre_w{w}"
            cmd: run
          - name: teacher
            grid: {w: [64, 192]}
            cmd: run
          - name: main
            after: [teacher, pre_w192]
            match: [w]
            grid: {w: [64, 192]}
            cmd: run
    """)
    deps = {j.id: j.deps for j in spec.jobs if j.phase == "main"}
    assert deps == {"main_w64": ["teacher_w64", "pre_w192"], "main_w192": ["teacher_w192", "pre_w192"]}


def test_a_job_id_in_after_is_an_edge_to_its_phase_for_cycles(src: str) -> None:
    text = """
        name: x
        phases:
          - name: a
            after: [b1]
            cmd: run
          - name: b
            grid: {i: [1]}
            id: "b{i}"
            after: [a]
            cmd: run
    """
    p = one(src, text)
    assert (p.field, p.line, p.message) == ("phases[1].after", line(text, "after: [a]"), "cycle in after: a -> b -> a")


def test_match_needs_a_phase_in_after_not_only_job_ids(src: str) -> None:
    text = """
        name: x
        phases:
          - name: a
            grid: {i: [1]}
            cmd: run
          - name: b
            after: [a_i1]
            match: [i]
            grid: {i: [1]}
            cmd: run
    """
    p = one(src, text)
    assert (p.field, p.line) == ("phases[1].match", line(text, "match:"))
    assert p.message.startswith("match needs after")


REMOTE_ONLY = """
    name: far
    workdir: /nonexistent/exq-far
    defaults: {hosts: [gpu-b, gpu-a]}
    phases:
      - {name: a, cmd: run}
      - {name: b, HOSTS cmd: run}
"""


def test_workdir_missing_here_is_fine_when_every_job_runs_elsewhere(src: str) -> None:
    spec = parse(src, REMOTE_ONLY.replace("HOSTS ", ""))
    assert spec.jobs[0].workdir == "/nonexistent/exq-far"
    assert workdir_note(spec) == ("workdir /nonexistent/exq-far is not on this machine; every job runs on "
                                  "gpu-a, gpu-b, where it is checked when each job launches")


@pytest.mark.parametrize("hosts", ["hosts: [gpu-a, local],", "hosts: null,"])
def test_workdir_missing_here_is_refused_when_a_job_may_run_here(src: str, hosts: str) -> None:
    text = REMOTE_ONLY.replace("HOSTS", hosts)
    p = one(src, text)
    assert (p.field, p.line) == ("workdir", line(text, "workdir:"))
    assert p.message == "workdir /nonexistent/exq-far does not exist"


def test_workdir_copied_by_sync_must_exist_here(src: str) -> None:
    text = REMOTE_ONLY.replace("HOSTS ", "").replace("name: far", "name: far\n    sync: {dest: far}")
    assert one(src, text).message == "workdir /nonexistent/exq-far does not exist"


def test_no_workdir_note_when_the_workdir_is_here(src: str) -> None:
    assert workdir_note(parse(src, "name: x\nhosts: [gpu-a]\ncmd: run\n")) is None
