"""What a manifest expands to: one frozen JobSpec per job, grouped in a SubmissionSpec.

The manifest module produces these; the state store persists them; the scheduler runs them.
Nothing here knows about YAML, workers or the scheduler.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

Scalar = str | int | float | bool
"""A parameter value: what a grid or params entry may hold."""


def may_run_here(hosts: list[str] | None) -> bool:
    """Whether a job restricted to `hosts` (None: any) may run on the daemon's own machine."""
    from exq.config import LOCAL  # the config's models and YAML parser: not for reading the state

    return hosts is None or LOCAL in hosts


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Resources(_Frozen):
    """What one attempt of a job needs."""

    gpus: int = Field(1, ge=0, description="GPUs per job; 0 runs the job without a GPU.")
    gpu_memory: int | None = Field(None, ge=0, description="Expected peak GPU memory per GPU, in bytes.")
    share: bool = Field(False, description="Allow other exq jobs on the same GPU while memory fits.")
    timeout: float | None = Field(None, gt=0, description="Seconds from start before the job is killed.")


class OomRetry(_Frozen):
    """Retries after a CUDA out-of-memory failure, with exponential backoff."""

    max: int = Field(3, ge=0)
    backoff: float = Field(10.0, ge=0, description="Seconds before the first OOM retry.")
    factor: float = Field(2.0, ge=1)
    max_backoff: float = Field(600.0, ge=0)

    def delay(self, retry_number: int) -> float:
        """Seconds to wait before OOM retry number `retry_number` (1-based)."""
        return float(min(self.max_backoff, self.backoff * self.factor ** max(0, retry_number - 1)))


class FailureRetry(_Frozen):
    """Retries after any other failure (exit code, signal, timeout, outputs missing)."""

    max: int = Field(0, ge=0)
    backoff: float = Field(0.0, ge=0)


class TransientRetry(_Frozen):
    """Retries after a failure whose log tail matches one of `match` (e.g. 'CUDA error: unknown error')."""

    match: list[str] = Field(default_factory=list,
                             description="Python regular expressions searched in the log tail (multiline).")
    max: int = Field(3, ge=0)
    backoff: float = Field(10.0, ge=0)


class RetryPolicy(_Frozen):
    oom: OomRetry = OomRetry()
    transient: TransientRetry = TransientRetry()
    failure: FailureRetry = FailureRetry()
    lost: FailureRetry = Field(FailureRetry(max=3), description="Retries after the job's host was lost.")


class OomScale(_Frozen):
    """On each OOM retry multiply numeric param `param` by `factor`, never below `min`."""

    param: str
    factor: float = Field(gt=0, lt=1)
    min: float = Field(1, ge=0)

    def next_value(self, current: int | float) -> int | float:
        """The scaled value for the next attempt; integers stay integers."""
        scaled = max(self.min, current * self.factor)
        return max(int(self.min), int(scaled)) if isinstance(current, int) else scaled


class SyncSpec(_Frozen):
    """Copy the workdir to an SSH host before the submission's first job there."""

    dest: str = Field(description="Where on the host (relative: from the login's home); jobs run there.")
    exclude: list[str] = Field(default_factory=list, description="Globs of paths not copied.")


class JobSpec(_Frozen):
    """One job of a submission, fully expanded from its manifest."""

    id: str
    phase: str
    cmd_template: str = Field(description="The phase's cmd template, rendered again when params change.")
    params: dict[str, Scalar] = Field(description="Grid values and fixed params of this job.")
    cmd: str = Field(description="cmd_template rendered with params, each value shell-quoted.")
    deps: list[str] = Field(default_factory=list, description="Ids of jobs of the same submission it waits for.")
    workdir: str
    env: dict[str, str] = Field(default_factory=dict)
    setup: str | None = Field(None, description="Shell prefix run before cmd, e.g. '. .venv/bin/activate'.")
    resources: Resources = Resources()
    retry: RetryPolicy = RetryPolicy()
    oom_scale: OomScale | None = None
    outputs: list[str] = Field(default_factory=list, description="Globs, relative to workdir, required after exit 0.")
    priority: int = 0
    hosts: list[str] | None = Field(None, description="Hosts the job may run on (default: any).")
    sync: SyncSpec | None = None
    devices: dict[str, list[int]] = Field(
        default_factory=dict, description="GPU indices the job may use on each named host; other hosts: any.")
    wait_for: list[str] = Field(
        default_factory=list, description="Globs, relative to workdir, each matching something before launch.")
    foreign_threshold: int | None = Field(
        None, gt=0, description="Foreign memory (bytes) at which a GPU counts as taken (default: the daemon's).")
    labels: list[str] = Field(default_factory=list, description="Labels to find the job by (its submission's too).")
    label_max_parallel: dict[str, int] = Field(
        default_factory=dict, description="Per label: it starts only while fewer jobs with that label run, in any "
                                          "submission (pueue's groups; `exq add --max-parallel N --label L`).")


class Hook(_Frozen):
    """A shell command the daemon runs on its own machine after jobs of a submission change status."""

    cmd: str = Field(description="Run with /bin/sh -c.")
    workdir: str = Field(description="Where it runs: the manifest's workdir.")
    env: dict[str, str] = Field(default_factory=dict, description="The manifest's top-level env.")


class SubmissionSpec(_Frozen):
    """A whole expanded manifest, ready to submit."""

    name: str
    source: str = Field(description="Absolute path of the manifest file.")
    phases: list[str]
    jobs: list[JobSpec]
    on_job_end: Hook | None = None
    max_parallel: int | None = Field(None, ge=1, description="At most this many of its jobs running at once.")
    phase_max_parallel: dict[str, int] = Field(
        default_factory=dict, description="Per phase name: at most this many of its jobs running at once.")
    labels: list[str] = Field(default_factory=list, description="Labels of the whole submission.")
