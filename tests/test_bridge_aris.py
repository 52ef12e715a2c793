"""Importing ARIS queue manifests: every form ARIS runs becomes an exq manifest that validates, runs the same
commands with the same limits, and says what it could not carry over."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Exq, wait_until

from exq.bridge.aris import Conversion, convert_aris, import_aris
from exq.errors import ManifestError
from exq.model.jobspec import JobSpec, SubmissionSpec
from exq.model.manifest import parse_manifest

DATA = Path(__file__).parent / "data" / "bridge" / "aris"
ALICE = re.compile(r"/home/alice/[\w.-]+")
"""The `cwd` of the fixtures: replaced with a directory of the test."""
ARGV = f"{shlex.quote(sys.executable)} -c 'import json, sys; print(json.dumps(sys.argv[1:]))'"
TRAIN = """\
import json, os, sys, time
time.sleep(float(os.environ.get("TRAIN_SECONDS", "0")))
os.makedirs("out", exist_ok=True)
record = {"argv": sys.argv[1:], "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}
with open(os.path.join("out", os.environ.get("EXQ_JOB_ID", "argv") + ".json"), "w") as f:
    json.dump(record, f)
print(json.dumps(sys.argv[1:]))
"""
"""What the fixtures' `python3 train.py ...` runs: it records its arguments and GPU in out/<job id>.json."""


def project(tmp_path: Path, fixture: str) -> tuple[Path, Path]:
    """The fixture copied into a project folder of the test (its cwd pointing there, with train.py): the copy's
    path, and the project folder."""
    folder = tmp_path / "project"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.py").write_text(TRAIN)
    spec = folder / fixture
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(ALICE.sub(str(folder), (DATA / fixture).read_text()))
    return spec, folder


def imported(tmp_path: Path, fixture: str) -> tuple[Conversion, SubmissionSpec, Path]:
    """The fixture imported, and the imported manifest validated by exq's own parser."""
    spec, folder = project(tmp_path, fixture)
    conversion = import_aris(str(spec))
    return conversion, parse_manifest(conversion.manifest_yaml, str(tmp_path / "imported.yaml")), folder


def convert(tmp_path: Path, text: str) -> tuple[Conversion, SubmissionSpec]:
    """Convert spec `text` (with `WORKDIR` standing for an existing directory) and validate the result."""
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    spec = tmp_path / "spec.yaml"
    spec.write_text(text.replace("WORKDIR", str(workdir)))
    conversion = convert_aris(spec.read_text(), str(spec))
    return conversion, parse_manifest(conversion.manifest_yaml, str(tmp_path / "spec.exq.yaml"))


def argv_of(cmd: str, cwd: Path) -> list[str]:
    """What the program in `cmd` received as arguments when sh ran it (its last line of output)."""
    out = subprocess.run(["sh", "-c", cmd], cwd=cwd, capture_output=True, text=True, check=True, timeout=30).stdout
    return list(json.loads(out.splitlines()[-1]))


def evaluated(job: JobSpec) -> str:
    """The shell script an imported built job runs: its cmd is `eval SCRIPT`."""
    words = shlex.split(job.cmd)
    assert words[0] == "eval" and len(words) == 2, job.cmd
    return words[1]


def errors(tmp_path: Path, text: str, name: str = "bad.yaml") -> list[str]:
    spec = tmp_path / name
    spec.write_text(textwrap.dedent(text))
    with pytest.raises(ManifestError) as info:
        import_aris(str(spec))
    return [str(p) for p in info.value.problems]


def noted(conversion: Conversion) -> str:
    return "\n".join(conversion.notes)


# ---------------------------------------------------------------- each form, converted and validated


def test_grid_spec_yaml_the_shared_example(tmp_path: Path) -> None:
    conversion, sub, folder = imported(tmp_path, "grid_spec.yaml")
    jobs = {j.id: j for j in sub.jobs}
    assert sub.name == "vit_dropout" and sub.phases == ["pretrain", "finetune"] and sub.max_parallel == 4
    assert list(jobs) == ["pre_w192", "pre_w384"] + [f"ft_w{w}_s{s}" for w in (192, 384) for s in (0, 1, 2)]
    ft = jobs["ft_w384_s2"]
    assert ft.deps == ["pre_w192", "pre_w384"]
    assert ft.cmd == "python finetune.py --init ckpt/pre_w384.pt --seed 2 --gpu 0"
    assert jobs["pre_w192"].cmd == "python pretrain.py --width 192 --epochs 50 --out ckpt/pre_w192.pt"
    assert ft.outputs == ["results/ft_w384_s2.json"] and jobs["pre_w192"].outputs == ["ckpt/pre_w192.pt"]
    assert ft.workdir == str(folder)
    assert ft.setup == '. "$(conda info --base)/etc/profile.d/conda.sh" && conda activate vit'
    assert (ft.retry.oom.max, ft.retry.oom.backoff, ft.retry.oom.factor) == (2, 90.0, 1.0)
    assert ft.hosts == ["gpu-a"] and ft.devices == {"gpu-a": [0, 1, 2, 3]}
    assert ft.foreign_threshold == 800 * 2**20 and ft.wait_for == []
    notes = noted(conversion)
    assert "ssh (line 5): -> hosts: [gpu-a]" in notes and "config.yaml" in notes
    assert "phases[1].template.cmd (line 27): ${GPU} -> 0" in notes
    for mapped in ("gpus", "max_parallel", "gpu_free_threshold_mib"):  # carried over exactly: nothing to say
        assert f"{mapped} (line" not in notes


def test_the_fixture_is_the_shared_example() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "formats" / "aris-grid-spec.example.yaml"
    if shared.exists():  # beside the checkout when there is one
        assert (DATA / "grid_spec.yaml").read_text() == shared.read_text()


def test_grid_spec_json_with_tabs_keeps_its_lines(tmp_path: Path) -> None:
    conversion, sub, _ = imported(tmp_path, "grid_spec.json")
    jobs = {j.id: j for j in sub.jobs}
    assert list(jobs) == ["lr0.1_s0", "lr0.1_s1", "lr0.01_s0", "lr0.01_s1", "report"]
    assert jobs["lr0.01_s1"].cmd == "python train.py --lr 0.01 --seed 1 --device cuda:0"
    assert jobs["lr0.01_s1"].outputs == ["runs/lr0.01_s1/metrics.json"]
    assert jobs["report"].cmd == 'python report.py runs --title "\N{ROCKET} lr sweep"'  # an escaped pair in JSON
    assert jobs["report"].deps == list(jobs)[:4]  # depends_on as a string
    assert jobs["report"].devices == {"gpu-b": [2, 3]} and jobs["report"].hosts == ["gpu-b"]
    assert (jobs["report"].retry.oom.max, jobs["report"].retry.oom.backoff) == (1, 60.0)
    assert sub.max_parallel is None and jobs["report"].foreign_threshold is None
    notes = noted(conversion)
    assert "phases[0].template.cmd (line 14): ${GPU} -> 0" in notes and "ssh (line 5)" in notes


def test_jobs_with_a_folded_default_cmd_run_it_whole_with_their_args(tmp_path: Path) -> None:
    conversion, sub, _ = imported(tmp_path, "jobs_folded.yaml")
    base = "python3 run_distill.py --backbone softmax --lam 0.5 --K 500 --L 96 --n_steps 30000 --lr 1e-4"
    assert [(j.id, j.cmd) for j in sub.jobs] == [
        ("s200_N64", f"{base} --seed 200 --n_hidden 64"), ("s200_N128", f"{base} --seed 200 --n_hidden 128"),
        ("s201_N64", f"{base} --seed 201 --n_hidden 64")]
    job = sub.jobs[0]
    assert job.wait_for == ["checkpoints/teacher_L96_K500.pt"] and job.devices == {"gpu-server": [0, 1, 2, 3]}
    assert sub.max_parallel == 2 and job.foreign_threshold == 500 * 2**20 and job.hosts == ["gpu-server"]
    assert "preconditions" not in noted(conversion)


def test_jobs_with_a_literal_default_cmd_run_one_script_with_their_args(tmp_path: Path) -> None:
    conversion, sub, folder = imported(tmp_path, "jobs_literal.yaml")
    r1, r2, r3 = sub.jobs
    assert argv_of(r1.cmd, folder) == ["--fixed", "a b", "--lr", "0.1", "--gpu", "0"]
    assert argv_of(r2.cmd, folder) == ["--fixed", "a b", "--lr", "0.01", "--name", "c d"]
    assert argv_of(r3.cmd, folder) == ["--fixed", "a b", "--lr", "0.001"]  # a folded args block: no newline
    assert (folder / "out").is_dir()  # the script's first line ran too
    assert r1.setup is None and r1.hosts is None and r1.devices == {} and sub.max_parallel == 2
    assert not any(n.startswith("conda") for n in conversion.notes)  # conda: none: no activation, nothing lost


def test_built_json_manifest_runs_each_jobs_own_cmd(tmp_path: Path) -> None:
    conversion, sub, folder = imported(tmp_path, "ecg_sweep/manifest.json")
    original = json.loads((DATA / "ecg_sweep" / "manifest.json").read_text())
    aris = {j["id"]: j for p in original["phases"] for j in p["jobs"]}
    jobs = {j.id: j for j in sub.jobs}
    assert list(jobs) == list(aris) and sub.phases == ["train", "evaluate"] and sub.name == "ecg_sweep"
    for job_id in ("ecg_resnet", "ecg_lstm", "ecg_tcn", "ecg_eval"):
        assert evaluated(jobs[job_id]) == aris[job_id]["cmd"]
        assert jobs[job_id].outputs == [aris[job_id]["expected_output"]]
    assert evaluated(jobs["ecg_gru"]) == aris["ecg_gru"]["cmd"].replace("${GPU}", "$CUDA_VISIBLE_DEVICES")
    assert argv_of(jobs["ecg_lstm"].cmd, folder) == ["--model", "lstm", "--epochs", "2", "--tag", "ecg [v1]"]
    assert jobs["ecg_eval"].deps == ["ecg_resnet", "ecg_lstm", "ecg_tcn", "ecg_gru"]
    assert jobs["ecg_eval"].setup is None and jobs["ecg_eval"].hosts is None and jobs["ecg_eval"].wait_for == []
    assert jobs["ecg_eval"].devices == {"local": [0, 1, 2]} and sub.max_parallel == 2
    assert jobs["ecg_eval"].workdir == str(folder)
    notes = noted(conversion)
    assert "default_cmd (line 6): unused with 'phases'" in notes and "preconditions" not in notes
    assert "ssh (line 4): the jobs run on the daemon's own machine" in notes


def test_built_yaml_manifest_without_project_or_cwd(tmp_path: Path) -> None:
    conversion, sub, folder = imported(tmp_path, "distill_run/manifest.yaml")
    jobs = {j.id: j for j in sub.jobs}
    assert sub.name == "distill_run" and jobs["summary"].workdir == str(folder / "distill_run")
    assert evaluated(jobs["student_b"]) == "python3 train.py --model student_b --teacher ckpt/teacher.pt"
    assert evaluated(jobs["summary"]) == 'python3 train.py --model summary\necho "2 students" > out/summary.txt'
    assert jobs["summary"].deps == ["student_a", "student_b"]  # depends_on: distill
    assert jobs["summary"].wait_for == ["ckpt/teacher.pt", "data/train.bin", "data/vocab.json"]
    assert jobs["summary"].devices == {"local": [1]} and sub.max_parallel == 1
    assert jobs["summary"].foreign_threshold == 800 * 2**20 and jobs["summary"].setup is None
    notes = noted(conversion)
    assert "project: not given (ARIS called it 'unknown'): named 'distill_run' after the file's folder" in notes
    assert f"cwd: not given: ARIS ran the jobs in the directory it was started in; workdir is this file's " \
           f"folder, {folder / 'distill_run'}" in notes


def test_no_command_is_split_over_lines(tmp_path: Path) -> None:
    for fixture in ("grid_spec.yaml", "grid_spec.json", "jobs_folded.yaml", "ecg_sweep/manifest.json"):
        _, sub, _ = imported(tmp_path / fixture.replace("/", "_"), fixture)
        assert all("\n" not in job.cmd and job.cmd == job.cmd.strip() for job in sub.jobs), fixture


def test_output_reads_like_a_manifest(tmp_path: Path) -> None:
    conversion, _, _ = imported(tmp_path, "grid_spec.yaml")
    text = conversion.manifest_yaml
    lines = text.splitlines()
    assert lines[0] == f"# Imported by exq from the ARIS queue manifest {tmp_path / 'project' / 'grid_spec.yaml'}."
    body = lines[next(i for i, line in enumerate(lines) if not line.startswith("#")):]
    assert all(line.startswith("# ") for line in lines[: len(lines) - len(body)])
    assert all(note.split(":")[0] in text for note in conversion.notes)  # the notes are in the header too
    doc = yaml.safe_load(text)
    assert list(doc) == ["name", "workdir", "setup", "max_parallel", "defaults", "phases"]
    assert list(doc["phases"][1]) == ["name", "after", "grid", "id", "cmd", "outputs"]
    assert doc["defaults"] == {"retry": {"oom": {"max": 2, "backoff": "90s", "factor": 1}}, "hosts": ["gpu-a"],
                               "devices": {"gpu-a": [0, 1, 2, 3]}, "foreign_threshold": "800MiB"}
    assert "    width: [192, 384]" in body and "  id: ft_w{width}_s{seed}" in body
    script = yaml.safe_load(imported(tmp_path / "b", "distill_run/manifest.yaml")[0].manifest_yaml)
    assert script["phases"][0]["grid"]["zip"][0]["cmd"][1] == \
        "python3 train.py --model student_b --teacher ckpt/teacher.pt"


# ---------------------------------------------------------------- keys and values


def test_unknown_keys_and_shell_text_are_kept_and_reported(tmp_path: Path) -> None:
    conversion, sub = convert(tmp_path, textwrap.dedent("""\
        project: "my project!"
        cwd: WORKDIR
        conda: vit
        conda_hook: /opt/conda/bin/conda
        preconditions: [{type: checkpoint_exists, path: x.pt, note: teacher}, {checkpoint_exists: y.pt}, z.pt]
        phases:
          - name: "train [a]"
            grid: {lr: [0.1, 0.01]}
            adapter: shell
            template:
              id: "t_${lr}"
              cmd: "CUDA_VISIBLE_DEVICES=${GPU} python -c 'print({\\"lr\\": ${lr}})' --home ${HOME}"
              resources: {cpu: 4}
          - name: eval
            depends_on: "train [a]"
            template: {cmd: run}
        """))
    assert sub.name == "my-project" and sub.phases == ["train-a", "eval"]
    job = sub.jobs[0]
    assert job.id == "t_0.1" and job.setup == "eval \"$(/opt/conda/bin/conda shell.posix hook)\" && conda activate vit"
    assert job.cmd == "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES python -c 'print({\"lr\": 0.1})' --home ${HOME}"
    assert job.retry.oom.max == 2 and job.retry.oom.backoff == 120  # ARIS's defaults
    assert job.wait_for == ["x.pt", "y.pt", "z.pt"] and sub.jobs[2].deps == ["t_0.1", "t_0.01"]
    notes = noted(conversion)
    for key in ("project (line 1)", "preconditions[0].note (line 5): unknown key", "phases[0].name (line 7)",
                "phases[0].adapter (line 9): unknown key", "phases[0].template.resources (line 13): unknown key",
                "${HOME} kept as shell variables", "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES",
                "oom_retry: not given"):
        assert key in notes


def test_conda_none_null_or_missing_activates_nothing(tmp_path: Path) -> None:
    for conda, note in (("conda: none", ""), ("conda: None", ""), ("conda:", ""), ("conda: ''", ""),
                        ("", "conda: not given: ARIS activated 'base'")):
        conversion, sub = convert(tmp_path, f"cwd: WORKDIR\n{conda}\nphases: [{{name: a, template: {{cmd: run}}}}]\n")
        assert sub.jobs[0].setup is None
        fields = [n.split(" ")[0].rstrip(":") for n in conversion.notes]
        assert (note in noted(conversion)) if note else "conda" not in fields


def test_jobs_with_string_args_keep_their_shell_words(tmp_path: Path) -> None:
    conversion, sub = convert(tmp_path, textwrap.dedent(f"""\
        project: sweep
        cwd: WORKDIR
        conda: base
        ssh: localhost
        oom_retry: {{delay: 900, max_attempts: 1}}
        default_cmd: {ARGV} --fixed "a b" '{{x}}'
        jobs:
          - {{id: r1, args: "--lr 0.1 --name 'c d' --gpu ${{GPU}}"}}
          - {{id: r2, args: "--lr 0.01 --gpu ${{GPU}}"}}
          - {{id: r3}}
        """))
    r1, r2, r3 = sub.jobs
    assert [r1.id, r2.id, r3.id] == ["r1", "r2", "r3"]
    assert argv_of(r1.cmd, tmp_path) == ["--fixed", "a b", "{x}", "--lr", "0.1", "--name", "c d", "--gpu", "0"]
    assert argv_of(r2.cmd, tmp_path) == ["--fixed", "a b", "{x}", "--lr", "0.01", "--gpu", "0"]
    assert argv_of(r3.cmd, tmp_path) == ["--fixed", "a b", "{x}"]
    assert (r1.retry.oom.max, r1.retry.oom.backoff, r1.retry.oom.max_backoff) == (0, 900, 900)
    assert r1.hosts is None and any(note.startswith("ssh (line 4): the jobs run on the daemon's") for note in
                                    conversion.notes)
    doc = yaml.safe_load(conversion.manifest_yaml)
    assert doc["phases"][0]["grid"]["zip"][0]["job"] == ["r1", "r2", "r3"]
    assert any("eval '<default_cmd>' {args}" in note for note in conversion.notes)
    assert "jobs[0].args (line 8): ${GPU} -> 0: exq sets CUDA_VISIBLE_DEVICES, so the job sees its GPU as device 0 " \
           "(also 1 more place)" in conversion.notes


def test_jobs_with_mapping_args_become_flags(tmp_path: Path) -> None:
    conversion, sub = convert(tmp_path, textwrap.dedent(f"""\
        project: distill
        cwd: WORKDIR
        conda: base
        default_cmd: {ARGV} --K 500
        jobs:
          - {{id: s200_N64, args: {{seed: 200, n_hidden: 64, tag: "x y"}}}}
          - {{id: s201_N128, args: {{seed: 201, n_hidden: 128, tag: z}}}}
        """))
    doc = yaml.safe_load(conversion.manifest_yaml)["phases"][0]
    assert doc["grid"]["zip"][0] == {"job": ["s200_N64", "s201_N128"], "seed": [200, 201],
                                     "n_hidden": [64, 128], "tag": ["x y", "z"]}
    assert argv_of(sub.jobs[0].cmd, tmp_path) == ["--K", "500", "--seed", "200", "--n_hidden", "64", "--tag", "x y"]
    assert sub.jobs[1].params == {"job": "s201_N128", "seed": 201, "n_hidden": 128, "tag": "z"}
    assert any("`--key value` flags" in note for note in conversion.notes)


def test_relative_cwd_is_taken_from_the_files_folder(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    conversion, sub = convert(tmp_path, "cwd: code\nconda: none\nphases: [{name: a, template: {cmd: run}}]\n")
    assert sub.jobs[0].workdir == str(tmp_path / "code")
    assert f"cwd (line 1): 'code' is relative to the directory ARIS was started in; workdir is {tmp_path / 'code'}" \
        in noted(conversion)


def test_mixed_expected_outputs_in_a_built_phase(tmp_path: Path) -> None:
    conversion, sub = convert(tmp_path, textwrap.dedent("""\
        cwd: WORKDIR
        conda: none
        phases:
          - name: a
            jobs:
              - {id: a1, cmd: "touch a1.json", expected_output: a1.json}
              - {id: a2, cmd: "true"}
        """))
    assert [j.outputs for j in sub.jobs] == [["a1.json"], ["."]]
    assert "phases[0].jobs (line 5): the jobs without expected_output get the output glob '.'" in noted(conversion)


# ---------------------------------------------------------------- errors: file:line:field, every one at once


def test_errors_name_file_line_and_field(tmp_path: Path) -> None:
    source = tmp_path / "bad.yaml"
    assert errors(tmp_path, "project: x\ncwd: [unclosed\n")[0].startswith(f"{source}:3:1: invalid YAML")
    problems = errors(tmp_path, """\
        project: x
        gpus: two
        oom_retry: {delay: 90, max_tries: 3}
        max_parallel: 0
        phases:
          - name: a
            grid: {w: []}
            template: {id: "a_${width}"}
        """)
    assert f"{source}:2:7: gpus: expected a list" in problems[0]
    assert problems[1].startswith(f"{source}:3:24: oom_retry.max_tries: unknown field 'max_tries'")
    assert problems[2] == f"{source}:4:15: max_parallel: expected an integer >= 1, got 0"
    assert problems[3].startswith(f"{source}:7:15: phases[0].grid.w: List should have at least 1 item")
    assert problems[4] == f"{source}:8:15: phases[0].template.cmd: missing required field 'cmd'"
    problems = errors(tmp_path, """\
        project: x
        cwd: /tmp
        phases:
          - {name: a, grid: {w: [1]}, template: {id: "a_${width}", cmd: run}}
          - {name: b, depends_on: [c], template: {cmd: run}}
        """)
    assert problems[0].startswith(f"{source}:4:46: phases[0].template.id: ${{width}}: not a grid key")
    assert errors(tmp_path, "project: x\ncwd: /tmp\njobs: [{id: a, args: x}]\n") == [
        f"{source}:3:1: jobs: missing required field 'default_cmd' (the command)"]
    problems = errors(tmp_path, """\
        project: x
        cwd: /tmp
        default_cmd: run
        jobs: [{id: a}, {id: a}, {id: "b/c"}]
        """)
    assert [p.split(": ")[0] for p in problems] == [f"{source}:4:22", f"{source}:4:31"]


def test_built_manifest_errors(tmp_path: Path) -> None:
    source = tmp_path / "bad.yaml"
    problems = errors(tmp_path, """\
        cwd: /tmp
        phases:
          - name: a
            jobs:
              - {id: a1, cmd: "run"}
              - {id: a2}
              - id: a3
                cmd: >

        """)
    assert problems == [f"{source}:6:9: phases[0].jobs[1].cmd: missing required field 'cmd'",
                        f"{source}:8:14: phases[0].jobs[2].cmd: expected a shell command (a non-empty string), got ''"]
    problems = errors(tmp_path, """\
        cwd: /tmp
        phases:
          - name: a
            jobs: [{id: a1, cmd: run}]
          - name: b
          - name: c
            template: {cmd: run}
            jobs: [{id: c1, cmd: run}]
          - name: d
            jobs: []
        """)
    assert problems == [
        f"{source}:5:5: phases[1]: expected either 'template' (with 'grid': a grid spec) or 'jobs' (a built "
        "manifest's jobs, each with id and cmd)",
        f"{source}:6:5: phases[2]: expected either 'template' (with 'grid': a grid spec) or 'jobs' (a built "
        "manifest's jobs, each with id and cmd)",
        f"{source}:10:5: phases[3].jobs: expected at least one job"]


def test_precondition_errors(tmp_path: Path) -> None:
    source = tmp_path / "bad.yaml"
    problems = errors(tmp_path, """\
        cwd: /tmp
        preconditions:
          - {type: gpu_idle, gpu: 0}
          - {free_disk: 10GiB}
          - {type: file_exists}
          - 42
        phases: [{name: a, template: {cmd: run}}]
        """)
    assert problems == [
        f"{source}:3:12: preconditions[0].type: unknown precondition type 'gpu_idle': exq can wait only for paths "
        "to exist (checkpoint_exists or another *_exists type)",
        f"{source}:4:6: preconditions[1].free_disk: unknown precondition type 'free_disk': exq can wait only for "
        "paths to exist (checkpoint_exists or another *_exists type)",
        f"{source}:5:5: preconditions[2].path: expected the path that file_exists waits for, got null",
        f"{source}:6:5: preconditions[3]: expected a path, {{type: checkpoint_exists, path: X}} or "
        "{checkpoint_exists: X}, got 42"]


def test_precondition_paths_may_name_keys_every_job_has(tmp_path: Path) -> None:
    _, sub = convert(tmp_path, textwrap.dedent("""\
        cwd: WORKDIR
        conda: none
        preconditions: ["ckpt/teacher_s{seed}.pt", {checkpoint_exists: "ready/${id}"}, "data/{a,b}.bin"]
        default_cmd: python train.py
        jobs:
          - {id: s1, args: {seed: 1}}
          - {id: s2, args: {seed: 2}}
        """))
    assert [j.wait_for for j in sub.jobs] == [["ckpt/teacher_s1.pt", "ready/s1", "data/{a,b}.bin"],
                                              ["ckpt/teacher_s2.pt", "ready/s2", "data/{a,b}.bin"]]
    source = tmp_path / "bad.yaml"
    problems = errors(tmp_path, """\
        cwd: /tmp
        preconditions: ["ckpt/teacher_N{N}.pt"]
        phases: [{name: a, grid: {N: [1]}, template: {cmd: run}}, {name: b, jobs: [{id: b, cmd: run}]}]
        """)
    assert problems == [f"{source}:2:17: preconditions[0]: {{N}}: not a key every job has (id), so exq cannot fill it "
                        "in: write the path itself (a glob such as * is fine)"]


def test_json_errors_name_their_lines(tmp_path: Path) -> None:
    source = tmp_path / "manifest.json"
    assert errors(tmp_path, '{\n  "cwd": "/tmp",\n  "gpus": [0,]\n}\n', "manifest.json") == [
        f"{source}:3:14: invalid JSON: Expecting value"]
    problems = errors(tmp_path, """\
        {
          "cwd": "/tmp",
          "gpus": "two",
          "phases": [
            {"name": "a", "jobs": [{"id": "a/1", "cmd": "run"}]}
          ]
        }
        """, "manifest.json")
    assert problems == [f"{source}:3:11: gpus: expected a list, got 'two'"]
    problems = errors(tmp_path, """\
        {
          "cwd": "/tmp",
          "phases": [
            {"name": "a", "jobs": [{"id": "a/1", "cmd": "run"}]}
          ]
        }
        """, "manifest.json")
    assert problems == [f"{source}:4:35: phases[0].jobs[0].id: not a valid, unique exq job id (letters, digits, "
                        ". _ -): 'a/1'"]


def test_cross_phase_problems_are_reported_at_the_spec(tmp_path: Path) -> None:
    source = tmp_path / "bad.yaml"
    problems = errors(tmp_path, """\
        project: x
        cwd: /tmp
        phases:
          - {name: a, template: {cmd: run}}
          - {name: b, depends_on: [c], template: {cmd: run}}
          - {name: d, jobs: [{id: a, cmd: run}]}
        """)
    assert problems[0].startswith(f"{source}:5:5: phases[1]: the imported manifest would be invalid: "
                                  "phases[1].after[0]: unknown phase 'c'")


# ---------------------------------------------------------------- the command line


def test_cli_import_writes_a_manifest_that_validates_and_prints_notes_literally(exq: Exq) -> None:
    spec, _ = project(exq.root, "grid_spec.yaml")
    out = exq.root / "imported.yaml"
    proc = exq("import", "aris", str(spec), "-o", str(out))
    assert "note: ssh (line 5): -> hosts: [gpu-a]: configure it in ~/.config/exq/config.yaml (`hosts: {gpu-a: " \
           "{}}` for an ~/.ssh/config alias)" in proc.stderr
    assert f"wrote {out}" in proc.stdout
    check = exq("validate", str(out))
    assert "pre_w192" in check.stdout and "8 jobs" in check.stdout


def test_cli_import_errors_exit_2_without_a_traceback(exq: Exq) -> None:
    bad = exq.root / "manifest.json"
    bad.write_bytes(b'{\n  "cwd": "/tmp \xff"\n}\n')
    proc = exq("import", "aris", str(bad), check=False)
    assert proc.returncode == 2 and f"{bad}:2:" in proc.stderr and "Traceback" not in proc.stderr
    proc = exq("import", "aris", str(exq.root / "missing.yaml"), check=False)
    assert proc.returncode == 2 and "ARIS manifest file not found" in proc.stderr


# ---------------------------------------------------------------- end to end: a daemon on simulated GPUs


def import_with_cli(exq: Exq, fixture: str) -> tuple[Path, Path]:
    """`exq import aris` of the fixture, copied into a project of the test: the manifest written, the project."""
    spec, folder = project(exq.root, fixture)
    out = exq.root / "imported.yaml"
    exq("import", "aris", str(spec), "-o", str(out))
    return out, folder


def records(folder: Path) -> dict[str, dict[str, Any]]:
    """What each job's train.py recorded, by job id."""
    return {p.stem: json.loads(p.read_text()) for p in (folder / "out").glob("*.json")}


def peak_running(jobs: dict[str, dict[str, Any]]) -> int:
    """The most attempts that ran at the same time."""
    edges = sorted((t, d) for j in jobs.values() for a in j["attempts"]
                   for t, d in ((a["started_at"], 1), (a["ended_at"], -1)))
    running = peak = 0
    for _, delta in edges:
        running += delta
        peak = max(peak, running)
    return peak


def test_built_json_runs_at_most_max_parallel_on_its_gpus(exq: Exq) -> None:
    exq.env.update(EXQ_SIMULATE_GPUS="4x24GiB", TRAIN_SECONDS="1.5")
    manifest, folder = import_with_cli(exq, "ecg_sweep/manifest.json")
    exq("run", str(manifest), timeout=90)
    jobs = exq.jobs()
    assert {j["status"] for j in jobs.values()} == {"succeeded"} and len(jobs) == 5
    done = records(folder)
    assert done["ecg_lstm"]["argv"] == ["--model", "lstm", "--epochs", "2", "--tag", "ecg [v1]"]
    assert done["ecg_eval"]["argv"] == ["--model", "eval", "--inputs", "out/ecg_resnet.json", "out/ecg_lstm.json"]
    assert {r["gpu"] for r in done.values()} <= {"0", "1", "2"}  # gpus: [0, 1, 2]: never GPU 3
    assert peak_running({k: v for k, v in jobs.items() if k != "ecg_eval"}) == 2  # max_parallel: 2, of 4 free GPUs
    assert min(a["started_at"] for a in jobs["ecg_eval"]["attempts"]) >= \
        max(a["ended_at"] for k, j in jobs.items() if k != "ecg_eval" for a in j["attempts"])


def test_built_yaml_waits_for_its_preconditions_and_uses_only_gpu_1(exq: Exq) -> None:
    manifest, folder = import_with_cli(exq, "distill_run/manifest.yaml")
    workdir = folder / "distill_run"
    shutil.copy(folder / "train.py", workdir)
    exq.start_daemon()
    exq("submit", str(manifest))
    wait_until(lambda: len(exq.jobs()) == 3, 20)
    time.sleep(2)  # long enough for the daemon to have started them, were they not held
    assert {j["status"] for j in exq.jobs().values()} == {"queued"} and not (workdir / "out").exists()
    assert "ckpt/teacher.pt" in exq("status").stdout
    for path in ("ckpt/teacher.pt", "data/train.bin", "data/vocab.json"):
        (workdir / path).parent.mkdir(exist_ok=True)
        (workdir / path).write_text("ready")
    jobs = exq.wait_finished(3, 60)
    assert {j["status"] for j in jobs.values()} == {"succeeded"}
    done = records(workdir)
    assert {job: r["gpu"] for job, r in done.items()} == {"student_a": "1", "student_b": "1", "summary": "1"}
    assert done["student_b"]["argv"] == ["--model", "student_b", "--teacher", "ckpt/teacher.pt"]
    assert (workdir / "out" / "summary.txt").read_text() == "2 students\n"  # the literal script's second line
    assert all(a["gpus"] == [1] for j in jobs.values() for a in j["attempts"])


def test_jobs_with_a_literal_script_run_with_their_args(exq: Exq) -> None:
    manifest, folder = import_with_cli(exq, "jobs_literal.yaml")
    exq("run", str(manifest), timeout=90)
    assert {j["status"] for j in exq.jobs().values()} == {"succeeded"}
    assert {job: r["argv"] for job, r in records(folder).items()} == {
        "r1": ["--fixed", "a b", "--lr", "0.1", "--gpu", "0"],
        "r2": ["--fixed", "a b", "--lr", "0.01", "--name", "c d"],
        "r3": ["--fixed", "a b", "--lr", "0.001"]}
