"""Placement rules: foreign memory, exclusivity, sharing by memory, multi-GPU, OOM avoidance."""

from __future__ import annotations

from exq.daemon.placement import Reservation, gpu_loads, place, why_waiting
from exq.gpus import GpuInfo, GpuProcess, GpuSnapshot
from exq.model.jobspec import Resources

GiB = 1024**3


def snapshot(*used: int, total: int = 24 * GiB, processes: dict[int, tuple[GpuProcess, ...]] | None = None,
             ) -> dict[str, GpuSnapshot]:
    gpus = tuple(GpuInfo(i, f"GPU-{i}", "Test GPU", total, u, (processes or {}).get(i, ()))
                 for i, u in enumerate(used))
    return {"local": GpuSnapshot(backend="simulated", gpus=gpus, taken_at=0.0)}


def test_gpu_held_by_another_users_process_is_skipped() -> None:
    loads = gpu_loads(snapshot(2 * GiB, 0), [])
    assert place(Resources(gpus=1), loads).gpus == (1,)  # type: ignore[union-attr]


def test_small_foreign_usage_under_threshold_is_tolerated() -> None:
    loads = gpu_loads(snapshot(100 * 1024**2), [])
    assert place(Resources(gpus=1), loads) is not None


def test_exclusive_job_never_shares_a_gpu() -> None:
    held = [Reservation("a", "local", (0,), None, False)]
    loads = gpu_loads(snapshot(0, 0), held)
    assert place(Resources(gpus=1), loads).gpus == (1,)  # type: ignore[union-attr]
    both = [*held, Reservation("b", "local", (1,), 8 * GiB, True)]
    assert place(Resources(gpus=1, gpu_memory=GiB, share=True), gpu_loads(snapshot(0, 0), both)).gpus == (1,)  # type: ignore[union-attr]


def test_sharing_fits_by_memory_and_stops_when_full() -> None:
    held = [Reservation("a", "local", (0,), 10 * GiB, True), Reservation("b", "local", (0,), 10 * GiB, True)]
    loads = gpu_loads(snapshot(0), held)
    assert place(Resources(gpus=1, gpu_memory=4 * GiB, share=True), loads) is not None
    assert place(Resources(gpus=1, gpu_memory=5 * GiB, share=True), loads) is None


def test_our_own_processes_are_not_foreign() -> None:
    ours = (GpuProcess(pid=10, used_memory=6 * GiB, pgid=10),)
    held = [Reservation("a", "local", (0,), 8 * GiB, True, pgid=10)]
    loads = gpu_loads(snapshot(6 * GiB, processes={0: ours}), held)
    assert loads[0].foreign == 0 and loads[0].reserved == 8 * GiB
    assert place(Resources(gpus=1, gpu_memory=8 * GiB, share=True), loads) is not None


def test_multi_gpu_job_takes_gpus_of_one_host() -> None:
    snaps = snapshot(0, 0, 0)
    snaps["other"] = GpuSnapshot(backend="simulated", taken_at=0.0,
                                 gpus=(GpuInfo(0, "O-0", "Test GPU", 24 * GiB, 0),))
    held = [Reservation("a", "local", (1,), None, False)]
    placement = place(Resources(gpus=2), gpu_loads(snaps, held))
    assert placement is not None and placement.host == "local" and placement.gpus == (0, 2)
    assert place(Resources(gpus=3), gpu_loads(snaps, held)) is None


def test_oom_retry_prefers_another_gpu_with_more_free_memory() -> None:
    loads = gpu_loads(snapshot(0, 0), [])
    assert place(Resources(gpus=1), loads, avoid=frozenset({("local", 0)})).gpus == (1,)  # type: ignore[union-attr]
    only = gpu_loads(snapshot(0), [])
    assert place(Resources(gpus=1), only, avoid=frozenset({("local", 0)})).gpus == (0,)  # type: ignore[union-attr]


def test_job_larger_than_any_gpu_does_not_fit() -> None:
    assert place(Resources(gpus=1, gpu_memory=30 * GiB), gpu_loads(snapshot(0), [])) is None


