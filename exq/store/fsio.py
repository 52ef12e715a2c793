"""Durable file primitives: complete writes, atomic replace with fsync, private directories, owner checks.

Every file exq writes goes through `write_all` (a short write is an error, never ignored) and every
directory through `private_dir`, which refuses one that another user owns or could write into, as
OpenSSH's StrictModes does for ~/.ssh.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
import tempfile
from pathlib import Path

from exq.errors import StateError, WriteError

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) readable by the owner only; refuse one another user could tamper with."""
    try:
        path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        check_owned(path, directory=True)
        if stat.S_IMODE(path.stat().st_mode) != PRIVATE_DIR:
            os.chmod(path, PRIVATE_DIR)
    except OSError as exc:
        raise write_error(path, exc) from None
    return path


def check_owned(path: Path, directory: bool = False) -> None:
    """Refuse `path` unless this user owns it, no one else can write it, and it is what it should be.

    Raises StateError naming the owner, the mode and the fix. A missing path passes.
    """
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    kind_ok = stat.S_ISDIR(info.st_mode) if directory else stat.S_ISREG(info.st_mode)
    if not kind_ok:
        what = "a directory" if directory else "a regular file"
        raise StateError(f"{path}: expected {what}, found {_kind(info.st_mode)}; exq will not use it")
    me = os.geteuid()
    if info.st_uid != me:
        raise StateError(
            f"{path} is owned by {_user(info.st_uid)}, not by you ({_user(me)}): exq refuses it, since its owner "
            f"could make exq run any command as you. Use a state directory of your own (--state-dir), or, if it "
            f"is yours, `chown -R {_user(me)} {path}`")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        raise StateError(
            f"{path} has mode {mode:04o}: other users can write into it, so exq will not trust it. "
            f"Check its contents, then `chmod {'700' if directory else '600'} {path}`")


def check_ancestors(path: Path) -> None:
    """Refuse a path below a directory that another user (other than root) owns or may replace entries of."""
    me = os.geteuid()
    for parent in path.absolute().parents:
        try:
            info = parent.stat()
        except FileNotFoundError:
            continue
        mode = stat.S_IMODE(info.st_mode)
        if info.st_uid not in (0, me):
            raise StateError(f"{path} lies in {parent}, owned by {_user(info.st_uid)}: exq will not trust it; "
                             f"choose a state directory under a directory you or root own")
        if mode & 0o022 and not mode & stat.S_ISVTX:
            raise StateError(f"{path} lies in {parent} (mode {mode:04o}), where other users can rename or "
                             f"replace it: choose another state directory, or `chmod go-w {parent}`")


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to `fd` (os.write may write fewer); a write that makes no progress is ENOSPC."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Write `data` so that a reader sees the old or the new file, never a torn one, even after a crash.

    A write that cannot complete (disk full, I/O error) raises WriteError and leaves the old file.
    """
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_error(path: Path, exc: OSError) -> WriteError:
    """The user-facing error for a failed write of `path`."""
    reason = exc.strerror or str(exc)
    hint = " (free some space; nothing was half-written)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return WriteError(f"cannot write {path}: {reason}{hint}", exc.errno)


LOW_SPACE = 1 << 20
"""Below this many free bytes, the state directory's file system counts as full."""


def disk_full_problem(path: Path) -> str | None:
    """Why the file system holding `path` is too full for exq to record changes; None when it is not."""
    try:
        info = os.statvfs(path)
    except OSError:
        return None
    free = info.f_bavail * info.f_frsize
    if free >= LOW_SPACE:
        return None
    return (f"the file system of {path} is full ({free} bytes free): exq cannot record changes, so no job is "
            f"placed and submissions are refused until space is freed; running jobs go on")


def is_disk_full(exc: BaseException) -> bool:
    """Whether an error is a full disk or an exhausted quota."""
    return isinstance(exc, OSError | WriteError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
