"""SshWorker against real sshd servers (tests/sshhosts.py); every wait is bounded.

Golden files: tests/data/golden/ssh_*.txt hold the generated remote command lines; after an
intended change, regenerate them with EXQ_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import stat
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psutil
import pytest
from sshhosts import SshHost, SshHosts

from exq.config import HostConfig
from exq.daemon.classify import classify
from exq.errors import WorkerError
from exq.gpus.select import NoGpuProbe
from exq.model.outcome import Outcome
from exq.ssh.connection import HostKeyError, HostUnreachableError
from exq.workers import remote
from exq.workers.base import LOG_TAIL_BYTES, PEEK_LIMIT, LaunchRequest, RunRecord
from exq.workers.local import RUNNER_PATH, LaunchRefused, LocalWorker
from exq.workers.ssh import SshWorker

T = TypeVar("T")
Start = Callable[[list[tuple[str, str]]], SshHosts]
GOLDEN = Path(__file__).parent / "data" / "golden"
GRACE = 0.5
GiB = 1024**3
HOSTILE = {
    "SPACES": "a  b\tc ",
    "QUOTES": "it's \"double\" and `tick`",
    "SUBST": "$(touch pwned) ${HOME} $HOME",
    "NEWLINES": "line1\nline2\n",
    "BACKSLASH": "back\\slash \\n \\0 \\",
    "GLOB": "* ? [a] ~",
    "DASH": "-n",
    "EQ": "a=b=c",
    "EMPTY": "",
    "UNICODE": "héllo ✓",
    "SEMI": "x; rm -rf ~ #",
}


def run(make: Callable[[], Awaitable[T]], timeout: float = 20.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(make(), timeout)

    return asyncio.run(bounded())


def host_config(host: SshHost, **overrides: object) -> HostConfig:
    settings: dict[str, object] = {"ssh_config": str(host.client_config), "root": ".exq", "connect_timeout": 3.0}
    return HostConfig.model_validate(settings | overrides)


def worker_for(host: SshHost, node_id: str = "node1", **config: object) -> SshWorker:
    return SshWorker(host.name, host_config(host, **config), node_id, cleanup_grace=GRACE, poll_interval=0.1,
                     backoff_initial=0.2, backoff_max=1.0)


def workdir(host: SshHost, name: str = "work") -> Path:
    """A directory of the host's user (the tests run as root on the same machine)."""
    path = host.home / name
    path.mkdir(parents=True, exist_ok=True)
    shutil.chown(path, host.user)
    return path


@pytest.fixture
def host(ssh_hosts: Start) -> Iterator[SshHost]:
    yield ssh_hosts([("h1", "2x24GiB")])["h1"]


async def connect_and_close(worker: SshWorker) -> None:
    await worker.ensure_connected()
    await worker.close()


async def launched(worker: SshWorker, cmd: str, wd: Path, number: int = 1, *,
                   env: dict[str, str] | None = None, setup: str | None = None) -> LaunchRequest:
    """Launch `cmd` as attempt `number` of job j in `wd`; the request."""
    await worker.ensure_connected()
    req = LaunchRequest(worker.attempt_dir("s1", "j", number), cmd, str(wd), env or {}, setup)
    record = await worker.launch(req)
    assert record.claimed and (record.tombstoned or record.pgid is not None)
    return req


# --- pure parts ------------------------------------------------------------------------------


def golden_commands() -> dict[str, str]:
    req = LaunchRequest(
        attempt_dir="/home/alice/.exq/node1/jobs/sub 1/job'1/2",
        cmd="python train.py --lr '0.1' --tag \"$(whoami)\"; echo done",
        workdir="/data/it's a \"dir\"/$HOME",
        env=HOSTILE,
        setup="source .venv/bin/activate && export X=\"$(y)\"",
    )
    return {
        "launch": remote.launch_command("/home/alice/.exq/node1/runner.sh", req, 10.0),
        "poll": remote.poll_command(),
        "peek": remote.peek_command(),
        "kill": remote.kill_command(req.attempt_dir, 2.5),
        "tombstone": remote.tombstone_command(req.attempt_dir),
        "group": remote.group_alive_command(1234),
        "report": remote.report_command(req.attempt_dir, req.workdir, "result.json", ["ckpt/*.pt", "a b/$(x)"]),
        "missing": remote.missing_command(req.workdir, ["ckpt/*.pt", "a b/$(x)"]),
        "setup": remote.setup_command(".exq", "node1"),
    }


