"""Faults this machine can really make: a small full tmpfs, another local user."""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs and chown need root (CI runs as root)")


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` for the duration (unmounted lazily, whatever is left open)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                   check=True, timeout=30)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)


def fill_disk(directory: Path) -> Path:
    """Fill the file system of `directory` to the last byte with one file; returns it (delete it to free the space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 16, 512, 1):  # big writes, then whatever partial blocks are left
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size) > 0:
                    pass
    finally:
        os.close(fd)
    return filler


def other_user() -> pwd.struct_passwd:
    """A real local user other than this one: `exqother` (created with useradd when missing), else nobody."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam("exqother")
    if os.geteuid() == 0:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "exqother"],
                       check=False, capture_output=True, timeout=30)
        with contextlib.suppress(KeyError):
            return pwd.getpwnam("exqother")
    return pwd.getpwnam("nobody")
