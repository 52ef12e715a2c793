"""Short forms of the fault campaigns (campaigns/): each runs for real with a tiny count and must report
every must-be-zero figure as zero. The full campaigns and their figures: campaigns/README.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sshhosts import skip_reason

REPO = Path(__file__).resolve().parent.parent
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: this campaign mounts a tmpfs, chowns "
                                                          "to another user or starts sshd (CI runs as root)")


def campaign(tmp_path: Path, name: str, *args: str, timeout: float = 110) -> dict[str, object]:
    """Run campaigns/NAME.py with ARGS; its figures, after checking it exited 0 with every must-be-zero at 0."""
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, str(REPO / "campaigns" / f"{name}.py"), *args, "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert out.exists(), (
        f"{name} wrote no figures (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    report: dict[str, object] = json.loads(out.read_text())
    figures = report["figures"]
    assert isinstance(figures, dict)
    nonzero = {k: figures[k] for k in report["must_be_zero"] if figures[k]}  # type: ignore[attr-defined]
    assert not nonzero and proc.returncode == 0, f"{name}: {nonzero}\n{proc.stdout[-4000:]}"
    return figures


def test_crash_kill9_of_the_daemon(tmp_path: Path) -> None:
    figures = campaign(tmp_path, "crash", "--count", "2", "--max-gap", "0.7")
    assert figures["kills"] == 2 and figures["jobs"] >= 11  # type: ignore[operator]


def test_submitters_killed_midway(tmp_path: Path) -> None:
    figures = campaign(tmp_path, "submitters", "--count", "6", "--wave", "6", "--kill-fraction", "0.5")
    assert figures["submits"] == 6


def test_corruption_of_a_state_file(tmp_path: Path) -> None:
    figures = campaign(tmp_path, "corruption", "--cases", "queue_state.json garble,<pending>.json truncate")
    assert figures["cases"] == 2


@needs_root
def test_full_disk(tmp_path: Path) -> None:
    figures = campaign(tmp_path, "full_disk", "--count", "1", "--timeout", "40")
    assert figures["fills"] == 1


def test_hostile_manifests(tmp_path: Path) -> None:
    figures = campaign(tmp_path, "hostile_manifests", "--count", "15", "--cli-every", "15")
    assert figures["documents"] == 15


def test_injection(tmp_path: Path) -> None:
    figures = campaign(tmp_path, "injection", "--count", "2")
    assert figures["cases"] == 8


@needs_root
def test_permissions(tmp_path: Path) -> None:
    figures = campaign(tmp_path, "permissions", "--cases", "state dir owned,intake file planted,umask 000")
    assert figures["cases"] == 3


@pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))
def test_ssh_faults_frozen_host(tmp_path: Path) -> None:
    figures = campaign(tmp_path, "ssh_faults", "--count", "1", "--scenarios", "freeze", "--ticks", "35")
    assert figures["faults"] == 1