@pytest.mark.parametrize("kind", sorted(golden_commands()))
def test_golden_commands(kind: str) -> None:
    command = golden_commands()[kind]
    path = GOLDEN / f"ssh_{kind}.txt"
    if os.environ.get("EXQ_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(command + "\n")
    assert command + "\n" == path.read_text(), f"{path} differs; EXQ_UPDATE_GOLDEN=1 regenerates it"


def test_parsers_reject_cut_or_garbled_output() -> None:
    with pytest.raises(WorkerError, match="cut short"):
        remote.parse_records("@@exq dir\n@@exq none claim\n", 1)
    with pytest.raises(WorkerError, match="unexpected"):
        remote.parse_records("hello\n@@exq end\n", 0)
    with pytest.raises(WorkerError, match="1 records for 2"):
        remote.parse_records("@@exq dir\n@@exq none claim\n@@exq end\n", 2)
    with pytest.raises(WorkerError, match="name"):
        remote.launch_command("/r", LaunchRequest("/d", "true", "/", {"A B": "x"}), 1.0)
    assert remote.parse_records("@@exq dir\n@@exq none claim\n@@exq alive 0\n@@exq end\n", 1) == [RunRecord()]


def test_attempt_dir_needs_a_connection() -> None:
    worker = SshWorker("h9", HostConfig(address="127.0.0.1"), "node1")
    with pytest.raises(WorkerError, match="not connected"):
        worker.attempt_dir("s", "j", 1)
    assert not worker.health.up


# --- real hosts ------------------------------------------------------------------------------


def test_launch_wait_exit_code_log_and_hostile_env(host: SshHost) -> None:
    wd = workdir(host, "it's a \"dir\" with $HOME and `x`")
    cmd = "".join(f"printf '%s' \"${name}\" > env.{name}; " for name in HOSTILE)
    cmd += "pwd > pwd.txt; echo hello; echo oops >&2; exit 3"
    worker = worker_for(host)
    started = time.time()

    async def go() -> tuple[LaunchRequest, RunRecord]:
        req = await launched(worker, cmd, wd, env=dict(HOSTILE))
        try:
            return req, await worker.wait(req.attempt_dir)
        finally:
            await worker.close()

    req, record = run(go)
    assert record.exit_code == 3 and record.ended and not record.alive
    assert started - 1 <= record.started_at <= record.ended_at <= time.time()  # type: ignore[operator]
    for name, value in HOSTILE.items():
        assert (wd / f"env.{name}").read_bytes() == value.encode(), name
    assert (wd / "pwd.txt").read_text().strip() == str(wd)
    assert not list(host.home.rglob("pwned")) and not Path("/pwned").exists()
    d = Path(req.attempt_dir)
    assert d == host.home / ".exq" / "node1" / "jobs" / "s1" / "j" / "1"
    assert (d / "log").read_text() == "hello\noops\n"
    for directory in (d, d.parent, host.home / ".exq" / "node1"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700 and directory.stat().st_uid == host.uid
    runner = host.home / ".exq" / "node1" / "runner.sh"
    assert runner.read_bytes() == RUNNER_PATH.read_bytes() and stat.S_IMODE(runner.stat().st_mode) == 0o700


def test_setup_prefix_runs_in_workdir(host: SshHost) -> None:
    wd = workdir(host)
    (wd / "env.sh").write_text("export GREETING='from setup'\n")
    worker = worker_for(host)

    async def go() -> tuple[LaunchRequest, RunRecord]:
        req = await launched(worker, 'echo "$GREETING"', wd, setup="source ./env.sh")
        try:
            return req, await worker.wait(req.attempt_dir)
        finally:
            await worker.close()

    req, record = run(go)
    assert record.exit_code == 0
    assert (Path(req.attempt_dir) / "log").read_text() == "from setup\n"
    # A runner.sh that differs from ours is replaced (by a rename: running runners keep theirs).
    runner = host.home / ".exq" / "node1" / "runner.sh"
    runner.write_text("echo stale\n")
    inode = runner.stat().st_ino
    run(lambda: connect_and_close(worker_for(host)))
    assert runner.read_bytes() == RUNNER_PATH.read_bytes() and runner.stat().st_ino != inode
    assert stat.S_IMODE(runner.stat().st_mode) == 0o700 and runner.stat().st_uid == host.uid


def test_job_survives_the_connection_and_is_reattached(host: SshHost) -> None:
    wd = workdir(host)
    first = worker_for(host)

    async def launch_and_close() -> tuple[LaunchRequest, RunRecord]:
        req = await launched(first, "sleep 1.5; exit 7", wd)
        record = await first.read(req.attempt_dir)
        await first.close()
        return req, record

    req, record = run(launch_and_close)
    inode = (host.home / ".exq" / "node1" / "runner.sh").stat().st_ino
    assert record.alive and record.runner_pid is not None and psutil.pid_exists(record.runner_pid)
    second = worker_for(host)

    async def reattach() -> RunRecord:
        try:
            assert (await second.read(req.attempt_dir)).alive
            return await second.wait(req.attempt_dir)
        finally:
            await second.close()

    record = run(reattach)
    assert record.exit_code == 7 and not record.alive
    assert "setup" in second.commands and second.commands["launch"] == 0
    assert (host.home / ".exq" / "node1" / "runner.sh").stat().st_ino == inode  # same runner: not uploaded


def test_kill_and_sigkill_after_grace(host: SshHost) -> None:
    wd = workdir(host)
    worker = worker_for(host)

    async def go() -> tuple[RunRecord, RunRecord, float, float]:
        try:
            polite = await launched(worker, "sleep 30", wd, 1)
            stubborn = await launched(worker, "trap '' TERM; echo ready; sleep 30", wd, 2)
            log = Path(stubborn.attempt_dir) / "log"
            while "ready" not in log.read_text():
                await asyncio.sleep(0.01)
            t0 = time.monotonic()
            await worker.kill(polite.attempt_dir, grace=5)
            first = await worker.wait(polite.attempt_dir)
            t1 = time.monotonic()
            await worker.kill(stubborn.attempt_dir, grace=GRACE)
            second = await worker.wait(stubborn.attempt_dir)
            t2 = time.monotonic()
            await worker.kill(polite.attempt_dir)  # ended: a no-op
            report = await worker.report(stubborn.attempt_dir, str(wd), "r.json", [])
            assert classify(report) == (Outcome.KILLED, "killed by SIGKILL")
            return first, second, t1 - t0, t2 - t1
        finally:
            await worker.close()

    first, second, polite_s, stubborn_s = run(go)
    assert first.exit_code == 128 + signal.SIGTERM and polite_s < 3
    assert second.exit_code == 128 + signal.SIGKILL and GRACE <= stubborn_s < 5


def test_tombstone_prevents_running(host: SshHost) -> None:
    wd = workdir(host)
    worker = worker_for(host)

    async def go() -> tuple[str, RunRecord, RunRecord]:
        try:
            await worker.ensure_connected()
            d = worker.attempt_dir("s1", "j", 1)
            assert await worker.read(d) == RunRecord()
            assert await worker.tombstone(d)
            assert not await worker.tombstone(d)
            record = await worker.launch(LaunchRequest(d, "touch marker", str(wd), {}))
            return d, record, await worker.wait(d)
        finally:
            await worker.close()

    d, launched_record, record = run(go)
    assert launched_record.tombstoned and record.tombstoned and not record.alive and record.exit_code is None
    time.sleep(0.2)
    assert not (wd / "marker").exists() and not (Path(d) / "pid").exists()
    assert (Path(d) / "claim").read_text() == "tombstone\n"


def test_group_alive(host: SshHost) -> None:
    wd = workdir(host)
    worker = worker_for(host)

    async def go() -> None:
        try:
            req = await launched(worker, "sleep 30", wd)
            pgid = (await worker.read(req.attempt_dir)).pgid
            assert pgid is not None and await worker.group_alive(pgid)
            await worker.kill(req.attempt_dir, grace=2)
            await worker.wait(req.attempt_dir)
            assert not await worker.group_alive(pgid)
            assert not await worker.group_alive(999999)
        finally:
            await worker.close()

    run(go)


def test_report_result_and_missing_outputs(host: SshHost) -> None:
    wd = workdir(host)
    cmd = ("mkdir -p ckpt && touch ckpt/a.pt 'odd $(x).bin' && echo '{\"loss\": 0.5}' > result.json; "
           "seq 0 39999 | sed 's/^/line /'")  # a 429 KiB log
    worker = worker_for(host)

    async def go() -> None:
        try:
            req = await launched(worker, cmd, wd)
            await worker.wait(req.attempt_dir)
            outputs = ["ckpt/*.pt", "ckpt/*.bin", "odd $(x).bin", "logs/**/x"]
            report = await worker.report(req.attempt_dir, str(wd), "result.json", outputs)
            assert report.result == {"loss": 0.5} and report.result_error is None
            assert report.missing_outputs == ["ckpt/*.bin", "logs/**/x"]
            assert len(report.log_tail.encode()) == LOG_TAIL_BYTES and report.log_tail.endswith("line 39999\n")
            assert classify(report)[0] is Outcome.OUTPUTS_MISSING
            (wd / "bad.json").write_text("{broken")
            bad = await worker.report(req.attempt_dir, str(wd), "bad.json", [])
            assert bad.result is None and bad.result_error is not None and "invalid JSON" in bad.result_error
            absent = await worker.report(req.attempt_dir, str(wd), str(wd / "absent.json"), [])
            assert absent.result is None and absent.result_error is None
        finally:
            await worker.close()

    run(go)


def test_missing_paths_and_a_missing_workdir_at_launch_like_the_local_worker(host: SshHost, tmp_path: Path) -> None:
    wd = workdir(host)
    (wd / "ckpt").mkdir()
    (wd / "ckpt" / "a.pt").touch()
    (wd / "odd $(x).bin").touch()
    globs = ["ckpt/*.pt", "ckpt/*.bin", "odd $(x).bin", "none"]
    worker = worker_for(host)
    local = LocalWorker(probe=NoGpuProbe("test"), jobs_root=tmp_path / "jobs")
    gone = str(host.home / "gone")

    async def go() -> None:
        try:
            assert await worker.missing_paths(str(wd), globs) == ["ckpt/*.bin", "none"]
            assert await local.missing_paths(str(wd), globs) == ["ckpt/*.bin", "none"]
            assert await worker.missing_paths("work", ["ckpt/a.pt"]) == []  # relative: from the login's home
            assert await worker.missing_paths(gone, ["*"]) == ["*"]
            await worker.ensure_connected()
            req = LaunchRequest(worker.attempt_dir("s1", "j", 1), "touch ran", gone, {})
            why = f"workdir {gone} does not exist on {host.name}"
            with pytest.raises(LaunchRefused, match=f"^{re.escape(why)}$"):
                await worker.launch(req)
            notdir = LaunchRequest(req.attempt_dir, "touch ran", str(wd / "ckpt" / "a.pt"), {})
            with pytest.raises(LaunchRefused, match=r"a\.pt is not a directory on"):
                await worker.launch(notdir)
            assert (await worker.read(req.attempt_dir)) == RunRecord()  # nothing was started or claimed
        finally:
            await worker.close()
            await local.close()

    run(go)


def test_peek_results_reads_what_running_jobs_wrote_like_the_local_worker(host: SshHost) -> None:
    wd = workdir(host)
    files = {
        "progress.json": json.dumps({"step": 3, "total": 10, "loss": 0.25}),
        "it's $(odd) name.json": json.dumps({"step": 1}),
        "broken.json": "{half",
        "list.json": "[1, 2]",
        "latin1.json": b'{"x": "\xe9"}',
        "big.json": json.dumps({"pad": "x" * PEEK_LIMIT}),
        "limit.json": json.dumps({"pad": "x" * (PEEK_LIMIT - 11)}),
    }
    for name, text in files.items():
        (wd / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    (wd / "private.json").write_text("{}")
    (wd / "private.json").chmod(0)  # the host's user cannot read it (root, the test, can)
    paths = [str(wd / name) for name in [*files, "absent.json", "private.json"]]
    expected = {
        str(wd / "progress.json"): {"step": 3, "total": 10, "loss": 0.25},
        str(wd / "it's $(odd) name.json"): {"step": 1},
        str(wd / "limit.json"): {"pad": "x" * (PEEK_LIMIT - 11)},
    }
    assert len(files["limit.json"]) == PEEK_LIMIT
    worker = worker_for(host)

    async def go() -> None:
        try:
            await worker.ensure_connected()
            assert await worker.peek_results(paths) == expected
            assert await worker.peek_results([]) == {}
        finally:
            await worker.close()

    run(go)
    local = LocalWorker(probe=NoGpuProbe("test"), jobs_root=str(wd))
    # the same, but for private.json: the test runs as root, who reads what the host's user could not
    assert run(lambda: local.peek_results(paths)) == {**expected, str(wd / "private.json"): {}}


def test_probe_shows_the_job_process_with_its_pgid(host: SshHost) -> None:
    wd = workdir(host)
    worker = worker_for(host)
    env = {"EXQ_JOB_ID": "j", "CUDA_VISIBLE_DEVICES": "1", "EXQ_GPU_MEMORY": "3GiB"}

    async def go() -> None:
        try:
            req = await launched(worker, "exec sleep 30", wd, env=env)
            pgid = (await worker.read(req.attempt_dir)).pgid
            snap = await worker.probe()
            assert snap.backend == "nvidia-smi" and len(snap.gpus) == 2
            assert snap.gpus[0].processes == ()
            assert [(p.used_memory, p.pgid) for p in snap.gpus[1].processes] == [(3 * GiB, pgid)]
            await worker.kill(req.attempt_dir, grace=2)
        finally:
            await worker.close()

    run(go)


def test_killed_host_is_unreachable_until_restarted(host: SshHost) -> None:
    wd = workdir(host)
    worker = worker_for(host)

    async def go() -> None:
        try:
            req = await launched(worker, "true", wd)
            assert worker.health.up
            host.kill()
            t0 = time.monotonic()
            with pytest.raises(HostUnreachableError, match="h1"):
                await worker.read(req.attempt_dir)
            assert time.monotonic() - t0 < 5 and not worker.health.up and worker.health.error
            # The drop is noticed, a reconnect is refused, then calls fail fast while backing off.
            for _ in range(3):
                t1 = time.monotonic()
                with pytest.raises(HostUnreachableError) as caught:
                    await worker.read(req.attempt_dir)
                if "next try" in str(caught.value):
                    break
            assert "next try" in str(caught.value) and time.monotonic() - t1 < 0.1
            host.restart()
            deadline = time.monotonic() + 10
            while True:
                try:
                    record = await worker.read(req.attempt_dir)
                    break
                except HostUnreachableError:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
            assert record.exit_code == 0 and worker.health.up and worker.health.error is None
        finally:
            await worker.close()

    run(go, 30)


def test_stopped_host_is_noticed_by_keepalive_and_waiters_keep_waiting(host: SshHost) -> None:
    wd = workdir(host)
    worker = worker_for(host, keepalive=0.5, keepalive_count=2)

    async def go() -> None:
        try:
            req = await launched(worker, "sleep 1; exit 5", wd)
            waiter = asyncio.create_task(worker.wait(req.attempt_dir))
            await asyncio.sleep(0.3)
            host.stop()
            try:
                t0 = time.monotonic()
                while worker.health.up:
                    assert time.monotonic() - t0 < 5, "keepalive did not notice the hung host"
                    await asyncio.sleep(0.05)
                print(f"hang noticed after {time.monotonic() - t0:.2f}s: {worker.health.error}")
                await asyncio.sleep(1.5)
                assert not waiter.done()
            finally:
                host.cont()
            record = await asyncio.wait_for(waiter, 15)
            assert record.exit_code == 5 and worker.health.up
        finally:
            await worker.close()

    run(go, 30)


def test_unknown_host_key_is_refused(ssh_hosts: Start, tmp_path: Path) -> None:
    hosts = ssh_hosts([("h1", "1x24GiB"), ("h2", "1x24GiB")])
    only_h1 = tmp_path / "known_hosts_h1"
    only_h1.write_text(hosts["h1"].known_hosts_line + "\n")
    # A client config that disables known_hosts: asyncssh would then accept any key; exq must not.
    no_check = tmp_path / "ssh_config_none"
    no_check.write_text(hosts.client_config.read_text().replace(
        f"UserKnownHostsFile {hosts.known_hosts}", "UserKnownHostsFile none"))

    async def go() -> None:
        for config in ({"known_hosts": str(only_h1)}, {"ssh_config": str(no_check)}):
            worker = worker_for(hosts["h2"], **config)
            with pytest.raises(HostKeyError) as caught:
                await worker.ensure_connected()
            message = str(caught.value)
            assert "h2" in message and "ssh-keyscan" in message and "never accepts" in message
            assert not worker.health.up
            await worker.close()
        await connect_and_close(worker_for(hosts["h1"], known_hosts=str(only_h1)))

    run(go)


def test_twenty_waits_share_one_poller(host: SshHost) -> None:
    wd = workdir(host)
    worker = worker_for(host)

    async def go() -> list[RunRecord]:
        try:
            await worker.ensure_connected()
            reqs = await asyncio.gather(*(launched(worker, f"sleep 1; exit {n % 4}", wd, n) for n in range(20)))
            return await asyncio.gather(*(worker.wait(r.attempt_dir) for r in reqs))
        finally:
            await worker.close()

    records = run(go)
    assert [r.exit_code for r in records] == [n % 4 for n in range(20)]
    print(f"poll rounds: {worker.poll_rounds}, commands: {dict(worker.commands)}")
    assert worker.commands["poll"] == worker.poll_rounds  # one remote command per round for all 20
    assert 1 <= worker.poll_rounds <= 30 and worker.commands["launch"] == 20
