"""The runs file: the commands of a plan's runs, which neither the plan nor the tracker holds.

    # runs.yaml, beside EXPERIMENT_TRACKER.md
    workdir: ..                       # default: this file's directory
    setup: source .venv/bin/activate
    defaults: {gpus: 1, gpu_memory: 20GiB, timeout: 4h}   # any exq manifest default
    seeds: [0, 1, 2]                  # default seed grid ({seed} in commands)
    key_metric: top1                  # the metric Notes, results and the log report (default: the first)
    milestones:
      M0: {cmd: "python train.py --epochs 2 --seed {seed}", seeds: [0], key_metric: loss}
    blocks:
      B2: {cmd: "python ablate.py --variant {run_id} --seed {seed}"}
    runs:
      R003: {cmd: "python train.py --model resnet18 --seed {seed}"}
    default: {cmd: "python train.py --variant {run_id} --seed {seed}"}
    gates:                            # machine-checked milestone gates (see exq.bridge.gates)
      M0: [{metric: final_loss, below: initial_loss}]

A run's command comes from `runs.<id>`, else `blocks.<its block>`, else `milestones.<milestone>`, else
`default`. Placeholders: {run_id}, {milestone}, {seed} and the entry's `params`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from exq.bridge.gates import GateRule
from exq.errors import ManifestError
from exq.yamldoc import Problems, parse_document, read_document
from exq.yamlfields import Str


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunCommand(_Model):
    cmd: Str
    seeds: list[int] | None = None
    params: dict[Str, Any] = {}
    key_metric: Str | None = None


class RunsFile(_Model):
    workdir: Str | None = None
    setup: Str | None = None
    env: dict[Str, Any] = {}
    defaults: dict[Str, Any] = {}
    seeds: list[int] = [0]
    key_metric: Str | None = None
    milestones: dict[Str, RunCommand] = {}
    blocks: dict[Str, RunCommand] = {}
    runs: dict[Str, RunCommand] = {}
    default: RunCommand | None = None
    gates: dict[Str, list[GateRule]] = {}

    def command(self, run_id: str, milestone: str, block: str | None) -> RunCommand | None:
        """The entry giving the run's command: by run id, else block, else milestone, else the default."""
        by_block = self.blocks.get(block) if block is not None else None
        return self.runs.get(run_id) or by_block or self.milestones.get(milestone) or self.default

    def metric(self, run_id: str, milestone: str, block: str | None) -> str | None:
        """The run's key metric: its entry's, else the file's (None: the first numeric one it wrote)."""
        entry = self.command(run_id, milestone, block)
        return (entry.key_metric if entry is not None else None) or self.key_metric


@dataclass(frozen=True)
class LoadedRuns:
    file: RunsFile
    source: str
    """The runs file's absolute path."""
    problems: Problems
    """For checks after validation, located at the file's lines."""


def load_runs(path: Path) -> LoadedRuns:
    """The runs file at `path`; ManifestError with file:line:field when it is invalid."""
    source = str(path.absolute())
    text = read_document(source, "runs", ManifestError)
    runs, problems = parse_document(RunsFile, text, source, ManifestError,
                                    "a mapping with runs, blocks, milestones or default")
    return LoadedRuns(runs, source, problems)
