"""One state file truncated, garbled or deleted between daemon runs; then `exq status`, `exq status --json`
and `exq daemon` run on it.

The base state is built once with the real CLI and daemon: submission alpha (finished), a bulk
submission (cancelled) whose journal passes the compaction size, so queue_state.json.old exists and
journal.jsonl starts after it, submission beta (finished after the compaction), a job `long` that
ended while its daemon was down (kill -9; its attempt's pid and exit files wait to be read),
submission gamma waiting in intake/ (acknowledged, not ingested) and a control request in control/;
the daemon was killed right after `exq cancel held0` was answered, so journal.jsonl holds that
acknowledged cancel while queue_state.json (rewritten at a bounded rate) does not yet.
Each case restores that state, damages one file (truncate to half, garble 8 bytes in the middle, or
delete) and records: did `status` and `status --json` show the same jobs as before the damage, did
the daemon start and end with every acknowledged job, or did all three refuse with exit 3 naming the
file; no traceback, no other exit code, `status` and the daemon agreeing; a submission made afterwards
gets a number no submission has.

    .venv/bin/python campaigns/corruption.py [--count 24] [--seed 1] [--json out.json]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from campaigns._harness import (
    FINISHED,
    Campaign,
    Daemon,
    Result,
    last_line,
    manifest_yaml,
    parser,
    read_json,
    run_main,
    table,
)

DAMAGES = ("truncate", "garble", "delete")
FILES = ("queue_state.json", "queue_state.json.old", "journal.jsonl", "intake/<pending>.json", "intake/.counter",
         "control/<request>.json", "jobs/.../pid", "jobs/.../exit")

MUST_ZERO = ["bad outcomes", "disagreements", "lost acknowledged jobs", "acknowledged changes lost", "reused numbers",
             "silent drops"]
OTHER = ["cases", "recovered", "refused cleanly", "set aside", "rollbacks said"]


@dataclass
class Base:
    """The pristine state (a copy to restore from) and what a reader saw in it."""

    copy: Path
    jobs: dict[str, str]
    """`SUB/ID` -> status, as `exq status --json` showed it."""
    pending: dict[str, list[str]]
    """Acknowledged, not yet ingested: submission number -> its job ids."""
    files: dict[str, Path]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], count=len(FILES) * len(DAMAGES), timeout=60)
    p.add_argument("--cases", default="", help="comma-separated substrings of 'FILE DAMAGE': only those cases, "
                                               "e.g. 'queue_state.json garble,journal'")
    args = p.parse_args(argv)
    return run_main("corruption", lambda: run(args))


def run(args: Any) -> int:
    with Campaign("corruption", args, MUST_ZERO, OTHER) as c:
        base = build_base(c)
        wanted = [w for w in args.cases.split(",") if w]
        cases = [(f, d) for f in FILES for d in DAMAGES if not wanted or any(w in f"{f} {d}" for w in wanted)]
        c.rng.shuffle(cases)
        rows = []
        for name, damage in cases[: args.count]:
            rows.append(run_case(c, base, name, damage))
            c.fig.add("cases")
        c.extra_tables.append(table(["file", "damage", "status", "status --json", "daemon", "after", "outcome"],
                                    sorted(rows)))
        c.scan_daemon_logs()
        return c.finish()


# ------------------------------------------------------------------------------------------ base state


def quick(c: Campaign, name: str, n: int, extra: dict[str, Any] | None = None) -> Path:
    path = c.root / f"{name}.yaml"
    phase = {"name": "p", "gpus": 0, "grid": {"i": list(range(n))}, "id": f"{name}{{i}}", "cmd": c.job_cmd(2)}
    path.write_text(manifest_yaml(name, [phase | (extra or {})], workdir=str(c.shared)))
    return path


def must(c: Campaign, result: Result) -> Result:
    if result.rc != 0:
        raise RuntimeError(f"building the base state: exq {' '.join(result.args)} exited {result.rc}: {result.err}")
    return result


def build_base(c: Campaign) -> Base:
    state = c.state_dir
    must(c, c.exq("submit", str(quick(c, "alpha", 3))))
    submit_bulk(c)
    daemon = c.start_daemon()
    if not c.wait_daemon_ready(daemon):
        raise RuntimeError(f"building the base state: the daemon did not start: {daemon.output()[-1000:]}")
    settle_alpha(c)
    must(c, c.exq("cancel", "--submission", "bulk"))
    must(c, c.exq("submit", str(quick(c, "beta", 2))))
    must(c, c.exq("submit", str(quick(c, "held", 1, {"gpus": 3}))))
    must(c, c.exq("submit", str(quick(c, "long", 1, {"cmd": f"sleep 8; {c.job_cmd(1)}"}))))
    wait(lambda: any(state.glob("jobs/*/long0/1/pid")), 30, "job long0 did not start")
    cancel_then_kill(c, daemon)  # long0 ends while no daemon runs: its exit file waits to be read
    wait(lambda: any(state.glob("jobs/*/long0/1/exit")), 30, "job long0 did not end")
    must(c, c.exq("submit", str(quick(c, "gamma", 2))))
    request = state / "control" / "00000000000000000001-campaign.json"
    request.write_text(json.dumps({"id": "00000000000000000001-campaign", "op": "resume", "targets": [],
                                   "scope": "job", "submission": None}))
    request.chmod(0o600)
    snapshot = must(c, c.exq("status", "--json"))
    seen = json.loads(snapshot.out)
    jobs = {f"{j['submission']}/{j['id']}": j["status"] for j in seen["jobs"]}
    pending = {}
    for path in (state / "intake").glob("[0-9]*.json"):
        item = json.loads(path.read_bytes())
        pending[item["id"]] = [job["id"] for job in item["spec"]["jobs"]]
    attempt = next(state.glob("jobs/*/long0/1"))
    files = {"queue_state.json": state / "queue_state.json", "queue_state.json.old": state / "queue_state.json.old",
             "journal.jsonl": state / "journal.jsonl", "intake/.counter": state / "intake" / ".counter",
             "intake/<pending>.json": next((state / "intake").glob("[0-9]*.json")),
             "control/<request>.json": request, "jobs/.../pid": attempt / "pid", "jobs/.../exit": attempt / "exit"}
    for name, path in files.items():
        if not path.exists():
            c.note(f"base state: {name} does not exist ({path}); its cases damage nothing")
    copy = c.root / "pristine"
    shutil.copytree(state, copy, symlinks=True)
    return Base(copy, jobs, pending, files)


def submit_bulk(c: Campaign) -> None:
    """A submission whose Submitted event passes the journal's compaction size (1 MiB): jobs that need
    more GPUs than exist (never placed; cancelled later), each with a long command. A few shapes are
    tried, in case exq limits the size of a command."""
    bulk = c.root / "bulk.yaml"
    for jobs, filler in ((80, 16000), (400, 3200), (1200, 1000)):
        bulk.write_text(manifest_yaml("bulk", [{"name": "p", "gpus": 3, "grid": {"i": list(range(jobs))},
                                                "id": "bulk{i}", "cmd": "true " + "x" * filler}],
                                      workdir=str(c.shared)))
        result = c.exq("submit", str(bulk))
        if result.rc == 0:
            return
        c.note(f"bulk submission of {jobs} jobs with {filler}-byte commands refused: {last_line(result.err)}")
    raise RuntimeError("building the base state: no bulk submission was accepted")


def cancel_then_kill(c: Campaign, daemon: Daemon) -> None:
    """`exq cancel held0`, then kill -9 the daemon at once, until the journal holds that acknowledged
    cancel while queue_state.json does not yet (as a running queue usually is: the snapshot is
    rewritten at a bounded rate). Tried a few times (the snapshot may catch up first)."""
    for attempt in range(6):
        must(c, c.exq("cancel", "held0"))
        daemon.kill9()
        if journal_ahead(c.state_dir):
            return
        if attempt == 5:
            break
        daemon = c.start_daemon()
        c.wait_daemon_ready(daemon)
        must(c, c.exq("retry", "held0"))
        time.sleep(c.rng.uniform(0.0, 0.3))
    c.note("base state: queue_state.json caught up with every kill; the journal holds no newer event")


def journal_ahead(state: Path) -> bool:
    """Whether journal.jsonl holds events newer than queue_state.json."""
    snapshot = read_json(state / "queue_state.json") or {}
    lines = (state / "journal.jsonl").read_bytes().splitlines()
    try:
        return bool(lines) and int(json.loads(lines[-1])["seq"]) > int(snapshot.get("seq", 0))
    except (ValueError, KeyError):
        return False


def settle_alpha(c: Campaign) -> None:
    def alpha_done() -> bool:
        data = read_json(c.state_dir / "queue_state.json") or {}
        alpha = [j for j in data.get("jobs") or [] if j["id"].startswith("alpha")]
        return len(alpha) == 3 and all(j["status"] in FINISHED for j in alpha)

    wait(alpha_done, 60, "alpha did not finish")


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"building the base state: {what} within {timeout:g}s")
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------ one case


def damage_file(path: Path, damage: str) -> None:
    if not path.exists():
        return
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        os.truncate(path, path.stat().st_size // 2)
    else:
        data = bytearray(path.read_bytes())
        mid = len(data) // 2
        data[mid: mid + 8] = b"\xff{[\x00}]\"\n"
        path.write_bytes(bytes(data))


def restore(c: Campaign, base: Base) -> None:
    shutil.rmtree(c.state_dir)
    shutil.copytree(base.copy, c.state_dir, symlinks=True)


def brief(result: Result | None) -> str:
    if result is None:
        return "-"
    if result.timed_out:
        return "hung"
    return f"exit {result.rc}" + (" TB" if "Traceback" in result.text else "")


def run_case(c: Campaign, base: Base, name: str, damage: str) -> tuple[str, str, str, str, str, str, str]:
    restore(c, base)
    target = c.state_dir / base.files[name].relative_to(c.root / "state")
    damage_file(target, damage)
    where = f"{name} {damage}"
    shown = c.exq("status", where=f"exq status ({where})")
    as_json = c.exq("status", "--json", where=f"exq status --json ({where})")
    daemon_result, daemon_log = run_daemon(c, where)
    after = c.status()
    outcome, bad = judge(c, base, name, target, damage, shown, as_json, daemon_result, daemon_log, after)
    if bad:
        c.fig.add("bad outcomes")
        c.note(f"{where}: {outcome}")
    return name, damage, brief(shown), brief(as_json), daemon_result, after_text(after), outcome


def run_daemon(c: Campaign, where: str) -> tuple[str, str]:
    """Start the daemon, let it ingest and settle (bounded), SIGTERM it; ('ran' | 'exit N' | 'hung', its log)."""
    daemon = c.start_daemon()
    ready = c.wait_daemon_ready(daemon, 20)
    if ready:
        settled_until = time.monotonic() + c.args.timeout
        while time.monotonic() < settled_until and daemon.alive():
            if not list((c.state_dir / "intake").glob("[0-9]*.json")) and settled(c.state_dir):
                break
            time.sleep(0.1)
        code = daemon.stop()
        outcome = "ran" if code == 0 else f"ran, exit {code}"
    elif daemon.alive():
        daemon.kill9()
        outcome = "hung"
    else:
        outcome = f"exit {daemon.proc.returncode}"
    log = daemon.output()
    if "Traceback" in log:
        outcome += " TB"
    return outcome, log


def settled(state: Path) -> bool:
    """Every job finished, except held0 (it needs 3 GPUs of 2), which may be queued again."""
    data = read_json(state / "queue_state.json")
    return data is not None and all(j["status"] in FINISHED or j["id"] == "held0" for j in data.get("jobs") or [])


def after_text(after: dict[str, Any] | None) -> str:
    if after is None:
        return "unreadable"
    counts: dict[str, int] = {}
    for job in after.get("jobs") or []:
        counts[job["status"]] = counts.get(job["status"], 0) + 1
    return f"{len(after.get('jobs') or [])} jobs, {counts.get('succeeded', 0)} ok"


def judge(c: Campaign, base: Base, name: str, target: Path, damage: str, shown: Result, as_json: Result,
          daemon: str, daemon_log: str, after: dict[str, Any] | None) -> tuple[str, bool]:
    """The case's outcome in words, and whether it breaks a promise."""
    if any("Traceback" in r.text for r in (shown, as_json)) or "TB" in daemon:
        return "traceback", True
    readers_ok = shown.rc == 0 and as_json.rc == 0
    readers_refused = shown.rc == 3 and as_json.rc == 3
    daemon_ok, daemon_refused = daemon == "ran", daemon == "exit 3"
    if readers_refused and daemon_refused:
        if all(target.name in text for text in (shown.err, as_json.err, daemon_log)):
            c.fig.add("refused cleanly")
            return "refused, exit 3 naming the file", False
        return "refused (exit 3) without naming the file", True
    if not (readers_ok or readers_refused) or not (daemon_ok or daemon_refused):
        return f"unexpected: status {brief(shown)}, --json {brief(as_json)}, daemon {daemon}", True
    if readers_ok != daemon_ok:
        c.fig.add("disagreements")
        why = last_line(shown.err if not readers_ok else daemon_log)
        return f"status and daemon disagree: {why}", True
    before = {k: v for k, v in base.jobs.items()}
    try:
        seen = {f"{j['submission']}/{j['id']}": j["status"] for j in json.loads(as_json.out)["jobs"]}
    except (ValueError, KeyError):
        return "status --json printed no state", True
    if seen != before:
        lost = sorted(set(before) - set(seen))
        changed = sorted(f"{k} {before[k]}->{seen[k]}" for k in before if k in seen and seen[k] != before[k])
        said = all("journal.jsonl" in text and "cut short" in text for text in (shown.err, as_json.err, daemon_log))
        if said and not lost:
            c.fig.add("rollbacks said")
            return "rolled back to the snapshot, and said so (the events were only in the journal)", False
        c.fig.add("acknowledged changes lost", len(lost) + len(changed))
        return f"rolled back silently: lost {lost[:3]}, changed {changed[:3]}", True
    return judge_after(c, base, name, target, damage, shown.text + daemon_log, after)


