"""A stand-in training script for the quickstart: sleeps a little, 'runs out of memory' above a batch size.

It prints the same message PyTorch prints on a CUDA out-of-memory error, so exq's OOM retry with
`on_oom.scale` can be seen on a machine without a GPU. It writes its metrics to $EXQ_RESULT_FILE.
"""

import argparse
import json
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, required=True)
parser.add_argument("--seed", type=int, required=True)
parser.add_argument("--batch-size", type=int, required=True)
parser.add_argument("--fits-batch", type=int, default=64, help="largest batch that 'fits' in GPU memory")
parser.add_argument("--seconds", type=float, default=1.0)
parser.add_argument("--out", required=True)
args = parser.parse_args()

print(f"job {os.environ.get('EXQ_JOB_ID')} attempt {os.environ.get('EXQ_ATTEMPT')} "
      f"on GPU {os.environ.get('CUDA_VISIBLE_DEVICES')!r}, batch {args.batch_size}", flush=True)
time.sleep(args.seconds / 2)
if args.batch_size > args.fits_batch:
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", file=sys.stderr)
    sys.exit(1)
time.sleep(args.seconds / 2)
loss = round(1.0 / (1 + args.seed) * args.lr * 100, 4)
os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
with open(args.out, "w") as handle:
    handle.write(f"{loss}\n")
result_file = os.environ.get("EXQ_RESULT_FILE")
if result_file:
    with open(result_file, "w") as handle:
        json.dump({"final_loss": loss, "batch_size": args.batch_size}, handle)
print(f"done: loss {loss}")
