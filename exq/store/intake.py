"""Durable hand-off of submissions and control requests from any process to the writer.

`exq submit` works whether or not a daemon runs: under a short lock it reserves the next number in
intake/.counter, then writes one file atomically into intake/ carrying that number and a unique key.
The writer ingests each file with one journal event and only then removes it; a file whose key was
already ingested is removed without a second event, so a crash at any point never loses or duplicates
a submission, and the number `exq submit` printed is the number the jobs have. Files that another
user owns (or that are not regular files) are moved aside as *.foreign and never read.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from exq.model.jobspec import Scalar, SubmissionSpec
from exq.store.fsio import PRIVATE_FILE, atomic_write
from exq.store.store import COUNTER_FILE, StatePaths, read_state

log = logging.getLogger("exq.intake")


class Intake(BaseModel):
    """One submission as written by `exq submit`."""

    model_config = ConfigDict(extra="forbid")
    id: str
    key: str | None = Field(None, description="Unique per submission: ingesting the same key twice is a no-op.")
    submitted_at: float
    spec: SubmissionSpec


class ControlRequest(BaseModel):
    """A request to change jobs or the queue. `targets` name jobs (`ID` or `SUB/ID`), phases, submissions
    or labels (`scope`)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(default_factory=lambda: f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}")
    op: Literal["cancel", "retry", "pause", "resume", "hold", "release", "priority", "restart", "clean"]
    targets: list[str] = Field(default_factory=list)
    scope: Literal["job", "phase", "submission", "label", "all"] = "job"
    submission: str | None = Field(None, description="Restrict phase targets to this submission.")
    priority: int | None = Field(None, description="op priority: the jobs' new priority.")
    params: dict[str, Scalar] = Field(default_factory=dict, description="op restart: params set for the new run.")
    older_than: float | None = Field(None, description="op clean: only submissions finished this many seconds ago.")
    keep_logs: bool = Field(False, description="op clean: keep the attempt directories of the archived jobs.")


class ControlReply(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ok: bool
    message: str
    affected: list[str] = Field(default_factory=list)


def submit(paths: StatePaths, spec: SubmissionSpec) -> Intake:
    """Number the submission and make it durable in intake/. Safe with concurrent submitters.

    The number is reserved (the counter written) before the file: a submitter killed in between
    leaves a gap in the numbers, never a number handed out twice.
    """
    paths.create()
    with _intake_lock(paths):
        number = _next_number(paths)
        atomic_write(paths.intake / COUNTER_FILE, str(number).encode())
        intake = Intake(id=str(number), key=uuid.uuid4().hex, submitted_at=time.time(), spec=spec)
        atomic_write(paths.intake / f"{number:09d}.json", intake.model_dump_json().encode())
    return intake


def raise_counter(paths: StatePaths, at_least: int) -> None:
    """Make sure the next submission number is above `at_least`."""
    with _intake_lock(paths):
        if _next_number(paths) <= at_least:
            atomic_write(paths.intake / COUNTER_FILE, str(at_least).encode())


def _intake_lock(paths: StatePaths) -> FileLock:
    return FileLock(str(paths.intake / ".lock"), mode=PRIVATE_FILE)


def _next_number(paths: StatePaths) -> int:
    """One above every number handed out: the counter's, the waiting files' and, if the counter is
    missing or unreadable, the ingested submissions'."""
    waiting = [int(p.name.split(".")[0]) for p in paths.intake.glob("[0-9]*.*") if p.name.split(".")[0].isdigit()]
    try:
        counter = int((paths.intake / COUNTER_FILE).read_text())
    except (FileNotFoundError, ValueError):
        state = read_state(paths)  # archived ids count too: `exq clean` must not free a number
        ids = [*(s.id for s in state.submissions), *state.archived]
        counter = max((int(sub_id) for sub_id in ids if sub_id.isdigit()), default=0)
    return max([counter, *waiting]) + 1


def pending_intakes(
    paths: StatePaths, writer: bool = True, damaged: list[Path] | None = None
) -> Iterator[tuple[Path, Intake]]:
    """Intake files in submission order. The writer renames a file that does not parse to *.bad (logged, and
    shown by `exq status`) and moves aside one another user planted; readers (`writer=False`) only skip them,
    listing those that do not parse in `damaged`."""
    for path in sorted(paths.intake.glob("[0-9]*.json")):
        try:
            if _foreign(path, writer):
                continue
            yield path, Intake.model_validate_json(path.read_bytes())
        except (ValidationError, ValueError) as exc:
            if damaged is not None:
                damaged.append(path)
            if writer:
                aside = path.with_name(path.name + ".bad")
                path.rename(aside)
                log.error("%s is damaged (%s): set aside as %s, not ingested", path, str(exc).splitlines()[0], aside)
        except FileNotFoundError:
            continue


def damaged_intakes(paths: StatePaths, unreadable: list[Path]) -> list[str]:
    """What `exq status` says of intake files that cannot be ingested: damaged (`unreadable`: found so by a reader),
    or planted by another user."""
    problems = [f"{path} is damaged: this submission cannot run; submit it again" for path in unreadable]
    for path in sorted(paths.intake.glob("[0-9]*.json.bad")):
        number = path.name.split(".")[0].lstrip("0")
        problems.append(f"submission {number}'s intake file was damaged and set aside as {path}: it was not run; "
                        f"submit it again")
    for path in sorted(paths.intake.glob("*.foreign")):
        problems.append(f"{path} was planted by another user and set aside: it was not run")
    return problems


def _foreign(path: Path, move: bool = True) -> bool:
    """Whether a file is not this user's own regular file; such a file is never read, and moved aside when `move`."""
    info = path.lstat()
    if info.st_uid == os.geteuid() and stat.S_ISREG(info.st_mode):
        return False
    if not move:
        return True
    aside = path.with_name(path.name + ".foreign")
    path.rename(aside)
    log.error("%s is owned by uid %d (or is not a regular file): moved aside to %s, never read",
              path, info.st_uid, aside)
    return True


def request(paths: StatePaths, req: ControlRequest) -> Path:
    """Queue a control request for the writer; returns the path its reply will appear at."""
    paths.create()
    atomic_write(paths.control / f"{req.id}.json", req.model_dump_json().encode())
    return paths.control / f"{req.id}.reply"


def pending_requests(paths: StatePaths) -> Iterator[tuple[Path, ControlRequest]]:
    for path in sorted(paths.control.glob("*.json")):
        try:
            if _foreign(path):
                continue
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
