"""Real OpenSSH servers on loopback standing in for separate GPU hosts, for tests (needs root).

Each host is its own `sshd -D` on 127.0.0.N:PORT with its own ed25519 host key and its own system
user (`exq-<name>-<random>`), whose PATH holds the fake `nvidia-smi` (tests/fake_nvidia_smi.py) with
EXQ_FAKE_GPUS set to the host's GPU spec: that environment comes from `SetEnv` in the host's
sshd_config. All hosts share one client key pair, one known_hosts file and one client config
(`Host <name>` entries) that both `ssh -F` and asyncssh (`config=[path]`) read.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

SSHD = Path("/usr/sbin/sshd")
FAKE_NVIDIA_SMI = Path(__file__).with_name("fake_nvidia_smi.py")
STARTUP_TIMEOUT = 10.0
FOREIGN_PID = 999999
"""The pid the fake nvidia-smi shows foreign load under (a process that does not exist)."""


def skip_reason() -> str | None:
    """Why real SSH hosts cannot run here, or None."""
    if not SSHD.exists():
        return f"missing: OpenSSH server ({SSHD}); run tests/setup.sh (apt-get install openssh-server)"
    if os.geteuid() != 0:
        return "SSH test hosts create system users: run the tests as root"
    missing = [tool for tool in ("ssh", "ssh-keygen", "useradd", "usermod", "userdel") if not shutil.which(tool)]
    return f"missing: {', '.join(missing)} (for SSH test hosts); run tests/setup.sh" if missing else None


def _check(*args: str, timeout: float = 20) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def _keygen(path: Path, comment: str) -> None:
    _check("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path))


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def _signal_all(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _live(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass
class SshHost:
    """One fake GPU host: an sshd, a user, a home with `bin/nvidia-smi`, and a foreign-load file."""

    name: str
    address: str
    port: int
    user: str
    home: Path
    gpus: str
    dir: Path
    """The host's sshd_config, host key, pid file and `sshd.log` (root only)."""
    client_config: Path
    identity: Path
    known_hosts: Path
    known_hosts_line: str = ""
    root_login: bool = False
    env: dict[str, str] = field(default_factory=dict)
    """More variables for the host's sessions (SetEnv), e.g. SLURM_CONF for a Slurm login node."""
    """Logs in as root (for tests that run this checkout's exq on the host); kill/stop touch only sshd."""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _stopped: set[int] = field(default_factory=set, repr=False)

    @property
    def job_root(self) -> Path:
        """A directory owned by the host's user, for exq's job files there."""
        return self.home / "exq"

    @property
    def load_file(self) -> Path:
        return self.home / "gpu-load.json"

    @property
    def uid(self) -> int:
        return self.home.stat().st_uid

    @property
    def log(self) -> str:
        """What this host's sshd logged so far."""
        return (self.dir / "sshd.log").read_text(errors="replace")

    def connect_options(self) -> dict[str, object]:
        """Keyword arguments for asyncssh.connect, host key checking on."""
        return {"host": self.address, "port": self.port, "username": self.user,
                "client_keys": [str(self.identity)], "known_hosts": str(self.known_hosts)}

    def sshd_config(self) -> str:
        path = f"{self.home}/bin:/usr/local/bin:/usr/bin:/bin"
        # A root login's shell is this machine's root shell, whose ~/.bashrc bash reads for an SSH command unless
        # it is a nested shell: SHLVL=1 makes it one, so a slow or locked rc file (pyenv's rehash lock, left by
        # a killed session) cannot hang the host's commands.
        env = {**({"SHLVL": "1"} if self.root_login else {}), **self.env}
        more = "".join(f" {name}={value}" for name, value in env.items())
        return f"""\
ListenAddress {self.address}:{self.port}
HostKey {self.dir}/ssh_host_ed25519_key
PidFile {self.dir}/sshd.pid
AuthorizedKeysFile {self.dir if self.root_login else self.home / ".ssh"}/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin {"prohibit-password" if self.root_login else "no"}
AllowUsers {self.user}
MaxSessions 100
MaxStartups 100:30:200
Subsystem sftp internal-sftp
LogLevel VERBOSE
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
SetEnv PATH={path} EXQ_FAKE_GPUS={self.gpus} EXQ_FAKE_GPUS_LOAD={self.load_file}{more}
"""

    def start(self) -> None:
        """Start sshd (a free port is picked if the current one is taken) and wait until it accepts."""
        for attempt in range(3):
            if attempt:
                self.port = _free_port(self.address)
            (self.dir / "sshd_config").write_text(self.sshd_config())
            with (self.dir / "sshd.log").open("ab") as log:
                self.process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.dir / "sshd_config")],
                                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            if self._wait_listening():
                return
        raise RuntimeError(f"sshd for {self.name} did not start; its log:\n{self.log[-3000:]}")

    def _wait_listening(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        listening = f"Server listening on {self.address} port {self.port}"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if listening in self.log:
                with contextlib.suppress(OSError), socket.create_connection((self.address, self.port), 1):
                    return True
            time.sleep(0.02)
        self.process.kill()
        self.process.wait(5)
        return False

    def restart(self) -> None:
        """Start sshd again after kill() (same address, port and host key); a live host is killed first."""
        self.kill()
        self.start()

    def _freeze(self) -> set[int]:
        """SIGSTOP sshd, its children and every process of the user until no new one appears."""
        frozen: set[int] = set()
        for _ in range(50):
            found = {p.pid for p in self._processes() if _live(p)} - frozen
            if not found:
                break
            _signal_all(found, signal.SIGSTOP)
            frozen |= found
        return frozen

    def _sshd_processes(self) -> list[psutil.Process]:
        """The listening sshd and its descendants (sessions and the commands they run now)."""
        if self.process is None or self.process.poll() is not None:
            return []
        with contextlib.suppress(psutil.Error):
            listener = psutil.Process(self.process.pid)
            return [listener, *listener.children(recursive=True)]
        return []

    def _processes(self) -> list[psutil.Process]:
        procs = self._sshd_processes()
        if self.root_login:
            return procs  # never every process of root: only this host's sshd and its sessions
        uid = self.uid
        for proc in psutil.process_iter(["uids"]):
            uids = proc.info["uids"]
            if uids is not None and uid in (uids.real, uids.effective):
                procs.append(proc)
        return procs

    def kill(self, timeout: float = 10) -> None:
        """Host death: SIGKILL sshd, its session processes and every process of the user."""
        frozen = self._freeze()
        _signal_all(frozen, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout)
        deadline = time.monotonic() + timeout
        while left := [p.pid for p in self._processes() if _live(p)]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes of {self.name} survive SIGKILL: {left}")
            _signal_all(left, signal.SIGKILL)
            time.sleep(0.02)
        self._stopped.clear()

    def cut_off(self, timeout: float = 10) -> None:
        """A network cut: SIGKILL sshd and its sessions only; the user's detached processes (jobs) go on."""
        sshd = self._sshd_processes()
        _signal_all([p.pid for p in sshd], signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout)
        deadline = time.monotonic() + timeout
        while left := [p.pid for p in sshd if _live(p)]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd processes of {self.name} survive SIGKILL: {left}")
            time.sleep(0.02)

    def reconnect(self) -> None:
        """Undo cut_off(): sshd again on the same address, port and host key."""
        port = self.port
        self.start()
        if self.port != port:
            raise RuntimeError(f"sshd for {self.name} could not listen on port {port} again")

    def stop(self) -> None:
        """Host hang: SIGSTOP sshd, its session processes and every process of the user."""
        self._stopped |= self._freeze()

    def cont(self) -> None:
        """Undo stop()."""
        _signal_all(self._stopped | {p.pid for p in self._processes()}, signal.SIGCONT)
        self._stopped.clear()

    def run(self, command: str, timeout: float = 20, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `command` as the host's user over real OpenSSH (`ssh -F <client config>`)."""
        proc = subprocess.run(["ssh", "-F", str(self.client_config), self.name, command],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"ssh {self.name} {command!r} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def set_foreign_load(self, load: dict[int, int | str]) -> None:
        """Memory held on GPUs by processes exq does not know (`{index: bytes or "3GiB"}`)."""
        tmp = self.load_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({str(k): v for k, v in load.items()}))
        tmp.chmod(0o644)
        tmp.replace(self.load_file)


@dataclass
class SshHosts:
    """The hosts of one test, and the client files they share."""

    root: Path
    homes: Path
    client_config: Path
    identity: Path
    known_hosts: Path
    hosts: dict[str, SshHost] = field(default_factory=dict)

    def __getitem__(self, name: str) -> SshHost:
        return self.hosts[name]

    def __iter__(self) -> Iterator[SshHost]:
        return iter(self.hosts.values())

    def __enter__(self) -> SshHosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill every host's processes and delete its user and home; raises what failed at the end."""
        errors: list[str] = []
        for host in self.hosts.values():
            try:
                host.cont()
                host.kill()
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                errors.append(f"{host.name}: {exc}")
            if host.root_login:
                continue
            try:
                _check("userdel", "-r", "-f", host.user, timeout=20)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                if "does not exist" not in str(exc):
                    errors.append(f"{host.name}: {exc}")
        self.hosts.clear()
        shutil.rmtree(self.homes, ignore_errors=True)
        if errors:
            raise RuntimeError("closing SSH test hosts: " + "; ".join(errors))


def _create_user(host: SshHost, public_key: str) -> None:
    if host.root_login:  # no account to create; keys in the host's own dir, never in /root/.ssh
        (host.home / "bin").mkdir(parents=True)
        shutil.copyfile(FAKE_NVIDIA_SMI, host.home / "bin" / "nvidia-smi")
        (host.home / "bin" / "nvidia-smi").chmod(0o755)
        (host.dir / "authorized_keys").write_text(public_key)
        return
    _check("useradd", "-m", "-d", str(host.home), "-s", "/bin/sh", host.user)
    _check("usermod", "-p", "*", host.user)  # unlocked, no password: key logins work with UsePAM no
    bin_dir, ssh_dir = host.home / "bin", host.home / ".ssh"
    for directory in (bin_dir, ssh_dir, host.job_root):
        directory.mkdir()
    shutil.copyfile(FAKE_NVIDIA_SMI, bin_dir / "nvidia-smi")
    (bin_dir / "nvidia-smi").chmod(0o755)
    (ssh_dir / "authorized_keys").write_text(public_key)
    _check("chown", "-R", f"{host.user}:", str(host.home))


def _add_host(hosts: SshHosts, number: int, name: str, gpus: str, public_key: str, root_login: bool,
              env: Mapping[str, str]) -> SshHost:
    address = f"127.0.0.{number + 2}"
    user = "root" if root_login else f"exq-{name.lower()[:12]}-{secrets.token_hex(2)}"
    host = SshHost(
        name=name, address=address, port=_free_port(address), user=user,
        home=hosts.homes / name, gpus=gpus, dir=hosts.root / name, client_config=hosts.client_config,
        identity=hosts.identity, known_hosts=hosts.known_hosts, root_login=root_login, env=dict(env),
    )
    hosts.hosts[name] = host
    host.dir.mkdir(mode=0o700)
    _keygen(host.dir / "ssh_host_ed25519_key", f"{name}-host")
    _create_user(host, public_key)
    host.start()
    key_type, key = (host.dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    host.known_hosts_line = f"[{host.address}]:{host.port} {key_type} {key}"
    return host


def _client_config(host: SshHost) -> str:
    return f"""\
Host {host.name}
  HostName {host.address}
  Port {host.port}
  User {host.user}
  IdentityFile {host.identity}
  IdentitiesOnly yes
  UserKnownHostsFile {host.known_hosts}
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 10
  LogLevel ERROR
"""


def start_hosts(tmp_root: Path, specs: list[tuple[str, str]], root_login: Collection[str] = (),
                env: Mapping[str, str] | None = None) -> SshHosts:
    """Start one SSH host per (name, GPU spec) such as ("h1", "2x24GiB"), on 127.0.0.2, .3, ...

    Hosts named in `root_login` log in as root (to run this checkout's exq there); `env` is set in every
    host's sessions.
    """
    tmp_root.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    homes = Path(tempfile.mkdtemp(prefix="exq-sshhosts-", dir="/tmp"))
    homes.chmod(0o755)  # users must reach their homes; pytest's tmp_path is root-only
    hosts = SshHosts(tmp_root, homes, tmp_root / "ssh_config", tmp_root / "id_ed25519", tmp_root / "known_hosts")
    try:
        _keygen(hosts.identity, "exq-tests")
        public_key = hosts.identity.with_suffix(".pub").read_text()
        for number, (name, gpus) in enumerate(specs):
            _add_host(hosts, number, name, gpus, public_key, name in root_login, env or {})
        hosts.known_hosts.write_text("".join(h.known_hosts_line + "\n" for h in hosts))
        hosts.client_config.write_text("\n".join(_client_config(h) for h in hosts))
    except BaseException:
        hosts.close()
        raise
    return hosts


@pytest.fixture
def ssh_hosts(tmp_path: Path) -> Iterator[Callable[..., SshHosts]]:
    """A factory `start(specs, root_login=(), env=None) -> SshHosts`; skips without sshd; closes the hosts after."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    started: list[SshHosts] = []

    def start(specs: list[tuple[str, str]], root_login: Collection[str] = (),
              env: Mapping[str, str] | None = None) -> SshHosts:
        started.append(start_hosts(tmp_path / f"ssh{len(started)}", specs, root_login, env))
        return started[-1]

    yield start
    for hosts in started:
        hosts.close()


def write_hosts_config(path: Path, hosts: SshHosts, *, lost_timeout: str = "60s", local: bool = True) -> Path:
    """An exq hosts config for the SSH test hosts of tests/sshhosts.py (fast keepalive)."""
    lines = ["hosts:"]
    for host in hosts:
        lines.append(f"  {host.name}: {{address: {host.name}, ssh_config: {hosts.client_config}, "
                     f"lost_timeout: {lost_timeout}, keepalive: 0.5s, keepalive_count: 2, connect_timeout: 5s}}")
    if not local:
        lines.append("  local: {enabled: false}")
    path.write_text("\n".join(lines) + "\n")
    return path
