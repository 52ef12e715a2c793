"""Settle step: release the GPUs of ended attempts once their processes are gone from them.

A GPU is reused only when a probe taken after the job's process group vanished shows none of its
processes there (bounded by the settle timeout, after which what is left counts as foreign memory).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from exq.daemon.context import Context
from exq.daemon.placement import Reservation
from exq.errors import ExqError

log = logging.getLogger("exq.scheduler")


async def settle(ctx: Context, collect_probes: Callable[[], Awaitable[None]]) -> None:
    """Release the GPUs of ended attempts once their processes are gone from the GPU; `collect_probes`
    applies the probes that finished (the step waits, at most 1 s, for one newer than the processes' end)."""
    settling = [r for r in ctx.reservations.values() if r.settling_since is not None]
    if not settling:
        return
    now = time.time()
    gone: list[Reservation] = []
    for res in settling:
        if not res.gpus or res.pgid is None or not await _group_alive(ctx, res):
            gone.append(res)
        elif now - res.settling_since > ctx.config.settle_timeout:  # type: ignore[operator]
            log.warning("%s: processes still alive after %.0fs; GPU memory now counts as foreign",
                        res.key, ctx.config.settle_timeout)
            release(ctx, res)
    for res in gone:
        res.gone_at = res.gone_at or res.exited_at or now
    hosts = {r.host for r in gone if r.gpus}
    if hosts:  # a probe newer than the processes' end must show them gone from the GPU
        probes = ctx.probes.start(force=True, hosts=hosts, newer_than=min(r.gone_at or now for r in gone))
        if probes:
            await asyncio.wait(probes, timeout=1.0)
            await collect_probes()
    for res in gone:
        snap = ctx.probes.snapshots.get(res.host)
        fresh = not res.gpus or (snap is not None and snap.taken_at >= (res.gone_at or now))
        on_gpu = snap is not None and any(
            p.pgid == res.pgid for gpu in snap.gpus if gpu.index in res.gpus for p in gpu.processes
        )
        if (fresh and not on_gpu) or now - res.settling_since > ctx.config.settle_timeout:  # type: ignore[operator]
            release(ctx, res)


async def _group_alive(ctx: Context, res: Reservation) -> bool:
    assert res.pgid is not None
    try:
        return await ctx.workers[res.host].group_alive(res.pgid)
    except ExqError:
        return True  # cannot tell: keep the GPU until the settle timeout


def release(ctx: Context, res: Reservation) -> None:
    ctx.reservations.pop(res.key, None)
    ctx.dirty = True
