"""Sharing in memory: the jobs of one phase hold its phase-wide spec parts as one object each.

A JobSpec's own fields (id, params, cmd, deps, priority) differ per job; everything else (resources,
retry, env, workdir, ...) is the phase's and is equal for every job of it. `SpecInterner` makes equal
values the very same objects, so 100k jobs cost 100k small specs, not 100k copies of the phase's.
Values never change: specs are frozen, and nothing in exq mutates their dicts or lists.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from exq.model.jobspec import JobSpec

PER_JOB = frozenset({"id", "params", "cmd", "deps", "priority"})
"""JobSpec fields that differ from job to job."""
SHARED = tuple(name for name in JobSpec.model_fields if name not in PER_JOB)
"""JobSpec fields every job of a phase normally has equal: shared by identity when equal."""

_ALL_FIELDS: dict[type[BaseModel], set[str]] = {}


def share_fields_set(model: BaseModel) -> None:
    """Give `model` its class's one set of every field name when every field was set (the usual case on load).

    pydantic only ever adds to that set (on assignment), and every name is already in it: sharing saves a
    set per object and changes nothing seen.
    """
    cls = type(model)
    every = _ALL_FIELDS.get(cls)
    if every is None:
        every = _ALL_FIELDS[cls] = set(cls.model_fields)
    if model.__pydantic_fields_set__ == every:
        object.__setattr__(model, "__pydantic_fields_set__", every)


def _same(mine: Any, theirs: Any) -> bool:
    """Equal values (models compared by their fields, faster than pydantic's __eq__)."""
    if isinstance(mine, BaseModel):
        return type(mine) is type(theirs) and mine.__dict__ == theirs.__dict__
    return type(mine) is type(theirs) and bool(mine == theirs)


class SpecInterner:
    """Makes the phase-wide fields of specs of one (submission, phase) the same objects as its first spec's."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], dict[str, Any]] = {}

    def share(self, submission: str, spec: JobSpec) -> JobSpec:
        """`spec` itself, its phase-wide fields replaced in place by equal ones of the phase's first spec."""
        fields = spec.__dict__
        canon = self._phases.setdefault((submission, spec.phase), fields)
        if canon is not fields:
            for name in SHARED:
                mine, theirs = fields[name], canon[name]
                if mine is not theirs and _same(mine, theirs):
                    fields[name] = theirs
        share_fields_set(spec)
        return spec
