#!/bin/sh
# Installs everything the test suite needs on a fresh Debian machine, then nothing is skipped:
#   system packages: openssh-server (real sshd test hosts), systemd (systemd-analyze verify of the units),
#   slurm-wlm and munge (a private single-node Slurm, tests/slurmcluster.py)
#   a virtualenv .venv with exq, its dev tools and torch 2.13.0 (CPU; the exq.torch helper tests)
# System packages need root (or sudo); without either it names what is missing and goes on.
set -eu
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
missing=
[ -x /usr/sbin/sshd ] || missing="$missing openssh-server"
command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
{ [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/munged ] && command -v sbatch >/dev/null 2>&1; } || missing="$missing slurm-wlm munge"
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null 2>&1; then sudo=sudo; else sudo=none; fi
    if [ "$sudo" = none ]; then
        echo "tests/setup.sh: cannot install$missing (not root, no sudo): their tests will be skipped" >&2
    else
        $sudo apt-get update -qq
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing
    fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e '.[dev]'
.venv/bin/python -c 'import torch' 2>/dev/null || .venv/bin/pip install -q torch==2.13.0
