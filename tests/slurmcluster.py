"""A private single-node Slurm for tests (needs root and Debian's slurm-wlm and munge).

`start_cluster(dir)` starts, in `dir`, a munged with its own key and socket, a slurmctld and a slurmd
(`-D`, as subprocesses) with their own slurm.conf on free loopback ports, and one node `localhost`
with max(nproc, 8) CPUs and 4 fake GPUs: character devices with nvidia's major (195) made by mknod and
listed in gres.conf, so Slurm sets CUDA_VISIBLE_DEVICES per job. Every Slurm command must be run
with the cluster's `env` (it sets SLURM_CONF); the machine's /etc/slurm is never read or written.

No accounting daemon: `sacct -c` reads ended jobs from the jobcomp/filetxt file (plain sacct says
"accounting storage is disabled"); while an ended job is younger than MinJobAge, `squeue -t all`
shows it with its exit code too. A module uses the `slurm` fixture (module scoped): import
`slurm_cluster` from here, as conftest imports sshhosts' fixtures.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

DAEMONS = ("slurmctld", "slurmd", "munged")
TOOLS = ("sbatch", "squeue", "sacct", "scancel", "scontrol", "sinfo", "munge")
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
GPUS = 4
NODE = "localhost"
PARTITION = "gpu"
MIN_CPUS = 8
"""The node's CPUs are max(nproc, MIN_CPUS) (slurmd trusts the config: config_overrides), so that an
array's `%4` limit, not the machine's 2 cores, bounds how many of its 1-CPU tasks run at once."""
MIN_JOB_AGE = 300
"""Seconds an ended job stays in slurmctld (and so in `squeue -t all`) before only `sacct -c` knows it."""
CRED_EXPIRE = 10
"""Seconds a requeued job waits before it may start again (Slurm's default, 120, is too slow for tests)."""


def skip_reason() -> str | None:
    """Why the test Slurm cannot run here, or None."""
    missing = [tool for tool in (*DAEMONS, *TOOLS) if shutil.which(tool, path=SBIN_PATH) is None]
    if missing:
        return f"missing: slurm-wlm and munge (sh tests/setup.sh installs them); not found: {', '.join(missing)}"
    if os.geteuid() != 0:
        return "the test Slurm runs slurmd and munged as root: run the tests as root"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def slurm_conf(root: Path, ctld_port: int, slurmd_port: int, cpus: int) -> str:
    """The cluster's slurm.conf: one node, one partition, no cgroups, no accounting daemon, fast scheduling."""
    return f"""\
ClusterName=exqtest
SlurmctldHost={NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket,cred_expire={CRED_EXPIRE}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1,sched_min_interval=100000
MinJobAge={MIN_JOB_AGE}
KillWait=5
ReturnToService=1
SlurmdTimeout=30
InactiveLimit=0
Waittime=0
PreemptType=preempt/none
JobRequeue=1
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} Gres=gpu:{GPUS} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    """One running test Slurm: its directory, config, daemons, and helpers that run Slurm commands."""

    dir: Path
    env: dict[str, str]
    conf: Path
    partition: str = PARTITION
    node: str = NODE
    gpus: int = GPUS
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a Slurm command against this cluster (SLURM_CONF set)."""
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def command(self, argv: Sequence[str]) -> tuple[int, str, str]:
        """The `run` callable exq.slurm.client.SlurmClient takes: (returncode, stdout, stderr)."""
        proc = self.run(*argv, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    def sbatch(self, script: str, *args: str) -> str:
        """Submit `script` (the text of a batch script) with sbatch's `args`; returns the job id."""
        fd, path = tempfile.mkstemp(prefix="job-", suffix=".sh", dir=self.dir / "scripts")
        with os.fdopen(fd, "w") as file:
            file.write(script if script.startswith("#!") else "#!/bin/sh\n" + script)
        out = self.run("sbatch", "--parsable", *args, path).stdout
        return out.strip().split(";")[0]

    def squeue(self) -> dict[str, dict[str, str]]:
        """Every job slurmctld knows (ended ones too, for MinJobAge), by id (`ID` or `ID_TASK`)."""
        keys = ("id", "state", "reason", "nodes", "name")
        out = self.run("squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r|%N|%j").stdout
        jobs = [dict(zip(keys, line.split("|", 4), strict=True)) for line in out.splitlines() if line]
        return {job["id"]: job for job in jobs}

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%T").stdout.strip()

    def down(self, node: str | None = None, reason: str = "test") -> None:
        self.run("scontrol", "update", f"nodename={node or self.node}", "state=down", f"reason={reason}")

    def resume(self, node: str | None = None, timeout: float = STARTUP_TIMEOUT) -> None:
        """Return the node to service and wait (bounded) until it is idle or running jobs."""
        self.run("scontrol", "update", f"nodename={node or self.node}", "state=resume", check=False)
        self.wait_node({"idle", "mixed", "allocated"}, timeout)

    def wait_node(self, states: set[str], timeout: float = STARTUP_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited {proc.returncode}:\n{self.logs()}")
            state = self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%T", check=False).stdout.strip()
            if state in states:
                return state
            time.sleep(0.2)
        raise RuntimeError(f"node {self.node} is {state!r}, not one of {sorted(states)}, after {timeout}s:\n"
                           + self.logs())

    def logs(self, tail: int = 3000) -> str:
        """The end of every daemon's log, for error messages."""
        parts = []
        for name in ("munged.out", "slurmctld.log", "slurmctld.out", "slurmd.log", "slurmd.out"):
            with contextlib.suppress(OSError):
                parts.append(f"--- {name}\n{(self.dir / name).read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def start(self) -> None:
        """Start munged, slurmctld and slurmd; return once the node is idle (bounded)."""
        munge = self.dir / "munge"
        self._spawn("munged", ["munged", "-F", "--force", f"--socket={munge}/munge.socket",
                               f"--key-file={munge}/munge.key", f"--pid-file={munge}/munged.pid",
                               f"--seed-file={munge}/munged.seed", f"--log-file={munge}/munged.log"])
        self._wait_path(munge / "munge.socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.node, "-f", str(self.conf)])
        self.wait_node({"idle"}, STARTUP_TIMEOUT)

    def _spawn(self, name: str, argv: list[str]) -> None:
        with (self.dir / f"{name}.out").open("ab") as log:
            self.processes[name] = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                                    stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_path(self, path: Path) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not path.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{path} did not appear within {STARTUP_TIMEOUT}s:\n{self.logs()}")
            time.sleep(0.05)

    def close(self) -> None:
        """Cancel every job, stop slurmd, slurmctld and munged (SIGTERM, then SIGKILL), kill leftover jobs."""
        if self.processes.get("slurmctld") is not None and self.processes["slurmctld"].poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired, AssertionError):
                self.run("scancel", f"--partition={self.partition}", check=False, timeout=10)
                self._wait_jobs_gone(STOP_TIMEOUT)
        for name in DAEMONS:
            proc = self.processes.pop(name, None)
            if proc is not None:
                _stop(proc)
        self._kill_job_processes()

    def _wait_jobs_gone(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        active = {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "SIGNALING", "STAGE_OUT"}
        while time.monotonic() < deadline:
            states = self.run("squeue", "-h", "-t", "all", "-o", "%T", check=False, timeout=10).stdout.split()
            if not active.intersection(states):
                return
            time.sleep(0.2)

    def _kill_job_processes(self) -> None:
        """SIGKILL what is left of this cluster's jobs: processes with its SLURM_CONF, and its slurmstepds."""
        root = str(self.dir)
        for proc in psutil.process_iter(["name", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                ours = proc.info["name"] == "slurmstepd" and any(f.path.startswith(root) for f in proc.open_files())
                if ours or proc.environ().get("SLURM_CONF") == str(self.conf):
                    proc.kill()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def start_cluster(root: Path) -> SlurmCluster:
    """Write the config, key and fake GPU devices under `root` (created) and start the cluster in it."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # munged wants every directory above its socket searchable
    for sub in ("state", "spool", "dev", "scripts"):
        (root / sub).mkdir()
    (root / "munge").mkdir(mode=0o700)
    (root / "munge" / "munge.key").write_bytes(os.urandom(1024))
    (root / "munge" / "munge.key").chmod(0o400)
    for minor in range(GPUS):
        os.mknod(root / "dev" / f"nvidia{minor}", 0o666 | stat.S_IFCHR, os.makedev(195, minor))
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, _free_port(), _free_port(), max(os.cpu_count() or 1, MIN_CPUS)))
    (root / "gres.conf").write_text(f"Name=gpu File={root}/dev/nvidia[0-{GPUS - 1}]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SQUEUE_", "SINFO_"))}
    env.update(SLURM_CONF=str(conf), PATH=f"{SBIN_PATH}:{env.get('PATH', '')}")
    cluster = SlurmCluster(dir=root, env=env, conf=conf)
    try:
        cluster.start()
    except BaseException:
        cluster.close()
        raise
    return cluster


@pytest.fixture(scope="module", name="slurm")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running test Slurm for the module (skips without slurm-wlm and munge, or without root)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="exq-slurm-", dir="/tmp"))
    try:
        cluster = start_cluster(root / "cluster")
        yield cluster
        cluster.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
