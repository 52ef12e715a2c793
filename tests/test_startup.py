"""Startup cost: each command imports only what it uses (asyncssh, NVML, the scheduler, the bridge and the
pydantic models are slow to import). Checked by the modules loaded in a fresh interpreter, not by timing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import Exq

from exq import __version__, api

_RUN = textwrap.dedent("""
    import json, sys
    from exq.cli import main
    sys.argv = ["exq", *sys.argv[1:]]
    code = None
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
""")
SSH_GPU_DAEMON_BRIDGE = ("asyncssh", "pynvml", "exq.daemon.scheduler", "exq.bridge", "exq.workers")
"""What none of these commands may import: used only with an SSH host, the NVML probe, a daemon, or a plan."""
MODELS = ("pydantic", "exq.model", "exq.store.store", "exq.views", "rich")
"""What `--version` and `--help` do not need either."""


def _imports(exq: Exq, *args: str) -> tuple[str, set[str]]:
    """Run `exq ARGS` in a fresh interpreter: its output, and the modules it imported."""
    proc = subprocess.run([sys.executable, "-c", _RUN, *args], env=exq.env, capture_output=True, text=True,
                          timeout=60)
    output, _, last = proc.stdout.rstrip("\n").rpartition("\n")
    result = json.loads(last)
    assert result["code"] == 0, proc.stderr
    return output, set(result["modules"])


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_version_prints_the_version_and_imports_little(exq: Exq) -> None:
    output, modules = _imports(exq, "--version")
    assert output == f"exq, version {__version__}"
    assert _loaded(modules, SSH_GPU_DAEMON_BRIDGE + MODELS) == []


def test_help_imports_little(exq: Exq) -> None:
    output, modules = _imports(exq, "--help")
    assert "Commands:" in output and "doctor" in output
    assert _loaded(modules, SSH_GPU_DAEMON_BRIDGE + MODELS) == []


@pytest.mark.parametrize("args", [("status",), ("status", "--json")])
def test_status_of_an_empty_queue_imports_no_ssh_gpu_daemon_or_bridge(exq: Exq, args: tuple[str, ...]) -> None:
    output, modules = _imports(exq, *args)
    assert output
    assert _loaded(modules, (*SSH_GPU_DAEMON_BRIDGE, "exq.model.manifest", "exq.config")) == []


def test_logs_of_a_local_job_import_no_asyncssh(exq: Exq) -> None:
    exq("run", str(exq.manifest("name: x\ngpus: 0\nid: hello\ncmd: echo hi\n")))
    output, modules = _imports(exq, "logs", "hello")
    assert output == "hi"
    assert _loaded(modules, SSH_GPU_DAEMON_BRIDGE) == []


def test_every_public_name_resolves() -> None:
    """`exq.api` imports most of its names on first use (`api._LAZY`); each is there."""
    assert all(getattr(api, name) is not None for name in api.__all__)
