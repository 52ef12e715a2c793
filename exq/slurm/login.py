"""Slurm's commands run on a login node over SSH: a `Runner` for `SlurmClient` (see exq.slurm.client).

The client is called from worker threads (`asyncio.to_thread`), so `run` hands each command to the event
loop, which keeps one asyncssh connection to the login node (opened on first use, opened again after it
dropped). Host keys are verified as for every SSH host (exq.ssh.connection). A command that cannot reach the
login node raises HostUnreachableError; one that ran returns its exit status and output.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING

from exq.errors import WorkerError
from exq.ssh.connection import HostUnreachableError, connect, describe

if TYPE_CHECKING:
    import asyncssh

    from exq.config import HostConfig

COMMAND_TIMEOUT = 60.0
"""Seconds one Slurm command may take on the login node."""


class SshLogin:
    """A Runner running each argv on host `host.login` with the host's SSH settings."""

    def __init__(self, name: str, host: HostConfig) -> None:
        self.name = name
        self.host = host.model_copy(update={"address": host.login})
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: asyncssh.SSHClientConnection | None = None
        self._lock: asyncio.Lock | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop that owns the connection (the caller's, before its first command)."""
        self._loop = loop

    def __call__(self, argv: Sequence[str]) -> tuple[int, str, str]:
        """Run `argv` on the login node (from a thread other than the loop's) to its end."""
        if self._loop is None:
            raise WorkerError(f"host {self.name}: the login node's connection has no event loop yet")
        future = asyncio.run_coroutine_threadsafe(self.run(argv), self._loop)
        try:
            return future.result(COMMAND_TIMEOUT + self.host.connect_timeout + 10)
        except TimeoutError:  # the bounds inside run() come first; this one only guards a stuck loop
            future.cancel()
            raise HostUnreachableError(f"host {self.name}: login node {self.host.address}: {argv[0]} "
                                       "did not complete in time") from None

    async def run(self, argv: Sequence[str]) -> tuple[int, str, str]:
        import asyncssh

        conn = await self._connection()
        try:
            result = await asyncio.wait_for(conn.run(shlex.join(argv), check=False, stdin=asyncssh.DEVNULL),
                                            COMMAND_TIMEOUT)
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            self._drop(conn)
            raise HostUnreachableError(f"host {self.name}: login node {self.host.address}: {argv[0]} "
                                       f"did not complete: {describe(exc)}") from exc
        status = result.exit_status if result.exit_status is not None else 255
        return status, _text(result.stdout), _text(result.stderr)

    async def _connection(self) -> asyncssh.SSHClientConnection:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._conn is None or self._conn.is_closed():
                self._conn = await connect(self.name, self.host)
            return self._conn

    def _drop(self, conn: asyncssh.SSHClientConnection) -> None:
        if self._conn is conn:
            self._conn = None
        conn.close()

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()
            await conn.wait_closed()


def _text(data: object) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data if isinstance(data, str) else ""
