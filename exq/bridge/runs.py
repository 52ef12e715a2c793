"""The runs file: the commands of a plan's runs, which neither the plan nor the tracker holds.

    # runs.yaml, beside EXPERIMENT_TRACKER.md
    workdir: ..                       # default: this file's directory
    setup: source .venv/bin/activate
    defaults: {gpus: 1, gpu_memory: 20GiB, timeout: 4h}   # any exq manifest default
    seeds: [0, 1, 2]                  # default seed grid ({seed} in commands)
    milestones:
      M0: {cmd: "python train.py --epochs 2 --seed {seed}", seeds: [0]}
    runs:
      R003: {cmd: "python train.py --model resnet18 --seed {seed}"}
    default: {cmd: "python train.py --variant {run_id} --seed {seed}"}

A run's command comes from `runs.<id>`, else `milestones.<milestone>`, else `default`.
Placeholders: {run_id}, {milestone}, {seed} and the entry's `params`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from exq.errors import ManifestError
from exq.yamldoc import parse_document, read_document
from exq.yamlfields import Str


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunCommand(_Model):
    cmd: Str
    seeds: list[int] | None = None
    params: dict[Str, Any] = {}


class RunsFile(_Model):
    workdir: Str | None = None
    setup: Str | None = None
    env: dict[Str, Any] = {}
    defaults: dict[Str, Any] = {}
    seeds: list[int] = [0]
    milestones: dict[Str, RunCommand] = {}
    runs: dict[Str, RunCommand] = {}
    default: RunCommand | None = None

    def command(self, run_id: str, milestone: str) -> RunCommand | None:
        return self.runs.get(run_id) or self.milestones.get(milestone) or self.default


def load_runs(path: Path) -> tuple[RunsFile, str]:
    """The runs file at `path` and its absolute path; ManifestError with file:line:field when invalid."""
    source = str(path.absolute())
    text = read_document(source, "runs", ManifestError)
    runs, _ = parse_document(RunsFile, text, source, ManifestError, "a mapping with runs, milestones or default")
    return runs, source
