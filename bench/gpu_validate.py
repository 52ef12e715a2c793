"""GPU validation: exq's NVML probe, CUDA OOM retries and GPU settling, checked on a real NVIDIA GPU.

1. probe: exq's NVML probe against torch.cuda (count, names, total memory, UUIDs), torch numbering the
   GPUs with CUDA_DEVICE_ORDER=PCI_BUS_ID (in a subprocess: this process never creates a CUDA context).
2. oom: one job (bench/gpu_jobs/oom_job.py) that allocates batch_size * (largest GPU / 16) and computes
   on it, run by `exq run` with `retry.oom` and `on_oom.scale`: batch 32 and 16 must run out of memory
   for real, batch 8 must succeed.
3. settle: job A holds 40% of a GPU and leaves a worker process holding 20% for a few seconds after
   A's main process exited; job B, queued behind it on the same GPU, must start only after the worker
   released its memory, and find the GPU free. NVML memory used is sampled every 50 ms meanwhile.

    .venv/bin/python bench/gpu_validate.py [--gpu 0] [--hold 5] [--timeout 300] [--json PATH] [--keep]

Exit status: 0 every check passed; 1 a check failed; 2 a dependency is missing (or bad usage); 3 no
usable NVIDIA GPU (NVML or torch.cuda unavailable): nothing was validated.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exq.gpus import GpuInfo, GpuSnapshot

# exq, _common and the other dependencies are imported only after the dependency check (in functions).
REPO = Path(__file__).resolve().parent.parent
JOBS = REPO / "bench" / "gpu_jobs"
DEPENDENCIES = ("pydantic", "yaml", "filelock", "psutil", "asyncssh", "click", "rich", "pynvml", "torch")
MEMORY_TOLERANCE, MEMORY_TOLERANCE_FLOOR = 0.01, 1024**3
"""Accepted difference of torch's and NVML's total memory: 1% of it, at least 1 GiB (CUDA leaves out the few
hundred MiB the driver reserves, which is more than 1% of a small GPU)."""
A_FRACTION, CHILD_FRACTION = 0.4, 0.2
MIB, GIB = 1024**2, 1024**3


class CheckFailedError(Exception):
    """A check cannot go on; the message says why."""


@dataclass
class Check:
    """One check's verdict: PASS unless a criterion failed; `lines` are the figures, as printed."""

    name: str
    title: str
    passed: bool = True
    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    state_dir: str | None = None
    logs: list[str] = field(default_factory=list)

    def expect(self, ok: bool, line: str) -> None:
        """Record a criterion; a failed one fails the check and its line says FAIL."""
        self.passed = self.passed and ok
        self.lines.append(line if ok else f"FAIL {line}")

    def note(self, line: str) -> None:
        self.lines.append(line)


@dataclass
class Setup:
    """What checks 2 and 3 run with."""

    root: Path
    timeout: float
    gpu: int
    """NVML index of the GPU check 3 uses and samples."""
    gpu_count: int
    largest_total: int
    hold: float
    device: str = "cuda"
    """The jobs' torch device; "cpu" only for smoke tests of the flow on a machine without a GPU."""
    simulate: str | None = None
    """EXQ_SIMULATE_GPUS for such smoke tests; None (always from the command line): the real NVML probe."""

    def env(self, state_dir: Path) -> dict[str, str]:
        """The environment of `exq run`/`exq status`: this state dir, no EXQ_* of ours, exq importable."""
        from _common import exq_env

        env = exq_env(state_dir, self.simulate)
        config = self.root / "config.yaml"  # no SSH hosts of the user's config: only this machine
        config.write_text("hosts: {}\n", encoding="utf-8")
        env["EXQ_CONFIG"] = str(config)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        return env

    def device_args(self) -> list[str]:
        return [] if self.device == "cuda" else ["--device", self.device]


def fmt_mib(n: float) -> str:
    return f"{n / MIB:.0f} MiB"


def fmt_gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


# ------------------------------------------------------------------------------- prerequisites


