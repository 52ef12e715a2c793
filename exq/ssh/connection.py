"""Open an SSH connection to a configured host the one way exq does it: host keys always verified.

Settings come from the host's entry in exq's config, then the user's ~/.ssh/config, keys and agent.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from exq.errors import WorkerError

if TYPE_CHECKING:
    import asyncssh

    from exq.config import HostConfig


class HostKeyError(WorkerError):
    """The host's key is unknown or changed: exq never connects to an unverified host."""


class HostUnreachableError(WorkerError):
    """The host cannot be reached now (connect failed, connection dropped, no answer in time)."""


def address(name: str, host: HostConfig) -> str:
    return host.address or name


def options(host: HostConfig) -> dict[str, object]:
    """asyncssh.connect options from a host's config entry (unset ones left to ~/.ssh/config)."""
    result: dict[str, object] = {
        "keepalive_interval": host.keepalive,
        "keepalive_count_max": host.keepalive_count,
        "connect_timeout": host.connect_timeout,
    }
    if host.port is not None:
        result["port"] = host.port
    if host.user is not None:
        result["username"] = host.user
    if host.identity_file is not None:
        result["client_keys"] = [str(Path(host.identity_file).expanduser())]
    if host.known_hosts is not None:
        result["known_hosts"] = str(Path(host.known_hosts).expanduser())
    if host.ssh_config is not None:
        result["config"] = [str(Path(host.ssh_config).expanduser())]
    return result


async def connect(
    name: str, host: HostConfig, client_factory: Callable[[], asyncssh.SSHClient] | None = None
) -> asyncssh.SSHClientConnection:
    """Connect to host `name`; HostKeyError for an unverified key, HostUnreachableError otherwise."""
    import asyncssh  # slow to import (its crypto backends look for libraries): only once a host is used

    target = address(name, host)
    opts = options(host)
    try:
        checked = await asyncssh.SSHClientConnectionOptions.construct(host=target, **opts)
        if checked.known_hosts is None:  # `UserKnownHostsFile none` would accept any key
            default = Path("~/.ssh/known_hosts").expanduser()
            opts["known_hosts"] = str(default) if default.is_file() else b""
        factory = client_factory or asyncssh.SSHClient
        return await asyncio.wait_for(
            asyncssh.connect(target, client_factory=factory, **opts), host.connect_timeout + 5)
    except asyncssh.HostKeyNotVerifiable as exc:
        port = host.port or 22
        raise HostKeyError(
            f"host {name} ({target}, port {port}): host key not verified: {exc}. "
            f"Check the key's fingerprint with the host's owner, then add it with "
            f"`ssh-keyscan -p {port} {target} >> ~/.ssh/known_hosts` (or the host's "
            f"known_hosts file); exq never accepts unverified host keys") from exc
    except (OSError, asyncssh.Error, TimeoutError, ValueError) as exc:
        raise HostUnreachableError(f"host {name} ({target}) unreachable: {describe(exc)}") from exc


FailureKind = Literal["host-key", "auth", "refused", "dns", "timeout", "unreachable", "other"]
_UNREACHABLE = (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN)


def failure_kind(exc: BaseException) -> FailureKind:
    """What went wrong reaching a host, from `exc` and the exceptions it was raised from."""
    import asyncssh

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, HostKeyError | asyncssh.HostKeyNotVerifiable):
            return "host-key"
        if isinstance(seen, asyncssh.PermissionDenied):
            return "auth"
        if isinstance(seen, ConnectionRefusedError):
            return "refused"
        if isinstance(seen, socket.gaierror):
            return "dns"
        if isinstance(seen, TimeoutError) or (isinstance(seen, OSError) and seen.errno == errno.ETIMEDOUT):
            return "timeout"
        if isinstance(seen, OSError) and seen.errno in _UNREACHABLE:
            return "unreachable"
        seen = seen.__cause__
    return "unreachable" if isinstance(exc, HostUnreachableError) else "other"


def describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
