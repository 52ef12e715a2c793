"""Crash-safe persistence of the queue in one state directory.

Layout (dirs 0700, files 0600, all owned by the daemon's user; exq refuses anything else):
  queue_state.json      the whole state, replaced atomically at a bounded rate (what people and agents read)
  status_index.json     what `exq status` shows by default, written after each snapshot and stamped with it
  queue_state.json.old  the previous generation: the snapshot the journal starts from (as Slurm keeps .old)
  journal.jsonl         every event since that snapshot, appended and fsynced before it takes effect
  journal.copy.jsonl    the same events, written and fsynced after journal.jsonl: one damaged journal loses nothing
  daemon.lock           held by the one process that writes (daemon or `exq run`)
  intake/               submissions waiting to be ingested (`exq submit` writes one file each)
  control/              requests (cancel, retry, pause, resume) waiting for the writer
  jobs/                 attempt directories: jobs/<submission>/<job>/<attempt>/{log,pid,exit,result.json}
  hooks/                on_job_end hooks: <submission>.log (their output), <submission>.pid (a run in flight)

Recovery = load the snapshot, then replay journal events with a higher seq. A torn last journal
line (crash mid-append) is dropped; it was never acknowledged. When queue_state.json is missing or
unreadable, queue_state.json.old plus the journal give the same state. Readers and the writer recover
through the same function, so they agree: both use the same state, or both refuse, naming the file
and byte.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout
from pydantic import ValidationError

from exq.errors import DaemonRunningError, StateError, WriteError
from exq.model.state import STATE_VERSION, QueueState
from exq.model.summary import INDEX_VERSION, StatusIndex, advance, summarize
from exq.store.fsio import (
    PRIVATE_FILE,
    atomic_write,
    check_ancestors,
    check_owned,
    fsync_dir,
    private_dir,
    write_all,
    write_error,
)
from exq.store.loader import gc_paused, load_state

if TYPE_CHECKING:  # imported when used: `exq status` reading the status index needs neither
    from exq.model.events import Event
    from exq.model.ledger import Ledger

log = logging.getLogger("exq.store")

SNAPSHOT = "queue_state.json"
SNAPSHOT_OLD = "queue_state.json.old"
STATUS_INDEX = "status_index.json"
JOURNAL = "journal.jsonl"
JOURNAL_COPY = "journal.copy.jsonl"
LOCK = "daemon.lock"
COMPACT_JOURNAL_BYTES = 1024 * 1024
IDLE_AFTER = 0.5
"""Seconds without a commit after which the store counts as idle (its snapshot is then due sooner)."""
"""After a snapshot, a journal larger than this starts anew (the snapshot, kept as .old, covers all of it)."""
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
        self.snapshot_old = self.root / SNAPSHOT_OLD
        self.status_index = self.root / STATUS_INDEX
        self.journal = self.root / JOURNAL
        self.journal_copy = self.root / JOURNAL_COPY
        self.lock = self.root / LOCK
        self.intake = self.root / "intake"
        self.control = self.root / "control"
        self.jobs = self.root / "jobs"
        self.hooks = self.root / "hooks"

    def create(self) -> StatePaths:
        """Create the directories (0700) after checking that no other user could tamper with them."""
        self.check()
        for path in (self.root, self.intake, self.control, self.jobs):
            private_dir(path)
        return self

    def check(self) -> StatePaths:
        """Refuse a state directory, or a file of it, that another user owns or could write (as ssh's StrictModes).

        Raises StateError with the owner, the mode and the fix. A missing directory passes (it is created).
        """
        check_ancestors(self.root)
        for directory in (self.root, self.intake, self.control, self.jobs, self.hooks):
            check_owned(directory, directory=True)
        for path in (self.snapshot, self.snapshot_old, self.status_index, self.journal, self.journal_copy,
                     self.lock, self.intake / COUNTER_FILE):
            check_owned(path)
        return self

    def hook_log(self, submission: str) -> Path:
        """Where the output of a submission's on_job_end hook runs is appended."""
        return self.hooks / f"{submission}.log"

    def daemon_lock(self) -> FileLock:
        return FileLock(str(self.lock), mode=PRIVATE_FILE)


COUNTER_FILE = ".counter"
"""intake/.counter: the last submission number handed out."""


def read_state(paths: StatePaths) -> QueueState:
    """The current state for a reader: the snapshot plus any newer journal events. Takes no lock.

    The journal is read before the snapshot: the writer empties the journal only after a snapshot
    covering it is in place, so a snapshot read later covers whatever the journal read missed.
    """
    paths.check()
    recovered = _recover(paths, _read_journals(paths))
    for problem in recovered.problems:
        log.warning("%s", problem)
    return recovered.ledger.state


def current_snapshot(paths: StatePaths) -> bytes | None:
    """queue_state.json's bytes when they are whole and hold every journaled event; else None."""
    paths.check()
    index = current_status_index(paths, newer=False)
    if index is not None and (data := _read_stamped(paths.snapshot, index.snapshot)) is not None \
            and _snapshot_seq(data[:200]) == index.seq:  # not an index moved on by newer journal events
        return data  # the very file the writer wrote with the index: no need to parse it
    path, journal = _read_journals(paths)[0]
    data = _read_bytes(paths.snapshot)
    seq = _snapshot_seq(data[:200])
    try:
        if seq is None or (_last_seq(journal) or 0) > seq \
                or any(event is not None for event, _ in _scan_journal(journal, path, seq)):
            return None
    except StateError:
        return None  # a damaged journal: read_state recovers from its copy, or says why it cannot
    if _journal_cut_short(paths, journal, seq) is not None:
        return None  # read_state says so
    try:
        with gc_paused():
            whole = json.loads(data)
    except ValueError:
        return None
    return data if isinstance(whole, dict) and whole.get("version") == STATE_VERSION else None


def current_status_index(paths: StatePaths, newer: bool = True) -> StatusIndex | None:
    """What `exq status` shows by default, from status_index.json, when that gives exactly the state a reader
    would recover now; else None (then read the whole state).

    It must name the queue_state.json in place (size, mtime, inode: not replaced nor changed since) and its seq,
    both journal copies must be identical and whole, and nothing may be amiss that `read_state` would warn
    about or refuse. Journal events newer than it are applied to it (`advance`) when it holds every job they
    touch (not when `newer` is false: None then). Read before the journals, and the snapshot after them:
    an event committed meanwhile is in the journal, or in a newer snapshot once the journal was emptied.
    """
    paths.check()
    try:
        index = StatusIndex.model_validate_json(paths.status_index.read_bytes())
    except (OSError, ValueError):
        return None
    (path, journal), (_, other) = _read_journals(paths)
    if journal != other or index.version != INDEX_VERSION:
        return None  # a damaged copy: read_state says so
    try:
        info = os.stat(paths.snapshot)
    except OSError:
        return None
    if tuple(index.snapshot) != (info.st_size, info.st_mtime_ns, info.st_ino):
        return None
    if _snapshot_seq(_read_bytes(paths.snapshot, 200)) != index.seq:
        return None
    if _journal_cut_short(paths, journal, index.seq) is not None:
        return None
    try:
        events = [event for event, _ in _scan_journal(journal, path, index.seq) if event is not None]
    except StateError:
        return None  # read_state refuses it, naming the file and byte
    if not events:
        return index
    if not newer:
        return None
    if [event.seq for event in events] != list(range(index.seq + 1, index.seq + 1 + len(events))):
        return None  # read_state says what is missing
    return advance(index, events)


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
        self._last_snapshot = 0.0
        self._last_commit = 0.0
        self._took = 0.0
        """Seconds the last snapshot took to write."""
        self._journaled = 0
        """Bytes journaled since the last snapshot."""
        self._snapshot_bytes = 0
        self._dirty = False
        from exq.model.ledger import Ledger

        self.ledger = Ledger()
        self._journals = (_Journal(paths.journal), _Journal(paths.journal_copy))
        self._new_generation = True
        """The next snapshot also becomes queue_state.json.old, with an empty journal after it (set at open)."""

    def open(self) -> Store:
        """Take the writer lock and recover the state (snapshot + journal replay)."""
        try:
            self._lock.acquire(timeout=LOCK_WAIT)
        except Timeout:
            raise DaemonRunningError(
                f"another exq daemon (or `exq run`) is using {self.paths.root}; stop it first"
            ) from None
        except OSError as exc:
            raise write_error(self.paths.lock, exc) from None
        try:
            copies = _read_journals(self.paths)
            recovered = _recover(self.paths, copies)
            self.ledger = recovered.ledger
            whole = recovered.journal[:recovered.valid_bytes]
            for journal in self._journals:  # both as the copy the state came from (a torn last line dropped)
                journal.open(whole, dict(copies)[journal.path])
            for problem in recovered.problems:
                log.warning("%s", problem)
            self._rebuild_snapshot(recovered)
        except BaseException:
            self._lock.release()
            raise
        return self

    def close(self) -> None:
        """Write a final snapshot (if anything changed since the last) and release the lock."""
        if self._journals[0].fd is not None:
            try:
                self.snapshot(force=True)
            except WriteError as exc:  # the journal holds every event: the next start rebuilds the snapshot
                log.warning("final snapshot not written: %s", exc)
            for journal in self._journals:
                journal.close()
        if self._lock.is_locked:
            self._lock.release()

    @property
    def state(self) -> QueueState:
        return self.ledger.state

    def commit(self, events: Iterable[Event]) -> list[Event]:
        """Append events to the journal with one fsync, then apply them. Returns them with their seq.

        If the append cannot complete (disk full, I/O error), the journal is cut back to its last whole
        event, nothing is applied and WriteError is raised: the caller may try the same events again.
        """
        if self._journals[0].fd is None:
            raise StateError("store is not open")
        seq = self.ledger.state.seq
        numbered: list[Event] = []
        for event in events:
            seq += 1
            numbered.append(event.model_copy(update={"seq": seq}))
        if not numbered:
            return []
        payload = b"".join(ev.model_dump_json().encode() + b"\n" for ev in numbered)
        self._append(payload)
        for event in numbered:
            self.ledger.apply(event)
        self._dirty = True
        self._last_commit = time.monotonic()
        self._journaled += len(payload)
        return numbered

    def snapshot(self, force: bool = False) -> bool:
        """Write queue_state.json if it changed and is due (see `seconds_until_snapshot`; `force`: now).

        Raises WriteError when it cannot be written (the previous one stays; the journal has every event).
        """
        if not self._dirty or (not force and self.seconds_until_snapshot() != 0.0):
            return False
        started = time.monotonic()
        self.ledger.state.updated_at = time.time()
        data = self.ledger.state.model_dump_json().encode()
        atomic_write(self.paths.snapshot, data)
        self._snapshot_bytes = len(data)
        self._write_status_index()
        self._took = time.monotonic() - started
        self._last_snapshot, self._dirty, self._journaled = time.monotonic(), False, 0
        if self._journals[0].size > COMPACT_JOURNAL_BYTES or self._new_generation:
            self._compact_journal(data)
        return True

    def _write_status_index(self) -> None:
        """status_index.json for the snapshot just written; when it cannot be written, readers see its old stamp."""
        index = summarize(self.ledger.state, time.time())
        try:
            info = os.stat(self.paths.snapshot)
            index.snapshot = (info.st_size, info.st_mtime_ns, info.st_ino)
            atomic_write(self.paths.status_index, index.model_dump_json().encode())
        except (OSError, WriteError) as exc:
            log.warning("status index not written (exq status reads the whole state): %s", exc)

    def touch(self) -> None:
        """Mark advisory, non-journaled fields (GPU views, daemon info) as changed."""
        self._dirty = True

    def seconds_until_snapshot(self) -> float | None:
        """When queue_state.json is next due (None: it shows everything already). It is rewritten by size
        and idleness, so that its cost does not grow with the rate of events: once nothing was committed
        for IDLE_AFTER seconds (at most ~20% of the time spent writing it), while events keep coming at most
        ~5% of the time, and at once (past the minimum interval) when the journal since it outgrows it."""
        if not self._dirty:
            return None
        now = time.monotonic()
        since = now - self._last_snapshot
        if self._journaled > max(self._snapshot_bytes, COMPACT_JOURNAL_BYTES):
            return max(0.0, self._min_interval - since)
        idle = max(self._min_interval, self._took * 5) - since
        busy = max(self._min_interval, self._took * 20) - since
        quiet = IDLE_AFTER - (now - self._last_commit)
        return max(0.0, min(busy, max(idle, quiet)))

    def _append(self, payload: bytes) -> None:
        """Append whole events to both journals, each fsynced; on any failure leave both as they were."""
        for journal in self._journals:
            try:
                journal.append(payload)
            except OSError as exc:
                for each in self._journals:
                    each.cut_back()
                raise write_error(journal.path, exc) from None
        for journal in self._journals:
            journal.size += len(payload)

    def _compact_journal(self, snapshot: bytes) -> None:
        """The snapshot just written covers every event: keep a copy of it as the previous generation, then
        start an empty journal.

        At every instant queue_state.json.old plus the journal on disk hold the whole state, so losing or
        damaging queue_state.json loses nothing. It is a copy, not a hard link: damage done to one file
        in place must not reach the other.
        """
        atomic_write(self.paths.snapshot_old, snapshot)
        for journal in self._journals:
            journal.reset()
        self._new_generation = False

    def _rebuild_snapshot(self, recovered: _Recovered) -> None:
        """Start a new generation: queue_state.json and .old from the recovered state, an empty journal.

        When the state came whole from queue_state.json, that is left to the first snapshot (a daemon
        restarting on a large queue places jobs first): until then queue_state.json and the journal still
        hold every event. Otherwise it is done now; an unreadable queue_state.json is kept for inspection.
        On a full disk this waits for the next snapshot.
        """
        self._dirty = True
        if recovered.base == self.paths.snapshot and not recovered.problems:
            return
        if recovered.base != self.paths.snapshot and self.paths.snapshot.exists():
            aside = self.paths.root / f"{SNAPSHOT}.corrupt-{int(time.time())}"
            os.replace(self.paths.snapshot, aside)
            log.warning("kept the unreadable %s as %s", self.paths.snapshot, aside)
        try:
            self.snapshot(force=True)
        except WriteError as exc:  # written at the next snapshot; the journal and .old keep everything
            log.warning("%s", exc)


class _Journal:
    """One journal file open for appending, with the size of its whole events (a failed append is cut back to it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.size = 0

    def open(self, whole: bytes, found: bytes) -> None:
        """Open it holding exactly `whole`: cut back to it, or rewritten when what was `found` differs."""
        try:
            if found[:len(whole)] != whole:
                atomic_write(self.path, whole)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
            if os.fstat(fd).st_size != len(whole):
                os.ftruncate(fd, len(whole))  # drop a torn last line
                os.fsync(fd)
        except OSError as exc:
            raise write_error(self.path, exc) from None
        self.fd, self.size = fd, len(whole)

    def append(self, payload: bytes) -> None:
        """Write and fsync `payload` after the whole events (raises OSError; `size` is not advanced)."""
        assert self.fd is not None
        if os.fstat(self.fd).st_size != self.size:
            os.ftruncate(self.fd, self.size)  # a failed append left part of a line
        write_all(self.fd, payload)
        os.fsync(self.fd)

    def cut_back(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):  # else: cut back before the next append
                os.ftruncate(self.fd, self.size)

    def reset(self) -> None:
        """Replace it with an empty journal (the snapshot just kept as .old covers every event)."""
        tmp = self.path.with_name(f".{self.path.name}.new")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
            os.fsync(fd)
            os.close(fd)
            os.replace(tmp, self.path)
            fsync_dir(self.path.parent)
        except OSError as exc:
            raise write_error(self.path, exc) from None
        self.close()
        self.open(b"", b"")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass
class _Recovered:
    ledger: Ledger
    journal: bytes
    """The journal copy it was replayed from."""
    valid_bytes: int
    """Where the last whole event of that journal ends."""
    base: Path | None
    """The snapshot it started from (None: an empty state)."""
    problems: list[str] = field(default_factory=list)
    """Why the snapshots before `base` could not be used."""


def _recover(paths: StatePaths, journals: list[tuple[Path, bytes]]) -> _Recovered:
    """The state from the newest usable snapshot plus a journal; StateError when none leads to a whole state.

    `journals` are the two copies, the one reaching furthest first: when it is damaged, the other serves.
    """
    problems: list[str] = []
    for base in (paths.snapshot, paths.snapshot_old, None):
        try:
            replayed = _replay_either(paths, base, journals)
        except FileNotFoundError:
            if base == paths.snapshot and paths.snapshot_old.exists():
                problems.append(f"{base} is missing")
            continue
        except (_Unreadable, _Gap) as exc:
            problems.append(str(exc))
            continue
        ledger, (path, journal), valid_bytes, damaged = replayed
        problems.extend(damaged)
        if problems:
            problems.append(f"recovered the state from {base or 'an empty state'} and {path}")
        elif base == paths.snapshot and (cut := _journal_cut_short(paths, journal, ledger.state.seq)) is not None:
            problems.append(cut)
        return _Recovered(ledger, journal, valid_bytes, base, problems)
    raise StateError(
        "; ".join(problems) + f". No snapshot plus {paths.journal} gives the whole state, so exq will not "
        f"guess: restore {paths.snapshot} (or {paths.snapshot_old}) from a backup")


def _replay_either(
    paths: StatePaths, base: Path | None, journals: list[tuple[Path, bytes]]
) -> tuple[Ledger, tuple[Path, bytes], int, list[str]]:
    """`base` plus the first journal copy that replays whole; the copies passed over, in words.

    Raises what the first copy raised when none replays (StateError for a corrupt event, _Gap), and
    FileNotFoundError / _Unreadable for an unusable `base`.
    """
    from exq.model.ledger import Ledger

    failures: list[Exception] = []
    for path, journal in journals:
        ledger = Ledger(QueueState() if base is None else _load_snapshot(base))
        try:
            valid_bytes = _replay(ledger, journal, path)
        except (StateError, _Gap) as exc:
            failures.append(exc)
            continue
        primary_short = path != paths.journal and _last_seq(journal) != _last_seq(dict(journals)[paths.journal])
        damaged = [exc.where if isinstance(exc, _CorruptEvent) else str(exc) for exc in failures]
        if primary_short and not failures:
            damaged.append(f"{paths.journal} holds fewer events than {path}: it was cut short or replaced")
        return ledger, (path, journal), valid_bytes, damaged
    raise failures[0]


def _read_journals(paths: StatePaths) -> list[tuple[Path, bytes]]:
    """Both journal copies (a missing one is empty), the one reaching the furthest event first."""
    copies = [(paths.journal, _read_bytes(paths.journal)), (paths.journal_copy, _read_bytes(paths.journal_copy))]
    return sorted(copies, key=lambda copy: -(_last_seq(copy[1]) or 0))


def _last_seq(journal: bytes) -> int | None:
    """The seq of the journal's last whole line, read without parsing it."""
    end = journal.rfind(b"\n")
    if end < 0:
        return None
    last = _SEQ_RE.match(journal[journal.rfind(b"\n", 0, end) + 1:end])
    return int(last.group(1)) if last else None


def _replay(ledger: Ledger, journal: bytes, path: Path) -> int:
    """Apply the journal's events newer than the ledger's; returns where the last whole event ends."""
    valid_bytes = 0
    for event, end in _scan_journal(journal, path, ledger.state.seq):
        if event is not None:
            if event.seq != ledger.state.seq + 1:
                raise _Gap(f"{path}: the events after seq {ledger.state.seq} are missing (the next one there is "
                           f"seq {event.seq}, at byte {valid_bytes})")
            try:
                ledger.apply(event)
            except (KeyError, IndexError, ValueError, AttributeError) as exc:
                raise StateError(f"{path}: event seq {event.seq} at byte {valid_bytes} does not fit the state "
                                 f"({type(exc).__name__}: {exc}); restore the state directory from a backup") from None
        valid_bytes = end
    return valid_bytes


def _journal_cut_short(paths: StatePaths, journal: bytes, snapshot_seq: int) -> str | None:
    """Why the journal must have lost events (it ends before the snapshot made after it did); None if it need not.

    The journal holds every event after queue_state.json.old, and queue_state.json is written only after
    the events it holds were journaled, so the journal reaches at least as far as queue_state.json.
    """
    old_seq = _snapshot_seq(_read_bytes(paths.snapshot_old, 200))
    if old_seq is None or old_seq >= snapshot_seq:
        return None
    last_seq = _last_seq(journal) or old_seq
    if last_seq >= snapshot_seq:
        return None
    return (f"{paths.journal} ends at event {last_seq}, before event {snapshot_seq} that {paths.snapshot} holds: it "
            f"was cut short, deleted or replaced. The state is the snapshot's; changes recorded after it, if any, "
            f"are lost")


class _CorruptEvent(StateError):
    """A garbled line inside a journal copy: the events after it depend on it, so it is never skipped."""

    def __init__(self, where: str, path: Path) -> None:
        super().__init__(
            f"{where}, and {JOURNAL_COPY} cannot stand in for it. The events after it depend on it, so exq will not "
            f"skip it: restore the journal from a backup, or move both journals aside to start again from "
            f"{path.with_name(SNAPSHOT)} (losing the events it does not hold)")
        self.where = where


class _Unreadable(Exception):
    """A snapshot that cannot be used (truncated, garbled); recovery tries the previous generation."""


class _Gap(Exception):
    """The journal does not continue where a snapshot ends."""


def _load_snapshot(path: Path) -> QueueState:
    """A snapshot file's state. FileNotFoundError when missing; _Unreadable when torn or garbled;
    StateError when it was written by an exq with another state version."""
    data = path.read_bytes()
    version = _VERSION_RE.match(data[:200])
    if version is not None and int(version.group(1)) != STATE_VERSION:
        raise StateError(f"{path}: state version {version.group(1).decode()}, "
                         f"this exq reads version {STATE_VERSION}")
    if version is None:
        raise _Unreadable(f"{path}: not a state file (no version at its start; {len(data)} bytes)")
    try:
        return load_state(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _Unreadable(f"{path}: not a valid state file ({first['msg']} at {first['loc']})") from None
    except ValueError as exc:
        raise _Unreadable(f"{path}: not a valid state file ({exc})") from None


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
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror or exc}") from None


def _read_stamped(path: Path, stamp: tuple[int, int, int]) -> bytes | None:
    """The file's bytes when it still is the one of `stamp` (size, mtime_ns, inode); else None."""
    try:
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            if (info.st_size, info.st_mtime_ns, info.st_ino) != tuple(stamp):
                return None
            data = handle.read()
    except OSError:
        return None
    return data if len(data) == stamp[0] else None


def _snapshot_seq(head: bytes) -> int | None:
    match = _SNAPSHOT_SEQ_RE.search(head)
    return int(match.group(1)) if match else None


def _scan_journal(data: bytes, path: Path, after: int) -> Iterable[tuple[Event | None, int]]:
    """Yield (event, byte offset after it) for each line; the event is None when its seq <= `after`.

    Events are written with `seq` first, so lines the snapshot covers are skipped without parsing.
    A torn or unparsable last line ends the scan (it was never acknowledged); an unparsable line
    before it is an error naming the file and byte. `path` names the journal in messages.
    """
    from exq.model.events import EVENT_ADAPTER

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
            if newline + 1 >= len(data):
                return
            lines = data.count(b"\n", 0, offset) + 1
            raise _CorruptEvent(f"{path}: corrupt event at byte {offset} (line {lines}): {exc.errors()[0]['msg']}",
                                path) from None
        offset = newline + 1
        yield event, offset
