"""The one error hierarchy of exq; the CLI maps each class to an exit code."""

from __future__ import annotations

import os


class ExqError(Exception):
    """Base of every error exq reports to a user (printed without a traceback)."""

    exit_code = 1


class InputFileError(ExqError):
    """A file a user wrote is invalid. Carries every problem found, each with file, line, column and field."""

    exit_code = 2

    def __init__(self, problems: list[InputProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ManifestError(InputFileError):
    """A manifest is invalid."""


class ConfigError(InputFileError):
    """exq's configuration file (hosts) is invalid."""


class InputProblem:
    """One problem in an input file: where it is, which field, and what was expected."""

    def __init__(self, file: str, line: int | None, column: int | None, field: str, message: str) -> None:
        self.file = file
        self.line = line
        self.column = column
        self.field = field
        self.message = message

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        field = f" {self.field}:" if self.field else ""
        return f"{where}:{field} {self.message}"

    def __repr__(self) -> str:
        return f"InputProblem({self!s})"


class StateError(ExqError):
    """The state directory is unusable (corrupt, unreadable, wrong version)."""

    exit_code = 3


class WriteError(StateError):
    """A write did not complete (disk full, quota, I/O error, read-only file system); nothing was half-applied."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class DaemonRunningError(ExqError):
    """Another daemon already holds this state directory."""

    exit_code = 4


class NotFoundError(ExqError):
    """A job, phase or submission named on the command line does not exist."""

    exit_code = 5


class WorkerError(ExqError):
    """A worker could not launch, watch or kill a job; at the CLI: a host could not be reached over SSH."""

    exit_code = 6


class UsageError(ExqError):
    """The command line is wrong in a way the option parser cannot see (e.g. `--host NODE` without a command)."""

    exit_code = 2


def os_error_text(exc: OSError) -> str:
    """`PATH: strerror` for an OSError about a file (both paths for a rename), else its message."""
    if exc.filename is None:
        return exc.strerror or str(exc)
    paths = " -> ".join(os.fsdecode(f) if isinstance(f, bytes) else str(f)
                        for f in (exc.filename, exc.filename2) if f is not None)
    return f"{paths}: {exc.strerror or exc}"
