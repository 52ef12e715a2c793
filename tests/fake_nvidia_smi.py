#!/usr/bin/env python3
"""TEST DOUBLE of `nvidia-smi` for exq's tests: fake GPUs, no hardware, no driver. Not NVIDIA's tool.

Installed as `nvidia-smi` on a test host's PATH (tests/sshhosts.py); needs only python3's stdlib,
since exq is not installed on that host. It answers exactly two queries, in nvidia-smi's
`--format=csv,noheader,nounits` form (memory in MiB):

  --query-gpu=index,uuid,name,memory.total,memory.used
  --query-compute-apps=gpu_uuid,pid,used_memory

GPUs come from EXQ_FAKE_GPUS (e.g. `2x24GiB` or `2x24GiB,1x80GiB`); when it is unset or empty this
double fails like nvidia-smi without a driver (exit 9). Used memory is the foreign load from the JSON
file named by EXQ_FAKE_GPUS_LOAD (`{"<index>": <bytes or "3GiB">}`, shown as pid 999999, a process
that does not exist) plus fake job processes: processes of this user whose environment has
EXQ_JOB_ID and CUDA_VISIBLE_DEVICES but not EXQ_RUNNER_CMD, each holding EXQ_GPU_MEMORY (default
1GiB) on every GPU it lists, one per process group per GPU (as exq's simulated backend counts them).
"""

from __future__ import annotations

import json
import os
import re
import sys
import uuid

GPU_ARGS = {"--query-gpu=index,uuid,name,memory.total,memory.used", "--format=csv,noheader,nounits"}
APPS_ARGS = {"--query-compute-apps=gpu_uuid,pid,used_memory", "--format=csv,noheader,nounits"}
FOREIGN_PID = 999999
MIB = 1024**2
UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
         "kib": 1024, "mib": MIB, "gib": 1024**3, "tib": 1024**4}
NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
             "Make sure that the latest NVIDIA driver is installed and running.")


def size(value: object) -> int:
    """Bytes in 123, "123", "3GiB", "512MiB"; ValueError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if match is None or match.group(2).lower() not in UNITS:
        raise ValueError(f"bad size {value!r}")
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


def gpus_from_env() -> list[int]:
    """Total bytes of each fake GPU, by index, from EXQ_FAKE_GPUS."""
    totals: list[int] = []
    spec = os.environ.get("EXQ_FAKE_GPUS", "").strip().lower()
    for item in spec.split(",") if spec else []:
        count, _, mem = item.strip().rpartition("x")
        totals += [size(mem)] * int(count or "1")
    return totals


def gpu_uuid(index: int) -> str:
    """Stable, and distinct per user (each test host has its own user)."""
    return "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"exq-fake-gpu:{os.getuid()}:{index}"))


def foreign_load() -> dict[int, int]:
    path = os.environ.get("EXQ_FAKE_GPUS_LOAD")
    if not path or not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return {int(k): size(v) for k, v in json.load(f).items()}


def read_proc(pid: str) -> tuple[dict[str, str], int] | None:
    """Environment and process group of one of this user's processes, or None."""
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return None
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read().split(b"\0")
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            pgid = int(f.read().rpartition(")")[2].split()[2])
    except (OSError, ValueError, IndexError):
        return None
    env = dict(item.decode(errors="replace").partition("=")[::2] for item in raw if b"=" in item)
    return env, pgid


def job_processes(count: int) -> list[tuple[int, int, int]]:
    """(gpu index, pid, bytes) of fake job processes, one per process group per GPU."""
    found: list[tuple[int, int, int]] = []
    seen: set[tuple[int, int]] = set()
    pids = sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int)
    for pid in pids:
        info = read_proc(pid)
        if info is None:
            continue
        env, pgid = info
        if "EXQ_JOB_ID" not in env or "CUDA_VISIBLE_DEVICES" not in env or "EXQ_RUNNER_CMD" in env:
            continue
        try:
            memory = size(env.get("EXQ_GPU_MEMORY", "1GiB"))
        except ValueError:
            memory = 1024**3
        uuids = {gpu_uuid(i): i for i in range(count)}
        for entry in env["CUDA_VISIBLE_DEVICES"].split(","):
            entry = entry.strip()
            index = int(entry) if entry.isdigit() else uuids.get(entry, -1)
            if 0 <= index < count and (index, pgid) not in seen:
                seen.add((index, pgid))
                found.append((index, int(pid), memory))
    return found


def main(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if set(args) not in (GPU_ARGS, APPS_ARGS) or len(args) != 2:
        print(f"fake nvidia-smi (a test double): unsupported arguments {args!r}; see --help", file=sys.stderr)
        return 2
    try:
        totals = gpus_from_env()
        load = foreign_load()
    except (OSError, ValueError, AttributeError) as exc:
        print(f"fake nvidia-smi (a test double): bad EXQ_FAKE_GPUS or EXQ_FAKE_GPUS_LOAD: {exc}", file=sys.stderr)
        return 2
    if not totals:
        print(NO_DRIVER)
        return 9
    apps = [(i, FOREIGN_PID, load[i]) for i in range(len(totals)) if load.get(i)]
    apps = sorted(apps + job_processes(len(totals)))
    if set(args) == APPS_ARGS:
        for index, pid, memory in apps:
            print(f"{gpu_uuid(index)}, {pid}, {memory // MIB}")
        return 0
    for index, total in enumerate(totals):
        used = sum(memory for i, _, memory in apps if i == index)
        print(f"{index}, {gpu_uuid(index)}, NVIDIA Fake GPU {total // 1024**3}GB (test double), "
              f"{total // MIB}, {used // MIB}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
