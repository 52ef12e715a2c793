"""The nvidia-smi backend's pure parts: one shell command that reads a host's GPUs, and its parser.

`PROBE_COMMAND` runs on the GPU host in one round trip (POSIX sh, coreutils, nvidia-smi, /proc)
and always exits 0. It prints marker lines (`@@exq-probe ...`) around three sections: nvidia-smi's
GPU table, its compute-apps table, and `PID PGID` for each listed pid that still exists there.
`parse_probe_output` turns that text into a GpuSnapshot (backend "nvidia-smi").
"""

from __future__ import annotations

import shlex

from exq.gpus import GpuInfo, GpuProcess, GpuSnapshot

BACKEND = "nvidia-smi"
MARKER = "@@exq-probe"
GPU_QUERY = "nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used --format=csv,noheader,nounits"
APPS_QUERY = "nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader,nounits"
MISSING_MESSAGE = "nvidia-smi not found on PATH"
NVIDIA_SMI_TIMEOUT = 20
"""Seconds each nvidia-smi call may take on the host (a hung driver); then it fails with exit 124."""
_MIB = 1024**2

# Wrapped in `sh -c` so that a login shell other than sh (zsh, fish) runs it the same. `timeout` is
# coreutils'. The pgid is field 5 of /proc/PID/stat, read after the last ") " (the name may hold spaces).
_SCRIPT = f"""\
set -f
command -v nvidia-smi >/dev/null 2>&1 || {{ echo "{MARKER} missing"; exit 0; }}
t=; command -v timeout >/dev/null 2>&1 && t="timeout {NVIDIA_SMI_TIMEOUT}"
g=$($t {GPU_QUERY} 2>&1); r=$?
echo "{MARKER} gpus $r"; printf "%s\\n" "$g"
a=$($t {APPS_QUERY} 2>&1); r=$?
echo "{MARKER} apps $r"; printf "%s\\n" "$a"
echo "{MARKER} pgids"
[ $r -eq 0 ] && printf "%s\\n" "$a" | while IFS=", " read -r u p m; do
  [ "$p" -gt 0 ] 2>/dev/null || continue
  s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
  set -- ${{s##*) }}; echo "$p $3"
done
echo "{MARKER} end"
exit 0
"""
PROBE_COMMAND = "sh -c " + shlex.quote(_SCRIPT)
"""Run on the GPU host through its login shell; prints what parse_probe_output reads; exits 0."""


def _sections(text: str) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Lines per section name, and the exit status that each `MARKER name N` line carries."""
    sections: dict[str, list[str]] = {}
    status: dict[str, int] = {}
    current: list[str] | None = None
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if line.startswith(MARKER + " "):
            name, _, code = line[len(MARKER) + 1 :].strip().partition(" ")
            current = sections.setdefault(name, [])
            if code.strip().lstrip("-").isdigit():
                status[name] = int(code)
        elif current is not None and line.strip():
            current.append(line.strip())
    return sections, status


def _mib(field: str) -> int | None:
    """Bytes in a MiB count; None for "[N/A]", "[Not Supported]" and anything else unreadable."""
    try:
        return int(float(field.strip()) * _MIB)
    except ValueError:
        return None


def _int(field: str) -> int | None:
    field = field.strip()
    return int(field) if field.isdigit() else None


def _parse_apps(lines: list[str], pgids: dict[int, int]) -> dict[str, dict[int, GpuProcess]]:
    """Processes per GPU uuid; a pid listed twice on one GPU counts once, with its largest memory."""
    per_gpu: dict[str, dict[int, GpuProcess]] = {}
    for line in lines:
        parts = line.split(",")
        pid = _int(parts[1]) if len(parts) == 3 else None
        if pid is None:
            continue  # e.g. "No running processes found" from some driver versions
        uuid = parts[0].strip()
        memory = _mib(parts[2]) or 0
        procs = per_gpu.setdefault(uuid, {})
        if pid not in procs or procs[pid].used_memory < memory:
            procs[pid] = GpuProcess(pid=pid, used_memory=memory, pgid=pgids.get(pid))
    return per_gpu


def _parse_gpu(line: str, procs: dict[str, dict[int, GpuProcess]]) -> GpuInfo | None:
    """One GPU row: index and uuid from the left, the two memory numbers from the right."""
    parts = line.split(",")
    if len(parts) < 5 or (index := _int(parts[0])) is None:
        return None
    uuid = parts[1].strip()
    found = tuple(procs.get(uuid, {}).values())
    total = _mib(parts[-2])
    used = _mib(parts[-1])
    return GpuInfo(
        index=index,
        uuid=uuid,
        name=",".join(parts[2:-2]).strip(),
        memory_total=total or 0,
        memory_used=sum(p.used_memory for p in found) if used is None else used,
        processes=found,
    )


def _pgids(lines: list[str]) -> dict[int, int]:
    pgids: dict[int, int] = {}
    for line in lines:
        fields = line.split()
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            pgids[int(fields[0])] = int(fields[1])
    return pgids


def _failure(text: str, taken_at: float, message: str) -> GpuSnapshot:
    return GpuSnapshot(BACKEND, (), taken_at, message, {"output": text.strip()[-2000:]})


def parse_probe_output(text: str, taken_at: float) -> GpuSnapshot:
    """The snapshot in PROBE_COMMAND's output. No GPUs, with a `message` saying why, when nvidia-smi
    is missing or fails (the message quotes what it said); unreadable memory counts as 0."""
    sections, status = _sections(text)
    if "missing" in sections:
        return _failure(text, taken_at, MISSING_MESSAGE)
    if "gpus" not in sections or "end" not in sections:
        return _failure(text, taken_at, f"unexpected probe output: {text.strip()[:500]!r}")
    said = " ".join(sections["gpus"])
    if status.get("gpus", 1) != 0:
        return _failure(text, taken_at, f"nvidia-smi failed (exit {status.get('gpus', '?')}): {said}")
    extra: dict[str, str] = {}
    messages: list[str] = []
    apps = sections.get("apps", [])
    if status.get("apps", 1) != 0:
        extra["apps_error"] = " ".join(apps)
        messages.append(f"nvidia-smi could not list GPU processes (exit {status.get('apps', '?')}): {' '.join(apps)}")
        apps = []
    procs = _parse_apps(apps, _pgids(sections.get("pgids", [])))
    gpus: list[GpuInfo] = []
    for line in sections["gpus"]:
        gpu = _parse_gpu(line, procs)
        if gpu is None:
            extra.setdefault("unparsed", line)
            messages.append(f"unreadable nvidia-smi line: {line!r}")
        else:
            gpus.append(gpu)
    return GpuSnapshot(BACKEND, tuple(gpus), taken_at, "; ".join(messages) or None, extra)
