"""Other users and loose modes: a state dir (or a file or parent of it) another user owns or can write,
intake and control files planted by another user, and the modes exq creates under umask 000 and 022.

Needs root (chown to a second local user, `exqother`, created with useradd when missing). Each unsafe
state dir must be refused with exit 3 by `status`, `status --json`, `submit`, `daemon`, `cancel --all`
and `pause`, never a traceback; a planted intake or control file must never take effect (its job
never runs; its cancel cancels nothing) while the owner's own work goes on; every file exq creates in
the state dir is 0600 and every directory 0700, whatever the umask.

    sudo .venv/bin/python campaigns/permissions.py [--count 14] [--seed 1] [--json out.json]
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from campaigns._harness import Campaign, last_line, manifest_yaml, needs_root, parser, read_json, run_main, table

COMMANDS: list[list[str]] = [["status"], ["status", "--json"], ["submit", "{manifest}"], ["daemon"],
                             ["cancel", "--all"], ["pause"]]
MUST_ZERO = ["unsafe accepted", "other exits", "planted ran", "own work lost", "wrong modes"]
OTHER = ["cases", "refusals", "files checked", "dirs checked"]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], count=len(unsafe_cases()) + 5, timeout=60)
    p.add_argument("--cases", default="", help="comma-separated substrings: only the cases whose name has one")
    args = p.parse_args(argv)
    if (code := needs_root("permissions")) is not None:
        return code
    return run_main("permissions", lambda: run(args))


def other() -> pwd.struct_passwd:
    from faults import other_user  # tests/faults.py: exqother (useradd when missing)

    return other_user()


def chown_other(path: Path) -> None:
    user = other()
    os.lchown(path, user.pw_uid, user.pw_gid)


def unsafe_cases() -> list[tuple[str, Callable[[Path], Path]]]:
    """(what, make it so: state dir -> the state dir to use)."""

    def owned(rel: str) -> Callable[[Path], Path]:
        def apply(st: Path) -> Path:
            chown_other(st / rel if rel else st)
            return st
        return apply

    def mode(rel: str, bits: int) -> Callable[[Path], Path]:
        def apply(st: Path) -> Path:
            (st / rel if rel else st).chmod(bits)
            return st
        return apply

    def parent_owned(st: Path) -> Path:
        parent = st.parent / "theirs"
        parent.mkdir()
        st.rename(parent / "state")
        chown_other(parent)
        return parent / "state"

    def parent_writable(st: Path) -> Path:
        parent = st.parent / "open"
        parent.mkdir()
        parent.chmod(0o777)  # no sticky bit: anyone may rename the state dir away
        st.rename(parent / "state")
        return parent / "state"

    def lock_symlink(st: Path) -> Path:
        (st / "daemon.lock").unlink(missing_ok=True)
        (st / "daemon.lock").symlink_to(st.parent / "elsewhere.lock")
        return st

    return [
        ("state dir owned by another user", owned("")),
        ("state dir mode 0777", mode("", 0o777)),
        ("state dir mode 0770 (group-writable)", mode("", 0o770)),
        ("intake/ mode 0770", mode("intake", 0o770)),
        ("control/ mode 0703", mode("control", 0o703)),
        ("jobs/ owned by another user", owned("jobs")),
        ("journal.jsonl owned by another user", owned("journal.jsonl")),
        ("queue_state.json mode 0666", mode("queue_state.json", 0o666)),
        ("intake/.counter owned by another user", owned("intake/.counter")),
        ("daemon.lock a symlink", lock_symlink),
        ("parent dir owned by another user", parent_owned),
        ("parent dir 0777 without sticky bit", parent_writable),
    ]


def run(args: Any) -> int:
    with Campaign("permissions", args, MUST_ZERO, OTHER) as c:
        rows: list[tuple[str, str]] = []
        manifest = c.root / "ok.yaml"
        manifest.write_text(manifest_yaml("ok", [{"name": "p", "gpus": 0, "id": "ok", "cmd": c.job_cmd(2)}],
                                          workdir=str(c.shared)))
        pristine = build_pristine(c, manifest)
        cases: list[tuple[str, Callable[[], str]]] = [
            (what, lambda what=what, apply=apply: refused_case(c, pristine, manifest, what, apply))
            for what, apply in unsafe_cases()]
        cases += [("intake file planted by another user", lambda: planted_case(c, manifest, "intake")),
                  ("control file planted by another user (cancel --all)", lambda: planted_case(c, manifest, "control")),
                  ("intake file that is a symlink", lambda: planted_case(c, manifest, "symlink")),
                  ("modes under umask 000", lambda: modes_case(c, manifest, 0o000)),
                  ("modes under umask 022", lambda: modes_case(c, manifest, 0o022))]
        wanted = [w for w in args.cases.split(",") if w]
        cases = [(what, case) for what, case in cases if not wanted or any(w in what for w in wanted)]
        for what, case in cases[: args.count]:
            c.fig.add("cases")
            rows.append((what, case()))
        c.extra_tables.append(table(["case", "outcome"], rows))
        c.scan_daemon_logs()
        return c.finish()


def build_pristine(c: Campaign, manifest: Path) -> Path:
    """A used state dir (snapshot, journal, intake counter, an attempt), kept as a copy."""
    result = c.exq("run", str(manifest), timeout=c.args.timeout)
    if result.rc != 0:
        raise RuntimeError(f"exq run exited {result.rc}: {result.err}")
    pristine = c.root / "pristine"
    shutil.copytree(c.state_dir, pristine, symlinks=True)
    return pristine


def fresh(c: Campaign, name: str, pristine: Path | None = None) -> Path:
    base = c.root / "cases" / name
    base.mkdir(parents=True)
    state = base / "state"
    if pristine is not None:
        shutil.copytree(pristine, state, symlinks=True)
    c.use_state(state)
    return state


def refused_case(c: Campaign, pristine: Path, manifest: Path, what: str, apply: Callable[[Path], Path]) -> str:
    state = apply(fresh(c, f"r{int(c.fig['cases'])}", pristine))
    env = c.use_state(state)
    outcomes = []
    for command in COMMANDS:
        args = [a.replace("{manifest}", str(manifest)) for a in command]
        result = c.exq(*args, env=env, timeout=8)
        name = " ".join(command[:2]).replace(" {manifest}", "")
        if result.rc == 3:
            c.fig.add("refusals")
            continue
        if result.rc == 0 or result.timed_out:
            c.fig.add("unsafe accepted")
            outcomes.append(f"{name}: {'ran' if result.timed_out else 'exit 0'}")
            c.note(f"{what}: exq {name} accepted it ({'still running after 8s' if result.timed_out else 'exit 0'})")
        else:
            c.fig.add("other exits")
            outcomes.append(f"{name}: exit {result.rc}")
            c.note(f"{what}: exq {name} exited {result.rc}: {last_line(result.err)}")
    return "refused by all (exit 3)" if not outcomes else "ACCEPTED/ODD: " + "; ".join(outcomes)


def planted_case(c: Campaign, manifest: Path, kind: str) -> str:
    """A daemon runs; another user's file appears in intake/ or control/; the owner's work goes on."""
    state = fresh(c, f"p{int(c.fig['cases'])}")
    env = c.env
    marker = c.shared / f"PLANTED-{kind}"
    victim = c.root / f"victim-{kind}.yaml"
    victim.write_text(manifest_yaml(f"victim-{kind}", [{"name": "p", "gpus": 0, "id": "victim",
                                                        "cmd": f"sleep 2; {c.job_cmd(1)}"}], workdir=str(c.shared)))
    if c.exq("submit", str(victim), env=env).rc != 0:
        return "could not submit"
    daemon = c.start_daemon(env=env)
    c.wait_daemon_ready(daemon, 20)
    if kind == "control":
        body = {"id": "00000000000000000001-planted", "op": "cancel", "targets": [], "scope": "all",
                "submission": None}
        name = "00000000000000000001-planted.json"
        target = state / "control" / name
    else:
        body = planted_intake(c, marker)
        name = "000000077.json"
        target = state / "intake" / name
    staged = c.root / f"staged-{kind}.json"
    staged.write_text(json.dumps(body))
    if kind == "symlink":
        target.symlink_to(staged)
    else:
        chown_other(staged)
        os.rename(staged, target)
    c.exq("submit", str(manifest), env=env)
    ok = c.wait_settled(2, c.args.timeout)
    time.sleep(1.0)
    daemon.stop()
    state_now = read_json(state / "queue_state.json") or {}
    jobs = {j["id"]: j["status"] for j in state_now.get("jobs") or []}
    ran = marker.exists() or any(j.startswith("planted") for j in jobs) or (
        kind == "control" and jobs.get("victim") == "cancelled")
    if ran:
        c.fig.add("planted ran")
    own_ok = ok and jobs.get("victim") == "succeeded" and jobs.get("ok") == "succeeded"
    if not own_ok:
        c.fig.add("own work lost")
        c.note(f"planted {kind}: the owner's jobs ended {jobs}")
    leftovers = sorted(p.name for p in target.parent.iterdir() if p.name.startswith(name.split(".")[0]))
    return (f"{'RAN' if ran else 'never ran'}; own jobs {'ok' if own_ok else 'NOT ok: ' + str(jobs)}; "
            f"left as {leftovers or 'nothing'}")


def planted_intake(c: Campaign, marker: Path) -> dict[str, Any]:
    """An intake file as `exq submit` writes it, whose job would create `marker`: taken from a real one."""
    scratch = c.root / "scratch-state"
    env = dict(c.env, EXQ_STATE_DIR=str(scratch))
    path = c.root / "planted.yaml"
    path.write_text(manifest_yaml("planted", [{"name": "p", "gpus": 0, "id": "planted", "cmd": f"touch {marker}"}],
                                  workdir=str(c.shared)))
    c.exq("submit", str(path), env=env)
    found = sorted((scratch / "intake").glob("[0-9]*.json"))
    body: dict[str, Any] = json.loads(found[0].read_bytes())
    body["id"] = "77"
    body["key"] = "planted-by-another-user"
    shutil.rmtree(scratch, ignore_errors=True)
    return body


def modes_case(c: Campaign, manifest: Path, umask: int) -> str:
    state = fresh(c, f"u{umask:03o}")
    env = c.env
    c.exq("submit", str(manifest), env=env, umask=umask)
    daemon = c.start_daemon(env=env, umask=umask)
    c.wait_settled(1, c.args.timeout)
    c.exq("pause", env=env, umask=umask)
    c.exq("resume", env=env, umask=umask)
    c.exq("cancel", "--all", env=env, umask=umask)
    daemon.stop()
    c.exq("status", env=env, umask=umask)
    wrong = []
    for path in [state, *state.rglob("*")]:
        info = path.lstat()
        if stat.S_ISDIR(info.st_mode):
            c.fig.add("dirs checked")
            if stat.S_IMODE(info.st_mode) != 0o700:
                wrong.append(f"{path.relative_to(state.parent)} {stat.S_IMODE(info.st_mode):04o}")
        elif stat.S_ISREG(info.st_mode):
            c.fig.add("files checked")
            if stat.S_IMODE(info.st_mode) != 0o600:
                wrong.append(f"{path.relative_to(state.parent)} {stat.S_IMODE(info.st_mode):04o}")
    c.fig.add("wrong modes", len(wrong))
    for item in wrong[:5]:
        c.note(f"umask {umask:03o}: {item}")
    return "all 0600/0700" if not wrong else f"{len(wrong)} wrong: {', '.join(wrong[:3])}"


if __name__ == "__main__":
    sys.exit(main())