def test_waiting_reason_says_what_is_missing() -> None:
    loads = gpu_loads(snapshot(0, 2 * GiB), [Reservation("a", "local", (0,), None, False)])
    assert why_waiting(Resources(gpus=1), [], 500 * 1024**2) == "waiting: no GPU on any host (needs 1)"
    assert "needs 3 GPUs on one host, the largest host has 2" in why_waiting(Resources(gpus=3), loads, 500 * 1024**2)
    assert "needs 40GiB per GPU, the largest GPU has 24GiB" in why_waiting(
        Resources(gpus=1, gpu_memory=40 * GiB), loads, 500 * 1024**2)
    assert why_waiting(Resources(gpus=1), loads, 500 * 1024**2) == (
        "waiting for 1 free GPU(s); 1 held by other users' processes")


def test_a_job_restricted_to_hosts_is_placed_only_there() -> None:
    snaps = snapshot(0, 0)
    snaps["gpu2"] = GpuSnapshot(backend="simulated", taken_at=0.0, gpus=(GpuInfo(0, "G2-0", "Test GPU", 24 * GiB, 0),))
    placement = place(Resources(gpus=1), gpu_loads(snaps, []), hosts=["gpu2"])
    assert placement is not None and placement.host == "gpu2"
    assert place(Resources(gpus=2), gpu_loads(snaps, []), hosts=["gpu2"]) is None


def test_devices_restrict_the_gpus_of_the_named_hosts_only() -> None:
    snaps = snapshot(0, 0, 0, 0)
    snaps["gpu2"] = GpuSnapshot(backend="simulated", taken_at=0.0, gpus=(GpuInfo(0, "G2-0", "Test GPU", 24 * GiB, 0),))
    loads = gpu_loads(snaps, [Reservation("a", "local", (1,), None, False)])
    devices = {"local": [1, 3]}
    assert place(Resources(gpus=1), loads, hosts=["local"], devices=devices).gpus == (3,)  # type: ignore[union-attr]
    assert place(Resources(gpus=2), loads, hosts=["local"], devices=devices) is None
    assert place(Resources(gpus=1), loads, hosts=["gpu2"], devices=devices).host == "gpu2"  # type: ignore[union-attr]


def test_waiting_reason_names_devices_when_they_are_the_cause() -> None:
    loads = gpu_loads(snapshot(0, 0, 0), [Reservation("a", "local", (0,), None, False)])
    threshold = 500 * 1024**2
    assert why_waiting(Resources(gpus=2), loads, threshold, {"local": [2]}) == (
        "cannot fit: needs 2 GPUs, devices allows 1 on local")
    assert why_waiting(Resources(gpus=1), loads, threshold, {"local": [7]}) == (
        "cannot fit: needs 1 GPU, devices allows 0 on local")
    assert why_waiting(Resources(gpus=1), loads, threshold, {"local": [0]}) == (
        "waiting for 1 free GPU(s) among those devices allows (local: 0)")
    assert why_waiting(Resources(gpus=1), loads, threshold, {"elsewhere": [0]}) == "waiting for 1 free GPU(s)"


def test_a_higher_foreign_threshold_lets_a_job_share_with_other_users() -> None:
    loads = gpu_loads(snapshot(3 * GiB, 1 * GiB), [])
    assert place(Resources(gpus=1), loads) is None
    assert place(Resources(gpus=1), loads, foreign_threshold=2 * GiB).gpus == (1,)  # type: ignore[union-attr]


def test_gpus_that_run_a_job_at_once_come_before_a_queueing_hosts_slots() -> None:
    """A Slurm partition's slots report more memory than any GPU, yet they take only the overflow."""
    slots = tuple(GpuInfo(i, f"slot-{i}", "gpu slot", 2**50, 0) for i in range(4))
    snapshots = {**snapshot(0), "cluster": GpuSnapshot(backend="slurm", gpus=slots, taken_at=0.0, slots=True)}
    assert place(Resources(gpus=1), gpu_loads(snapshots, [])).host == "local"  # type: ignore[union-attr]
    held = [Reservation("a", "local", (0,), None, False)]
    assert place(Resources(gpus=1), gpu_loads(snapshots, held)).host == "cluster"  # type: ignore[union-attr]
    assert place(Resources(gpus=2), gpu_loads(snapshots, [])).host == "cluster"  # type: ignore[union-attr]
