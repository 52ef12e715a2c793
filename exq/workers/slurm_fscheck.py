"""The Slurm worker's check of whether a cluster's compute nodes see exq's root as the daemon's machine does.

exq writes each attempt's files under its root and a compute node's runner reads and writes them there, so
the root must be on a filesystem both share, at the same path. The check is a tiny job (no GPU, a minute's
time limit, no output file) that copies a random token exq wrote under the root to a file beside it: the
filesystem is shared once that copy holds the token. It never blocks: each `step` looks once. A check that
passed is remembered (the two files stay), so later daemons and `exq hosts` submit none; one still pending
is followed, not submitted again; a failed one is tried again by the next process that probes the host.
"""

from __future__ import annotations

import secrets
import shlex
from collections.abc import Callable
from pathlib import Path

from exq.errors import WorkerError
from exq.slurm.client import SlurmClient, slurm_outcome
from exq.workers.attempts import make_private_dirs, read_text, write_private

CHECK_NAME = "exq:fscheck"
RAN_STATES = frozenset({"COMPLETED", "FAILED"})
"""States of a check job whose script ran to its end."""
CHECK_TIME_LIMIT = 60
"""Seconds: the check job's time limit."""


class SharedFilesCheck:
    """The check for one root, started at the first `step`."""

    def __init__(self, client: SlurmClient, root: Path, submit: Callable[[str], str]) -> None:
        self.client = client
        self.root = root
        self.token_file = root / "fscheck.token"
        self.seen_file = root / "fscheck.seen"
        self.job_file = root / "fscheck.job"
        self.submit = submit
        """sbatch the check's script (a path) as a job without GPUs or output, CHECK_TIME_LIMIT long: its id."""
        self.job_id: str | None = None
        self.token = ""
        self.answer: tuple[bool | None, str] | None = None
        """(shared, what to say), once known: True, False, or None when the check could not run."""

    def step(self) -> tuple[bool | None, str]:
        """(shared, what to say): shared is None until the check job ended (the note says so)."""
        if self.answer is not None:
            return self.answer
        if self.job_id is None:
            earlier = read_text(str(self.token_file))
            if earlier and read_text(str(self.seen_file)) == earlier:  # an earlier check's job copied it
                self.answer = (True, "")
                return self.answer
            try:
                if not self._follow_earlier(earlier):
                    self._start()
            except (OSError, WorkerError) as exc:
                self.answer = (None, f"shared filesystem not checked: {exc}")
                return self.answer
            return None, f"checking that the nodes share {self.root} (job {self.job_id})"
        job = self.client.states([self.job_id]).get(self.job_id)
        phase = None if job is None else slurm_outcome(job).phase
        if phase in ("queued", "running", "requeued"):
            return None, f"checking that the nodes share {self.root} (job {self.job_id} {phase})"
        if read_text(str(self.seen_file)) == self.token:
            self.answer = (True, "")
        elif job is not None and job.state not in RAN_STATES:
            self.answer = (None, f"shared filesystem not checked: check job {self.job_id} ended {job.state}")
        elif job is not None:
            where = f"on {job.nodes}" if job.nodes else "on its node"
            self.answer = (False, f"the compute nodes do not share {self.root}: check job {self.job_id} ran {where} "
                                  f"({job.state}) but could not copy {self.token_file.name}; put exq's root on a "
                                  f"filesystem the login node and the nodes share, at the same path (hosts.NAME.root)")
        return self.answer or (None, f"checking that the nodes share {self.root} (job {self.job_id})")

    def _follow_earlier(self, token: str | None) -> bool:
        """Follow the check job another process started, if Slurm still holds it."""
        job_id = (read_text(str(self.job_file)) or "").strip()
        if not token or not job_id.isdigit():
            return False
        job = self.client.states([job_id]).get(job_id)
        if job is None or slurm_outcome(job).phase not in ("queued", "running"):
            return False
        self.job_id, self.token = job_id, token
        return True

    def _start(self) -> None:
        make_private_dirs(self.root)
        self.token = secrets.token_hex(16)
        self.seen_file.unlink(missing_ok=True)
        write_private(self.token_file, self.token)
        script = self.root / "fscheck.sh"
        write_private(script, f"#!/bin/sh\ncat {shlex.quote(str(self.token_file))} > "
                               f"{shlex.quote(str(self.seen_file))}\n")
        self.job_id = self.submit(str(script))
        write_private(self.job_file, self.job_id)
