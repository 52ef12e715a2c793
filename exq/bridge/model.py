"""What the bridge reads out of the research documents (plain data; parsers live in documents.py)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Milestone:
    """One row of the plan's Run Order table, in table order."""

    id: str
    """`M0`, `M1`, ... (the part of the Milestone cell before any ':')."""
    title: str
    """`Sanity` for `M0: Sanity`; empty when the cell is just `M0`."""
    goal: str
    runs: str
    gate: str
    """The Decision Gate cell, a question in prose."""
    line: int
    priority: str | None = None
    """`MUST-RUN` or `NICE-TO-HAVE` from a `**Priority**:` line under the milestone's own heading."""


@dataclass(frozen=True)
class PlanRun:
    """One row of a run table in the plan (a `### M0: Title` section's table, or a Run Order with a Run column)."""

    run_id: str
    milestone: str
    description: str
    """The Description, Task or Goal cell."""
    command: str | None
    """The Command cell with its backticks stripped; None when there is no such column or the cell is empty."""
    depends_on: tuple[str, ...]
    """Run IDs from a `Depends On` cell (`R001,R003`; `—`, `-`, `none` or empty: none)."""
    line: int
    cells: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Block:
    """One `### Block N: Title` of the plan."""

    number: int
    title: str
    priority: str | None
    """`MUST-RUN`, `NICE-TO-HAVE`, or None when the block says nothing."""
    fields: dict[str, str] = field(default_factory=dict)
    line: int = 0


@dataclass(frozen=True)
class Plan:
    path: str
    problem: str | None
    milestones: list[Milestone]
    blocks: list[Block]
    runs: list[PlanRun] = field(default_factory=list)
    """Runs the plan itself lists, in file order (empty when it has no run tables)."""

    def run(self, run_id: str) -> PlanRun | None:
        return next((r for r in self.runs if r.run_id == run_id), None)


@dataclass(frozen=True)
class TrackerRow:
    run_id: str
    milestone: str
    purpose: str
    system: str
    priority: str
    """`MUST` or `NICE` (upper-cased; empty when the column is missing or blank)."""
    status: str
    """The Status cell as a person wrote it (decorations included); see exq.bridge.status for its meaning."""
    notes: str
    line: int
    cells: dict[str, str] = field(default_factory=dict)
    """Every cell by its header name, extra columns included."""
    command: str | None = None
    """The Command cell with its backticks stripped; None when there is no such column or the cell is empty."""
    depends_on: tuple[str, ...] = ()
    """Run IDs from a `Depends On` cell."""


@dataclass(frozen=True)
class Tracker:
    path: str
    rows: list[TrackerRow]


@dataclass(frozen=True)
class StageGate:
    stage: int
    name: str
    status: str
    """`Not Started`, `In Progress`, `Pass`, `Fail` or `Blocked`."""
    evidence: str
    line: int


@dataclass(frozen=True)
class WorkflowState:
    path: str
    current_stage: int | None
    code_edit_permission: str | None
    gates: list[StageGate]
    training_stage: int | None = None
    """The stage named Training & Validation (by name: `Training/Validation`, `训练与验证`, ...), if any."""

    def gate(self, stage: int) -> StageGate | None:
        """The stage's gate row; when the stage's row repeats, the last one (the latest entry)."""
        return next((g for g in reversed(self.gates) if g.stage == stage), None)

    def describe(self) -> str:
        """`stages 0 Bootstrap, 1 Investigation, ...`: what the workflow is, for messages."""
        seen: dict[int, str] = {}
        for g in self.gates:
            seen.setdefault(g.stage, g.name)
        return "stages " + ", ".join(f"{n} {name}".strip() for n, name in sorted(seen.items()))
