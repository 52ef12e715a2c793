"""Which GPUs a job may take: pure functions over probe snapshots and exq's own reservations."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from exq.gpus import GpuInfo, GpuSnapshot
from exq.model.jobspec import Resources
from exq.units import format_size

DEFAULT_FOREIGN_THRESHOLD = 500 * 1024**2


@dataclass(frozen=True)
class Batch:
    """Launches of one kind handed together to a host with its own queue, which runs at most `limit` of them at
    once (see `Capabilities.queue_batch`)."""

    id: str
    host: str
    limit: int


@dataclass
class Reservation:
    """GPUs held by one exq attempt, from launch until its memory is seen released (settled)."""

    key: str
    host: str
    gpus: tuple[int, ...]
    memory: int | None
    """Bytes per GPU; None takes each GPU whole."""
    share: bool
    pgid: int | None = None
    settling_since: float | None = None
    """Set when the attempt ended; the reservation holds until its processes are gone."""
    gone_at: float | None = None
    """When its process group was first seen gone; a GPU probe newer than this must agree."""
    exited_at: float | None = None
    """When its runner was seen ending: the runner ends once the group is gone, so it was gone by then."""
    batch: Batch | None = None
    """The throttled batch it was launched in, if any (not kept across a restart: each then counts as one)."""

    @property
    def exclusive(self) -> bool:
        return self.memory is None or not self.share


@dataclass(frozen=True)
class GpuLoad:
    """One GPU as placement sees it."""

    host: str
    gpu: GpuInfo
    foreign: int
    reserved: int
    reservations: tuple[Reservation, ...]
    slot: bool = False
    """A slot of a host with its own queue (see GpuSnapshot.slots): a job placed there may wait in that queue."""

    @property
    def available(self) -> int:
        return max(0, self.gpu.memory_total - self.foreign - self.reserved)


@dataclass(frozen=True)
class Placement:
    host: str
    gpus: tuple[int, ...]
    uuids: tuple[str, ...]


def gpu_loads(snapshots: Mapping[str, GpuSnapshot], reservations: Iterable[Reservation]) -> list[GpuLoad]:
    """Every GPU of every host, with memory split into foreign (not exq's) and reserved (exq's)."""
    by_gpu: dict[tuple[str, int], list[Reservation]] = {}
    ours: dict[str, set[int]] = {}
    for res in reservations:
        for index in res.gpus:
            by_gpu.setdefault((res.host, index), []).append(res)
        if res.pgid is not None:
            ours.setdefault(res.host, set()).add(res.pgid)
    loads = []
    for host, snap in snapshots.items():
        host_pgids = ours.get(host, set())
        for gpu in snap.gpus:
            own = sum(p.used_memory for p in gpu.processes if p.pgid is not None and p.pgid in host_pgids)
            held = by_gpu.get((host, gpu.index), [])
            reserved = sum(r.memory if r.memory is not None else gpu.memory_total for r in held)
            loads.append(GpuLoad(host, gpu, max(0, gpu.memory_used - own), reserved, tuple(held), snap.slots))
    return loads


def usable(load: GpuLoad, resources: Resources, foreign_threshold: int) -> bool:
    """Whether one more attempt with `resources` fits on this GPU now."""
    if load.foreign >= foreign_threshold:
        return False
    wants_exclusive = resources.gpu_memory is None or not resources.share
    if load.reservations and (wants_exclusive or any(r.exclusive for r in load.reservations)):
        return False
    need = resources.gpu_memory if resources.gpu_memory is not None else 1
    return load.available >= need


def permitted(load: GpuLoad, devices: Mapping[str, Collection[int]]) -> bool:
    """Whether `devices` (the GPU indices a job may use per host; a host not named: any) allows this GPU."""
    allowed = devices.get(load.host)
    return allowed is None or load.gpu.index in allowed


def place(
    resources: Resources,
    loads: list[GpuLoad],
    *,
    foreign_threshold: int = DEFAULT_FOREIGN_THRESHOLD,
    hosts: Iterable[str] | None = None,
    avoid: frozenset[tuple[str, int]] = frozenset(),
    devices: Mapping[str, Collection[int]] | None = None,
) -> Placement | None:
    """Pick `resources.gpus` usable GPUs of one host, most available memory first; None if none fit.

    GPUs in `avoid` (e.g. where the job just ran out of memory) are taken only when nothing else fits;
    GPUs `devices` does not allow (see `permitted`) never. A host with its own queue (slots) takes only what
    GPUs that run a job at once cannot: it is the overflow.
    """
    allowed = set(hosts) if hosts is not None else None
    candidates: dict[str, list[GpuLoad]] = {}
    for load in loads:
        if (allowed is None or load.host in allowed) and permitted(load, devices or {}) \
                and usable(load, resources, foreign_threshold):
            candidates.setdefault(load.host, []).append(load)
    best: tuple[tuple[int, bool, int], Placement] | None = None
    for host, host_loads in candidates.items():
        if len(host_loads) < resources.gpus:
            continue
        host_loads.sort(key=lambda ld: ((ld.host, ld.gpu.index) in avoid, -ld.available, ld.gpu.index))
        chosen = host_loads[: resources.gpus]
        avoided = sum((ld.host, ld.gpu.index) in avoid for ld in chosen)
        score = (avoided, chosen[0].slot, -min(ld.available for ld in chosen))
        if best is None or score < best[0]:
            placement = Placement(host, tuple(ld.gpu.index for ld in chosen), tuple(ld.gpu.uuid for ld in chosen))
            best = (score, placement)
    return best[1] if best else None


def why_waiting(resources: Resources, loads: list[GpuLoad], foreign_threshold: int,
                devices: Mapping[str, Collection[int]] | None = None) -> str:
    """Why a job with `resources` (and `devices`, see `permitted`) found no place now, in words a user can act on."""
    if not loads:
        return f"waiting: no GPU on any host (needs {resources.gpus})"
    per_host = Counter(load.host for load in loads)
    if resources.gpus > max(per_host.values()):
        return f"cannot fit: needs {resources.gpus} GPUs on one host, the largest host has {max(per_host.values())}"
    restricted = sorted(h for h in devices or {} if h in per_host)
    if devices and restricted:
        loads = [load for load in loads if permitted(load, devices)]
        allows = Counter(load.host for load in loads)
        if resources.gpus > max(allows.values(), default=0):
            shown = ", ".join(f"{allows[h]} on {h}" for h in restricted)
            return f"cannot fit: needs {resources.gpus} GPU{'s' if resources.gpus != 1 else ''}, devices allows {shown}"
    largest = max(load.gpu.memory_total for load in loads)
    if resources.gpu_memory is not None and resources.gpu_memory > largest:
        need, have = format_size(resources.gpu_memory), format_size(largest)
        return f"cannot fit: needs {need} per GPU, the largest GPU has {have}"
    foreign = sum(1 for load in loads if load.foreign >= foreign_threshold)
    held = f"; {foreign} held by other users' processes" if foreign else ""
    memory = f" with {format_size(resources.gpu_memory)} free" if resources.gpu_memory is not None else ""
    among = ""
    if devices and restricted:
        among = " among those devices allows (" + "; ".join(
            f"{h}: {', '.join(map(str, devices[h]))}" for h in restricted) + ")"
    return f"waiting for {resources.gpus} free GPU(s){memory}{among}{held}"
