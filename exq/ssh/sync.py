"""Code sync: mirror a local directory tree into a directory on a host over SFTP (never deleting).

Exclude patterns (fnmatch-style, case-sensitive) are matched against the path relative to the synced
directory, `/`-separated; a path is excluded when it or a directory above it matches one pattern:
- `*`, `?` and `[...]` as in fnmatch, where `*` also matches `/` (so `**` is the same as `*`);
- a pattern without a slash matches a name at any depth: `*.pt`, `.git`, `__pycache__`;
- a pattern with a slash matches the whole relative path: `data/raw`, `checkpoints/**` (the files
  under checkpoints; the directory itself is still created); a leading `/` only anchors (`/data`);
  a leading `**/` also matches at the top (`**/logs` matches `logs` and `a/logs`);
- a trailing `/` makes a pattern match directories only: `data/` skips every directory named data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import secrets
import stat
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import BinaryIO, TypeVar

import asyncssh

from exq.errors import WorkerError
from exq.ssh.connection import HostUnreachableError, describe

MAX_UPLOADS = 8
CHUNK = 1024 * 1024
DIR_MODE = 0o700
T = TypeVar("T")
_DIR_ATTRS = asyncssh.SFTPAttrs(permissions=DIR_MODE)
_LOST = (asyncssh.DisconnectError, asyncssh.SFTPConnectionLost, ConnectionError)


@dataclass(frozen=True)
class SyncStats:
    """What one sync did. Excluded directories count once (their contents are never looked at)."""
    files_seen: int
    files_uploaded: int
    bytes_uploaded: int
    skipped_excluded: int
    skipped_symlinks: int
    seconds: float


def excluded(relpath: str, patterns: Sequence[str]) -> bool:
    """Whether `relpath` (relative, `/`-separated; a trailing `/` marks a directory) is excluded."""
    parts = [part for part in relpath.split("/") if part not in ("", ".")]
    return any(_matches("/".join(parts[: i + 1]), name, i < len(parts) - 1 or relpath.endswith("/"), pattern)
               for i, name in enumerate(parts) for pattern in patterns)


def _matches(path: str, name: str, is_dir: bool, pattern: str) -> bool:
    dir_only = pattern.endswith("/")
    pattern = pattern.rstrip("/")
    if not pattern or (dir_only and not is_dir):
        return False
    if pattern.startswith("/"):
        return fnmatchcase(path, pattern.lstrip("/"))
    if "/" not in pattern:
        return fnmatchcase(name, pattern)
    return fnmatchcase(path, pattern) or (pattern.startswith("**/") and fnmatchcase(path, pattern[3:]))


async def sync_tree(sftp: asyncssh.SFTPClient, local: Path, remote: str, exclude: Sequence[str] = ()) -> SyncStats:
    """Mirror directory `local` into `remote` on the host; never deletes or renames remote files.

    `remote` is created with its parents (new directories 0700); a relative one is relative to the
    login directory. Regular files are uploaded when missing remotely or when size, mtime (whole
    seconds) or executable bits differ; each goes to a temporary name in its directory and is renamed
    over the target, with the local mtime and mode (without group/other write), so a reader never
    sees half a file and the next sync skips it. Symlinks are never followed: skipped and counted.
    Sockets, FIFOs and devices are ignored. At most MAX_UPLOADS uploads run at once. WorkerError
    names the file and cause (HostUnreachableError when the connection drops).
    """
    started = time.monotonic()
    job = _Sync(sftp, list(exclude))
    try:
        async with asyncio.TaskGroup() as tasks:
            job.tasks = tasks
            await job.remote(f"create {remote}", sftp.makedirs(_b(remote), _DIR_ATTRS, exist_ok=True))
            await job.walk(local, "", remote, await job.listing(remote))
    except BaseExceptionGroup as group:
        error = next((e for e in group.exceptions if isinstance(e, WorkerError)), None)
        if error is None:
            raise
        raise error from error.__cause__
    return SyncStats(job.seen, job.uploaded, job.bytes, job.excluded, job.symlinks, time.monotonic() - started)


def _b(path: str) -> bytes:
    return os.fsencode(path)  # remote paths go as bytes: names that are not UTF-8 survive both ways


def _error(what: str, exc: BaseException) -> WorkerError:
    if isinstance(exc, _LOST):
        return HostUnreachableError(f"code sync: {what}: connection lost: {describe(exc)}")
    return WorkerError(f"code sync: {what}: {describe(exc)}")


class _Sync:
    def __init__(self, sftp: asyncssh.SFTPClient, patterns: list[str]) -> None:
        self.sftp, self.patterns = sftp, patterns
        self.slots = asyncio.Semaphore(MAX_UPLOADS)
        self.tasks: asyncio.TaskGroup | None = None
        self.seen = self.uploaded = self.bytes = self.excluded = self.symlinks = 0

    async def remote(self, what: str, operation: Awaitable[T]) -> T:
        """Await one SFTP operation; a failure becomes a WorkerError saying `what` failed."""
        try:
            return await operation
        except (OSError, asyncssh.Error, ValueError) as exc:
            raise _error(what, exc) from exc

    async def listing(self, rdir: str) -> dict[str, asyncssh.SFTPAttrs]:
        names = await self.remote(f"list {rdir}", self.sftp.readdir(_b(rdir)))
        return {os.fsdecode(n.filename): n.attrs for n in names}

    async def walk(self, ldir: Path, rel: str, rdir: str, present: dict[str, asyncssh.SFTPAttrs]) -> None:
        try:
            with os.scandir(ldir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise WorkerError(f"code sync: cannot read directory {ldir}: {describe(exc)}") from exc
        for entry in entries:
            is_dir = entry.is_dir(follow_symlinks=False)
            target = posixpath.join(rdir, entry.name)
            if excluded(rel + entry.name + ("/" if is_dir else ""), self.patterns):
                self.excluded += 1
            elif entry.is_symlink():
                self.symlinks += 1
            elif is_dir:
                if entry.name in present:  # a symlink to a directory there is used as it is
                    listing = await self.listing(target)
                else:
                    await self.remote(f"create {target}", self.sftp.mkdir(_b(target), _DIR_ATTRS))
                    listing = {}
                await self.walk(Path(entry.path), f"{rel}{entry.name}/", target, listing)
            elif entry.is_file(follow_symlinks=False):
                self.seen += 1
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError as exc:
                    raise WorkerError(f"code sync: cannot read {entry.path}: {describe(exc)}") from exc
                if _differs(st, present.get(entry.name)):
                    assert self.tasks is not None
                    await self.slots.acquire()
                    task = self.tasks.create_task(self.upload(Path(entry.path), target, st))
                    task.add_done_callback(lambda _: self.slots.release())

    async def upload(self, path: Path, target: str, st: os.stat_result) -> None:
        """Copy `path` to a temporary name next to `target`, set mode and times, rename it over."""
        head, name = posixpath.split(target)
        tmp = _b(posixpath.join(head, f".{name}.{secrets.token_hex(4)}.exq-tmp"))
        try:
            src = path.open("rb")
        except OSError as exc:
            raise WorkerError(f"code sync: cannot read {path}: {describe(exc)}") from exc
        size = 0
        with src:
            try:
                async with self.sftp.open(tmp, "xb", asyncssh.SFTPAttrs(permissions=0o600)) as dst:
                    while chunk := await asyncio.to_thread(_read, src, path):
                        await dst.write(chunk)
                        size += len(chunk)
                attrs = asyncssh.SFTPAttrs(permissions=_mode(st), atime=int(st.st_atime), mtime=int(st.st_mtime))
                await self.sftp.setstat(tmp, attrs)
                await self.sftp.posix_rename(tmp, _b(target))
            except BaseException as exc:  # cancelled too (another upload failed): no temp file left
                with contextlib.suppress(OSError, asyncssh.Error, TimeoutError):
                    await asyncio.wait_for(self.sftp.remove(tmp), 5)
                if isinstance(exc, OSError | asyncssh.Error):
                    raise _error(f"upload {path} to {target}", exc) from exc
                raise
        self.uploaded += 1
        self.bytes += size


def _read(src: BinaryIO, path: Path) -> bytes:
    try:
        return src.read(CHUNK)
    except OSError as exc:
        raise WorkerError(f"code sync: cannot read {path}: {describe(exc)}") from exc


def _mode(st: os.stat_result) -> int:
    return stat.S_IMODE(st.st_mode) & 0o755


def _differs(st: os.stat_result, remote: asyncssh.SFTPAttrs | None) -> bool:
    return (remote is None or remote.type != asyncssh.FILEXFER_TYPE_REGULAR or remote.size != st.st_size
            or remote.mtime != int(st.st_mtime) or (remote.permissions or 0) & 0o111 != _mode(st) & 0o111)
