"""Loading queue_state.json fast and small, into the same QueueState `QueueState.model_validate_json` gives.

Jobs are decoded and validated one at a time, so the raw JSON of a huge queue never sits in memory
beside its models. A spec field equal to the one of the first job of its phase is handed to pydantic
as that job's object (no second validation) and kept shared (see `exq.model.intern`). The garbage
collector is paused meanwhile: it would otherwise rescan millions of young objects, for nothing; and
they are left out of its later passes.
"""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from operator import itemgetter
from typing import Any

from pydantic import BaseModel

from exq.model.intern import SHARED, share_fields_set
from exq.model.state import Job, QueueState

_WS = re.compile(r"[ \t\n\r]*")


@contextmanager
def gc_paused() -> Iterator[None]:
    """No garbage collection inside (the previous setting is restored)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_state(data: bytes) -> QueueState:
    """The state a snapshot holds. ValueError when it is not JSON; pydantic's ValidationError when not a state.

    The objects made are then frozen out of the collector's generations (`gc.freeze`): they live as long as
    the process, and three collections would otherwise walk them all as they age.
    """
    with gc_paused():
        state = _Loader(data.decode()).load()
        gc.freeze()
        return state


class _Loader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.decoder = json.JSONDecoder()
        self.phases: dict[tuple[str, str], _Phase] = {}
        """(submission, phase) -> its first job's spec."""

    def load(self) -> QueueState:
        text = self.text
        jobs: list[Job] = []
        top: dict[str, Any] = {}
        try:
            pos = self._ws(0)
            if text[pos] != "{":
                raise ValueError("not a JSON object")
            pos = self._ws(pos + 1)
            while text[pos] != "}":
                key, pos = self.decoder.raw_decode(text, pos)
                pos = self._ws(pos)
                if not isinstance(key, str) or text[pos] != ":":
                    raise ValueError(f"bad member at {pos}")
                pos = self._ws(pos + 1)
                if key == "jobs" and text[pos] == "[":
                    jobs, pos = self._jobs(pos)
                    top[key] = []
                else:
                    top[key], pos = self.decoder.raw_decode(text, pos)
                pos = self._ws(pos)
                if text[pos] == ",":
                    pos = self._ws(pos + 1)
                elif text[pos] != "}":
                    raise ValueError(f"expected ',' or '}}' at {pos}")
        except IndexError:
            raise ValueError("truncated JSON") from None
        if self._ws(pos + 1) != len(text):
            raise ValueError(f"extra data after the state at {pos + 1}")
        state = QueueState.model_validate(top)
        state.jobs = jobs
        return state

    def _ws(self, pos: int) -> int:
        match = _WS.match(self.text, pos)
        assert match is not None
        return match.end()

    def _jobs(self, pos: int) -> tuple[list[Job], int]:
        """The job array starting at `pos` ('['), and where it ends (past its ']')."""
        text, jobs = self.text, []
        pos = self._ws(pos + 1)
        if text[pos] != "]":
            while True:
                raw, pos = self.decoder.raw_decode(text, pos)
                jobs.append(self._job(raw))
                pos = self._ws(pos)
                if text[pos] == "]":
                    break
                if text[pos] != ",":
                    raise ValueError(f"expected ',' or ']' at {pos}")
                pos = self._ws(pos + 1)
        return jobs, pos + 1

    def _job(self, raw: Any) -> Job:
        spec = raw.get("spec") if isinstance(raw, dict) else None
        if not isinstance(spec, dict) or not isinstance(raw.get("submission"), str) \
                or not isinstance(spec.get("phase"), str):
            return _shared_sets(Job.model_validate(raw))
        key = (raw["submission"], spec["phase"])
        first = self.phases.get(key)
        if first is None:
            job = Job.model_validate(raw)
            self.phases[key] = _Phase(spec, job.spec.__dict__)
            return _shared_sets(job)
        if first.values is not None and first.values == _values(spec):  # the usual case: one C comparison
            shared, models = first.shared, first.models
        else:
            shared = {name: value for name, value in first.shared.items()
                      if name in spec and name in first.raw and spec[name] == first.raw[name]}
            models = {name: value for name, value in shared.items() if isinstance(value, BaseModel)}
        spec.update(models)  # pydantic takes these instances as they are
        job = Job.model_validate(raw)
        job.spec.__dict__.update(shared)
        if job.phase == first.shared["phase"]:
            job.__dict__["phase"] = first.shared["phase"]
        return _shared_sets(job)


class _Phase:
    """The first job of a phase: its raw spec, and its validated fields every later equal one shares."""

    def __init__(self, raw: dict[str, Any], fields: dict[str, Any]) -> None:
        self.raw = raw
        self.values = _values(raw)
        self.shared = {name: fields[name] for name in SHARED}
        self.models = {name: value for name, value in self.shared.items() if isinstance(value, BaseModel)}


def _values(spec: dict[str, Any]) -> tuple[Any, ...] | None:
    """The raw values of the phase-wide fields; None when one is missing."""
    try:
        return tuple(_SHARED_VALUES(spec))
    except KeyError:
        return None


_SHARED_VALUES = itemgetter(*SHARED)


def _shared_sets(job: Job) -> Job:
    """Share the sets of field names, and the job's id and cmd strings with its spec's when equal."""
    mine, spec = job.__dict__, job.spec.__dict__
    for name in ("id", "cmd"):
        if mine[name] == spec[name]:
            mine[name] = spec[name]
    share_fields_set(job)
    share_fields_set(job.spec)
    for attempt in job.attempts:
        share_fields_set(attempt)
    return job
