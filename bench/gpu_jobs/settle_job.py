"""The two jobs, and the stale worker, of bench/gpu_validate.py's settle check.

    python bench/gpu_jobs/settle_job.py hold --gpu 0 --marks DIR [--fraction 0.4] [--child-fraction 0.2] [--hold 5]
    python bench/gpu_jobs/settle_job.py probe --gpu 0

hold (job A): holds --fraction of the GPU's memory and starts a worker process (its own CUDA context, in
the job's process group, as a dataloader worker is) that holds --child-fraction. A's main process exits
as soon as the worker holds its memory; the worker keeps it --hold seconds longer (it outlives the
runner's SIGTERM, as a slow worker does), frees it, writes DIR/child.json (`pid`, `held_bytes`, and the
Unix times `parent_exited`, `sigterm`, `releasing` (before freeing), `released` (after)) and exits.
probe (job B): its start time (taken before importing torch) and torch.cuda.mem_get_info() of the GPU.
Both write their figures to $EXQ_RESULT_FILE. --gpu is the GPU's NVML (PCI bus order) index; the job
finds it in CUDA_VISIBLE_DEVICES. `--device cpu` runs the same flow on the CPU (a smoke test).
"""

from __future__ import annotations

import time

STARTED = time.time()  # the probe job's start, before the slow imports

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # torch without numpy is fine here

import torch  # noqa: E402

from exq.store.fsio import atomic_write  # noqa: E402
from exq.torch import finish  # noqa: E402

CPU_TOTAL = 256 * 1024**2
"""The nominal device size with --device cpu."""
WAIT = 120.0
"""Bound, in seconds, on each wait for another process."""


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("role", choices=["hold", "probe", "child"], help="child: the worker `hold` starts")
    parser.add_argument("--gpu", type=int, default=0, help="the GPU's NVML index (default 0)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--marks", type=Path, help="directory for child.json (hold)")
    parser.add_argument("--fraction", type=float, default=0.4, help="share of the GPU job A holds (default 0.4)")
    parser.add_argument("--child-fraction", type=float, default=0.2,
                        help="share of the GPU A's worker holds (default 0.2)")
    parser.add_argument("--hold", type=float, default=5.0,
                        help="seconds the worker keeps its memory after A's main process exited (default 5)")
    parser.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


def device_for(kind: str, gpu: int) -> torch.device:
    """The torch device of NVML GPU `gpu`: its position in CUDA_VISIBLE_DEVICES (PCI bus order)."""
    if kind == "cpu":
        return torch.device("cpu")
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if not visible:
        return torch.device("cuda", gpu)
    if str(gpu) not in visible:
        raise SystemExit(f"GPU {gpu} is not among CUDA_VISIBLE_DEVICES={','.join(visible)}")
    return torch.device("cuda", visible.index(str(gpu)))


def total_memory(device: torch.device) -> int:
    return int(torch.cuda.get_device_properties(device).total_memory) if device.type == "cuda" else CPU_TOTAL


def hold(args: argparse.Namespace, device: torch.device) -> None:
    """Job A: hold memory, start the worker, and exit once the worker holds its own."""
    total = total_memory(device)
    held = torch.ones(int(total * args.fraction) // 4, dtype=torch.float32, device=device)
    child_bytes = int(total * args.child_fraction)
    ready = args.marks / "child.ready"
    worker = subprocess.Popen([sys.executable, __file__, "child", "--gpu", str(args.gpu), "--device", args.device,
                               "--marks", str(args.marks), "--child-fraction", str(args.child_fraction),
                               "--hold", str(args.hold), "--parent", str(os.getpid())])
    deadline = time.monotonic() + WAIT
    while not ready.exists():
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode} before holding its memory")
        if time.monotonic() > deadline:
            worker.kill()
            raise RuntimeError(f"the worker did not hold its memory within {WAIT:g} s")
        time.sleep(0.05)
    checksum = held.sum().item()
    finish(held_bytes=held.numel() * 4, child_pid=worker.pid, child_bytes=child_bytes, total=total,
           device_index=device.index, checksum=checksum, main_exit=time.time())
    print(f"A: held {held.numel() * 4} B on {device}; worker {worker.pid} holds {child_bytes} B; exiting", flush=True)


def child(args: argparse.Namespace, device: torch.device) -> None:
    """A's stale worker: keep memory `--hold` s after A's main process exited, then free it and say when."""
    sigterm: list[float] = []
    signal.signal(signal.SIGTERM, lambda *_: sigterm.append(time.time()))  # a slow worker: finishes first
    held = torch.ones(int(total_memory(device) * args.child_fraction) // 4, dtype=torch.float32, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    (args.marks / "child.ready").write_text(f"{time.time()}\n", encoding="utf-8")
    deadline = time.monotonic() + WAIT
    while os.getppid() == args.parent and time.monotonic() < deadline:
        time.sleep(0.02)
    parent_exited = time.time()
    time.sleep(args.hold)  # resumed after the SIGTERM handler ran
    nbytes = held.numel() * 4
    releasing = time.time()
    del held
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    released = time.time()
    mark = {"pid": os.getpid(), "held_bytes": nbytes, "parent_exited": parent_exited,
            "sigterm": sigterm[0] if sigterm else None, "releasing": releasing, "released": released}
    atomic_write(args.marks / "child.json", json.dumps(mark).encode())
    print(f"A's worker: released {nbytes} B {released - parent_exited:.2f} s after A's main exited", flush=True)


def probe(device: torch.device) -> None:
    """Job B: what is free on the GPU as it starts."""
    free, total = torch.cuda.mem_get_info(device) if device.type == "cuda" else (CPU_TOTAL, CPU_TOTAL)
    metrics = finish(started=STARTED, measured=time.time(), free=int(free), total=int(total),
                     device_index=device.index, visible=os.environ.get("CUDA_VISIBLE_DEVICES"))
    print(" ".join(f"{key}={value}" for key, value in metrics.items()), flush=True)


def main() -> None:
    args = parse()
    device = device_for(args.device, args.gpu)
    if args.role == "probe":
        probe(device)
    elif args.marks is None:
        raise SystemExit(f"{args.role}: --marks is required")
    elif args.role == "hold":
        hold(args, device)
    else:
        child(args, device)


if __name__ == "__main__":
    main()