def missing_dependencies() -> list[str]:
    """exq's dependencies (and torch, pynvml) that do not import here, each with the error."""
    missing = []
    for name in DEPENDENCIES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. torch without numpy
                importlib.import_module(name)
        except Exception as exc:  # an import can fail in many ways (ImportError, OSError of a library)
            missing.append(f"{name} ({type(exc).__name__}: {exc})")
    return missing


def nvml_snapshot() -> tuple[GpuSnapshot | None, str]:
    """exq's NVML probe's snapshot, or None and why there is none."""
    from exq.gpus.nvml import NvmlProbe, NvmlUnavailableError

    try:
        probe = NvmlProbe()
    except NvmlUnavailableError as exc:
        return None, f"NVML unavailable ({exc.reason}): no NVIDIA driver or GPU here"
    try:
        snapshot = probe.snapshot()
    finally:
        probe.close()
    if not snapshot.gpus:
        return None, "NVML works but shows no GPU" + (f" ({snapshot.message})" if snapshot.message else "")
    return snapshot, ""


def torch_devices(timeout: float) -> tuple[dict[str, Any] | None, str]:
    """What torch sees (bench/gpu_jobs/torch_info.py in a subprocess), or None and why it sees no GPU."""
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}  # every GPU, as NVML sees them
    try:
        proc = subprocess.run([sys.executable, str(JOBS / "torch_info.py")], env=env, capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None, f"torch did not report its devices within {timeout:g} s"
    if proc.returncode != 0:
        return None, f"torch_info.py exited {proc.returncode}: {proc.stderr.strip()[-500:]}"
    info: dict[str, Any] = json.loads(proc.stdout)
    if not info["available"]:
        build = f"CUDA {info['cuda']}" if info["cuda"] else "a CPU-only build"
        return None, f"torch.cuda.is_available() is false (torch {info['torch']}, {build})"
    return info, ""


# ------------------------------------------------------------------------- 1. probe vs torch


def _uuid(value: str | None) -> str | None:
    return value.strip().lower().removeprefix("gpu-") if value else None


def compare_gpu(check: Check, gpu: GpuInfo, dev: dict[str, Any]) -> None:
    """One GPU as NVML (exq's probe) and torch see it."""
    name_ok = gpu.name.strip() == str(dev["name"]).strip()
    diff = int(dev["total_memory"]) - gpu.memory_total
    rel = diff / gpu.memory_total
    nvml_uuid, torch_uuid = _uuid(gpu.uuid), _uuid(dev.get("uuid"))
    uuid_ok = torch_uuid is None or nvml_uuid == torch_uuid
    uuid = "torch gives none" if torch_uuid is None else ("equal" if uuid_ok else f"{gpu.uuid} vs {dev['uuid']}")
    check.expect(name_ok, f"GPU{gpu.index}: name NVML {gpu.name!r}, torch {dev['name']!r}")
    allowed = max(MEMORY_TOLERANCE * gpu.memory_total, MEMORY_TOLERANCE_FLOOR)
    check.expect(abs(diff) <= allowed,
                 f"GPU{gpu.index}: total memory NVML {fmt_mib(gpu.memory_total)}, torch {fmt_mib(dev['total_memory'])}"
                 f": torch - NVML = {diff / MIB:+.0f} MiB ({rel:+.2%}; up to ±{fmt_mib(allowed)} accepted: "
                 f"{MEMORY_TOLERANCE:.0%}, at least {fmt_mib(MEMORY_TOLERANCE_FLOOR)}, as CUDA leaves out memory "
                 "the driver reserves)")
    check.expect(uuid_ok, f"GPU{gpu.index}: UUID {uuid}")
    check.data["gpus"].append({"index": gpu.index, "nvml_name": gpu.name, "torch_name": dev["name"],
                               "nvml_total": gpu.memory_total, "torch_total": dev["total_memory"],
                               "diff_mib": round(diff / MIB, 1), "diff_fraction": rel,
                               "nvml_uuid": gpu.uuid, "torch_uuid": dev.get("uuid")})


def check_probe(check: Check, snapshot: GpuSnapshot, torch_info: dict[str, Any]) -> None:
    devices = torch_info["devices"]
    check.data.update(torch=torch_info["torch"], cuda=torch_info["cuda"],
                      driver=snapshot.extra.get("driver_version"), gpus=[])
    check.note(f"torch {torch_info['torch']} (CUDA {torch_info['cuda']}), NVIDIA driver "
               f"{snapshot.extra.get('driver_version')}, torch with CUDA_DEVICE_ORDER=PCI_BUS_ID")
    if snapshot.message:
        check.note(f"NVML probe: {snapshot.message}")
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        check.note(f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']} ignored: torch saw every GPU")
    check.expect(len(devices) == len(snapshot.gpus), f"GPU count: NVML {len(snapshot.gpus)}, torch {len(devices)}")
    for gpu, dev in zip(snapshot.gpus, devices, strict=False):
        compare_gpu(check, gpu, dev)


# ------------------------------------------------------------------------------ running exq


def literal(text: str) -> str:
    """`text` shell-quoted, with braces doubled so exq's cmd template keeps them."""
    return shlex.quote(text).replace("{", "{{").replace("}", "}}")


def job_cmd(script: str, *args: str) -> str:
    """A job's cmd template: this interpreter running bench/gpu_jobs/SCRIPT with ARGS (templates themselves)."""
    return " ".join([literal(sys.executable), literal(str(JOBS / script)), *args])


def write_manifest(path: Path, doc: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def stop_attempts(env: dict[str, str]) -> None:
    """SIGTERM, then SIGKILL after 10 s, the process groups of attempts still running (after a timeout)."""
    from _common import status_json

    state, _ = status_json(env, 60)
    groups = [a["pid"] for j in state["jobs"] if j["status"] in ("running", "unknown")
              for a in j["attempts"][-1:] if a.get("pid")]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        deadline = time.monotonic() + 10
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(_alive(g) for g in groups):
            time.sleep(0.1)


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def run_manifest(check: Check, manifest: Path, env: dict[str, str], timeout: float) -> dict[str, dict[str, Any]]:
    """`exq run MANIFEST` (at most `timeout` s), then its jobs by id from `exq status --json`."""
    from _common import run_exq, status_json

    check.state_dir = env["EXQ_STATE_DIR"]
    timed_out = False
    try:
        run_exq(["run", str(manifest)], env, timeout, capture=True, check=False, cwd=REPO)
    except subprocess.TimeoutExpired:
        timed_out = True
        stop_attempts(env)
    state, _ = status_json(env, 60)
    check.logs = [a["log"] for j in state["jobs"] for a in j["attempts"]]
    if timed_out:
        raise CheckFailedError(f"`exq run` did not end within {timeout:g} s (--timeout); its jobs were stopped")
    return {j["id"]: j for j in state["jobs"]}


# ------------------------------------------------------------------- 2. real OOM, scaled retry


def check_oom(check: Check, setup: Setup) -> None:
    """One job, batch 32 -> 16 -> 8: two real CUDA OOMs, each retried with the batch halved, then success."""
    per_sample = setup.largest_total // 16
    args = ["--batch-size {batch_size}", f"--per-sample-bytes {per_sample}", *setup.device_args()]
    if setup.device != "cuda":
        args.append(f"--max-bytes {setup.largest_total}")
    manifest = write_manifest(setup.root / "oom.yaml", {
        "name": "gpu-validate-oom", "workdir": str(setup.root), "env": {"PYTHONUNBUFFERED": "1"},
        "gpus": 1, "hosts": ["local"], "timeout": "5m",
        "retry": {"oom": {"max": 3, "backoff": "1s"}},
        "on_oom": {"scale": {"param": "batch_size", "factor": 0.5, "min": 1}},
        "params": {"batch_size": 32}, "id": "oom_job", "cmd": job_cmd("oom_job.py", *args),
    })
    check.note(f"per-sample bytes {fmt_mib(per_sample)} (largest GPU / 16): batch 32 = 2x, 16 = 1x, "
               "8 = 0.5x its memory")
    job = run_manifest(check, manifest, setup.env(setup.root / "state-oom"), setup.timeout)["oom_job"]
    attempts = job["attempts"]
    previous_end = None
    for a in attempts:
        batch = a["params"].get("batch_size")
        wait = f", launched {a['launched_at'] - previous_end:.1f} s after the previous end" if previous_end else ""
        check.note(f"attempt {a['number']} on GPU {a['gpus']}: batch_size {batch} -> {a['outcome']} in "
                   f"{_duration(a)}{wait}: {a['reason']}")
        if a["outcome"] == "oom":
            check.note(f"  its log: {_oom_line(a['log'])[:160]}")
        previous_end = a["ended_at"]
    outcomes = [a["outcome"] for a in attempts]
    batches = [a["params"].get("batch_size") for a in attempts]
    check.expect(outcomes == ["oom", "oom", "succeeded"], f"outcomes {outcomes} (expected oom, oom, succeeded)")
    check.expect(batches == [32, 16, 8], f"batch sizes {batches} (expected 32, 16, 8)")
    check.expect(job["status"] == "succeeded", f"job status {job['status']}" + _why(job))
    result = job.get("result") or {}
    peak = result.get("peak_allocated_bytes")
    if setup.device == "cuda":
        check.expect(isinstance(peak, int) and peak >= 8 * per_sample,
                     f"peak allocated at batch {result.get('batch_size')}: "
                     f"{fmt_gib(peak) if isinstance(peak, int) else peak} on {result.get('device')} "
                     f"(at least {fmt_gib(8 * per_sample)} expected)")
    check.data.update(per_sample_bytes=per_sample, result=result, attempts=[
        {k: a[k] for k in ("number", "gpus", "params", "outcome", "reason", "started_at", "ended_at", "exit_code")}
        for a in attempts])


def _duration(attempt: dict[str, Any]) -> str:
    if attempt.get("started_at") and attempt.get("ended_at"):
        return f"{attempt['ended_at'] - attempt['started_at']:.1f} s"
    return "?"


def _oom_line(log: str) -> str:
    """The line `exq.torch.oom_guard` wrote to the attempt's log (torch's own message follows its prefix)."""
    with contextlib.suppress(OSError):
        for line in Path(log).read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("exq: CUDA out of memory"):
                return line
    return "(no oom_guard line)"


def _why(job: dict[str, Any]) -> str:
    return f" ({job['reason']})" if job.get("reason") else ""


# --------------------------------------------------------- 3. settle before reuse vs real release


class Sampler:
    """Memory used on one GPU (`read`, e.g. from NVML) every `interval` s in a thread, for at most `limit` s."""

    def __init__(self, read: Callable[[], int], interval: float = 0.05, limit: float = 900.0) -> None:
        self.read, self.interval, self.limit = read, interval, limit
        self.samples: list[tuple[float, int]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self.samples.append((time.time(), self.read()))
            except Exception as exc:  # NVML errors come as many types; sampling just stops
                self.error = f"{type(exc).__name__}: {exc}"
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(5)

    def before(self, at: float) -> int | None:
        """The last sample taken at or before `at`."""
        return next((used for t, used in reversed(self.samples) if t <= at), None)

    def after(self, at: float) -> int | None:
        """The first sample taken at or after `at`."""
        return next((used for t, used in self.samples if t >= at), None)

    def peak(self, start: float, end: float) -> int | None:
        return max((used for t, used in self.samples if start <= t <= end), default=None)


def nvml_used(index: int) -> Callable[[], int]:
    """A reader of NVML's memory used of GPU `index`, in bytes."""
    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    return lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)


def check_settle(check: Check, setup: Setup, read_used: Callable[[], int]) -> None:
    """Jobs A and B, exclusive, on every GPU (so on the same one): B must wait for A's stale worker."""
    marks = setup.root / "marks"
    marks.mkdir()
    args = ["{role}", f"--gpu {setup.gpu}", f"--marks {literal(str(marks))}", f"--fraction {A_FRACTION}",
            f"--child-fraction {CHILD_FRACTION}", f"--hold {setup.hold:g}", *setup.device_args()]
    manifest = write_manifest(setup.root / "settle.yaml", {
        "name": "gpu-validate-settle", "workdir": str(setup.root), "env": {"PYTHONUNBUFFERED": "1"},
        # every GPU of this machine, exclusively: B can only start once A's GPUs (GPU `gpu` among them) are free
        "gpus": setup.gpu_count, "share": False, "hosts": ["local"], "timeout": "5m",
        "grid": {"role": ["hold", "probe"]}, "id": "settle_{role}", "cmd": job_cmd("settle_job.py", *args),
    })
    check.note(f"GPU {setup.gpu}: A holds {A_FRACTION:.0%}, its worker {CHILD_FRACTION:.0%} for {setup.hold:g} s "
               f"after A's main process exited; both jobs take all {setup.gpu_count} GPU(s) exclusively")
    with Sampler(read_used, limit=setup.timeout + 120) as sampler:
        jobs = run_manifest(check, manifest, setup.env(setup.root / "state-settle"), setup.timeout)
    child_file = marks / "child.json"
    child = json.loads(child_file.read_text(encoding="utf-8")) if child_file.exists() else None
    judge_settle(check, jobs["settle_hold"], jobs["settle_probe"], child, sampler)


def judge_settle(check: Check, a: dict[str, Any], b: dict[str, Any], child: dict[str, Any] | None,
                 sampler: Sampler) -> None:
    check.expect(a["status"] == b["status"] == "succeeded",
                 f"jobs: A {a['status']}{_why(a)}, B {b['status']}{_why(b)}")
    if child is None or not a["attempts"] or not b["attempts"]:
        check.expect(False, "A's worker wrote no child.json (it did not release its memory normally; see A's log)")
        return
    att_a, att_b, res_b = a["attempts"][-1], b["attempts"][-1], b.get("result") or {}
    a_end, release, held = att_a["ended_at"], child["released"], child["held_bytes"]
    sigterm = f"{child['sigterm'] - a_end:+.2f} s" if child.get("sigterm") else "never"
    check.note(f"A's main process exited (runner) at T; its worker got SIGTERM at T{sigterm}, released "
               f"{fmt_gib(held)} at T+{release - a_end:.2f} s")
    check.expect(att_b["launched_at"] >= release,
                 f"B launched {att_b['launched_at'] - release:+.2f} s after the worker released its memory "
                 f"(runner started B {att_b['started_at'] - release:+.2f} s, B's process "
                 f"{res_b.get('started', float('nan')) - release:+.2f} s after it)")
    if "free" in res_b:
        free, total = res_b["free"], res_b["total"]
        check.expect(total - free < held / 2,
                     f"B at start (cuda:{res_b.get('device_index')} of CUDA_VISIBLE_DEVICES={res_b.get('visible')}): "
                     f"free {fmt_gib(free)} of {fmt_gib(total)} ({free / total:.1%}); used {fmt_mib(total - free)} "
                     f"(less than half of what the worker held, {fmt_mib(held / 2)}, expected)")
    else:
        check.expect(False, "B wrote no mem_get_info figures")
    check.data.update(a_attempt=att_a, b_attempt=att_b, b_result=res_b, child=child)
    judge_timeline(check, sampler, att_a, att_b, child, res_b)


def judge_timeline(check: Check, sampler: Sampler, att_a: dict[str, Any], att_b: dict[str, Any],
                   child: dict[str, Any], res_b: dict[str, Any]) -> None:
    """NVML memory used of the GPU at each step; the worker's memory must show, then be gone when B launched."""
    if not sampler.samples:
        check.expect(False, f"no NVML samples ({sampler.error or 'none taken'})")
        return
    base, held, release = sampler.samples[0][1], child["held_bytes"], child["released"]
    points = {
        "baseline (before A)": base,
        "peak while A ran": sampler.peak(att_a["started_at"] or 0, att_a["ended_at"]),
        "0.5 s after A's main exited": sampler.after(att_a["ended_at"] + 0.5),
        "just before the worker released": sampler.before(child.get("releasing", release)),
        "0.5 s after it released": sampler.after(release + 0.5),
        "when B was launched": sampler.before(att_b["launched_at"]),
        "at B's mem_get_info": sampler.after(res_b.get("measured", att_b["launched_at"])),
    }
    check.note("NVML used: " + "; ".join(f"{k} {fmt_mib(v) if v is not None else '?'}" for k, v in points.items())
               + f" ({len(sampler.samples)} samples" + (f"; sampling stopped: {sampler.error}" if sampler.error else "")
               + ")")
    stale = points["just before the worker released"]
    check.expect(stale is not None and stale - base >= held / 2,
                 "the worker's memory showed in NVML after A's main process exited (the case under test happened)")
    at_b = points["when B was launched"]
    check.expect(at_b is not None and at_b - base < held / 2,
                 "NVML showed the worker's memory gone when B was launched")
    check.data["nvml_used"] = points


# ------------------------------------------------------------------------------------- report


def run_check(check: Check, body: Callable[[Check], None]) -> Check:
    """Run one check; an exception fails it with its message (the other checks still run)."""
    try:
        body(check)
    except Exception as exc:  # report every way a check can break, then go on
        check.expect(False, f"{type(exc).__name__}: {exc}")
    return check


def print_check(check: Check, keep: bool) -> None:
    print(f"{'PASS' if check.passed else 'FAIL'}  {check.name}: {check.title}")
    for line in check.lines:
        print(f"    {line}")
    if check.passed or check.state_dir is None:
        return
    print(f"    exq state dir: {check.state_dir}" + ("" if keep else " (removed on exit; --keep keeps it)"))
    for log in check.logs:
        with contextlib.suppress(OSError):
            tail = Path(log).read_text(encoding="utf-8", errors="replace").splitlines()[-6:]
            print(f"    --- {log}\n" + "\n".join(f"    | {line}" for line in tail))


def write_json(path: Path | None, report: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--gpu", type=int, default=0, help="NVML index of the GPU check 3 uses (default 0)")
    parser.add_argument("--hold", type=float, default=5.0,
                        help="seconds A's worker keeps its memory after A exits, below the runner's 10 s grace "
                             "(default 5)")
    parser.add_argument("--timeout", type=float, default=300.0, help="bound on each `exq run`, seconds (default 300)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON to PATH")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (state dirs, logs)")
    args = parser.parse_args()
    if not 0 < args.hold < 9:
        parser.error("--hold must be above 0 and below 9 s (the runner SIGKILLs leftovers after 10 s)")
    return args


def main() -> int:
    args = parse_args()
    missing = missing_dependencies()
    if missing:
        print("gpu_validate: missing dependencies (install exq with `pip install -e '.[torch]'` and "
              "nvidia-ml-py):\n  " + "\n  ".join(missing), file=sys.stderr)
        return 2
    snapshot, why = nvml_snapshot()
    torch_info = None
    if snapshot is not None:
        torch_info, why = torch_devices(min(args.timeout, 180))
    if snapshot is None or torch_info is None:
        print(f"gpu_validate: nothing validated: {why}")
        write_json(args.json, {"validated": False, "reason": why})
        return 3
    if not 0 <= args.gpu < len(snapshot.gpus):
        print(f"gpu_validate: --gpu {args.gpu}: NVML shows GPUs 0..{len(snapshot.gpus) - 1}", file=sys.stderr)
        return 2

    from _common import temp_workspace

    with temp_workspace(args.keep, prefix="exq-gpu-validate-") as root:
        setup = Setup(root, args.timeout, args.gpu, len(snapshot.gpus),
                      max(g.memory_total for g in snapshot.gpus), args.hold)
        checks = [
            run_check(Check("probe", "exq's NVML probe vs torch.cuda"),
                      lambda c: check_probe(c, snapshot, torch_info)),
            run_check(Check("oom", "real CUDA OOMs retried with a halved batch"), lambda c: check_oom(c, setup)),
            run_check(Check("settle", "a GPU is reused only after an ended job's stale worker released it"),
                      lambda c: check_settle(c, setup, nvml_used(args.gpu))),
        ]
        for check in checks:
            print_check(check, args.keep)
    passed = all(c.passed for c in checks)
    print(f"gpu_validate: {sum(c.passed for c in checks)}/{len(checks)} checks passed")
    write_json(args.json, {"validated": True, "passed": passed, "checks": [asdict(c) for c in checks]})
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
