"""A job that really runs out of GPU memory at large batch sizes (for bench/gpu_validate.py).

    python bench/gpu_jobs/oom_job.py --batch-size 32 --per-sample-bytes 5368709120

Allocates one float32 tensor of `batch_size * per_sample_bytes` on the GPU, fills it and computes on
it (a matmul on a slice and a full reduction), so the memory is really used. A CUDA out-of-memory
error exits with exq's OOM code through `exq.torch.oom_guard`. On success it writes `batch_size`,
`allocated_bytes`, `peak_allocated_bytes` (torch.cuda.max_memory_allocated), `device`, `checksum`
and `seconds` to $EXQ_RESULT_FILE with `exq.torch.finish`.
`--device cpu --max-bytes N` runs on the CPU and raises torch's OutOfMemoryError for allocations
of N bytes or more: a smoke test of the flow without a GPU.
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # torch without numpy is fine here

import torch  # noqa: E402

from exq.torch import finish, oom_guard, report  # noqa: E402


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, required=True, help="on_oom.scale halves it after each OOM")
    parser.add_argument("--per-sample-bytes", type=int, required=True, help="bytes allocated per sample")
    parser.add_argument("--device", default="cuda", help="torch device (default cuda: the job's first visible GPU)")
    parser.add_argument("--max-bytes", type=int, help="simulate a device of this size (OOM at or above it)")
    return parser.parse_args()


@oom_guard
def main() -> None:
    args = parse()
    started = time.monotonic()
    device = torch.device(args.device)
    nbytes = args.batch_size * args.per_sample_bytes
    print(f"attempt {os.environ.get('EXQ_ATTEMPT')}: batch {args.batch_size} x {args.per_sample_bytes} B = "
          f"{nbytes / 2**30:.2f} GiB on {device} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')})",
          flush=True)
    if args.max_bytes is not None and nbytes >= args.max_bytes:
        raise torch.cuda.OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate {nbytes} bytes (simulated: not below --max-bytes {args.max_bytes})")
    x = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    report(batch_size=args.batch_size, allocated_bytes=x.numel() * 4)
    x.uniform_()
    side = min(4096, math.isqrt(x.numel()))
    block = x[: side * side].view(side, side)
    checksum = float((block @ block).mean().item() + x.mean().item())
    peak = None
    name = str(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        name = torch.cuda.get_device_name(device)
    metrics = finish(batch_size=args.batch_size, per_sample_bytes=args.per_sample_bytes,
                     allocated_bytes=x.numel() * 4, peak_allocated_bytes=peak, device=name, checksum=checksum,
                     seconds=round(time.monotonic() - started, 3))
    print(" ".join(f"{key}={value}" for key, value in metrics.items()), flush=True)


if __name__ == "__main__":
    main()
