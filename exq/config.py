"""exq's configuration file: the hosts one daemon drives.

`$EXQ_CONFIG`, else `$XDG_CONFIG_HOME/exq/config.yaml`, else `~/.config/exq/config.yaml`. A missing
file means the local machine alone. Example:

    hosts:
      gpu1: {}                          # ssh alias from ~/.ssh/config (HostName, User, Port, IdentityFile)
      gpu2: {address: 10.0.0.12, user: alice, lost_timeout: 10m}
      local: {enabled: false}           # do not run jobs on the daemon's own machine
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from exq.errors import ConfigError
from exq.yamldoc import parse_document, read_document
from exq.yamlfields import Bool, Count, Duration, Name, PosDuration, PositiveInt, Str

LOCAL = "local"


class HostConfig(BaseModel):
    """One GPU host reached over SSH (or `local`, which takes only `enabled`)."""

    model_config = ConfigDict(extra="forbid")
    enabled: Bool = True
    kind: Literal["ssh", "slurm"] = Field("ssh", description="How exq reaches the host (see exq.workers.WORKER_KINDS).")
    address: Str | None = Field(None, description="Host name, address or ~/.ssh/config alias (default: the name).")
    port: Count | None = None
    user: Str | None = None
    identity_file: Str | None = Field(None, description="Client key (default: ~/.ssh/config, the agent, ~/.ssh/id_*).")
    known_hosts: Str | None = Field(None, description="known_hosts file (default: ~/.ssh/known_hosts).")
    ssh_config: Str | None = Field(None, description="OpenSSH client config (default: ~/.ssh/config).")
    root: Str = Field(".exq", description="exq's directory on the host, relative to the login's home.")
    keepalive: PosDuration = 15.0
    keepalive_count: Count = 3
    connect_timeout: PosDuration = 15.0
    lost_timeout: Duration = Field(300.0, description="How long a host may be unreachable before its jobs move.")
    login: Str = Field("local", description="kind slurm: where sbatch, squeue, sacct, scancel and sinfo run: "
                                            "`local` (this machine) or an SSH destination (host name or "
                                            "~/.ssh/config alias; this host's user, port, identity_file, "
                                            "known_hosts and ssh_config apply to it).")
    partition: Str | None = Field(None, description="kind slurm: the partition jobs are submitted to.")
    account: Str | None = Field(None, description="kind slurm: sbatch --account.")
    qos: Str | None = Field(None, description="kind slurm: sbatch --qos.")
    constraint: Str | None = Field(None, description="kind slurm: sbatch --constraint.")
    sbatch_args: list[Str] = Field(default_factory=list, description="kind slurm: more sbatch options.")
    slots: PositiveInt = Field(1024, description="kind slurm: at most this many GPUs' worth of exq jobs in Slurm "
                                                 "at once, queued or running (Slurm's queue holds them).")
    cleanup_grace: PosDuration = Field(10.0, description="Seconds between SIGTERM and SIGKILL of a job's leftovers.")

    @property
    def shares_files(self) -> bool:
        """Whether its attempts' files are on a filesystem this machine reads (a Slurm cluster's, shared)."""
        return self.kind == "slurm"

    @model_validator(mode="after")
    def _slurm_needs_a_partition(self) -> HostConfig:
        if self.kind == "slurm" and not self.partition:
            raise ValueError("a host of kind slurm needs a partition (partition: NAME)")
        if self.kind != "slurm" and self.login != "local":
            raise ValueError("login is for hosts of kind slurm (an SSH host is reached at its address)")
        return self


class ExqConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hosts: dict[Name, HostConfig] = Field(default_factory=dict)

    def remote_hosts(self) -> dict[str, HostConfig]:
        return {name: host for name, host in self.hosts.items() if name != LOCAL and host.enabled}

    @property
    def local_enabled(self) -> bool:
        return self.hosts.get(LOCAL, HostConfig()).enabled


def config_path() -> Path:
    if env := os.environ.get("EXQ_CONFIG"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "exq" / "config.yaml"


def load_config(path: Path | None = None) -> ExqConfig:
    """The configuration at `path` (default: config_path()); a missing default file is an empty one."""
    source = path or config_path()
    if path is None and not source.exists():
        return ExqConfig()
    text = read_document(str(source), "config", ConfigError)
    config, problems = parse_document(ExqConfig, text, str(source.absolute()), ConfigError,
                                      "a mapping with 'hosts'")
    local = config.hosts.get(LOCAL)
    if local is not None and local.model_fields_set - {"enabled"}:
        extra = ", ".join(sorted(local.model_fields_set - {"enabled"}))
        problems.add(("hosts", LOCAL), f"the local host takes only 'enabled', not {extra}")
    if not config.local_enabled and not config.remote_hosts():
        problems.add(("hosts",), "no host is enabled: enable local or configure an SSH host")
    problems.raise_if_any()
    return config
