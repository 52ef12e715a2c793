"""Machine-checkable milestone gates: rules on the metrics jobs wrote to EXQ_RESULT_FILE, written as data.

    gates:                                  # in the runs file
      M0:
        - {metric: final_loss, below: initial_loss}          # on each job (each run, each seed)
      M1:
        - {metric: top1, over: seeds, at_least: 70}          # the mean over seeds of each run
        - {metric: top1, over: all, above: 71, runs: [R004]} # the mean over every job named

A bound is a number or the name of another metric (compared the same way: per job, or averaged).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from exq.yamlfields import Str, is_num

Bound = float | Str
_COMPARISONS: dict[str, tuple[str, Callable[[float, float], bool]]] = {
    "above": (">", lambda a, b: a > b),
    "below": ("<", lambda a, b: a < b),
    "at_least": (">=", lambda a, b: a >= b),
    "at_most": ("<=", lambda a, b: a <= b),
}


class GateRule(BaseModel):
    """One condition a milestone's MUST runs must meet for its gate to pass."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    metric: Str
    over: Literal["each", "seeds", "all"] = "each"
    """`each`: every job; `seeds`: the mean over seeds of each run; `all`: the mean over every job."""
    above: Bound | None = None
    below: Bound | None = None
    at_least: Bound | None = None
    at_most: Bound | None = None
    runs: list[Str] | None = None
    """Only these runs (default: every MUST run of the milestone)."""

    @model_validator(mode="after")
    def _one_comparison(self) -> GateRule:
        given = [name for name in _COMPARISONS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of above, below, at_least, at_most"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self

    @property
    def comparison(self) -> tuple[str, Bound]:
        name = next(n for n in _COMPARISONS if getattr(self, n) is not None)
        return name, getattr(self, name)

    def describe(self) -> str:
        name, bound = self.comparison
        subject = {"each": f"{self.metric} of each job", "seeds": f"mean {self.metric} over seeds of each run",
                   "all": f"mean {self.metric} over all jobs"}[self.over]
        scope = f" (runs {', '.join(self.runs)})" if self.runs else ""
        shown = _fmt(float(bound)) if is_num(bound) else bound
        return f"{subject} {_COMPARISONS[name][0]} {shown}{scope}"


@dataclass(frozen=True)
class JobMetrics:
    """What a gate sees of one finished job."""

    job: str
    run: str
    result: dict[str, Any]


@dataclass(frozen=True)
class Check:
    rule: str
    passed: bool
    detail: str


def evaluate(rules: Iterable[GateRule], jobs: list[JobMetrics]) -> list[Check]:
    """Each rule checked against `jobs`; a missing or non-numeric metric fails the rule, naming the job."""
    return [_check(rule, [j for j in jobs if rule.runs is None or j.run in rule.runs]) for rule in rules]


def _check(rule: GateRule, jobs: list[JobMetrics]) -> Check:
    name, bound = rule.comparison
    holds = _COMPARISONS[name][1]
    if not jobs:
        return Check(rule.describe(), False, "no finished jobs to check")
    groups: dict[str, list[JobMetrics]] = {}
    for job in jobs:
        key = {"each": job.job, "seeds": job.run, "all": "all"}[rule.over]
        groups.setdefault(key, []).append(job)
    failures: list[str] = []
    seen: list[str] = []
    for label, members in groups.items():
        value, missing = _mean(members, rule.metric)
        limit, missing_bound = (float(bound), None) if is_num(bound) else _mean(members, str(bound))
        problem = missing or missing_bound
        if problem is not None:
            failures.append(f"{label}: {problem}")
            continue
        assert value is not None and limit is not None
        shown = f"{label}: {_fmt(value)}" + ("" if is_num(bound) else f" vs {bound} {_fmt(limit)}")
        (seen if holds(value, limit) else failures).append(shown)
    if failures:
        return Check(rule.describe(), False, "failed for " + "; ".join(failures))
    return Check(rule.describe(), True, "; ".join(seen))


def as_number(value: Any) -> float | None:
    """A finite int or float as a float; None for anything else (bools, strings, NaN)."""
    if is_num(value) and math.isfinite(value):
        return float(value)
    return None


def _mean(jobs: list[JobMetrics], metric: str) -> tuple[float | None, str | None]:
    """The mean of `metric` over `jobs`, or why it cannot be computed."""
    values = []
    for job in jobs:
        raw = job.result.get(metric)
        value = as_number(raw)
        if value is None:
            what = "no" if raw is None else f"a non-numeric {raw!r} as"
            return None, f"{job.job} wrote {what} {metric!r}"
        values.append(value)
    return statistics.fmean(values), None


def _fmt(value: float) -> str:
    return f"{value:.4g}"
