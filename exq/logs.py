"""Read an attempt's log wherever it lives: on this machine, or on the SSH host that ran it."""

from __future__ import annotations

import asyncio
import shlex
from types import TracebackType
from typing import TYPE_CHECKING

from exq.config import LOCAL, load_config
from exq.errors import ExqError, WorkerError
from exq.model.state import Attempt
from exq.ssh import connection as sshconn

if TYPE_CHECKING:
    import asyncssh


class LogSource:
    """`read(offset)` returns the log's bytes from `offset` on; one SSH connection for a remote log."""

    def __init__(self, attempt: Attempt) -> None:
        self.host, self.path = attempt.host, attempt.log
        self._runner: asyncio.Runner | None = None
        self._conn: asyncssh.SSHClientConnection | None = None
        if self.host != LOCAL:
            host = load_config().hosts.get(self.host)
            if host is None:
                raise ExqError(f"the log is on host {self.host}, which is no longer in exq's config")
            if not host.shares_files:
                self._runner = asyncio.Runner()
                self._conn = self._runner.run(sshconn.connect(self.host, host))

    def read(self, offset: int) -> bytes:
        if self._runner is None or self._conn is None:
            try:
                with open(self.path, "rb") as handle:
                    handle.seek(offset)
                    return handle.read()
            except FileNotFoundError:
                return b""
        import asyncssh  # already loaded by __init__'s connection; at the top, it would slow local logs

        command = f"tail -c +{offset + 1} {shlex.quote(self.path)} 2>/dev/null"
        try:
            result = self._runner.run(self._conn.run(command, encoding=None, check=False))
        except asyncssh.Error as exc:
            raise WorkerError(f"host {self.host}: cannot read the log {self.path}: {sshconn.describe(exc)}") from exc
        return result.stdout if isinstance(result.stdout, bytes) else b""

    def close(self) -> None:
        if self._runner is not None:
            if self._conn is not None:
                self._conn.close()
            self._runner.close()

    def __enter__(self) -> LogSource:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
