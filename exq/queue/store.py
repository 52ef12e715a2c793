"""Crash-safe persistence of the queue in one state directory.

Layout (dirs 0700, files 0600):
  queue_state.json   the whole state, replaced atomically at a bounded rate (what people and agents read)
  journal.jsonl      every event since that snapshot, appended and fsynced before it takes effect
  daemon.lock        held by the one process that writes (daemon or `exq run`)
  intake/            submissions waiting to be ingested (`exq submit` writes one file each)
  control/           requests (cancel, retry, pause, resume) waiting for the writer
  jobs/              attempt directories: jobs/<submission>/<job>/<attempt>/{log,pid,exit,result.json}
  hooks/             on_job_end hooks: <submission>.log (their output), <submission>.pid (a run in flight)

Recovery = load the snapshot, then replay journal events with a higher seq. A torn last journal
line (crash mid-append) is dropped; it was never acknowledged.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from pathlib import Path

from filelock import FileLock, Timeout
from pydantic import ValidationError

from exq.errors import DaemonRunningError, StateError
from exq.queue.events import EVENT_ADAPTER, Event
from exq.queue.fsio import PRIVATE_FILE, atomic_write, fsync_dir, private_dir
from exq.queue.ledger import Ledger
from exq.queue.state import STATE_VERSION, QueueState

SNAPSHOT = "queue_state.json"
JOURNAL = "journal.jsonl"
LOCK = "daemon.lock"
COMPACT_JOURNAL_BYTES = 1024 * 1024
"""After a snapshot, a journal larger than this is emptied (the snapshot covers all of it)."""
LOCK_WAIT = 2.0
"""Seconds a new writer waits for the lock (a reader's `daemon_running` check holds it for an instant)."""


def default_state_dir() -> Path:
    """`$EXQ_STATE_DIR`, else `$XDG_STATE_HOME/exq`, else `~/.local/state/exq`."""
    if env := os.environ.get("EXQ_STATE_DIR"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "exq"


class StatePaths:
    """Where each file of a state directory lives."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().absolute()
        self.snapshot = self.root / SNAPSHOT
        self.journal = self.root / JOURNAL
        self.lock = self.root / LOCK
        self.intake = self.root / "intake"
        self.control = self.root / "control"
        self.jobs = self.root / "jobs"
        self.hooks = self.root / "hooks"

    def create(self) -> StatePaths:
        for path in (self.root, self.intake, self.control, self.jobs):
            private_dir(path)
        return self

    def hook_log(self, submission: str) -> Path:
        """Where the output of a submission's on_job_end hook runs is appended."""
        return self.hooks / f"{submission}.log"

    def daemon_lock(self) -> FileLock:
        return FileLock(str(self.lock), mode=PRIVATE_FILE)


def read_state(paths: StatePaths) -> QueueState:
    """The current state for a reader: the snapshot plus any newer journal events. Takes no lock.

    The journal is read before the snapshot: the writer empties the journal only after a snapshot
    covering it is in place, so a snapshot read later covers whatever the journal read missed.
    """
    journal = _read_bytes(paths.journal)
    ledger = Ledger(_load_snapshot(paths.snapshot))
    for event, _ in _scan_journal(journal, paths.journal, after=ledger.state.seq, strict=False):
        if event is not None:
            ledger.apply(event)
    return ledger.state


def snapshot_is_current(paths: StatePaths) -> bool:
    """Whether queue_state.json already holds every journaled event (readers may use it as it is)."""
    journal = _read_bytes(paths.journal)
    seq = _snapshot_seq(_read_bytes(paths.snapshot, 200))
    if seq is None:
        return False
    return all(event is None for event, _ in _scan_journal(journal, paths.journal, seq, strict=False))


def daemon_running(paths: StatePaths) -> bool:
    """Whether some process holds the writer lock of this state directory."""
    if not paths.lock.exists():
        return False
    lock = paths.daemon_lock()
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


class Store:
    """The single writer's handle: apply events durably, write snapshots at a bounded rate."""

    def __init__(self, paths: StatePaths, min_snapshot_interval: float = 0.25) -> None:
        self.paths = paths.create()
        self._lock = paths.daemon_lock()
        self._min_interval = min_snapshot_interval
        self._interval = min_snapshot_interval
        self._last_snapshot = 0.0
        self._dirty = False
        self.ledger = Ledger()
        self._journal: int | None = None

    def open(self) -> Store:
        """Take the writer lock and recover the state (snapshot + journal replay)."""
        try:
            self._lock.acquire(timeout=LOCK_WAIT)
        except Timeout:
            raise DaemonRunningError(
                f"another exq daemon (or `exq run`) is using {self.paths.root}; stop it first"
            ) from None
        try:
            self.ledger = Ledger(_load_snapshot(self.paths.snapshot))
            valid_bytes = 0
            journal = _read_bytes(self.paths.journal)
            for event, end in _scan_journal(journal, self.paths.journal, self.ledger.state.seq, strict=True):
                valid_bytes = end
                if event is not None:
                    self.ledger.apply(event)
            self._open_journal(truncate_at=valid_bytes)
        except BaseException:
            self._lock.release()
            raise
        return self

    def close(self) -> None:
        """Write a final snapshot (if anything changed since the last) and release the lock."""
        if self._journal is not None:
            self.snapshot(force=True)
            os.close(self._journal)
            self._journal = None
        if self._lock.is_locked:
            self._lock.release()

    @property
    def state(self) -> QueueState:
        return self.ledger.state

    def commit(self, events: Iterable[Event]) -> list[Event]:
        """Append events to the journal with one fsync, then apply them. Returns them with their seq."""
        if self._journal is None:
            raise StateError("store is not open")
        seq = self.ledger.state.seq
        numbered: list[Event] = []
        for event in events:
            seq += 1
            numbered.append(event.model_copy(update={"seq": seq}))
        if not numbered:
            return []
        payload = b"".join(ev.model_dump_json().encode() + b"\n" for ev in numbered)
        os.write(self._journal, payload)
        os.fsync(self._journal)
        for event in numbered:
            self.ledger.apply(event)
        self._dirty = True
        return numbered

    def snapshot(self, force: bool = False) -> bool:
        """Write queue_state.json if it changed and the rate bound allows (`force`: whatever the rate)."""
        now = time.monotonic()
        if not self._dirty or (not force and now - self._last_snapshot < self._interval):
            return False
        started = time.monotonic()
        self.ledger.state.updated_at = time.time()
        atomic_write(self.paths.snapshot, self.ledger.state.model_dump_json().encode())
        took = time.monotonic() - started
        # Keep snapshot writing under ~20% of the time however large the queue grows.
        self._interval = max(self._min_interval, took * 5)
        self._last_snapshot, self._dirty = time.monotonic(), False
        if self._journal is not None and os.fstat(self._journal).st_size > COMPACT_JOURNAL_BYTES:
            self._compact_journal()
        return True

    def touch(self) -> None:
        """Mark advisory, non-journaled fields (GPU views, daemon info) as changed."""
        self._dirty = True

    def seconds_until_snapshot(self) -> float | None:
        if not self._dirty:
            return None
        return max(0.0, self._interval - (time.monotonic() - self._last_snapshot))

    def _open_journal(self, truncate_at: int) -> None:
        fd = os.open(self.paths.journal, os.O_RDWR | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
        if os.fstat(fd).st_size != truncate_at:
            os.ftruncate(fd, truncate_at)  # drop a torn last line
            os.fsync(fd)
        self._journal = fd

    def _compact_journal(self) -> None:
        """The snapshot just written covers every event: start an empty journal."""
        assert self._journal is not None
        tmp = self.paths.root / f".{JOURNAL}.new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, self.paths.journal)
        fsync_dir(self.paths.root)
        os.close(self._journal)
        self._open_journal(truncate_at=0)


def _load_snapshot(path: Path) -> QueueState:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return QueueState()
    version = _VERSION_RE.match(data[:200])
    if version is None or int(version.group(1)) != STATE_VERSION:
        found = version.group(1).decode() if version else "unknown"
        raise StateError(f"{path}: state version {found}, this exq reads version {STATE_VERSION}")
    try:
        return QueueState.model_validate_json(data)
    except ValidationError as exc:
        raise StateError(f"{path}: not a valid state file: {exc}") from None


_VERSION_RE = re.compile(rb'\s*\{\s*"version"\s*:\s*(\d+)')
_SEQ_RE = re.compile(rb'\s*\{\s*"seq"\s*:\s*(\d+)')
_SNAPSHOT_SEQ_RE = re.compile(rb'"seq"\s*:\s*(\d+)')


def _read_bytes(path: Path, limit: int = -1) -> bytes:
    """The file's bytes (the first `limit` when given); empty when it does not exist."""
    try:
        with path.open("rb") as handle:
            return handle.read(limit)
    except FileNotFoundError:
        return b""


def _snapshot_seq(head: bytes) -> int | None:
    match = _SNAPSHOT_SEQ_RE.search(head)
    return int(match.group(1)) if match else None


def _scan_journal(data: bytes, path: Path, after: int, strict: bool) -> Iterable[tuple[Event | None, int]]:
    """Yield (event, byte offset after it) for each line; the event is None when its seq <= `after`.

    Events are written with `seq` first, so lines the snapshot covers are skipped without parsing.
    A torn or unparsable last line ends the scan; an unparsable line before it is an error when strict.
    `path` names the journal in messages.
    """
    offset = 0
    while offset < len(data):
        newline = data.find(b"\n", offset)
        if newline < 0:
            return  # torn final line
        line = data[offset:newline]
        seq = _SEQ_RE.match(line)
        if seq is not None and int(seq.group(1)) <= after:
            offset = newline + 1
            yield None, offset
            continue
        try:
            event = EVENT_ADAPTER.validate_json(line)
        except ValidationError as exc:
            if newline + 1 >= len(data) or not strict:
                return
            raise StateError(f"{path}: corrupt event at byte {offset}: {exc}") from None
        offset = newline + 1
        yield event, offset
