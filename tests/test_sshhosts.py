"""The SSH test-host harness is real: OpenSSH servers with checked host keys, per-host users and fake
GPUs, that die (kill), hang (stop) and carry many channels at once. Every wait is bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import asyncssh
import pytest
from sshhosts import FOREIGN_PID, SshHosts

from exq.gpus import GpuSnapshot
from exq.gpus.nvidia_smi import GPU_QUERY, PROBE_COMMAND, parse_probe_output

GiB = 1024**3
Start = Callable[[list[tuple[str, str]]], SshHosts]
T = TypeVar("T")


def run_async(coro: Awaitable[T], timeout: float = 20) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


class Watcher(asyncssh.SSHClient):
    """Records why the connection was lost."""

    lost: BaseException | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc


async def connect(hosts: SshHosts, name: str, **options: object) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(name, config=[str(hosts.client_config)], connect_timeout=5, **options)


async def probe(conn: asyncssh.SSHClientConnection) -> GpuSnapshot:
    result = await conn.run(PROBE_COMMAND, check=True, timeout=20)
    assert isinstance(result.stdout, str)
    return parse_probe_output(result.stdout, time.time())


def test_hosts_answer_with_their_own_gpus(ssh_hosts: Start) -> None:
    hosts = ssh_hosts([("h1", "2x24GiB"), ("h2", "1x80GiB")])

    async def main() -> None:
        for host, totals in ((hosts["h1"], [24 * GiB] * 2), (hosts["h2"], [80 * GiB])):
            # Explicit known_hosts and client key, host key checking on.
            async with asyncssh.connect(**host.connect_options()) as conn:  # type: ignore[arg-type]
                table = await conn.run(GPU_QUERY, check=True)
                whoami = await conn.run("id -un; echo $HOME", check=True)
                snap = await probe(conn)
            assert isinstance(table.stdout, str) and table.stdout.count("test double") == len(totals)
            assert whoami.stdout == f"{host.user}\n{host.home}\n"
            assert [g.memory_total for g in snap.gpus] == totals
            assert [g.uuid for g in snap.gpus] == [line.split(", ")[1] for line in table.stdout.splitlines()]
        assert hosts["h1"].run("nvidia-smi --help").stdout.startswith("TEST DOUBLE")

    run_async(main())


def test_job_process_shows_on_its_gpu_with_its_pgid(ssh_hosts: Start) -> None:
    hosts = ssh_hosts([("h1", "2x24GiB")])
    host = hosts["h1"]
    host.set_foreign_load({0: "5GiB"})
    job_env = "EXQ_JOB_ID=j1 CUDA_VISIBLE_DEVICES=1 EXQ_GPU_MEMORY=3GiB"
    pid = int(host.run(f"{job_env} setsid sleep 60 </dev/null >/dev/null 2>&1 & echo $!").stdout)
    host.run(f"{job_env} EXQ_RUNNER_CMD=x setsid sleep 60 </dev/null >/dev/null 2>&1 &")  # a runner: not shown

    async def main() -> GpuSnapshot:
        async with await connect(hosts, "h1") as conn:
            return await probe(conn)

    snap = run_async(main())
    gpu0, gpu1 = snap.gpus
    assert [(p.pid, p.used_memory, p.pgid) for p in gpu0.processes] == [(FOREIGN_PID, 5 * GiB, None)]
    assert [(p.pid, p.used_memory, p.pgid) for p in gpu1.processes] == [(pid, 3 * GiB, pid)]
    assert (gpu0.memory_used, gpu1.memory_used) == (5 * GiB, 3 * GiB)


def test_unknown_host_key_is_refused(ssh_hosts: Start, tmp_path: Path) -> None:
    hosts = ssh_hosts([("h1", "1x24GiB"), ("h2", "1x24GiB")])
    only_h1 = tmp_path / "known_hosts_h1"
    only_h1.write_text(hosts["h1"].known_hosts_line + "\n")
    h2 = hosts["h2"].connect_options() | {"known_hosts": str(only_h1)}

    with pytest.raises(asyncssh.HostKeyNotVerifiable) as caught:
        run_async(asyncssh.connect(**h2))  # type: ignore[arg-type]
    print(f"{type(caught.value).__module__}.{type(caught.value).__qualname__}: {caught.value}")
    assert "not trusted" in str(caught.value)
    # The same host with its key known connects.
    run_async(_close(asyncssh.connect(**hosts["h2"].connect_options())))  # type: ignore[arg-type]


async def _close(connecting: Awaitable[asyncssh.SSHClientConnection]) -> None:
    conn = await connecting
    conn.close()
    await conn.wait_closed()


def test_killed_host_drops_connections_and_refuses_new_ones(ssh_hosts: Start) -> None:
    hosts = ssh_hosts([("h1", "1x24GiB")])
    host = hosts["h1"]

    async def main() -> None:
        conn, client = await asyncssh.create_connection(Watcher, "h1", config=[str(hosts.client_config)])
        await conn.run("true", check=True)
        started = time.monotonic()
        host.kill()
        await asyncio.wait_for(conn.wait_closed(), 5)
        print(f"kill noticed after {time.monotonic() - started:.2f}s: {client.lost!r}")
        assert time.monotonic() - started < 5 and client.lost is not None
        with pytest.raises(OSError) as refused:
            await connect(hosts, "h1")
        print(f"new connection: {refused.value!r}")
        host.restart()
        async with await connect(hosts, "h1") as again:
            assert (await again.run("echo back", check=True)).stdout == "back\n"

    run_async(main(), 30)


def test_stopped_host_is_noticed_by_keepalive(ssh_hosts: Start) -> None:
    hosts = ssh_hosts([("h1", "1x24GiB")])
    host = hosts["h1"]

    async def main() -> None:
        conn, client = await asyncssh.create_connection(
            Watcher, "h1", config=[str(hosts.client_config)], keepalive_interval=0.5, keepalive_count_max=2)
        await conn.run("true", check=True)
        host.stop()
        try:
            started = time.monotonic()
            await asyncio.wait_for(conn.wait_closed(), 5)
            print(f"hang noticed after {time.monotonic() - started:.2f}s: {client.lost!r}")
            assert isinstance(client.lost, asyncssh.ConnectionLost)
        finally:
            host.cont()
        async with await connect(hosts, "h1") as again:
            assert (await again.run("echo alive", check=True)).stdout == "alive\n"

    run_async(main(), 30)


def test_thirty_parallel_channels_on_one_connection(ssh_hosts: Start) -> None:
    hosts = ssh_hosts([("h1", "1x24GiB")])

    async def main() -> None:
        async with await connect(hosts, "h1") as conn:
            results = await asyncio.gather(*(conn.run(f"sleep 0.5; echo {i}", check=True) for i in range(30)))
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(30)]

    started = time.monotonic()
    run_async(main())
    assert time.monotonic() - started < 10  # they ran side by side, not one after another
