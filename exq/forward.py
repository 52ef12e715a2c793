"""`exq --host NODE ...`: the same command, run by the exq on NODE over SSH; no network port is opened.

NODE is a host of exq's config, or any name ssh knows (~/.ssh/config alias, address). Host keys are
verified as everywhere in exq. `submit FILE` sends the manifest's text: on NODE a relative workdir
is resolved from the login's home directory.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from exq.errors import ExqError, UsageError, WorkerError

if TYPE_CHECKING:
    import asyncssh

REMOTE_EXQ_ENV = "EXQ_REMOTE_EXQ"
"""How to run exq on the node (default `exq`), e.g. `~/exq/.venv/bin/exq`."""
NOT_FORWARDED = {"daemon", "run"}


def forward(node: str, args: list[str]) -> int:
    """Run `exq ARGS` on NODE, streaming its output here; returns its exit status."""
    # Here and in _forward, not at the top: every exq command imports this module for split_host.
    import asyncio

    args, stdin = _prepare(args)
    return asyncio.run(_forward(node, args, stdin))


def split_host(argv: list[str]) -> tuple[str | None, list[str]]:
    """(NODE, the other arguments) when `--host NODE` comes before the command, else (None, argv).

    UsageError when NODE is empty or no command follows (`exq --host status` names no NODE).
    """
    for index, arg in enumerate(argv):
        if arg == "--host" and index + 1 < len(argv):
            node, rest = argv[index + 1], argv[:index] + argv[index + 2:]
            break
        if arg.startswith("--host="):
            node, rest = arg.split("=", 1)[1], argv[:index] + argv[index + 1:]
            break
        if not arg.startswith("-"):
            return None, argv
    else:
        return None, argv
    if not node or node.startswith("-"):
        raise UsageError("--host needs a NODE before the command, e.g. `exq --host gpu1 status`")
    if not {"-h", "--help"} & set(rest) and not any(not a.startswith("-") for a in rest):
        example = node if node.isalpha() else "status"
        raise UsageError(f"no command after `--host {node}` (NODE: a host of your config or any name ssh "
                         f"knows); put NODE, then the command: `exq --host NODE {example}`")
    return node, rest


def _prepare(args: list[str]) -> tuple[list[str], bytes | None]:
    """The arguments to send, and the manifest text to send as stdin for `submit FILE`."""
    command = next((a for a in args if not a.startswith("-")), None)
    if command in NOT_FORWARDED:
        raise ExqError(f"`exq {command}` runs on the node itself; from here use `exq --host NODE submit`")
    if command != "submit":
        return args, None
    at = args.index("submit")
    rest = args[at + 1:]
    files = [a for a in rest if not a.startswith("-")]
    if len(files) != 1 or files[0] == "-":
        return args, None
    path = Path(files[0])
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ExqError(f"cannot read manifest {path}: {exc}") from None
    rest = ["-" if a == files[0] else a for a in rest]
    return [*args[:at + 1], *rest, "--stdin-name", path.name], text


async def _forward(node: str, args: list[str], stdin: bytes | None) -> int:
    import asyncio

    import asyncssh

    from exq.config import LOCAL, HostConfig, load_config
    from exq.ssh import connection as sshconn

    if node == LOCAL:
        raise ExqError("--host local: run exq without --host on this machine")
    host = load_config().hosts.get(node, HostConfig())
    remote_exq = shlex.split(os.environ.get(REMOTE_EXQ_ENV, "exq"))
    command = " ".join(shlex.quote(part) for part in [*remote_exq, *args])
    conn = await sshconn.connect(node, host)
    try:
        async with conn:
            process = await conn.create_process(command, encoding=None)
            if stdin is not None:
                process.stdin.write(stdin)
            process.stdin.write_eof()
            await asyncio.gather(_pump(process.stdout, sys.stdout.buffer), _pump(process.stderr, sys.stderr.buffer))
            await process.wait()
    except asyncssh.Error as exc:
        raise WorkerError(f"host {node}: the connection failed during the command: {sshconn.describe(exc)}") from exc
    status = process.exit_status
    if status is None:
        raise WorkerError(f"host {node}: lost the connection before the command finished")
    if status == 127:
        raise ExqError(f"exq was not found on {node}; set {REMOTE_EXQ_ENV} to the exq command there "
                       f"(e.g. {REMOTE_EXQ_ENV}=~/exq/.venv/bin/exq)")
    return status


async def _pump(reader: asyncssh.SSHReader[bytes], out: BinaryIO) -> None:
    while chunk := await reader.read(65536):
        out.write(chunk)
        out.flush()
