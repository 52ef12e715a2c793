"""`after` entries that name jobs of other submissions, resolved against the queue at submission time.

Forms: `SUB/ID` (one job), `SUB/*` or a bare submission number `SUB` (all its jobs), `label:NAME` (every job
with that label, its submission's labels included), or a bare job id `ID` (that job of the newest submission
that has it). A manifest's own phase names and job ids never reach here: only entries with `/` or `label:`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from exq.errors import NotFoundError
from exq.model.expand import LABEL_PREFIX, is_external
from exq.model.jobspec import SubmissionSpec


@dataclass(frozen=True)
class KnownJob:
    """A job already in the queue (or submitted, not yet ingested), as `after` finds it."""

    submission: str
    id: str
    labels: Sequence[str]

    @property
    def key(self) -> str:
        return f"{self.submission}/{self.id}"


def resolve_ref(ref: str, known: Sequence[KnownJob]) -> list[str]:
    """The keys of the jobs `ref` names; NotFoundError when it names none."""
    if ref.startswith(LABEL_PREFIX):
        label = ref[len(LABEL_PREFIX):]
        keys = [job.key for job in known if label in job.labels]
        what = f"no job in the queue has label {label!r}"
    elif ref.endswith("/*") or ref.isdigit():
        submission = ref.removesuffix("/*")
        keys = [job.key for job in known if job.submission == submission]
        what = f"no submission {submission!r} in the queue"
    elif "/" in ref:
        keys = [job.key for job in known if job.key == ref]
        what = f"no job {ref!r} in the queue"
    else:
        keys = [job.key for job in known if job.id == ref][-1:]
        what = f"no job {ref!r} in the queue"
    if not keys:
        raise NotFoundError(f"after: {what}")
    return keys


def external_refs(spec: SubmissionSpec) -> list[str]:
    """The `after` entries of `spec`'s jobs that name jobs of other submissions, each once."""
    return list(dict.fromkeys(dep for job in spec.jobs for dep in job.deps if is_external(dep)))


def resolve_external(spec: SubmissionSpec, known: Iterable[KnownJob]) -> SubmissionSpec:
    """`spec` with each external `after` entry replaced by the keys of the jobs it names."""
    refs = external_refs(spec)
    if not refs:
        return spec
    jobs = list(known)
    keys = {ref: resolve_ref(ref, jobs) for ref in refs}
    resolved = []
    for job in spec.jobs:
        deps = [key for dep in job.deps for key in keys.get(dep, [dep])]
        resolved.append(job.model_copy(update={"deps": list(dict.fromkeys(deps))}) if deps != job.deps else job)
    return spec.model_copy(update={"jobs": resolved})
