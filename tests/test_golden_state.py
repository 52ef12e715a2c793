"""A state file written by exq state version 1 stays readable, and a daemon resumes from it."""

from __future__ import annotations

import shutil
from pathlib import Path

from exq.model.events import Reset
from exq.model.state import JobStatus
from exq.store.store import StatePaths, Store, read_state

GOLDEN = Path(__file__).parent / "data" / "queue_state_v1.json"


def test_version_1_state_file_reads_with_every_field(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "st").create()
    shutil.copy(GOLDEN, paths.snapshot)
    state = read_state(paths)
    assert state.version == 1 and state.seq == 16
    jobs = {job.id: job for job in state.jobs}
    train = jobs["train_s0"]
    assert train.status == JobStatus.SUCCEEDED and train.params["batch_size"] == 64
    assert [a.outcome for a in train.attempts] == ["oom", "succeeded"] and train.oom_retries == 1
    assert train.result == {"loss": 0.1} and train.spec.oom_scale is not None
    assert jobs["eval"].status == JobStatus.FAILED and jobs["eval"].deps == ["train_s0", "train_s1"]


def test_a_writer_continues_the_version_1_state(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "st").create()
    shutil.copy(GOLDEN, paths.snapshot)
    store = Store(paths).open()
    eval_job = next(j for j in store.state.jobs if j.id == "eval")
    store.commit([Reset(at=1.0, keys=[eval_job.key])])
    store.close()
    state = read_state(paths)
    assert state.seq == 17 and next(j for j in state.jobs if j.id == "eval").status == JobStatus.QUEUED
