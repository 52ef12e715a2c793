"""The systemd units: one template for the shipped files and `exq service install`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
from click.testing import CliRunner

from exq.service import render_unit, service, shipped_units

SYSTEMD_DIR = Path(__file__).resolve().parent.parent / "systemd"


def _settings(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def test_shipped_units_are_the_rendered_template() -> None:
    for name, text in shipped_units().items():
        assert (SYSTEMD_DIR / name).read_text() == text, (
            f"systemd/{name} differs from exq.service's template; regenerate it with "
            "python -c \"import exq.service as s; s.write_shipped('systemd')\"")


def test_system_unit_settings() -> None:
    unit = render_unit(["/opt/exq/bin/exq"], user_name="alice")
    settings = _settings(unit.text)
    assert settings["Type"] == "notify" and settings["NotifyAccess"] == "main"
    assert settings["KillMode"] == "process"  # stop/restart never kills running experiments
    assert settings["Restart"] == "on-failure" and settings["TimeoutStopSec"] == "60"
    assert settings["WatchdogSec"] == "60"
    assert settings["User"] == "alice" and settings["StateDirectory"] == "exq"
    assert settings["Environment"] == "EXQ_STATE_DIR=/var/lib/exq"
    assert settings["ExecStart"] == "/opt/exq/bin/exq daemon"
    assert settings["WantedBy"] == "multi-user.target"
    assert unit.path == Path("/etc/systemd/system/exq.service")
    assert "systemctl enable --now exq.service" in unit.commands


def test_user_unit_settings(tmp_path: Path) -> None:
    unit = render_unit([sys.executable, "-m", "exq"], user=True, user_name="bob", home=Path("/home/bob"),
                       config_home=tmp_path)
    settings = _settings(unit.text)
    assert "User" not in settings and "StateDirectory" not in settings
    assert "Environment" not in settings  # the XDG default, the same one `exq status` reads
    assert settings["WantedBy"] == "default.target"
    assert settings["ExecStart"] == f"{sys.executable} -m exq daemon"
    assert unit.path == tmp_path / "systemd" / "user" / "exq.service"
    assert "systemctl --user enable --now exq.service" in unit.commands
    assert "loginctl enable-linger bob" in unit.commands
    in_home = render_unit(["exq"], user=True, state_dir="/home/bob/runs/exq", home=Path("/home/bob"))
    assert _settings(in_home.text)["Environment"] == "EXQ_STATE_DIR=%h/runs/exq"


def test_paths_are_escaped_and_quoted() -> None:
    unit = render_unit(["/opt/my tools/exq"], state_dir=PurePosixPath("/data/100%/exq q"))
    settings = _settings(unit.text)
    assert settings["ExecStart"] == '"/opt/my tools/exq" daemon'
    assert "StateDirectory" not in settings  # not under /var/lib
    assert 'Environment="EXQ_STATE_DIR=/data/100%%/exq q"' in unit.text


def test_install_writes_the_unit_and_prints_the_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    dry = CliRunner().invoke(service, ["install", "--user", "--dry-run", "--user-name", "carol"])
    assert dry.exit_code == 0, dry.output
    unit_path = tmp_path / "config" / "systemd" / "user" / "exq.service"
    assert "Type=notify" in dry.output and "loginctl enable-linger carol" in dry.output
    assert not unit_path.exists()
    result = CliRunner().invoke(service, ["install", "--user"])
    assert result.exit_code == 0, result.output
    assert f"wrote {unit_path}" in result.output and "systemctl --user daemon-reload" in result.output
    assert "ExecStart=" in unit_path.read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="missing: systemd-analyze; run tests/setup.sh (apt-get install systemd)")
@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_systemd_analyze_verify(tmp_path: Path, user: bool) -> None:
    # The shipped files name placeholder paths; render with this interpreter, which exists.
    unit = render_unit([sys.executable, "-m", "exq"], user=user, user_name="root", home=tmp_path)
    path = tmp_path / "exq.service"
    path.write_text(unit.text)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    cmd = ["systemd-analyze", *(["--user"] if user else []), "verify", "--man=no", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, XDG_RUNTIME_DIR=str(runtime)))
    if user and "Failed to initialize manager" in proc.stderr:
        pytest.skip(f"no systemd user manager can be set up here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    assert str(path) not in proc.stdout + proc.stderr, proc.stdout + proc.stderr  # no warning about our unit
