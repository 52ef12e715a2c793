"""Durable hand-off of submissions and control requests from any process to the writer.

`exq submit` works whether or not a daemon runs: it numbers the submission under a short lock and
writes one file atomically into intake/. The writer ingests each file with one journal event and
only then removes it, so a crash in between never loses or duplicates a submission.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from exq.queue.fsio import PRIVATE_FILE, atomic_write
from exq.queue.jobspec import SubmissionSpec
from exq.queue.store import StatePaths

COUNTER = ".counter"


class Intake(BaseModel):
    """One submission as written by `exq submit`."""

    model_config = ConfigDict(extra="forbid")
    id: str
    submitted_at: float
    spec: SubmissionSpec


class ControlRequest(BaseModel):
    """A cancel/retry/pause/resume request. `targets` name jobs (`ID` or `SUB/ID`), phases or submissions."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(default_factory=lambda: f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}")
    op: Literal["cancel", "retry", "pause", "resume"]
    targets: list[str] = Field(default_factory=list)
    scope: Literal["job", "phase", "submission", "all"] = "job"
    submission: str | None = Field(None, description="Restrict phase targets to this submission.")


class ControlReply(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ok: bool
    message: str
    affected: list[str] = Field(default_factory=list)


def submit(paths: StatePaths, spec: SubmissionSpec) -> Intake:
    """Number the submission and make it durable in intake/. Safe with concurrent submitters."""
    paths.create()
    with _intake_lock(paths):
        number = _counter(paths) + 1
        intake = Intake(id=str(number), submitted_at=time.time(), spec=spec)
        atomic_write(paths.intake / f"{number:09d}.json", intake.model_dump_json().encode())
        atomic_write(paths.intake / COUNTER, str(number).encode())
    return intake


def raise_counter(paths: StatePaths, at_least: int) -> None:
    """Make sure the next submission number is above `at_least`."""
    with _intake_lock(paths):
        if _counter(paths) < at_least:
            atomic_write(paths.intake / COUNTER, str(at_least).encode())


def _intake_lock(paths: StatePaths) -> FileLock:
    return FileLock(str(paths.intake / ".lock"), mode=PRIVATE_FILE)


def _counter(paths: StatePaths) -> int:
    try:
        return int((paths.intake / COUNTER).read_text())
    except FileNotFoundError:
        return 0


def pending_intakes(paths: StatePaths) -> Iterator[tuple[Path, Intake]]:
    """Intake files in submission order. A file that does not parse is renamed *.bad and skipped."""
    for path in sorted(paths.intake.glob("[0-9]*.json")):
        try:
            yield path, Intake.model_validate_json(path.read_bytes())
        except (ValidationError, ValueError):
            path.rename(path.with_suffix(".bad"))
        except FileNotFoundError:
            continue


def request(paths: StatePaths, req: ControlRequest) -> Path:
    """Queue a control request for the writer; returns the path its reply will appear at."""
    paths.create()
    atomic_write(paths.control / f"{req.id}.json", req.model_dump_json().encode())
    return paths.control / f"{req.id}.reply"


def pending_requests(paths: StatePaths) -> Iterator[tuple[Path, ControlRequest]]:
    for path in sorted(paths.control.glob("*.json")):
        try:
            yield path, ControlRequest.model_validate_json(path.read_bytes())
        except (ValidationError, ValueError):
            path.rename(path.with_suffix(".bad"))
        except FileNotFoundError:
            continue


def reply(request_path: Path, answer: ControlReply) -> None:
    """Answer a request and remove it (the reply first, so a crash re-answers rather than drops it)."""
    atomic_write(request_path.with_suffix(".reply"), answer.model_dump_json().encode())
    request_path.unlink(missing_ok=True)


def wait_reply(reply_path: Path, timeout: float) -> ControlReply | None:
    """Wait up to `timeout` seconds for the writer's reply; None if it did not come."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = json.loads(reply_path.read_bytes())
        except (FileNotFoundError, ValueError):
            time.sleep(0.05)
            continue
        reply_path.unlink(missing_ok=True)
        return ControlReply.model_validate(data)
    return None


def clean_stale_replies(paths: StatePaths, older_than: float = 3600.0) -> None:
    cutoff = time.time() - older_than
    for path in paths.control.glob("*.reply"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except FileNotFoundError:
            continue


__all__ = [
    "ControlReply", "ControlRequest", "Intake", "clean_stale_replies", "pending_intakes",
    "pending_requests", "raise_counter", "reply", "request", "submit", "wait_reply",
]