def judge_after(c: Campaign, base: Base, name: str, target: Path, damage: str, told: str,
                after: dict[str, Any] | None) -> tuple[str, bool]:
    if after is None:
        return "state unreadable after the daemon ran", True
    have = {f"{j['submission']}/{j['id']}" for j in after.get("jobs") or []}
    expected = set(base.jobs) | {f"{sub}/{job}" for sub, jobs in base.pending.items() for job in jobs}
    lost = expected - have
    pending_lost = {k for k in lost if k.split("/")[0] in base.pending}
    outcome = "recovered"
    if pending_lost and name == "intake/<pending>.json":
        if damage == "delete":
            outcome = "submission gone with its deleted file (nothing can tell)"
            lost -= pending_lost
        elif list(target.parent.glob(target.name + "*")) and target.name in told:
            outcome = "set aside as .bad, logged"
            c.fig.add("set aside")
            lost -= pending_lost
        else:
            c.fig.add("silent drops")
            return "the acknowledged submission was dropped without a word", True
    if lost:
        c.fig.add("lost acknowledged jobs", len(lost))
        return f"lost {len(lost)} acknowledged job(s): {sorted(lost)[:3]}", True
    unfinished = [j["id"] for j in after.get("jobs") or [] if j["status"] not in FINISHED and j["id"] != "held0"]
    if unfinished:
        return f"{len(unfinished)} job(s) did not finish: {unfinished[:3]}", True
    reused = check_next_number(c, after)
    if reused:
        c.fig.add("reused numbers")
        return reused, True
    if outcome == "recovered":
        c.fig.add("recovered")
    return outcome, False


def check_next_number(c: Campaign, after: dict[str, Any]) -> str | None:
    """Submit once more: the number printed must be new."""
    result = c.exq("submit", str(c.root / "alpha.yaml"))
    if result.rc != 0:
        return f"a later submit exited {result.rc}: {last_line(result.err)}"
    number = result.out.split("as submission ")[-1].split()[0] if "as submission " in result.out else "?"
    taken = {s["id"] for s in after.get("submissions") or []}
    return f"a later submit got number {number}, which submission {number} already has" if number in taken else None


if __name__ == "__main__":
    sys.exit(main())
