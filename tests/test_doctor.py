"""`exq doctor`: each check's verdict and fix, through the real click command (and a few checks directly)."""

from __future__ import annotations

import errno
import json
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import asyncssh
import pytest
from click.testing import CliRunner, Result
from sshhosts import SshHosts

from exq import api
from exq.config import HostConfig
from exq.doctor import check_disk, doctor, host_fix
from exq.errors import WorkerError
from exq.ssh.connection import HostKeyError, HostUnreachableError, failure_kind

Start = Callable[..., SshHosts]


class Node:
    """One node's environment: a state dir, a config file and simulated GPUs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_dir = root / "state"
        self.config = root / "config.yaml"
        self.env = {"EXQ_STATE_DIR": str(self.state_dir), "EXQ_CONFIG": str(self.config),
                    "EXQ_SIMULATE_GPUS": "2x24GiB"}

    def invoke(self, *args: str) -> Result:
        return CliRunner().invoke(doctor, [*args], env=self.env, catch_exceptions=False)

    def checks(self, *args: str) -> tuple[int, dict[str, dict[str, Any]]]:
        """Run `doctor --json`: its exit code and its checks by name."""
        result = self.invoke("--json", *args)
        items = json.loads(result.stdout)
        assert all(set(item) == {"name", "status", "detail", "fix"} for item in items)
        return result.exit_code, {item["name"]: item for item in items}

    def hosts(self, entries: dict[str, str]) -> None:
        lines = ["hosts:"] + [f"  {name}: {{{fields}}}" for name, fields in entries.items()]
        self.config.write_text("\n".join(lines) + "\n")


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_simulated_gpus_warn_and_a_fresh_node_passes(node: Node) -> None:
    code, checks = node.checks()
    assert code == 0, checks
    gpus = checks["gpus"]
    assert gpus["status"] == "warn" and "simulated GPUs (EXQ_SIMULATE_GPUS=2x24GiB)" in gpus["detail"]
    assert "EXQ_SIMULATE_GPUS" in gpus["fix"]
    assert checks["state dir"]["status"] == "ok" and "will create" in checks["state dir"]["detail"]
    assert checks["config"]["status"] == "ok" and checks["daemon"]["status"] == "ok"
    assert not node.state_dir.exists(), "doctor must not create the state dir"
    assert not any(name.startswith("host ") for name in checks)


def test_table_output_names_every_check(node: Node) -> None:
    node.env["COLUMNS"] = "200"
    result = node.invoke()
    assert result.exit_code == 0, result.output
    for name in ("config", "gpus", "nvidia-smi", "state dir", "state files", "disk", "daemon"):
        assert name in result.stdout
    assert "simulated GPUs" in result.stdout and "0 fail" in result.stdout


def test_private_state_dir_is_ok(node: Node) -> None:
    api.state_paths(node.state_dir).create()
    node.state_dir.chmod(0o700)
    (node.state_dir / "journal.jsonl").write_text("")
    (node.state_dir / "journal.jsonl").chmod(0o600)
    code, checks = node.checks()
    assert code == 0
    assert checks["state dir"]["status"] == "ok" and "0700" in checks["state dir"]["detail"]
    assert checks["state files"]["status"] == "ok"


def test_world_readable_state_dir_fails_with_chmod_fix(node: Node) -> None:
    node.state_dir.mkdir()
    node.state_dir.chmod(0o755)
    code, checks = node.checks()
    assert code == 1
    check = checks["state dir"]
    assert check["status"] == "fail" and "0755" in check["detail"]
    assert check["fix"] == f"chmod 700 {node.state_dir}"


def test_world_readable_journal_fails_with_chmod_fix(node: Node) -> None:
    node.state_dir.mkdir(mode=0o700)
    journal = node.state_dir / "journal.jsonl"
    journal.write_text("")
    journal.chmod(0o644)
    code, checks = node.checks()
    assert code == 1 and checks["state dir"]["status"] == "ok"
    check = checks["state files"]
    assert check["status"] == "fail" and "journal.jsonl (0644)" in check["detail"]
    assert check["fix"] == f"chmod 600 {journal}"


@pytest.mark.parametrize(("text", "line"), [
    ("hosts:\n  gpu1: {port: nope}\n", 2),
    ("hosts:\n  gpu1: {}\n  gpu2: [unclosed\n", 4),
])
def test_broken_config_fails_naming_file_and_line(node: Node, text: str, line: int) -> None:
    node.config.write_text(text)
    code, checks = node.checks()
    assert code == 1
    check = checks["config"]
    assert check["status"] == "fail" and check["fix"]
    assert f"{node.config}:{line}" in check["detail"], check["detail"]
    assert not any(name.startswith("host ") for name in checks)


def test_disk_space_thresholds(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    class Usage(NamedTuple):
        total: int
        used: int
        free: int

    paths = api.state_paths(node.state_dir)
    for free, status in ((50 * 1024**2, "fail"), (500 * 1024**2, "warn"), (5 * 1024**3, "ok")):
        monkeypatch.setattr(shutil, "disk_usage", lambda _path, f=free: Usage(10 * f, 9 * f, f))
        check = check_disk(paths)
        assert check.status == status, check
        assert (check.fix is None) == (status == "ok")


def test_unreachable_host_fails_with_address_fix(node: Node) -> None:
    port = _closed_port()
    node.hosts({"gone": f"address: 127.0.0.1, port: {port}, connect_timeout: 3s"})
    code, checks = node.checks("--timeout", "10")
    assert code == 1
    check = checks["host gone"]
    assert check["status"] == "fail" and "unreachable" in check["detail"]
    assert f"nothing accepts SSH at 127.0.0.1 port {port}" in check["fix"]


def chained(outer: BaseException, cause: BaseException) -> BaseException:
    """`outer` as exq raises it: `raise outer from cause`."""
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize(("error", "kind", "expected"), [
    (HostKeyError("host h: host key not verified"), "host-key", "ssh-keyscan -p 2222 10.0.0.1"),
    (chained(HostUnreachableError("host h unreachable"), asyncssh.PermissionDenied("denied")), "auth",
     "authorized_keys"),
    (chained(HostUnreachableError("x"), ConnectionRefusedError(errno.ECONNREFUSED, "refused")), "refused",
     "nothing accepts SSH at 10.0.0.1 port 2222"),
    (chained(HostUnreachableError("x"), socket.gaierror(-2, "Name or service not known")), "dns",
     "does not resolve"),
    (TimeoutError(), "timeout", "network"),
    (chained(HostUnreachableError("x"), OSError(errno.EHOSTUNREACH, "No route to host")), "unreachable", "network"),
    (HostUnreachableError("host h unreachable: probe: connection lost"), "unreachable", "network"),
    (WorkerError("host h: probe failed (exit 127): nvidia-smi: not found"), "other", "ssh h nvidia-smi"),
])
def test_host_fix_is_tailored_to_the_kind_of_failure(error: BaseException, kind: str, expected: str) -> None:
    assert failure_kind(error) == kind
    assert expected in host_fix("h", HostConfig(address="10.0.0.1", port=2222), failure_kind(error))


def test_answering_ssh_host_is_ok(node: Node, ssh_hosts: Start) -> None:
    hosts = ssh_hosts([("h1", "2x24GiB")])
    node.hosts({"h1": f"address: h1, ssh_config: {hosts.client_config}, connect_timeout: 5s"})
    code, checks = node.checks("--timeout", "30")
    check = checks["host h1"]
    assert check["status"] == "ok", check
    assert "nvidia-smi: 2 GPU(s)" in check["detail"] and check["fix"] is None
    assert code == 0


def test_unknown_host_key_fails_with_keyscan_fix(node: Node, ssh_hosts: Start) -> None:
    host = ssh_hosts([("h1", "1x24GiB")])["h1"]
    empty = node.root / "known_hosts"
    empty.write_text("")
    node.hosts({"h1": f"address: {host.address}, port: {host.port}, user: {host.user}, "
                      f"identity_file: {host.identity}, known_hosts: {empty}, connect_timeout: 5s"})
    code, checks = node.checks("--timeout", "30")
    assert code == 1
    check = checks["host h1"]
    assert check["status"] == "fail" and "host key not verified" in check["detail"]
    assert f"ssh-keyscan -p {host.port} {host.address} >> {empty}" in check["fix"]
    assert "ssh-keygen -R" in check["fix"]


def test_refused_key_fails_with_authentication_fix(node: Node, ssh_hosts: Start) -> None:
    host = ssh_hosts([("h1", "1x24GiB")])["h1"]
    stranger = node.root / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True, timeout=20)
    node.hosts({"h1": f"address: {host.address}, port: {host.port}, user: {host.user}, "
                      f"identity_file: {stranger}, known_hosts: {host.known_hosts}, connect_timeout: 5s"})
    code, checks = node.checks("--timeout", "30")
    check = checks["host h1"]
    assert code == 1 and check["status"] == "fail" and "PermissionDenied" in check["detail"]
    assert "authentication failed" in check["fix"] and "authorized_keys" in check["fix"]


def test_a_running_daemon_is_reported(node: Node) -> None:
    paths = api.state_paths(node.state_dir).create()
    assert node.checks()[1]["daemon"]["detail"].startswith("not running")
    lock = paths.daemon_lock()
    lock.acquire(timeout=5)
    try:
        code, checks = node.checks()
    finally:
        lock.release()
    assert code == 0 and checks["daemon"]["status"] == "ok"
    assert checks["daemon"]["detail"].startswith("running on")
