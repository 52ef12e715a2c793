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


@dataclass(frozen=True)
class TrackerRow:
    run_id: str
    milestone: str
    purpose: str
    system: str
    priority: str
    """`MUST` or `NICE` (upper-cased; empty when the column is missing or blank)."""
    status: str
    notes: str
    line: int
    cells: dict[str, str] = field(default_factory=dict)
    """Every cell by its header name, extra columns included."""


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

    def gate(self, stage: int) -> StageGate | None:
        return next((g for g in self.gates if g.stage == stage), None)
