"""LocalWorker and runner.sh with real processes, files and signals; every wait is bounded."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import psutil
import pytest

from exq.daemon.classify import classify
from exq.gpus.simulated import SimulatedProbe
from exq.model.outcome import Outcome
from exq.workers.base import LOG_TAIL_BYTES, LaunchRequest, RunRecord
from exq.workers.local import LaunchRefused, LocalWorker, group_alive, read_record

T = TypeVar("T")
GRACE = 0.5


def run(make: Callable[[], Awaitable[T]], timeout: float = 20.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(make(), timeout)

    return asyncio.run(bounded())


@pytest.fixture
def worker(tmp_path: Path) -> LocalWorker:
    return LocalWorker(probe=SimulatedProbe("2x24GiB"), jobs_root=tmp_path / "jobs", cleanup_grace=GRACE)


def request(
    tmp_path: Path,
    cmd: str,
    *,
    workdir: Path | None = None,
    env: dict[str, str] | None = None,
    setup: str | None = None,
) -> LaunchRequest:
    """A request for attempt dir tmp_path/attempts/a1, running in `workdir` (default tmp_path)."""
    workdir = workdir or tmp_path
    workdir.mkdir(parents=True, exist_ok=True)
    return LaunchRequest(str(tmp_path / "attempts" / "a1"), cmd, str(workdir), env or {}, setup)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def launch_and_wait(worker: LocalWorker, req: LaunchRequest) -> RunRecord:
    await worker.launch(req)
    return await worker.wait(req.attempt_dir)


def test_launch_wait_exit_code_and_log(worker: LocalWorker, tmp_path: Path) -> None:
    req = request(tmp_path, "echo hello; echo oops >&2; exit 3")
    started = time.time()

    async def go() -> tuple[RunRecord, RunRecord]:
        launched = await worker.launch(req)
        return launched, await worker.wait(req.attempt_dir)

    launched, record = run(go)
    assert launched.claimed and not launched.tombstoned and launched.pgid is not None
    assert launched.runner_pid is not None and launched.started_at is not None
    assert record.exit_code == 3 and record.ended and not record.alive and record.signal is None
    assert record.pgid == launched.pgid and record.runner_pid == launched.runner_pid
    assert started - 1 <= record.started_at <= record.ended_at <= time.time()  # type: ignore[operator]
    d = Path(req.attempt_dir)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700 and stat.S_IMODE(d.parent.stat().st_mode) == 0o700
    assert (d / "log").read_text() == "hello\noops\n"
    assert (d / "claim").read_text() == f"runner {record.runner_pid}\n"
    runner_pid, pgid, start = (d / "pid").read_text().split()
    assert (int(runner_pid), int(pgid), float(start)) == (record.runner_pid, record.pgid, record.started_at)
    code, end = (d / "exit").read_text().split()
    assert (int(code), float(end)) == (3, record.ended_at)
    assert not list(d.glob("*.tmp"))
    report = run(lambda: worker.report(req.attempt_dir, req.workdir, "result.json", []))
    assert "hello" in report.log_tail and report.result is None and report.result_error is None
    assert classify(report) == (Outcome.FAILED, "exit code 3: oops")


def test_env_passed_and_runner_vars_hidden(worker: LocalWorker, tmp_path: Path) -> None:
    cmd = 'echo "$FOO|$EXQ_JOB_ID"; env | grep -c "^EXQ_RUNNER_" || true'
    req = request(tmp_path, cmd, env={"FOO": "bar baz", "EXQ_JOB_ID": "j1"})
    record = run(lambda: launch_and_wait(worker, req))
    assert record.exit_code == 0
    assert (Path(req.attempt_dir) / "log").read_text() == "bar baz|j1\n0\n"


def test_job_group_is_its_own_session(worker: LocalWorker, tmp_path: Path, pgids: list[int]) -> None:
    req = request(tmp_path, "echo $$ > me.txt; exec sleep 30")

    async def go() -> RunRecord:
        launched = await worker.launch(req)
        assert launched.pgid is not None
        pgids.append(launched.pgid)
        me = tmp_path / "me.txt"
        while not me.exists() or not me.read_text().strip():
            await asyncio.sleep(0.01)
        job_pid = int(me.read_text())
        assert job_pid == launched.pgid  # $! of the runner is the job's pid, pgid and sid
        assert os.getpgid(job_pid) == job_pid and os.getsid(job_pid) == job_pid
        assert launched.runner_pid is not None and os.getsid(launched.runner_pid) == launched.runner_pid
        assert await worker.group_alive(launched.pgid)
        await worker.kill(req.attempt_dir, grace=GRACE)
        return await worker.wait(req.attempt_dir)

    record = run(go)
    assert record.exit_code == 128 + signal.SIGTERM and record.signal == signal.SIGTERM
    assert record.pgid is not None and not group_alive(record.pgid)


def test_job_signals_at_default(worker: LocalWorker, tmp_path: Path) -> None:
    """No signal is ignored in the job (Python ignores SIGPIPE, sh SIGINT/SIGQUIT in background jobs)."""
    req = request(tmp_path, "grep SigIgn /proc/$$/status")
    assert run(lambda: launch_and_wait(worker, req)).exit_code == 0
    ignored = int((Path(req.attempt_dir) / "log").read_text().split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1))
    if subprocess.run(["env", "--default-signal", "true"], capture_output=True).returncode == 0:
        assert ignored == 0


def test_setup_runs_in_workdir_before_cmd(worker: LocalWorker, tmp_path: Path) -> None:
    (tmp_path / "env.sh").write_text("export FROM_FILE=sourced\n")
    req = request(tmp_path, 'echo "$GREETING $FROM_FILE"', setup="export GREETING=hi && source ./env.sh")
    assert run(lambda: launch_and_wait(worker, req)).exit_code == 0
    assert (Path(req.attempt_dir) / "log").read_text() == "hi sourced\n"


def test_setup_failure_fails_the_job(worker: LocalWorker, tmp_path: Path) -> None:
    req = request(tmp_path, "touch ran", setup="echo setting up; exit 4")
    record = run(lambda: launch_and_wait(worker, req))
    assert record.exit_code == 4
    assert not (tmp_path / "ran").exists()
    assert (Path(req.attempt_dir) / "log").read_text() == "setting up\n"


def test_missing_workdir_is_refused_before_the_runner_starts(worker: LocalWorker, tmp_path: Path) -> None:
    req = LaunchRequest(str(tmp_path / "att"), "touch ran", str(tmp_path / "nope"), {})
    why = f"workdir {tmp_path / 'nope'} does not exist on local"
    with pytest.raises(LaunchRefused, match=f"^{re.escape(why)}$"):
        run(lambda: worker.launch(req))
    assert not (tmp_path / "att").exists()


def test_missing_paths_are_the_globs_matching_nothing(worker: LocalWorker, tmp_path: Path) -> None:
    (tmp_path / "ckpt" / "deep").mkdir(parents=True)
    (tmp_path / "ckpt" / "deep" / "a.pt").touch()
    globs = ["ckpt/**/*.pt", "ckpt/*.pt", "none", "ckpt"]
    assert run(lambda: worker.missing_paths(str(tmp_path), globs)) == ["ckpt/*.pt", "none"]
    assert run(lambda: worker.missing_paths(str(tmp_path / "gone"), ["*"])) == ["*"]


def test_workdir_with_spaces_and_quotes(worker: LocalWorker, tmp_path: Path) -> None:
    odd = tmp_path / "it's a \"dir\" with $HOME and `x`"
    req = request(tmp_path / "x y", "pwd > out.txt; echo \"it's\" > 'q.txt'", workdir=odd)
    assert run(lambda: launch_and_wait(worker, req)).exit_code == 0
    assert (odd / "out.txt").read_text().strip() == str(odd)
    assert (odd / "q.txt").read_text() == "it's\n"


def test_leftover_child_is_cleaned_up(worker: LocalWorker, tmp_path: Path, pgids: list[int]) -> None:
    req = request(tmp_path, "sleep 300 & echo $! > child.pid; trap '' TERM; exit 0")
    started = time.monotonic()
    record = run(lambda: launch_and_wait(worker, req))
    assert record.exit_code == 0 and record.pgid is not None
    pgids.append(record.pgid)
    assert gone(int((tmp_path / "child.pid").read_text()))
    assert not group_alive(record.pgid)
    assert time.monotonic() - started < 5


def test_leftover_ignoring_term_is_killed(worker: LocalWorker, tmp_path: Path, pgids: list[int]) -> None:
    # child.pid is written after the trap is set: exit only then, however loaded the machine is
    req = request(tmp_path, "(trap '' TERM; echo $$ > child.pid; exec sleep 300) & "
                            "i=0; while [ ! -s child.pid ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; exit 0")
    started = time.monotonic()
    record = run(lambda: launch_and_wait(worker, req))
    assert record.pgid is not None
    pgids.append(record.pgid)
    assert record.exit_code == 0
    assert time.monotonic() - started >= GRACE
    assert not group_alive(record.pgid)


def test_kill_running_job(worker: LocalWorker, tmp_path: Path, pgids: list[int]) -> None:
    req = request(tmp_path, "sleep 30")

    async def go() -> RunRecord:
        launched = await worker.launch(req)
        assert launched.pgid is not None
        pgids.append(launched.pgid)
        assert (await worker.read(req.attempt_dir)).alive
        await worker.kill(req.attempt_dir, grace=5)
        return await worker.wait(req.attempt_dir)

    started = time.monotonic()
    record = run(go)
    assert record.exit_code == 143 and time.monotonic() - started < 3
    run(lambda: worker.kill(req.attempt_dir))  # already gone: no error


def test_kill_job_ignoring_sigterm(worker: LocalWorker, tmp_path: Path, pgids: list[int]) -> None:
    req = request(tmp_path, "trap '' TERM; echo ready; sleep 30")

    async def go() -> RunRecord:
        launched = await worker.launch(req)
        assert launched.pgid is not None
        pgids.append(launched.pgid)
        log = Path(req.attempt_dir) / "log"
        while "ready" not in log.read_text():
            await asyncio.sleep(0.01)
        await worker.kill(req.attempt_dir, grace=GRACE)
        return await worker.wait(req.attempt_dir)

    started = time.monotonic()
    record = run(go)
    assert record.exit_code == 128 + signal.SIGKILL
    assert GRACE <= time.monotonic() - started < 5
    assert classify(run(lambda: worker.report(req.attempt_dir, req.workdir, "r.json", []))) == (
        Outcome.KILLED, "killed by SIGKILL")


def test_tombstone_prevents_running(worker: LocalWorker, tmp_path: Path) -> None:
    req = request(tmp_path, "touch marker")

    async def go() -> RunRecord:
        assert await worker.tombstone(req.attempt_dir)
        assert not await worker.tombstone(req.attempt_dir)
        launched = await worker.launch(req)
        assert launched.tombstoned
        return await worker.wait(req.attempt_dir)

    record = run(go)
    time.sleep(0.2)
    assert record.claimed and record.tombstoned and not record.alive and record.exit_code is None
    assert not (tmp_path / "marker").exists()
    assert (Path(req.attempt_dir) / "claim").read_text().strip() == "tombstone"
    assert not (Path(req.attempt_dir) / "pid").exists()


def test_tombstone_after_claim_fails(worker: LocalWorker, tmp_path: Path) -> None:
    req = request(tmp_path, "true")
    run(lambda: launch_and_wait(worker, req))
    assert not run(lambda: worker.tombstone(req.attempt_dir))
    assert not read_record(req.attempt_dir).tombstoned


def test_unclaimed_attempt(worker: LocalWorker, tmp_path: Path) -> None:
    assert read_record(tmp_path / "never") == RunRecord()
    assert run(lambda: worker.wait(str(tmp_path / "never"))) == RunRecord()
    run(lambda: worker.kill(str(tmp_path / "never")))


def test_reattach_with_a_new_worker(worker: LocalWorker, tmp_path: Path) -> None:
    req = request(tmp_path, "sleep 0.5; exit 5")

    async def go() -> tuple[RunRecord, RunRecord]:
        await worker.launch(req)
        other = LocalWorker(probe=SimulatedProbe("1x1GiB"), jobs_root=tmp_path / "jobs")
        during = await other.read(req.attempt_dir)
        return during, await other.wait(req.attempt_dir)

    during, record = run(go)
    assert during.alive and not during.ended
    assert record.exit_code == 5 and not record.alive


def test_runner_sigkilled_is_lost(worker: LocalWorker, tmp_path: Path, pgids: list[int]) -> None:
    req = request(tmp_path, "sleep 30")

    async def go() -> RunRecord:
        launched = await worker.launch(req)
        assert launched.pgid is not None and launched.runner_pid is not None
        pgids.append(launched.pgid)
        os.kill(launched.runner_pid, signal.SIGKILL)
        return await worker.wait(req.attempt_dir)

    record = run(go)
    assert not record.alive and not record.ended and record.exit_code is None
    assert record.pgid is not None and group_alive(record.pgid)  # the job itself still runs
    report = run(lambda: worker.report(req.attempt_dir, req.workdir, "r.json", []))
    assert classify(report)[0] is Outcome.LOST
    run(lambda: worker.kill(req.attempt_dir, grace=GRACE))
    assert not group_alive(record.pgid)


def test_runner_ignores_hup_int_forwards_term(worker: LocalWorker, tmp_path: Path, pgids: list[int]) -> None:
    req = request(tmp_path, "trap 'echo got TERM; exit 7' TERM; echo ready; sleep 30 & wait")

    async def go() -> RunRecord:
        launched = await worker.launch(req)
        assert launched.pgid is not None and launched.runner_pid is not None
        pgids.append(launched.pgid)
        log = Path(req.attempt_dir) / "log"
        while "ready" not in log.read_text():
            await asyncio.sleep(0.01)
        os.kill(launched.runner_pid, signal.SIGHUP)
        os.kill(launched.runner_pid, signal.SIGINT)
        await asyncio.sleep(0.2)
        assert (await worker.read(req.attempt_dir)).alive and group_alive(launched.pgid)
        os.kill(launched.runner_pid, signal.SIGTERM)
        return await worker.wait(req.attempt_dir)

    record = run(go)
    assert record.exit_code == 7
    assert "got TERM" in (Path(req.attempt_dir) / "log").read_text()
    assert record.pgid is not None and not group_alive(record.pgid)


def test_runner_survives_its_parent(tmp_path: Path, pgids: list[int]) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from exq.gpus.simulated import SimulatedProbe
        from exq.workers.base import LaunchRequest
        from exq.workers.local import LocalWorker

        async def main():
            worker = LocalWorker(probe=SimulatedProbe("1x1GiB"), jobs_root={str(tmp_path)!r}, cleanup_grace=0.5)
            cmd = "sleep 1; echo done > marker; exit 4"
            req = LaunchRequest({str(tmp_path / "att")!r}, cmd, {str(tmp_path)!r}, {{}})
            record = await worker.launch(req)
            print(record.pgid, flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as parent:
        try:
            assert parent.stdout is not None
            pgids.append(int(parent.stdout.readline()))
        finally:
            parent.kill()  # SIGKILL: the daemon dies without any cleanup
            parent.wait(timeout=5)
    assert not (tmp_path / "marker").exists()
    reattached = LocalWorker(probe=SimulatedProbe("1x1GiB"), jobs_root=tmp_path / "jobs")
    record = run(lambda: reattached.wait(str(tmp_path / "att")))
    assert record.exit_code == 4 and not record.alive
    assert (tmp_path / "marker").read_text() == "done\n"


def test_report_result_and_outputs(worker: LocalWorker, tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "a.pt").write_text("x")
    req = request(tmp_path, "true")
    run(lambda: launch_and_wait(worker, req))

    def report(result: str | None, outputs: list[str]) -> tuple[object, str | None, list[str]]:
        path = tmp_path / "result.json"
        path.unlink(missing_ok=True)
        if result is not None:
            path.write_text(result)
        r = run(lambda: worker.report(req.attempt_dir, req.workdir, "result.json", outputs))
        return r.result, r.result_error, r.missing_outputs

    assert report(json.dumps({"loss": 0.5}), ["ckpt/*.pt", "ckpt/*.bin", "logs/**/x"]) == (
        {"loss": 0.5}, None, ["ckpt/*.bin", "logs/**/x"])
    assert report(None, []) == (None, None, [])
    result, error, _ = report("{broken", [])
    assert result is None and error is not None and "invalid JSON" in error
    result, error, _ = report("[1, 2]", [])
    assert result is None and error is not None and "JSON object" in error
    r = run(lambda: worker.report(req.attempt_dir, req.workdir, str(tmp_path / "abs.json"), ["ckpt/a.pt"]))
    assert r.result is None and r.missing_outputs == []


def test_log_tail_is_bounded(worker: LocalWorker, tmp_path: Path) -> None:
    req = request(tmp_path, "seq 0 39999 | sed 's/^/line /'")  # 429 KiB
    run(lambda: launch_and_wait(worker, req))
    tail = run(lambda: worker.report(req.attempt_dir, req.workdir, "r.json", [])).log_tail
    assert len(tail.encode()) == LOG_TAIL_BYTES and tail.endswith("line 39999\n") and "line 9999\n" not in tail


def test_probe_and_close(worker: LocalWorker) -> None:
    async def go() -> int:
        snap = await worker.probe()
        await worker.close()
        return len(snap.gpus)

    assert run(go) == 2


def test_wait_without_pidfd(worker: LocalWorker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "pidfd_open", raising=False)
    req = request(tmp_path, "sleep 0.2; exit 2")
    assert run(lambda: launch_and_wait(worker, req)).exit_code == 2


def test_runner_script_is_posix(tmp_path: Path) -> None:
    runner = Path(__file__).parent.parent / "exq" / "workers" / "runner.sh"
    from exq.workers.local import RUNNER_PATH

    assert RUNNER_PATH.resolve() == runner.resolve()
    for shell in ("dash", "sh"):
        if subprocess.run(["sh", "-c", f"command -v {shell}"], capture_output=True).returncode == 0:
            subprocess.run([shell, "-n", str(runner)], check=True, timeout=10)
