"""Importing ARIS grid specs: the emitted manifest validates, keeps the spec's meaning, and says what it dropped."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from exq.bridge.aris import Conversion, convert_aris
from exq.errors import ManifestError
from exq.queue.jobspec import SubmissionSpec
from exq.queue.manifest import parse_manifest

EXAMPLE = Path("/work/shared/formats/aris-grid-spec.example.yaml")
if not EXAMPLE.exists():  # the shared folder beside the checkout
    EXAMPLE = Path(__file__).resolve().parents[2] / "shared" / "formats" / EXAMPLE.name

ARGV = f"{shlex.quote(sys.executable)} -c 'import json, sys; print(json.dumps(sys.argv[1:]))'"


def convert(tmp_path: Path, text: str) -> tuple[Conversion, SubmissionSpec]:
    """Convert spec `text` (with `WORKDIR` standing for an existing directory) and validate the result."""
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    spec = tmp_path / "spec.yaml"
    spec.write_text(text.replace("WORKDIR", str(workdir)))
    conversion = convert_aris(spec.read_text(), str(spec))
    return conversion, parse_manifest(conversion.manifest_yaml, str(tmp_path / "spec.exq.yaml"))


def argv_of(cmd: str, tmp_path: Path) -> list[str]:
    """What the program in `cmd` received as arguments when sh ran it."""
    out = subprocess.run(["sh", "-c", cmd], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    return list(json.loads(out))


def errors(tmp_path: Path, text: str) -> list[str]:
    spec = tmp_path / "bad.yaml"
    spec.write_text(textwrap.dedent(text))
    with pytest.raises(ManifestError) as info:
        convert_aris(spec.read_text(), str(spec))
    return [str(p) for p in info.value.problems]


def test_example_spec(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("/home/alice/vit-dropout", "WORKDIR")
    conversion, sub = convert(tmp_path, text)
    jobs = {j.id: j for j in sub.jobs}
    assert sub.name == "vit_dropout" and sub.phases == ["pretrain", "finetune"]
    assert list(jobs) == ["pre_w192", "pre_w384"] + [f"ft_w{w}_s{s}" for w in (192, 384) for s in (0, 1, 2)]
    ft = jobs["ft_w384_s2"]
    assert ft.deps == ["pre_w192", "pre_w384"]
    assert ft.cmd == "python finetune.py --init ckpt/pre_w384.pt --seed 2 --gpu 0"
    assert ft.outputs == ["results/ft_w384_s2.json"] and jobs["pre_w192"].outputs == ["ckpt/pre_w192.pt"]
    assert ft.workdir == str(tmp_path / "work")
    assert ft.setup == 'source "$(conda info --base)/etc/profile.d/conda.sh" && conda activate vit'
    assert (ft.retry.oom.max, ft.retry.oom.backoff, ft.retry.oom.factor) == (2, 90.0, 1.0)
    assert ft.hosts == ["gpu-a"]
    notes = "\n".join(conversion.notes)
    for key in ("ssh (line 5)", "gpus (line 6)", "max_parallel (line 7)", "gpu_free_threshold_mib (line 8)"):
        assert key in notes
    assert "--foreign-threshold 800MiB" in notes and "config.yaml" in notes
    assert "phases[1].template.cmd (line 27): ${GPU} -> 0" in notes


def test_output_reads_like_a_manifest(tmp_path: Path) -> None:
    conversion, _ = convert(tmp_path, EXAMPLE.read_text().replace("/home/alice/vit-dropout", "WORKDIR"))
    text = conversion.manifest_yaml
    lines = text.splitlines()
    assert lines[0] == f"# Imported by exq from the ARIS grid spec {tmp_path / 'spec.yaml'}."
    body = lines[next(i for i, line in enumerate(lines) if not line.startswith("#")):]
    assert all(line.startswith("# ") for line in lines[: len(lines) - len(body)])
    assert all(note.split(":")[0] in text for note in conversion.notes)  # the notes are in the header too
    doc = yaml.safe_load(text)
    assert list(doc) == ["name", "workdir", "setup", "defaults", "phases"]
    assert list(doc["phases"][1]) == ["name", "after", "grid", "id", "cmd", "outputs"]
    assert doc["defaults"] == {"retry": {"oom": {"max": 2, "backoff": "90s", "factor": 1}}, "hosts": ["gpu-a"]}
    assert "    width: [192, 384]" in body and "  id: ft_w{width}_s{seed}" in body


def test_unknown_keys_and_shell_text_are_kept_and_reported(tmp_path: Path) -> None:
    conversion, sub = convert(tmp_path, textwrap.dedent("""\
        project: "my project!"
        cwd: WORKDIR
        conda: vit
        conda_hook: /opt/conda/bin/conda
        preconditions: [{type: checkpoint_exists, path: x.pt}]
        phases:
          - name: train
            grid: {lr: [0.1, 0.01]}
            adapter: shell
            template:
              id: "t_${lr}"
              cmd: "CUDA_VISIBLE_DEVICES=${GPU} python -c 'print({\\"lr\\": ${lr}})' --home ${HOME}"
              resources: {cpu: 4}
        """))
    assert sub.name == "my-project"
    job = sub.jobs[0]
    assert job.id == "t_0.1" and job.setup == "eval \"$(/opt/conda/bin/conda shell.posix hook)\" && conda activate vit"
    assert job.cmd == "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES python -c 'print({\"lr\": 0.1})' --home ${HOME}"
    assert job.retry.oom.max == 2 and job.retry.oom.backoff == 120  # ARIS's defaults
    notes = "\n".join(conversion.notes)
    for key in ("project (line 1)", "preconditions (line 5): unknown key", "phases[0].adapter (line 9): unknown key",
                "phases[0].template.resources (line 13): unknown key", "${HOME} kept as shell variables",
                "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES", "oom_retry: not given"):
        assert key in notes


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
          - {{id: r2, args: "--lr 0.01"}}
          - {{id: r3}}
        """))
    r1, r2, r3 = sub.jobs
    assert [r1.id, r2.id, r3.id] == ["r1", "r2", "r3"]
    assert argv_of(r1.cmd, tmp_path) == ["--fixed", "a b", "{x}", "--lr", "0.1", "--name", "c d", "--gpu", "0"]
    assert argv_of(r2.cmd, tmp_path) == ["--fixed", "a b", "{x}", "--lr", "0.01"]
    assert argv_of(r3.cmd, tmp_path) == ["--fixed", "a b", "{x}"]
    assert (r1.retry.oom.max, r1.retry.oom.backoff, r1.retry.oom.max_backoff) == (0, 900, 900)
    assert r1.hosts is None and any(note.startswith("ssh (line 4): the jobs run on the daemon's") for note in
                                    conversion.notes)
    doc = yaml.safe_load(conversion.manifest_yaml)
    assert doc["phases"][0]["grid"]["zip"][0]["job"] == ["r1", "r2", "r3"]
    assert any("eval '<default_cmd>' {args}" in note for note in conversion.notes)


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


