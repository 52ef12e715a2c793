"""The attempt runner's own files: private whatever the umask, and the end of a job recorded on a full disk.

Real processes and files throughout (a real 1 MiB tmpfs for the full disk, real sshd for the remote
reader); every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from sshhosts import SshHosts

from exq.config import HostConfig
from exq.errors import WorkerError
from exq.gpus.simulated import SimulatedProbe
from exq.workers import remote
from exq.workers.base import LaunchRequest, RunRecord
from exq.workers.local import LocalWorker, read_record
from exq.workers.ssh import SshWorker

T = TypeVar("T")
GRACE = 0.5
PAGE = 4096
RESERVED = "pending".ljust(63, "~") + "\n"
"""What the runner reserves a record with, in place (runner.sh: `reserve`)."""
RESERVED_BEFORE = "pending".ljust(63) + "\n"
"""What runners before it reserved a record with, in RECORD.tmp (renamed into place once written)."""
ROOT_ONLY = pytest.mark.skipif(
    os.geteuid() != 0, reason="missing: root (a small tmpfs is mounted to fill the disk; CI runs the tests as root)")


def run(make: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(make(), timeout)

    return asyncio.run(bounded())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def modes(root: Path) -> dict[str, int]:
    """Mode of `root` and of everything under it, by path relative to `root`."""
    found = {".": mode(root)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = mode(path)
    return found


def not_private(found: dict[str, int], root: Path, executable: tuple[str, ...] = ()) -> dict[str, str]:
    """The entries of `found` that are not 0700 (directories, `executable`) or 0600 (other files)."""
    def wanted(name: str) -> int:
        return 0o700 if (root / name).is_dir() or name in executable else 0o600

    return {name: oct(m) for name, m in found.items() if m != wanted(name)}


# --- private files, the job's own umask ----------------------------------------------------------

LOCAL_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from exq.gpus.simulated import SimulatedProbe
    from exq.workers.base import LaunchRequest
    from exq.workers.local import LocalWorker

    async def main(state, work):
        worker = LocalWorker(probe=SimulatedProbe("1x1GiB"), jobs_root=state + "/jobs", cleanup_grace=0.5)
        d = worker.attempt_dir("s1", "j1", 1)
        result = d + "/result.json"
        cmd = "umask > umask.txt; echo made > by_job; echo hello; echo '{\\"a\\": 1}' > \\"$EXQ_RESULT_FILE\\""
        await worker.launch(LaunchRequest(d, cmd, work, {"EXQ_RESULT_FILE": result}))
        record = await worker.wait(d)
        report = await worker.report(d, work, result, [])
        tombstoned = await worker.tombstone(worker.attempt_dir("s1", "j2", 1))
        print(json.dumps({"exit": record.exit_code, "result": report.result, "tombstoned": tombstoned}))

    asyncio.run(asyncio.wait_for(main(sys.argv[1], sys.argv[2]), 30))
    """
)


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_local_files_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """Every file and directory exq makes under the state dir is 0600/0700; the job keeps the umask."""
    state, work = tmp_path / "state", tmp_path / "work"
    work.mkdir()
    wrapper = f'umask {umask:03o} && exec "$0" "$@"'
    proc = subprocess.run(["sh", "-c", wrapper, sys.executable, "-c", LOCAL_SCRIPT, str(state), str(work)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"exit": 0, "result": {"a": 1}, "tombstoned": True}
    found = modes(state)
    attempt = Path("jobs", "s1", "j1", "1")
    assert {str(attempt / n) for n in ("claim", "pid", "exit", "log", "result.json")} <= set(found)
    assert not_private(found, state) == {}
    assert (work / "umask.txt").read_text().strip() == f"{umask:04o}"
    assert mode(work / "by_job") == 0o666 & ~umask


def test_remote_files_private_and_job_keeps_the_login_umask(ssh_hosts: Callable[..., SshHosts]) -> None:
    """The same on an SSH host: exq's files there are private, the job runs with the login's umask."""
    host = ssh_hosts([("h1", "1x24GiB")])["h1"]
    login_umask = host.run("umask").stdout.strip()
    assert login_umask != "0077"  # (sshd gives logins 0022) else the test could not tell the two apart
    wd = host.home / "work"
    wd.mkdir()
    shutil.chown(wd, host.user)
    config = HostConfig.model_validate({"ssh_config": str(host.client_config), "root": ".exq", "connect_timeout": 3.0})
    worker = SshWorker(host.name, config, "node1", cleanup_grace=GRACE, poll_interval=0.1)

    async def go() -> RunRecord:
        try:
            await worker.ensure_connected()
            d = worker.attempt_dir("s1", "j", 1)
            cmd = "umask > umask.txt; echo made > by_job; echo hello; echo '{}' > \"$EXQ_RESULT_FILE\""
            await worker.launch(LaunchRequest(d, cmd, str(wd), {"EXQ_RESULT_FILE": d + "/result.json"}))
            record = await worker.wait(d)
            assert await worker.tombstone(worker.attempt_dir("s1", "j2", 1))
            return record
        finally:
            await worker.close()

    assert run(go).exit_code == 0
    root = host.home / ".exq"
    found = modes(root)
    attempt = Path("node1", "jobs", "s1", "j", "1")
    assert {str(attempt / n) for n in ("claim", "pid", "exit", "log", "result.json")} <= set(found)
    assert not_private(found, root, executable=("node1/runner.sh",)) == {}
    assert (wd / "umask.txt").read_text().strip() == login_umask
    assert mode(wd / "by_job") == 0o666 & ~int(login_umask, 8)


# --- a full disk ---------------------------------------------------------------------------------


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A fresh 1 MiB tmpfs, unmounted afterwards (lazily, so a leftover process cannot keep it)."""
    path = tmp_path / "disk"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M,mode=0700", "tmpfs", str(path)],
                   check=True, capture_output=True, timeout=10)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)


def fill(path: Path) -> str:
    """A shell command that fills the filesystem of `path` (its writes end in ENOSPC)."""
    return f"dd if=/dev/zero of={path / 'fill'} bs=64k 2>/dev/null || true"


def disk_worker(disk: Path) -> LocalWorker:
    return LocalWorker(probe=SimulatedProbe("1x1GiB"), jobs_root=disk / "jobs", cleanup_grace=GRACE)


@ROOT_ONLY
def test_a_job_that_fills_the_disk_still_has_its_end_recorded(disk: Path, tmp_path: Path) -> None:
    worker = disk_worker(disk)
    d = Path(worker.attempt_dir("s1", "j", 1))
    req = LaunchRequest(str(d), f"{fill(disk)}; exit 0", str(tmp_path), {})

    async def go() -> RunRecord:
        await worker.launch(req)
        return await worker.wait(req.attempt_dir)

    record = run(go)
    assert (disk / "fill").stat().st_size > 900 * 1024  # the disk was really full
    assert record.ended and record.exit_code == 0 and not record.alive
    assert not list(d.glob("*.tmp"))
    code, end = (d / "exit").read_text().split()
    assert (int(code), float(end)) == (0, record.ended_at)
    report = run(lambda: worker.report(str(d), str(tmp_path), str(d / "result.json"), []))
    assert report.record.exit_code == 0 and report.result is None and report.result_error is None


@ROOT_ONLY
def test_an_end_that_cannot_be_written_is_recorded_once_space_returns(
        disk: Path, tmp_path: Path, pgids: list[int]) -> None:
    """With its reservation gone, the runner cannot record the end on a full disk: it stays alive
    (the attempt still looks running, never vanished) and records the end once there is room."""
    worker = disk_worker(disk)
    d = Path(worker.attempt_dir("s1", "j", 1))
    req = LaunchRequest(str(d), f"rm {d / 'exit'}; {fill(disk)}; exit 0", str(tmp_path), {})

    async def go() -> tuple[RunRecord, RunRecord]:
        launched = await worker.launch(req)
        assert launched.pgid is not None and launched.runner_pid is not None
        pgids.append(launched.pgid)
        while await worker.group_alive(launched.pgid):  # the job ends, the runner cannot record it
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)
        stuck = await worker.read(req.attempt_dir)
        (disk / "fill").unlink()
        return stuck, await worker.wait(req.attempt_dir)

    stuck, record = run(go)
    assert stuck.alive and not stuck.ended
    assert record.ended and record.exit_code == 0 and not record.alive
    assert not list(d.glob("*.tmp"))
    assert "late: there was no room for it" in (d / "log").read_text()


@ROOT_ONLY
def test_no_room_for_the_records_at_claim_starts_nothing(disk: Path, tmp_path: Path) -> None:
    """Room for the claim but not for the reserved records: the job never starts, and launch says so
    at once (not after waiting START_TIMEOUT for a pid record that cannot be written)."""
    subprocess.run(["sh", "-c", fill(disk)], check=True, timeout=10)
    os.truncate(disk / "fill", (disk / "fill").stat().st_size - PAGE)  # room for one small file
    worker = disk_worker(disk)
    d = worker.attempt_dir("s1", "j", 1)
    marker = tmp_path / "marker"
    req = LaunchRequest(d, f"touch {marker}; sleep 30", str(tmp_path), {})
    started = time.monotonic()
    with pytest.raises(WorkerError, match="exited before starting the job"):
        run(lambda: worker.launch(req))
    assert time.monotonic() - started < 5
    time.sleep(0.2)
    assert not marker.exists()
    record = read_record(d)
    assert record.claimed and not record.alive and not record.ended


# --- what the readers make of each state an attempt directory can be in ---------------------------


def remote_read(attempt_dir: Path) -> RunRecord:
    """The SSH worker's reader, its poll script run here by sh."""
    proc = subprocess.run(["sh", "-c", remote.poll_command()], input=remote.poll_input([str(attempt_dir)]),
                          capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr
    return remote.parse_records(proc.stdout, 1)[0]


@pytest.fixture
def runner_like(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """An attempt dir and a live process that looks like its runner (its last argument is the dir)."""
    d = tmp_path / "attempt"
    d.mkdir(mode=0o700)
    proc = subprocess.Popen(["sh", "-c", "sleep 30; :", "runner.sh", str(d)])
    try:
        yield d, proc.pid
    finally:
        proc.kill()
        proc.wait(5)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait(5)
    return proc.pid


def test_readers_agree_on_every_state_of_an_attempt(runner_like: tuple[Path, int]) -> None:
    """A crash at any instant leaves "not ended" or a whole record; a reservation is never an end;
    attempt dirs of the previous runner (unpadded records) read as before."""
    d, live = runner_like
    now = time.time()
    dead = dead_pid()

    def state(alive: bool, files: dict[str, str]) -> RunRecord:
        for name in ("claim", "pid", "pid.tmp", "exit", "exit.tmp"):
            (d / name).unlink(missing_ok=True)
        runner = live if alive else dead
        for name, text in files.items():
            (d / name).write_text(text.format(runner=runner, now=now))
        local = read_record(d)
        assert remote_read(d) == local, files
        return local

    pid = "{runner} 4242 {now}".ljust(63) + "\n"
    ended = "0 {now}".ljust(63) + "\n"
    # This runner: records reserved and written in place; a reader may catch a write half done.
    now_reserved = {"claim": "runner {runner}\n", "pid": RESERVED, "exit": RESERVED}
    record = state(True, now_reserved)
    assert record.alive and record.runner_pid == live and record.pgid is None and not record.ended
    half = "{runner} 42".ljust(10) + RESERVED[10:]
    record = state(True, {**now_reserved, "pid": half})
    assert record.alive and record.runner_pid == live and record.pgid is None
    record = state(True, {**now_reserved, "pid": pid, "exit": ("0 " + str(now)[:5]).ljust(9) + RESERVED[9:]})
    assert record.pgid == 4242 and record.started_at == now and not record.ended
    record = state(False, {**now_reserved, "pid": pid})
    assert not record.alive and not record.ended and record.exit_code is None
    record = state(False, {**now_reserved, "pid": pid, "exit": ended})
    assert record.exit_code == 0 and record.ended_at == now and record.pgid == 4242
    # Runners before it: reserved in RECORD.tmp, renamed into place once written.
    reserved = {"claim": "runner {runner}\n", "pid.tmp": RESERVED_BEFORE, "exit.tmp": RESERVED_BEFORE}
    assert state(True, {}) == RunRecord()
    assert state(True, {"claim": "tombstone\n"}) == RunRecord(claimed=True, tombstoned=True)
    assert state(False, {"claim": ""}) == RunRecord(claimed=True)  # created, not yet written
    record = state(True, reserved)
    assert record.alive and record.runner_pid == live and record.pgid is None and not record.ended
    record = state(True, {**reserved, "pid": pid})
    assert record.alive and record.pgid == 4242 and record.started_at == now and not record.ended
    # Being recorded (the whole record is in exit.tmp, not yet renamed): not trusted while the runner lives.
    record = state(True, {**reserved, "pid": pid, "exit.tmp": ended})
    assert record.alive and not record.ended
    # The runner died before the end: its reservation is not an end.
    record = state(False, {**reserved, "pid": pid})
    assert not record.alive and not record.ended and record.exit_code is None
    # It rewrote the reservation but could not rename it (or died in between): a whole record.
    record = state(False, {**reserved, "pid": pid, "exit.tmp": ended})
    assert not record.alive and record.exit_code == 0 and record.ended_at == now
    record = state(False, {"claim": "runner {runner}\n", "pid": pid, "exit": ended})
    assert record.exit_code == 0 and record.ended_at == now and record.pgid == 4242
    # The previous runner: unpadded records, an exit.tmp left empty by a failed write.
    old = {"claim": "runner {runner}\n", "pid": "{runner} 4242 {now}\n"}
    record = state(False, {**old, "exit": "3 {now}\n"})
    assert record.exit_code == 3 and record.ended_at == now and record.started_at == now
    record = state(False, {**old, "exit.tmp": ""})
    assert not record.ended and record.exit_code is None
