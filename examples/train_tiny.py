"""A tiny real PyTorch training run for exq (synthetic data, a small MLP, a few seconds on a CPU).

    python examples/train_tiny.py --batch-size 64 --base-batch 256 --seed 0 --save runs/teacher.pt
    python examples/train_tiny.py --batch-size 64 --base-batch 256 --teacher runs/teacher.pt

It trains with micro-batches of at most `--batch-size` and gradient accumulation up to the effective
batch `--base-batch` (`exq.torch.scaled_batch`), so exq's `on_oom.scale` can halve the batch size
without changing the optimisation. Run by exq without those flags, it takes both from the job's
`batch_size` param (`exq.torch.batch_plan`: this attempt's value, and the manifest's).

`--oom-above N` simulates a CUDA out-of-memory error (the real `torch.cuda.OutOfMemoryError`) when the
batch size is above N; `exq.torch.oom_guard` turns it into
exq's OOM exit code. With `--teacher` it distils from a saved teacher. Metrics (initial_loss,
final_loss, accuracy, ...) go to $EXQ_RESULT_FILE through `exq.torch.finish`.
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # torch without numpy is fine here

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from exq.torch import batch_plan, finish, oom_guard, report, scaled_batch  # noqa: E402
from exq.torch import params as exq_params  # noqa: E402

FEATURES, CLASSES, HIDDEN = 16, 4, 64


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int,
                        help="largest micro-batch (default: the exq param batch_size, which on_oom.scale shrinks)")
    parser.add_argument("--base-batch", type=int,
                        help="effective batch, kept by accumulation (default: the manifest's batch_size)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--teacher", help="distil from this saved teacher (state dict)")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--save", help="save the trained model's state dict here")
    parser.add_argument("--oom-above", type=int, help="simulate a CUDA OOM when --batch-size is above this")
    return parser.parse_args()


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES))


def make_data(samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed synthetic task (the same for every seed): labels from a random two-layer network."""
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(samples, FEATURES, generator=gen)
    w1, w2 = torch.randn(FEATURES, 32, generator=gen), torch.randn(32, CLASSES, generator=gen)
    return x, (torch.tanh(x @ w1) @ w2).argmax(dim=1)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(x)
        return F.cross_entropy(logits, y).item(), (logits.argmax(dim=1) == y).float().mean().item()


def sgd_step(params: list[torch.Tensor], momentum: list[torch.Tensor], lr: float) -> None:
    """SGD with momentum 0.9, by hand: torch.optim's first step imports torch._dynamo (~2 s on a CPU)."""
    with torch.no_grad():
        for param, buf in zip(params, momentum, strict=True):
            if param.grad is not None:
                buf.mul_(0.9).add_(param.grad)
                param.sub_(lr * buf)


@oom_guard
def main() -> None:
    args = parse()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # several jobs may share one CPU
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.batch_size is None and "batch_size" in exq_params():
        plan = batch_plan("batch_size")  # this attempt's batch_size against the manifest's
        args.batch_size, args.base_batch = plan.batch_size, plan.effective
    args.batch_size = args.batch_size or 256
    args.base_batch = args.base_batch or args.batch_size
    micro, accumulation = scaled_batch(args.batch_size, args.base_batch)
    print(f"job {os.environ.get('EXQ_JOB_ID')} attempt {os.environ.get('EXQ_ATTEMPT')} on {device}: "
          f"micro-batch {micro} x {accumulation} accumulation steps (effective {args.base_batch})", flush=True)
    if args.oom_above is not None and args.batch_size > args.oom_above:
        raise torch.cuda.OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate {args.batch_size * 8} MiB (simulated: batch size "
            f"{args.batch_size} > --oom-above {args.oom_above})")

    x, y = make_data(args.samples)
    split = args.samples * 3 // 4
    x_train, y_train, x_test, y_test = x[:split].to(device), y[:split].to(device), x[split:].to(device), y[split:]
    model = make_model().to(device)
    teacher = None
    if args.teacher:
        teacher = make_model().to(device)
        teacher.load_state_dict(torch.load(args.teacher, map_location=device, weights_only=True))
        teacher.eval()
    params = list(model.parameters())
    momentum = [torch.zeros_like(p) for p in params]
    initial_loss, _ = evaluate(model, x_train, y_train)

    steps_per_epoch = math.ceil(split / args.base_batch)
    total, step, started = args.epochs * steps_per_epoch, 0, time.monotonic()
    for _ in range(args.epochs):
        order = torch.randperm(split, device=device)
        for start in range(0, split, args.base_batch):
            batch = order[start:start + args.base_batch]
            model.zero_grad()
            for chunk in batch.split(micro):
                logits = model(x_train[chunk])
                loss = F.cross_entropy(logits, y_train[chunk])
                if teacher is not None:
                    with torch.no_grad():
                        soft = F.softmax(teacher(x_train[chunk]) / args.temperature, dim=1)
                    distil = F.kl_div(F.log_softmax(logits / args.temperature, dim=1), soft, reduction="batchmean")
                    loss = 0.5 * loss + 0.5 * distil * args.temperature**2
                (loss * len(chunk) / len(batch)).backward()  # the mean over the whole effective batch
            sgd_step(params, momentum, args.lr)
            step += 1
            report(step=step, total=total, loss=loss.item())

    final_loss, _ = evaluate(model, x_train, y_train)
    _, accuracy = evaluate(model.cpu(), x_test, y_test)
    if args.save:
        os.makedirs(os.path.dirname(args.save) or ".", exist_ok=True)
        torch.save(model.state_dict(), args.save)
    metrics = finish(initial_loss=initial_loss, final_loss=final_loss, accuracy=accuracy, batch_size=args.batch_size,
                     micro_batch=micro, accumulation=accumulation, distilled=teacher is not None,
                     seconds=round(time.monotonic() - started, 2))
    print(" ".join(f"{key}={value}" for key, value in metrics.items()), flush=True)


if __name__ == "__main__":
    main()
