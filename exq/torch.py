"""Training-side helpers for PyTorch jobs run by exq (optional: the daemon never imports this module).

- `oom_guard`: a decorator / context manager that turns a CUDA out-of-memory error into one marker line
  on stderr and exq's OOM exit code, so the attempt is classified `oom` and retried per `retry.oom`.
- `params` / `param`: this attempt's params (after any `on_oom.scale`), from `$EXQ_PARAMS`.
- `batch_plan` / `scaled_batch`: micro-batch and gradient-accumulation steps that keep the effective
  batch when `on_oom.scale` has shrunk the batch size.
- `report` / `finish` (or a `Reporter`): metrics written atomically to `$EXQ_RESULT_FILE`, with
  throttled progress while training runs.

This module never imports torch itself: it recognises torch's exception classes only when the
training script has imported torch, so it is cheap to import and type-checks without torch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

from exq.model import contract
from exq.model.contract import OOM_EXIT_CODE

__all__ = [
    "OOM_EXIT_CODE", "BatchPlan", "Reporter", "batch_plan", "finish", "is_cuda_oom", "oom_guard", "param", "params",
    "report", "scaled_batch",
]

P = ParamSpec("P")
R = TypeVar("R")
_MISSING: Any = object()

OOM_MESSAGES = (
    "CUDA out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "cudaErrorMemoryAllocation",
    "CUDA error: out of memory",
)
"""Substrings of a RuntimeError's message that mean the GPU ran out of memory."""


# -- OOM guard -------------------------------------------------------------------------------


def is_cuda_oom(exc: BaseException) -> bool:
    """Whether `exc` is torch's OutOfMemoryError or a RuntimeError reporting a CUDA allocation failure."""
    torch = sys.modules.get("torch")
    if torch is not None:
        oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(getattr(torch, "cuda", None),
                                                                       "OutOfMemoryError", None)
        if isinstance(oom_type, type) and isinstance(exc, oom_type):
            return True
    return isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in OOM_MESSAGES)


class _OomGuard(contextlib.ContextDecorator):
    def __enter__(self) -> _OomGuard:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None or not is_cuda_oom(exc):
            return  # anything else propagates unchanged
        lines = str(exc).strip().splitlines()
        print(f"exq: CUDA out of memory: {lines[0] if lines else type(exc).__name__}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        raise SystemExit(OOM_EXIT_CODE)


@overload
def oom_guard(func: Callable[P, R]) -> Callable[P, R]: ...
@overload
def oom_guard(func: None = None) -> _OomGuard: ...
def oom_guard(func: Callable[P, R] | None = None) -> Callable[P, R] | _OomGuard:
    """Exit with exq's OOM exit code (211) on a CUDA out-of-memory error; other exceptions propagate.

    Use as `@oom_guard`, `@oom_guard()` or `with oom_guard():`. On an OOM it prints
    `exq: CUDA out of memory: <first line of the error>` to stderr and raises `SystemExit(211)`,
    so `finally` blocks still run. Guard the main thread: in another thread SystemExit ends only it.
    """
    guard = _OomGuard()
    return guard if func is None else guard(func)


# -- batch scaling ---------------------------------------------------------------------------


def scaled_batch(batch_size: int, base_batch: int) -> tuple[int, int]:
    """(micro_batch, accumulation_steps) whose product is about `base_batch`, micro_batch <= batch_size.

    `batch_size` is what fits now (the manifest's `on_oom.scale` halves it after each OOM);
    `base_batch` is the effective batch the run was designed for. Accumulation is
    `ceil(base_batch / batch_size)`; the micro-batch is then evened out to `ceil(base_batch / steps)`,
    so `scaled_batch(64, 256) == (64, 4)` and `scaled_batch(100, 256) == (86, 3)`.
    """
    if batch_size < 1 or base_batch < 1:
        raise ValueError(f"batch sizes must be >= 1, got batch_size={batch_size}, base_batch={base_batch}")
    steps = math.ceil(base_batch / batch_size)
    return math.ceil(base_batch / steps), steps


# -- params ----------------------------------------------------------------------------------


def params() -> dict[str, Any]:
    """This attempt's params (`$EXQ_PARAMS`), after any `on_oom.scale`; `{}` when not run by exq."""
    return _params_from(contract.PARAMS)


def param(name: str, default: Any = _MISSING) -> Any:
    """One param of this attempt; `default` when the job has none of that name (KeyError without one)."""
    values = params()
    if name in values:
        return values[name]
    if default is _MISSING:
        known = ", ".join(sorted(values)) or "none: not run by exq?"
        raise KeyError(f"no param {name!r} in $EXQ_PARAMS (params: {known})")
    return default


@dataclass(frozen=True)
class BatchPlan:
    """How to run one step of the manifest's effective batch with the batch size that fits now."""

    batch_size: int
    """This attempt's value of the param (after any `on_oom.scale`)."""
    effective: int
    """The manifest's value: the batch one optimiser step covers."""
    micro: int
    accumulation: int


def batch_plan(name: str = "batch_size") -> BatchPlan:
    """`scaled_batch` for param `name`, this attempt's value against the manifest's (`$EXQ_BASE_PARAMS`).

    On a first attempt `micro == effective` and `accumulation == 1`; after OOM retries that halved
    the param, the micro-batch shrinks and accumulation keeps the effective batch.
    """
    batch = int(param(name))
    effective = int(_params_from(contract.BASE_PARAMS).get(name, batch))
    micro, accumulation = scaled_batch(batch, effective)
    return BatchPlan(batch, effective, micro, accumulation)


def _params_from(variable: str) -> dict[str, Any]:
    text = os.environ.get(variable)
    if not text:
        return {}
    try:
        values = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"${variable} does not hold JSON: {exc}") from None
    if not isinstance(values, dict):
        raise ValueError(f"${variable} does not hold a JSON object")
    return values


