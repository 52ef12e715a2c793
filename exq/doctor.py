"""`exq doctor`: check what a node needs to run exq, and say what to fix.

Each check returns `Check(name, status, detail, fix)`; `status` is "ok", "warn" or "fail". The
checks only read: nothing is created or changed (the state directory included).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import click

from exq import api
from exq.errors import ConfigError, ExqError, StateError, os_error_text
from exq.units import format_size

if TYPE_CHECKING:
    from exq.config import ExqConfig, HostConfig

Status = Literal["ok", "warn", "fail"]
DISK_WARN = 1024**3
"""Free space below this on the state directory's filesystem is a warning..."""
DISK_FAIL = 100 * 1024**2
"""... and below this a failure (the journal and snapshots could no longer be written)."""
HOST_TIMEOUT = 30.0
"""Default bound, in seconds, on probing one SSH host."""


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None


# --- configuration -----------------------------------------------------------------------------


def check_config() -> tuple[Check, ExqConfig | None]:
    """The host config parses; its problems are reported at file:line. Also returns the config."""
    from exq.config import config_path  # the config's models load pydantic; `exq --help` imports this module

    path = config_path()
    try:
        config = api.load_config()
    except ConfigError as exc:
        return Check("config", "fail", str(exc), f"correct {path} at the line(s) shown (see README: hosts)"), None
    except ExqError as exc:
        return Check("config", "fail", f"{path}: {exc}", f"correct or remove {path}"), None
    if not path.exists():
        return Check("config", "ok", f"no config file ({path}): this machine only"), config
    remote = sorted(config.remote_hosts())
    hosts = ", ".join(remote) if remote else "no SSH hosts"
    local = "local" if config.local_enabled else "local disabled"
    return Check("config", "ok", f"{path}: {local}; {hosts}"), config


# --- GPUs of this machine ----------------------------------------------------------------------


