"""Jobs that no known host could ever run (more GPUs, or more memory per GPU, than any host has), found at
submission so that they are not left waiting forever unnoticed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from exq.model.jobspec import JobSpec, SubmissionSpec
from exq.units import format_size

ANY_MEMORY = 2**62
"""The memory of a slot of a host with its own queue (a Slurm partition): its scheduler decides what fits."""
HostGpus = Mapping[str, Sequence[tuple[int, int]]]
"""Host name -> (index, total memory in bytes) of each GPU it has, as last seen."""


def never_fits(job: JobSpec, hosts: HostGpus) -> str | None:
    """Why no host of `hosts` could ever run `job` (None: one could, it needs no GPU, or its hosts' GPUs are
    not known)."""
    res = job.resources
    if res.gpus == 0:
        return None
    allowed = job.hosts if job.hosts is not None else list(hosts)
    if any(host not in hosts for host in allowed) or not allowed:
        return None  # a host not probed yet might fit it
    best = 0
    for host in allowed:
        gpus = [(i, total) for i, total in hosts[host] if host not in job.devices or i in job.devices[host]]
        usable = [total for _, total in gpus if res.gpu_memory is None or total >= res.gpu_memory]
        if len(usable) >= res.gpus:
            return None
        best = max(best, len(usable))
    memory = f" with {format_size(res.gpu_memory)} each" if res.gpu_memory else ""
    return (f"needs {res.gpus} GPU(s){memory} on one host; the most any allowed host has is {best} "
            f"(hosts: {', '.join(allowed)})")


def fit_problems(spec: SubmissionSpec, hosts: HostGpus) -> list[str]:
    """One line per phase whose jobs can never run on the known hosts."""
    found: dict[str, tuple[int, str]] = {}
    for job in spec.jobs:
        why = never_fits(job, hosts)
        if why is not None:
            count, _ = found.get(job.phase, (0, why))
            found[job.phase] = (count + 1, why)
    return [f"phase {phase}: {count} job(s) can never run: {why}" for phase, (count, why) in found.items()]