def test_errors_name_file_line_and_field(tmp_path: Path) -> None:
    source = tmp_path / "bad.yaml"
    assert errors(tmp_path, "project: x\ncwd: [unclosed\n")[0].startswith(f"{source}:3:1: invalid YAML")
    problems = errors(tmp_path, """\
        project: x
        gpus: two
        oom_retry: {delay: 90, max_tries: 3}
        phases:
          - name: a
            grid: {w: []}
            template: {id: "a_${width}"}
        """)
    assert problems[0] == f"{source}:1:1: cwd: missing required field 'cwd'"
    assert f"{source}:2:7: gpus: expected a list" in problems[1]
    assert problems[2].startswith(f"{source}:3:24: oom_retry.max_tries: unknown field 'max_tries'")
    assert problems[3].startswith(f"{source}:6:15: phases[0].grid.w: List should have at least 1 item")
    assert problems[4] == f"{source}:7:15: phases[0].template.cmd: missing required field 'cmd'"
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


def test_cross_phase_problems_are_reported_at_the_spec(tmp_path: Path) -> None:
    source = tmp_path / "bad.yaml"
    problems = errors(tmp_path, """\
        project: x
        cwd: /tmp
        phases:
          - {name: a, template: {cmd: run}}
          - {name: b, depends_on: [c], template: {cmd: run}}
        """)
    assert problems == [f"{source}:5:5: phases[1]: the imported manifest would be invalid: phases[1].after[0]: "
                        "unknown phase 'c'; phases: a, b"]


def test_cli_import_writes_a_manifest_that_validates_and_reports_notes(tmp_path: Path) -> None:
    text = EXAMPLE_FOR_CLI.replace("CWD", str(tmp_path))
    spec = tmp_path / "grid.yaml"
    spec.write_text(text)
    out = tmp_path / "imported.yaml"
    proc = subprocess.run([sys.executable, "-m", "exq", "import", "aris", str(spec), "-o", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "note:" in proc.stderr and "max_parallel" in proc.stderr
    check = subprocess.run([sys.executable, "-m", "exq", "validate", str(out)], capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0 and "pre_w192" in check.stdout


EXAMPLE_FOR_CLI = """\
project: vit_dropout
cwd: CWD
conda: vit
gpus: [0, 1]
max_parallel: 2
phases:
  - name: pretrain
    grid: {width: [192, 384]}
    template:
      id: "pre_w${width}"
      cmd: "python pretrain.py --width ${width} --gpu ${GPU}"
"""