class _Gpu(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def memory_total(self) -> int: ...


def _gpu_summary(gpus: Iterable[_Gpu]) -> str:
    sizes = Counter(f"{g.name} ({format_size(g.memory_total)})" for g in gpus)
    return ", ".join(f"{n}x {what}" if n > 1 else what for what, n in sizes.items())


def check_gpus(paths: api.StatePaths, local_enabled: bool = True) -> Check:
    """What the daemon's own GPU probe (`api.probe_gpus`) sees on this machine."""
    try:
        snap = api.probe_gpus(paths)
    except ExqError as exc:
        return Check("gpus", "fail", str(exc), "fix or unset EXQ_SIMULATE_GPUS (e.g. EXQ_SIMULATE_GPUS=4x24GiB)")
    count = f"{len(snap.gpus)} GPU(s)"
    if snap.simulated:
        spec = os.environ.get("EXQ_SIMULATE_GPUS", "").strip()
        return Check("gpus", "warn", f"simulated GPUs (EXQ_SIMULATE_GPUS={spec}): {count}; not real hardware",
                     "unset EXQ_SIMULATE_GPUS to use this machine's real GPUs")
    if snap.backend == "none" or not snap.gpus:
        reason = snap.message or "the probe sees no GPU"
        if not local_enabled:
            return Check("gpus", "ok", f"local host disabled in the config; {reason}")
        return Check("gpus", "warn", reason,
                     "install the NVIDIA driver, then `pip install nvidia-ml-py` in exq's environment "
                     "(or accept CPU-only jobs here)")
    driver = snap.extra.get("driver_version")
    detail = f"{snap.backend}: {count}: {_gpu_summary(snap.gpus)}" + (f"; driver {driver}" if driver else "")
    if snap.message:
        return Check("gpus", "warn", f"{detail}; {snap.message}", "check the GPUs with `nvidia-smi`")
    return Check("gpus", "ok", detail)


def check_nvidia_smi() -> Check:
    found = shutil.which("nvidia-smi")
    if found:
        return Check("nvidia-smi", "ok", found)
    return Check("nvidia-smi", "warn", "nvidia-smi is not on PATH",
                 "install the NVIDIA driver's utilities (e.g. nvidia-utils): exq reads local GPUs with NVML, "
                 "but SSH hosts need nvidia-smi, and it is the first tool to check a GPU with")


# --- state directory ---------------------------------------------------------------------------


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


VIRTUAL_FILESYSTEMS = frozenset({
    "proc", "sysfs", "devpts", "devtmpfs", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
    "configfs", "pstore", "bpf", "efivarfs", "fusectl", "mqueue", "binfmt_misc", "autofs", "hugetlbfs",
})
"""Kernel filesystems (/proc, /sys, ...) that cannot hold exq's files, whatever their permissions say."""
MOUNTS = Path("/proc/self/mounts")


def filesystem_type(path: Path, mounts: Path = MOUNTS) -> str | None:
    """The type of the filesystem holding existing `path` (from /proc/self/mounts); None when unknown."""
    try:
        lines = mounts.read_text(errors="replace").splitlines()
    except OSError:
        return None
    target = str(path.resolve())
    best, kind = -1, None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:
            best, kind = len(point), fields[2]
    return kind


def check_state_dir(paths: api.StatePaths) -> Check:
    """The state directory exists (or can be created), is ours, and is private (0700)."""
    root = paths.root
    holder = _existing_ancestor(root)
    if (kind := filesystem_type(holder)) in VIRTUAL_FILESYSTEMS:
        return Check("state dir", "fail", f"{root} is on a {kind} filesystem, which cannot hold exq's files",
                     "choose another state dir with EXQ_STATE_DIR / --state-dir (e.g. ~/.local/state/exq)")
    if not root.exists():
        if holder.is_dir() and os.access(holder, os.W_OK | os.X_OK):
            return Check("state dir", "ok", f"{root} does not exist yet; exq will create it (0700)")
        if not holder.is_dir():
            return Check("state dir", "fail", f"{root} does not exist and {holder} is not a directory",
                         f"move {holder} away, or choose another state dir with EXQ_STATE_DIR / --state-dir")
        return Check("state dir", "fail", f"{root} does not exist and {holder} is not writable",
                     f"`mkdir -p -m 700 {root}` as its owner, or choose another with EXQ_STATE_DIR / --state-dir")
    try:
        info = root.stat()
    except OSError as exc:
        return Check("state dir", "fail", os_error_text(exc), "check the directory's permissions")
    if not stat.S_ISDIR(info.st_mode):
        return Check("state dir", "fail", f"{root} is not a directory",
                     "move it away, or choose another state dir with EXQ_STATE_DIR / --state-dir")
    mode = stat.S_IMODE(info.st_mode)
    try:
        paths.check()  # what every command refuses: another owner, writable by others (here or above)
    except StateError as exc:
        return Check("state dir", "fail", str(exc), "see the message")
    if mode & 0o077:
        return Check("state dir", "fail", f"{root} has mode {mode:04o}: other users can read or change the queue",
                     f"chmod 700 {root}")
    if not os.access(root, os.R_OK | os.W_OK | os.X_OK):
        return Check("state dir", "fail", f"{root} has mode {mode:04o}: not usable by its owner", f"chmod 700 {root}")
    return Check("state dir", "ok", f"{root} (mode {mode:04o})")


def check_state_files(paths: api.StatePaths) -> Check:
    """queue_state.json and journal.jsonl are not readable by other users."""
    exposed: list[str] = []
    shared: list[str] = []
    files = [p for p in (paths.snapshot, paths.journal, paths.journal_copy) if p.is_file()]
    for path in files:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o007:
            exposed.append(f"{path.name} ({mode:04o})")
        elif mode & 0o070:
            shared.append(f"{path.name} ({mode:04o})")
    if exposed:
        return Check("state files", "fail", "readable or writable by every user: " + ", ".join(exposed),
                     f"chmod 600 {' '.join(str(p) for p in files)}")
    if shared:
        return Check("state files", "warn", "open to the group: " + ", ".join(shared),
                     f"chmod 600 {' '.join(str(p) for p in files)}")
    if not files:
        return Check("state files", "ok", "no snapshot or journal yet")
    return Check("state files", "ok", ", ".join(p.name for p in files) + " private (0600)")


def check_disk(paths: api.StatePaths) -> Check:
    """Free space of the filesystem that holds (or will hold) the state directory."""
    where = _existing_ancestor(paths.root)
    try:
        free = shutil.disk_usage(where).free
    except OSError as exc:
        return Check("disk", "warn", f"cannot read free space of {where}: {exc}")
    detail = f"{format_size(free)} free on the filesystem of {where}"
    fix = "free space there, or move the state dir (EXQ_STATE_DIR) to a larger filesystem"
    if free < DISK_FAIL:
        return Check("disk", "fail", detail + f" (< {format_size(DISK_FAIL)})", fix)
    if free < DISK_WARN:
        return Check("disk", "warn", detail + f" (< {format_size(DISK_WARN)})", fix)
    return Check("disk", "ok", detail)


# --- SSH hosts ---------------------------------------------------------------------------------


def host_fix(name: str, host: HostConfig | None, kind: api.FailureKind | None) -> str:
    """Advice for one host's probe failure, by its kind (`api.HostReport.error_kind`)."""
    address = (host.address if host else None) or name
    port = (host.port if host else None) or 22
    known = (host.known_hosts if host else None) or "~/.ssh/known_hosts"
    reach = (f"check `address`/`port`/`user` for {name} in the config, the network (VPN, firewall) and "
             f"that `ssh {name} true` logs in without a prompt")
    match kind:
        case "host-key":
            target = address if port == 22 else f"[{address}]:{port}"
            return (f"check the host key's fingerprint with the host's owner, then add it: "
                    f"`ssh-keyscan -p {port} {address} >> {known}` (with the HostName/Port of ~/.ssh/config if "
                    f"{address} is an alias); if the key changed (host reinstalled), remove the old one first: "
                    f"`ssh-keygen -R '{target}' -f {known}`")
        case "auth":
            return (f"authentication failed: check `user`/`identity_file` for {name} in the config (or User/"
                    f"IdentityFile in ~/.ssh/config), that the key is loaded (ssh-agent), and that its public key "
                    f"is in ~/.ssh/authorized_keys on the host; `ssh {name} true` must log in without a prompt")
        case "refused":
            return (f"nothing accepts SSH at {address} port {port}: check `address`/`port` for {name} "
                    f"and that sshd runs on the host")
        case "dns":
            return f"{address} does not resolve: check `address` for {name} (or HostName in ~/.ssh/config)"
        case "timeout" | "unreachable":
            return reach
    return f"check that `ssh {name} nvidia-smi` works (POSIX sh, coreutils, setsid and nvidia-smi on the host)"


def check_hosts(paths: api.StatePaths, config: ExqConfig, timeout: float = HOST_TIMEOUT) -> list[Check]:
    """Probe each configured SSH host now (`api.probe_hosts`), as the daemon would."""
    from exq.config import LOCAL

    remote = config.remote_hosts()
    if not remote:
        return []
    try:
        reports = api.probe_hosts(paths, timeout)
    except ExqError as exc:
        return [Check("hosts", "fail", f"cannot probe the hosts: {exc}", "fix the problem above and run it again")]
    checks = []
    for report in reports:
        if report.name == LOCAL:
            continue
        name = f"host {report.name}"
        snap = report.snapshot
        if snap is None:
            error = report.error or "unknown error"
            fix = host_fix(report.name, remote.get(report.name), report.error_kind)
            checks.append(Check(name, "fail", error, fix))
            continue
        note = f"; {snap.message}" if snap.message else ""
        if snap.slots:
            checks.append(Check(name, "ok", f"{snap.backend}: {len(snap.gpus)} slot(s){note}") if snap.gpus else
                          Check(name, "fail", f"{snap.backend}: no slots{note}",
                                "fix what the note says; the host takes no jobs until then"))
        elif not snap.gpus:
            checks.append(Check(name, "warn", f"{snap.backend}: no GPUs{note}",
                                f"check `ssh {report.name} nvidia-smi` on the host (driver installed, on PATH)"))
        else:
            summary = _gpu_summary(snap.gpus)
            checks.append(Check(name, "ok", f"{snap.backend}: {len(snap.gpus)} GPU(s): {summary}{note}"))
    return checks


# --- daemon ------------------------------------------------------------------------------------


def check_daemon(paths: api.StatePaths) -> Check:
    """Whether a daemon (or `exq run`) holds this state directory now (information only)."""
    if not paths.root.is_dir():
        return Check("daemon", "ok", "not running (no state dir yet)")
    try:
        alive = api.daemon_alive(paths)
    except OSError as exc:
        return Check("daemon", "warn", f"cannot tell: {exc}", f"check the permissions of {paths.lock}")
    if not alive:
        return Check("daemon", "ok", f"not running on {paths.root} (start it with `exq daemon`)")
    who = ""
    try:
        daemon = api.status(paths).state.daemon
        if daemon is not None:
            who = f" (pid {daemon.pid} on {daemon.hostname})"
    except (ExqError, OSError):
        pass
    return Check("daemon", "ok", f"running on {paths.root}{who}")


# --- all of them -------------------------------------------------------------------------------


def guarded(name: str, check: Callable[[], Check]) -> Check:
    """`check()`, or a failed check `name` saying what it could not read: no check stops the others."""
    try:
        return check()
    except OSError as exc:
        return Check(name, "fail", f"cannot check: {os_error_text(exc)}",
                     "check the permissions of that path and of the directories above it")
    except ExqError as exc:
        return Check(name, "fail", f"cannot check: {exc}", "fix the problem shown and run `exq doctor` again")


def run_checks(paths: api.StatePaths, host_timeout: float = HOST_TIMEOUT) -> list[Check]:
    config_check, config = check_config()
    checks = [
        config_check,
        guarded("gpus", lambda: check_gpus(paths, config.local_enabled if config else True)),
        check_nvidia_smi(),
        guarded("state dir", lambda: check_state_dir(paths)),
        guarded("state files", lambda: check_state_files(paths)),
        guarded("disk", lambda: check_disk(paths)),
    ]
    if config is not None:
        checks.extend(check_hosts(paths, config, host_timeout))
    checks.append(guarded("daemon", lambda: check_daemon(paths)))
    return checks


_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="A JSON list of {name, status, detail, fix}.")
@click.option("--timeout", default=HOST_TIMEOUT, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to wait for each SSH host.")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool, timeout: float) -> None:
    """Check what this node needs (GPUs, state dir, disk, config, SSH hosts) and say what to fix.

    Exit 0 when no check failed (warnings allowed), 1 otherwise.
    """
    paths = getattr(ctx.obj, "paths", None) or api.state_paths()
    checks = run_checks(paths, timeout)
    if as_json:
        click.echo(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        from rich.table import Table
        from rich.text import Text

        from exq.views import plain_console

        table = Table(title=f"exq doctor: {paths.root}", title_justify="left")
        table.add_column("check", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("detail", overflow="fold")
        table.add_column("fix", overflow="fold")
        for c in checks:
            table.add_row(c.name, Text(c.status, style=_STYLE[c.status]), c.detail, c.fix or "")
        counts = Counter(c.status for c in checks)
        console = plain_console()
        console.print(table)
        console.print(", ".join(f"{counts[s]} {s}" for s in ("ok", "warn", "fail")))
    if any(c.status == "fail" for c in checks):
        sys.exit(1)
