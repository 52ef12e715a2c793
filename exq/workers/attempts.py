"""Attempt files on a filesystem this process can read: this machine's, or one it shares with a cluster's nodes.

What the local worker and the Slurm worker share: checking what a runner may be given, reading an attempt's
records, log and result file, and making its private directories.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from exq.workers.base import LOG_TAIL_BYTES, PEEK_LIMIT, TOMBSTONE, LaunchRefused, LaunchRequest, parse_result

_RUNNER_VARS = {"EXQ_RUNNER_CMD": "the command", "EXQ_RUNNER_SETUP": "the setup",
                "EXQ_RUNNER_WORKDIR": "the workdir"}
"""How a message names what reaches the job through these runner variables."""


def unusable_text(text: str) -> str | None:
    """Why `text` cannot be an argument or environment entry of a process, else None."""
    if "\0" in text:
        return "contains a NUL byte (\\0)"
    try:
        os.fsencode(text)
    except UnicodeEncodeError as exc:
        return f"contains {text[exc.start]!r}, which is not encodable"
    return None


def peek_results(paths: list[str]) -> dict[str, dict[str, Any]]:
    """The JSON objects these result files hold now, by path (live progress: unreadable, oversized or
    not-an-object files left out)."""
    found = {path: read_result(Path(path), PEEK_LIMIT)[0] for path in paths}
    return {path: data for path, data in found.items() if data is not None}


def write_tombstone(attempt_dir: Path) -> bool:
    """Claim the attempt before its runner does, so it never starts; False when it was claimed already."""
    make_private_dirs(attempt_dir)
    try:
        fd = os.open(attempt_dir / "claim", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(TOMBSTONE + "\n")
    return True


def runner_env(request: LaunchRequest, job_env: Mapping[str, str], grace: float, host: str, *,
               default_signal: str | None = None) -> dict[str, str]:
    """What runner.sh is given to start `request` (the job's variables `job_env` and its own EXQ_RUNNER_*);
    LaunchRefused when no process could be given them, or the workdir is not a directory on `host`."""
    added = dict(job_env)
    added.update(EXQ_RUNNER_CMD=request.cmd, EXQ_RUNNER_WORKDIR=os.path.abspath(request.workdir),
                 EXQ_RUNNER_GRACE=f"{grace:.1f}")
    if default_signal is not None:
        added["EXQ_RUNNER_DEFAULT_SIGNAL"] = default_signal
    if (umask := current_umask()) is not None:
        added["EXQ_RUNNER_UMASK"] = f"{umask:04o}"
    if request.setup:
        added["EXQ_RUNNER_SETUP"] = request.setup
    problem = launch_problem(Path(os.path.abspath(request.attempt_dir)), added)
    problem = problem or workdir_problem(added["EXQ_RUNNER_WORKDIR"], host)
    if problem is not None:
        raise LaunchRefused(problem)
    return added


def launch_problem(attempt_dir: Path, env: Mapping[str, str]) -> str | None:
    """Why the runner cannot be started in `attempt_dir` with `env` (what exq adds to the daemon's own
    environment, which is valid already), else None."""
    if (why := unusable_text(str(attempt_dir))) is not None:
        return f"the attempt directory {why}"
    for name, value in env.items():
        if not name or "=" in name or unusable_text(name) is not None:
            return f"invalid environment variable name {name!r}"
        if (why := unusable_text(value)) is not None:
            return f"{_RUNNER_VARS.get(name, f'environment variable {name}')} {why}"
    return None


def read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None


@functools.cache
def current_umask() -> int | None:
    """This process's umask, read without changing it (Linux /proc); None when it cannot be read."""
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/self/status", encoding="ascii") as f:
        return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    return None


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, a file only its owner may read (mode 0600 when created)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def make_private_dirs(path: Path) -> None:
    """Create `path` and its missing parents with mode 0700 (whatever the umask)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    except FileNotFoundError:
        make_private_dirs(path.parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    umask = current_umask()
    if umask is None or umask & 0o700:
        os.chmod(path, 0o700)


def workdir_problem(workdir: str, host: str) -> str | None:
    """Why `workdir` (on `host`, this machine) cannot be a job's working directory, else None."""
    if os.path.isdir(workdir):
        return None
    what = "is not a directory" if os.path.exists(workdir) else "does not exist"
    return f"workdir {workdir} {what} on {host}"


def missing_paths(workdir: str, globs: list[str]) -> list[str]:
    """The globs that match nothing under `workdir` (`**` spans directories)."""
    return [p for p in globs if not glob.glob(p, root_dir=workdir, recursive=True)]


def log_tail(path: Path, size: int = LOG_TAIL_BYTES) -> str:
    """The last `size` bytes of the log, decoded (bytes that are not UTF-8 replaced)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def read_result(path: Path, limit: int | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """The result file's JSON object, or why there is none; (None, None) when it is missing or over `limit` bytes."""
    try:
        with path.open("rb") as f:
            if limit is not None and os.fstat(f.fileno()).st_size > limit:
                return None, None
            data = f.read()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot read result file {path}: {exc}"
    return parse_result(data, str(path))
