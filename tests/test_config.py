"""The host configuration file: defaults, hosts, and errors that name file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from exq.config import ExqConfig, load_config
from exq.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_missing_default_file_means_local_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("EXQ_CONFIG", raising=False)
    config = load_config()
    assert config == ExqConfig() and config.local_enabled and config.remote_hosts() == {}


def test_hosts_with_defaults_and_durations(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
hosts:
  gpu1: {}
  gpu2: {address: 10.0.0.12, user: alice, port: 2222, lost_timeout: 10m, keepalive: 5s}
  local: {enabled: false}
"""))
    assert list(config.remote_hosts()) == ["gpu1", "gpu2"] and not config.local_enabled
    gpu2 = config.hosts["gpu2"]
    assert (gpu2.address, gpu2.user, gpu2.port, gpu2.lost_timeout, gpu2.keepalive) == (
        "10.0.0.12", "alice", 2222, 600.0, 5.0)
    assert config.hosts["gpu1"].root == ".exq" and config.hosts["gpu1"].lost_timeout == 300.0


def test_errors_name_file_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "hosts:\n  gpu1:\n    adress: x\n    lost_timeout: soon\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    messages = [str(p) for p in caught.value.problems]
    assert messages[0].startswith(f"{path}:3:5: hosts.gpu1.adress: unknown field 'adress' (did you mean 'address'?)")
    assert messages[1].startswith(f"{path}:4:19: hosts.gpu1.lost_timeout: expected a duration such as 30s")


def test_local_takes_only_enabled_and_some_host_must_be_enabled(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the local host takes only 'enabled', not address"):
        load_config(write(tmp_path, "hosts:\n  local: {address: x}\n"))
    with pytest.raises(ConfigError, match="no host is enabled"):
        load_config(write(tmp_path, "hosts:\n  local: {enabled: false}\n"))


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_a_slurm_host_needs_a_partition_and_takes_sbatch_settings(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "hosts:\n  cluster: {kind: slurm, partition: gpu, account: lab,\n"
                                         "            sbatch_args: [--mem=8G]}\n"))
    cluster = config.hosts["cluster"]
    assert cluster.kind == "slurm" and cluster.partition == "gpu" and cluster.account == "lab"
    assert cluster.sbatch_args == ["--mem=8G"] and cluster.shares_files
    assert not load_config(write(tmp_path, "hosts:\n  h1: {address: h1}\n")).hosts["h1"].shares_files
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "hosts:\n  cluster:\n    kind: slurm\n"))
    assert "a host of kind slurm needs a partition" in str(err.value) and ":3:" in str(err.value)