# -- results ---------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """`value` as JSON data: tensors and numpy scalars via .item()/.tolist(), NaN/inf as strings, else str."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    for method in ("item", "tolist"):
        convert = getattr(value, method, None)
        if callable(convert):
            try:
                return _jsonable(convert())
            except (TypeError, ValueError, RuntimeError):
                continue
    return str(value)


class Reporter:
    """Keeps a job's latest metrics and writes them atomically to `$EXQ_RESULT_FILE`.

    `report()` updates the metrics and writes them (with `step`/`total`) at most once per `interval`
    seconds, so a reader always finds the latest whole JSON object; `finish()` writes the merged
    metrics now. As a context manager it finishes on exit; on an exception it also records
    `error` (exq shows it as the failed job's reason). Without a result file it only keeps them.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, interval: float = 1.0) -> None:
        target = path if path is not None else os.environ.get(contract.RESULT_FILE)
        self.path = Path(target) if target else None
        self.interval = interval
        self.metrics: dict[str, Any] = {}
        self._last_write: float | None = None
        self._warned = False

    def report(self, step: int | None = None, total: int | None = None, **metrics: Any) -> None:
        """Record progress and the latest metrics; written when `interval` passed since the last write."""
        if step is not None:
            self.metrics["step"] = step
        if total is not None:
            self.metrics["total"] = total
        self.metrics.update(metrics)
        now = time.monotonic()
        if self.path is None or (self._last_write is not None and now - self._last_write < self.interval):
            return
        self._last_write = now
        try:
            self._write()
        except OSError as exc:  # progress is best effort: never end the training over it
            if not self._warned:
                self._warned = True
                print(f"exq: cannot write progress to {self.path}: {exc}", file=sys.stderr, flush=True)

    def finish(self, **metrics: Any) -> dict[str, Any]:
        """Merge `metrics` into the latest ones, write them now and return them."""
        self.metrics.update(metrics)
        if self.path is not None:
            self._write()
            self._last_write = time.monotonic()
        return dict(self.metrics)

    def _write(self) -> None:
        assert self.path is not None
        data = json.dumps(_jsonable(self.metrics), allow_nan=False).encode()
        contract.write_result(self.path, data)

    def __enter__(self) -> Reporter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, Exception) and not is_cuda_oom(exc):
            first = (str(exc).strip().splitlines() or [""])[0]
            self.metrics["error"] = f"{type(exc).__name__}: {first}".rstrip(": ")
        self.finish()


_default: Reporter | None = None


def _reporter() -> Reporter:
    global _default
    if _default is None:
        _default = Reporter()
    return _default


def report(step: int | None = None, total: int | None = None, **metrics: Any) -> None:
    """`Reporter.report` on the process-wide reporter (writing to `$EXQ_RESULT_FILE`)."""
    _reporter().report(step, total, **metrics)


def finish(**metrics: Any) -> dict[str, Any]:
    """`Reporter.finish` on the process-wide reporter: write the merged metrics now and return them."""
    return _reporter().finish(**metrics)
