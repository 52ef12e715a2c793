"""EXPERIMENT_LOG.md, the permanent record: one entry per finished run, appended, never rewritten.

    ## R003 — 2026-05-02T14:10Z
    - **System**: resnet-18
    - **Config**: M1; seeds 0, 1, 2; lr=0.1; exq submission 4
    - **Result**: top1 71.2 ± 0.3 (3 seeds)
    - **Verdict**: positive (gate M1: 1 rule(s) met)
    - **Reproduce**: `cd /proj && python train.py --seed 0`

A run is logged once all its jobs finished and, when its milestone has a metric gate, once the gate
job finished, so the verdict is known. An entry whose heading is already in the file is not written again.
"""

from __future__ import annotations

import datetime
import shlex
from pathlib import Path

from exq.api import Job, JobStatus
from exq.bridge import markdown as md
from exq.bridge.compile import project_root
from exq.bridge.progress import MilestoneProgress, PlanProgress, RunProgress

HEADER = "# Experiment Log\n"
_OWN_PARAMS = ("job", "run", "milestone", "seed", "run_cmd")
"""Params the compiled manifest adds to every job; the others are the run's configuration."""


def new_entries(text: str, progress: PlanProgress) -> list[str]:
    """The entries (Markdown sections) for runs that finished and are not in `text` yet, in plan order."""
    present = {line.strip() for line in md.split_lines(text) if line.startswith("## ")}
    entries = []
    for milestone in progress.milestones:
        gate_pending = milestone.gate is not None and not milestone.gate.status.finished
        for run in milestone.runs:
            if gate_pending or run.finished_at is None or run.status not in ("DONE", "FAILED"):
                continue
            heading = f"## {run.row.run_id} \u2014 {_stamp(run.finished_at)}"
            if heading not in present:
                entries.append(_entry(heading, run, milestone, progress.submission))
    return entries


def append_entries(text: str, entries: list[str]) -> str:
    """`text` (HEADER when empty) with `entries` appended, each after a blank line."""
    text = text or HEADER
    for entry in entries:
        text = md.append_section(text, entry)
    return text


def _entry(heading: str, run: RunProgress, milestone: MilestoneProgress, submission: str) -> str:
    seeds = [str(job.params["seed"]) for job in run.jobs if "seed" in job.params and job.id != run.row.run_id]
    config = [milestone.milestone.id]
    if seeds:
        config.append(f"seed{'s' * (len(seeds) > 1)} {', '.join(seeds)}")
    first = run.jobs[0]
    config += [f"{k}={v}" for k, v in first.params.items() if k not in _OWN_PARAMS]
    config.append(f"exq submission {submission}")
    result = run.summary or "no key metric reported"
    if run.status == "FAILED":
        result = f"failed: {run.reason}" + (f" ({run.summary})" if run.summary else "")
    lines = [heading,
             f"- **System**: {run.row.system or run.row.purpose or '-'}",
             f"- **Config**: {'; '.join(config)}",
             f"- **Result**: {result}",
             f"- **Verdict**: {_verdict(run, milestone)}"]
    commands = [_reproduce(job) for job in run.jobs]
    if len(commands) == 1:
        lines.append(f"- **Reproduce**: {_code(commands[0])}")
    else:
        lines.append("- **Reproduce**:")
        lines += [f"  - {_code(command)}" for command in commands]
    return "\n".join(lines)


def _verdict(run: RunProgress, milestone: MilestoneProgress) -> str:
    if run.status == "FAILED":
        return "inconclusive (the run failed)"
    gate = milestone.gate
    if gate is None:
        return "inconclusive (no metric gate checks it; judge from the result)"
    if milestone.gate_reason:
        return f"negative (gate {milestone.milestone.id}: {milestone.gate_reason})"
    if gate.status == JobStatus.SUCCEEDED:
        return f"positive (gate {milestone.milestone.id} passed)"
    return f"inconclusive (gate {milestone.milestone.id} did not run)"


def _reproduce(job: Job) -> str:
    """The command that reruns the job by hand: its directory, its setup, its command."""
    command = job.params.get("run_cmd")
    steps = [f"cd {shlex.quote(job.spec.workdir)}"]
    if job.spec.setup:
        steps.append(job.spec.setup)
    steps.append(command if isinstance(command, str) else job.cmd)
    return " && ".join(steps)


def _code(text: str) -> str:
    """`text` as an inline code span, backticks inside it kept."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _stamp(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y-%m-%dT%H:%MZ")


def log_path(plan: Path) -> Path:
    """EXPERIMENT_LOG.md in the project root (see project_root)."""
    return project_root(plan) / "EXPERIMENT_LOG.md"
