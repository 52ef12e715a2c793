"""kill -9 of the daemon at arbitrary instants loses nothing and runs nothing twice."""

from __future__ import annotations

import random
import signal
import time

from conftest import Exq


def test_kill9_daemon_repeatedly_every_job_runs_exactly_once(exq: Exq) -> None:
    marks = exq.root / "marks"
    marks.mkdir()
    manifest = exq.manifest(f"""
        name: crash
        gpus: 1
        retry: {{failure: {{max: 0}}}}
        grid: {{i: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}}
        id: "j{{i}}"
        cmd: echo "$EXQ_ATTEMPT" >> {marks}/j{{i}}; sleep 0.{{i}}
    """)
    rng = random.Random(1234)
    daemon = exq.start_daemon()
    exq("submit", str(manifest))
    deadline = time.monotonic() + 90
    kills = 0
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.05, 0.6))
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        kills += 1
        jobs = exq.jobs()
        if len(jobs) == 10 and all(j["status"] == "succeeded" for j in jobs.values()):
            break
        daemon = exq.start_daemon()
    else:
        raise AssertionError("jobs did not finish within 90s of repeated kills")
    assert kills >= 2
    for i in range(10):
        launches = (marks / f"j{i}").read_text().split()
        assert len(launches) == 1, f"j{i} ran {len(launches)} times"
    jobs = exq.jobs()
    assert all(j["status"] == "succeeded" for j in jobs.values())
    # every attempt that ran is accounted for: the one that succeeded ran the command
    for job in jobs.values():
        assert job["attempts"][-1]["outcome"] == "succeeded"
