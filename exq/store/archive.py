"""The archive of cleaned submissions: archive.jsonl in the state directory (`exq clean`, `exq status --archived`).

One JSON line per archived submission: the Submission and its Jobs as queue_state.json held them. The lines
are appended and fsynced before the Archived event is committed, so a crash between the two leaves a line of a
submission the state still holds (and, once cleaned again, a second line of it): readers keep the last line
of each submission id, and only the ids the state says are archived.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Collection, Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from exq.model.state import Job, Submission
from exq.store.fsio import PRIVATE_FILE, check_owned, fsync_dir, write_all, write_error
from exq.store.store import StatePaths

log = logging.getLogger("exq.store")

ARCHIVE = "archive.jsonl"


class ArchivedSubmission(BaseModel):
    """One line of archive.jsonl."""

    model_config = ConfigDict(extra="forbid")
    archived_at: float
    submission: Submission
    jobs: list[Job]


def archive_path(paths: StatePaths) -> Path:
    return paths.root / ARCHIVE


def append(paths: StatePaths, records: Iterable[ArchivedSubmission]) -> None:
    """Append `records` (0600, fsynced). Raises WriteError; what a failed append left is a torn line readers skip."""
    path = archive_path(paths)
    check_owned(path)
    payload = b"".join(record.model_dump_json().encode() + b"\n" for record in records)
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            payload = b"\n" + payload  # a torn line an earlier failure left: it stays a line of its own
        write_all(fd, payload)
        os.fsync(fd)
        if not size:
            fsync_dir(path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        os.close(fd)


def read_archive(paths: StatePaths, archived: Collection[str] | None = None) -> list[ArchivedSubmission]:
    """The archived submissions, oldest first: the last line of each id, of the ids in `archived` when given."""
    path = archive_path(paths)
    check_owned(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    records: dict[str, ArchivedSubmission] = {}
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = ArchivedSubmission.model_validate_json(line)
        except (ValidationError, ValueError):
            log.warning("%s: line %d is damaged (a write cut short): skipped", path, number)
            continue
        if archived is None or record.submission.id in archived:
            records.pop(record.submission.id, None)
            records[record.submission.id] = record
    return list(records.values())


def delete_attempt_dirs(jobs_root: Path, dirs: Iterable[str]) -> int:
    """Delete these attempt directories, only those inside `jobs_root` (not itself, never through a symbolic
    link), then their parents left empty below it. Returns how many were deleted."""
    root = os.path.realpath(jobs_root)
    deleted = 0
    for each in dirs:
        path = os.path.realpath(each)
        if not os.path.isabs(each) or os.path.islink(each) or os.path.commonpath([root, path]) != root \
                or path == root or not os.path.isdir(path):
            continue
        try:
            shutil.rmtree(path)
        except OSError as exc:
            log.warning("cannot delete %s: %s", path, exc)
            continue
        deleted += 1
        _remove_empty_parents(Path(path).parent, root)
    return deleted


def _remove_empty_parents(path: Path, root: str) -> None:
    """Remove `path` and its parents while they are empty and below `root`."""
    while str(path) != root and os.path.commonpath([root, str(path)]) == root:
        try:
            path.rmdir()
        except OSError:  # not empty, or gone
            return
        path = path.parent
