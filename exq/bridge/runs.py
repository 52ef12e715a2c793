"""The runs file: the commands of a plan's runs, which neither the plan nor the tracker holds.

    # runs.yaml, beside EXPERIMENT_TRACKER.md
    workdir: ..                       # default: this file's directory
    setup: . .venv/bin/activate
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

A run's command comes from `runs.<id>`, else `blocks.<its block>`, else `milestones.<milestone>`, else the
Command column of the plan, else that of the tracker, else `default` (see exq.bridge.compile). Placeholders in
this file's commands: {run_id}, {milestone}, {seed} and the entry's `params`. The file is optional when the
documents hold every command.
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

    def entry(self, run_id: str, milestone: str, block: str | None) -> tuple[str, RunCommand] | None:
        """The entry written for this run and its key (`runs.R003`, `blocks.B2`, `milestones.M0`), in that order
        of preference; the `default` entry aside."""
        candidates = ((f"runs.{run_id}", self.runs.get(run_id)),
                      (f"blocks.{block}", self.blocks.get(block) if block is not None else None),
                      (f"milestones.{milestone}", self.milestones.get(milestone)))
        return next(((key, found) for key, found in candidates if found is not None), None)

    def command(self, run_id: str, milestone: str, block: str | None) -> RunCommand | None:
        """The entry giving the run's command: by run id, else block, else milestone, else the default."""
        found = self.entry(run_id, milestone, block)
        return found[1] if found is not None else self.default

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
    exists: bool = True
    """False when there is no runs file: every command then comes from the plan or the tracker."""


def load_runs(path: Path, required: bool = True) -> LoadedRuns:
    """The runs file at `path` (an empty one when it is missing and not `required`); ManifestError with
    file:line:field when it is invalid."""
    source = str(path.absolute())
    if not required and not path.exists():
        runs, problems = parse_document(RunsFile, "{}", source, ManifestError, "a mapping")
        return LoadedRuns(runs, source, problems, exists=False)
    text = read_document(source, "runs", ManifestError)
    runs, problems = parse_document(RunsFile, text, source, ManifestError,
                                    "a mapping with runs, blocks, milestones or default")
    return LoadedRuns(runs, source, problems)
