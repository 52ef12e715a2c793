"""The SSH worker's remote shell commands and the parsers of their output (pure functions).

Every command is `sh -c SCRIPT exq-KIND ARG...`: a fixed POSIX sh script (coreutils and setsid only)
run the same whatever the login shell, with every path and value passed as a shlex-quoted positional
argument. Scripts print marker lines (`@@exq KIND [ARG]`) and end with `@@exq end`. File contents
(claim, pid, exit, log tail, result file) follow an `@@exq hex NAME` marker as `od -An -v -tx1`
lines, so nothing a job writes can break the framing. The list of attempt directories to poll goes
on stdin, one per line, so one command covers any number of them.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from exq.errors import WorkerError
from exq.workers.base import (
    LOG_TAIL_BYTES,
    PEEK_LIMIT,
    RUNNER_PATH,
    START_TIMEOUT,
    TOMBSTONE,
    AttemptReport,
    LaunchRefused,
    LaunchRequest,
    RunRecord,
    parse_record,
    parse_result,
)

MARKER = "@@exq"
RUNNER_NAME = "runner.sh"
NAP = 0.01
"""Seconds per tick of the remote wait for a launched runner to record its pid."""
KILL_NAP = 0.1
"""Seconds per tick of the remote kill grace (each tick scans /proc for the job's process group)."""
EVENTS_KEPT = 1_000_000
"""Bytes of a host's events file kept: a longer one is emptied when a connection starts following it."""
MAX_COMMAND_BYTES = 100_000
"""A command line is one argument of the login shell: Linux caps that at 128 KiB."""
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _runner_function(name: str) -> str:
    """The definition of sh function `name` in runner.sh, the one sh library of the runner and these commands."""
    match = re.search(rf"^{name}\(\) {{[^\n]*}}\n|^{name}\(\) {{\n.*?^}}\n", RUNNER_PATH.read_text(), re.M | re.S)
    assert match is not None, f"runner.sh defines no {name}()"
    return match.group(0)


_NAP = _runner_function("nap")
_GALIVE = _runner_function("galive")

_HEAD = f"""\
M={MARKER}
NL='
'
umask 077
"""
# Print file $2 as section $1: a marker, then its bytes in hex; or a marker saying it is missing/unreadable.
_SEC = """\
sec() {
    if [ -f "$2" ] && [ -r "$2" ]; then echo "$M hex $1"; od -An -v -tx1 < "$2"
    elif [ -e "$2" ]; then echo "$M unreadable $1"
    else echo "$M none $1"; fi
}
"""
# True while process $1 runs and is not a zombie.
_RUNNING = """\
running() {
    [ -r /proc/self/stat ] || { kill -0 "$1" 2>/dev/null; return; }
    read -r _l 2>/dev/null < "/proc/$1/stat" || return 1
    set -- ${_l##*') '}
    [ "$1" != Z ] && [ "$1" != X ]
}
"""
# True while PID $1 is the runner of attempt dir $2 (its last argument: a reused pid is not).
_RALIVE = """\
ralive() {
    running "$1" || return 1
    [ -r /proc/self/cmdline ] || return 0
    _c=$(tr '\\0' '\\n' < "/proc/$1/cmdline" 2>/dev/null) || return 1
    case $_c in *"$NL$2") return 0 ;; esac
    return 1
}
"""
# The record of attempt dir $1 in the order `parse_record` reads it: claim, pid (the runner's pid from
# the claim while pid is only reserved), whether the runner is alive (before the end, so that a runner
# seen dead has its end, if any, already written), exit, and when that is missing and the runner dead,
# an older runner's exit.tmp.
_REC = """\
rec() {
    echo "$M dir"
    sec claim "$1/claim"
    sec pid "$1/pid"
    _p=
    [ ! -r "$1/pid" ] || read -r _p _x 2>/dev/null < "$1/pid"
    case $_p in ''|*[!0-9]*)
        _p=; [ ! -r "$1/claim" ] || { read -r _w _p _x 2>/dev/null < "$1/claim"; [ "$_w" = runner ] || _p=; } ;;
    esac
    case $_p in ''|*[!0-9]*) _p= ;; esac
    _a=0
    if [ -n "$_p" ] && ralive "$_p" "$1"; then _a=1; fi
    echo "$M alive $_a"
    sec exit "$1/exit"
    [ "$_a" = 1 ] || [ -e "$1/exit" ] || sec exit.tmp "$1/exit.tmp"
}
"""
# True when record file $1 holds a whole record: not missing, not a reservation, not half written
# (runner.sh pads reservations with '~', which no record holds).
_WHOLE = """\
whole() {
    _l=
    read -r _l 2>/dev/null < "$1" || return 1
    case $_l in ''|*'~'*) return 1 ;; esac
}
"""
_RECORD_LIB = _SEC + _RUNNING + _RALIVE + _WHOLE + _REC

_SETUP = """\
cd || exit 1
h=$(pwd) || exit 1
case $1 in /*) x=$1/$2 ;; *) x=$h/$1/$2 ;; esac
mkdir -p -- "$x" || exit 1
echo "$M hex home"; printf '%s' "$h" | od -An -v -tx1
echo "$M hex exq"; printf '%s' "$x" | od -An -v -tx1
sec runner "$x/$3"
"""
_POLL = """\
while IFS= read -r d; do rec "$d"; done
"""
# Lines appended after the size is read are all printed: whoever follows reads the records of the
# attempts it waits for once it sees "following", and learns of every later end from here.
_EVENTS = """\
: >> "$1" || exit 1
s=$(wc -c < "$1") || exit 1
s=$((s))
if [ "$s" -gt "$2" ]; then : > "$1"; s=0; fi
echo "$M following"
exec tail -c "+$((s + 1))" -f "$1"
"""
# The runner starts with the login's umask ($u, read before _HEAD's `umask 077`): it gives it to the job.
_LAUNCH = f"""\
d=$1; r=$2; w=$3; shift 3
if [ ! -d "$w" ]; then
    if [ -e "$w" ]; then echo "$M workdir notdir"; else echo "$M workdir missing"; fi
    echo "$M end"; exit 0
fi
mkdir -p -- "$d" || exit 1
cd / || exit 1
umask "$u"
nohup env "$@" setsid sh "$r" "$d" </dev/null >/dev/null 2>&1 &
c=$!
umask 077
i=0
while ! whole "$d/pid"; do
    [ "$(cat "$d/claim" 2>/dev/null)" = {TOMBSTONE} ] && break
    running "$c" || break
    if [ "$i" -ge {math.ceil(START_TIMEOUT / NAP)} ]; then
        kill -KILL "-$c" 2>/dev/null || kill -KILL "$c" 2>/dev/null
        echo "$M timeout"; break
    fi
    nap {NAP}
    i=$((i + 1))
done
rec "$d"
"""
_KILL = f"""\
d=$1; t=$2; p=; g=
read -r p g _x 2>/dev/null < "$d/pid"
case $p$g in ''|*[!0-9]*) echo "$M end"; exit 0 ;; esac
if whole "$d/exit" && ! ralive "$p" "$d"; then echo "$M end"; exit 0; fi
kill -TERM "-$g" 2>/dev/null
i=0
while galive "$g"; do
    if [ "$i" -ge "$t" ]; then kill -KILL "-$g" 2>/dev/null; echo "$M sigkill"; break; fi
    nap {KILL_NAP}
    i=$((i + 1))
done
"""
_TOMBSTONE = f"""\
mkdir -p -- "$1" || exit 1
if (set -C; echo {TOMBSTONE} > "$1/claim") 2>/dev/null; then echo "$M claimed 1"
elif [ -e "$1/claim" ]; then echo "$M claimed 0"
else echo "cannot create $1/claim" >&2; exit 1; fi
"""
_GROUP = """\
if galive "$1"; then echo "$M alive 1"; else echo "$M alive 0"; fi
"""
_REPORT = f"""\
d=$1; w=$2; f=$3; shift 3
rec "$d"
if [ -e "$d/log" ]; then echo "$M hex log"; tail -c {LOG_TAIL_BYTES} "$d/log" 2>/dev/null | od -An -v -tx1
else echo "$M none log"; fi
case $f in /*) ;; *) f=$w/$f ;; esac
sec result "$f"
"""
# `missing I` for each glob ("$@", index I) that matches nothing in directory $w (or when $w is not one).
_MISSING = """\
ok=0; cd "$w" 2>/dev/null && ok=1
IFS=
i=0
for pat; do
    found=0
    if [ "$ok" = 1 ]; then
        for m in $pat; do
            if [ -e "$m" ] || [ -L "$m" ]; then found=1; fi
            break
        done
    fi
    [ "$found" = 1 ] || echo "$M missing $i"
    i=$((i + 1))
done
"""


# Each result file named on stdin, as a `dir` block holding it when it is at most $1 bytes.
_PEEK = """\
while IFS= read -r f; do
    echo "$M dir"
    n=$(wc -c 2>/dev/null < "$f") && [ $((n)) -le "$1" ] && sec result "$f"
done
"""


def _command(kind: str, body: str, args: list[str], prelude: str = "") -> str:
    script = prelude + _HEAD + body + 'echo "$M end"\nexit 0\n'
    command = " ".join(["sh -c", shlex.quote(script), f"exq-{kind}", *(shlex.quote(a) for a in args)])
    if len(command.encode()) > MAX_COMMAND_BYTES:
        raise WorkerError(f"{kind} command too long ({len(command.encode())} bytes > {MAX_COMMAND_BYTES})")
    return command


def setup_command(root: str, node_id: str) -> str:
    """Resolve the home, create `<home>/<root>/<node_id>` (0700, parents too), show the runner there."""
    return _command("setup", _SEC + _SETUP, [root, node_id, RUNNER_NAME])


def poll_command() -> str:
    """The records of the attempt directories given on stdin (see `poll_input`), in order."""
    return _command("poll", _RECORD_LIB + _POLL, [])


def events_command(events: str) -> str:
    """Follow the host's events file (runner.sh's EXQ_RUNNER_EVENTS): print each line appended from now
    on, until the channel closes. The file is emptied first once it is over EVENTS_KEPT bytes."""
    return _command("events", _EVENTS, [events, str(EVENTS_KEPT)])


def poll_input(attempt_dirs: list[str]) -> str:
    return "".join(d + "\n" for d in attempt_dirs)


def launch_command(runner: str, request: LaunchRequest, grace: float) -> str:
    """Create the attempt dir, start the runner detached with the job's env, wait until it recorded its pid."""
    env = dict(request.env)
    env.update(EXQ_RUNNER_CMD=request.cmd, EXQ_RUNNER_WORKDIR=request.workdir,
               EXQ_RUNNER_SETUP=request.setup or "", EXQ_RUNNER_GRACE=f"{grace:.1f}")
    for name, value in env.items():
        if not _ENV_NAME.fullmatch(name):
            raise WorkerError(f"invalid environment variable name {name!r}")
        if "\0" in value:
            raise WorkerError(f"environment variable {name} holds a NUL character")
    assignments = [f"{name}={value}" for name, value in env.items()]
    return _command("launch", _NAP + _RECORD_LIB + _LAUNCH,
                    [request.attempt_dir, runner, request.workdir, *assignments], prelude="u=$(umask)\n")


def kill_command(attempt_dir: str, grace: float) -> str:
    """SIGTERM the job's group, SIGKILL it after `grace` s; nothing when the attempt has ended."""
    ticks = max(0, math.ceil(grace / KILL_NAP))
    return _command("kill", _NAP + _RUNNING + _RALIVE + _WHOLE + _GALIVE + _KILL, [attempt_dir, str(ticks)])


def tombstone_command(attempt_dir: str) -> str:
    """Create the attempt dir and claim it with a tombstone unless a runner claimed it first."""
    return _command("tombstone", _TOMBSTONE, [attempt_dir])


def group_alive_command(pgid: int) -> str:
    return _command("group", _GALIVE + _GROUP, [str(int(pgid))])


def peek_command() -> str:
    """The result files given on stdin (see `poll_input`), one block each, those over PEEK_LIMIT left empty."""
    return _command("peek", _SEC + _PEEK, [str(PEEK_LIMIT)])


def report_command(attempt_dir: str, workdir: str, result_file: str, outputs: list[str]) -> str:
    """Record, log tail, result file and the indices of the output globs that match nothing in workdir."""
    return _command("report", _RECORD_LIB + _REPORT + _MISSING, [attempt_dir, workdir, result_file, *outputs])


def missing_command(workdir: str, globs: list[str]) -> str:
    """The indices of the globs that match nothing in `workdir` (see `parse_missing`)."""
    return _command("missing", 'w=$1; shift\n' + _MISSING, [workdir, *globs])


# --- parsers ---------------------------------------------------------------------------------


@dataclass
class Frame:
    """One marker line and, for `hex`, the bytes that followed it."""

    kind: str
    arg: str
    data: bytearray = field(default_factory=bytearray)


@dataclass(frozen=True)
class Setup:
    home: str
    exq_dir: str
    runner: bytes | None
    """The runner script on the host, or None when it is missing."""


def parse_frames(text: str) -> list[Frame]:
    """The frames of a script's output; WorkerError when it is garbled or cut short (no `end`)."""
    frames: list[Frame] = []
    for line in text.splitlines():
        if line.startswith(MARKER + " "):
            kind, _, arg = line[len(MARKER) + 1 :].partition(" ")
            frames.append(Frame(kind, arg))
        elif not line.strip():
            continue
        elif frames and frames[-1].kind == "hex":
            try:
                frames[-1].data += bytes.fromhex(line)
            except ValueError:
                raise WorkerError(f"garbled remote output: {line[:200]!r}") from None
        else:
            raise WorkerError(f"unexpected remote output: {line[:200]!r}")
    if not frames or frames[-1].kind != "end":
        raise WorkerError(f"remote output cut short: {text[-500:]!r}")
    return frames[:-1]


def _files(frames: list[Frame]) -> dict[str, bytes | None]:
    """Contents per section name: bytes, or None when missing or unreadable."""
    return {f.arg: bytes(f.data) if f.kind == "hex" else None
            for f in frames if f.kind in ("hex", "none", "unreadable")}


def _record(frames: list[Frame]) -> RunRecord:
    """A RunRecord from one `rec` block (claim, pid, alive, exit[, exit.tmp]): `parse_record`, as locally."""
    files = _files(frames)
    alive = any(f.kind == "alive" and f.arg == "1" for f in frames)

    def read(name: str) -> str | None:
        data = files.get(name)
        return None if data is None else data.decode(errors="replace")

    return parse_record(read, lambda _pid, _started_at: alive)


def _blocks(frames: list[Frame]) -> list[list[Frame]]:
    """The frames of each `dir` block (a record), in order; frames before the first are dropped."""
    blocks: list[list[Frame]] = []
    for frame in frames:
        if frame.kind == "dir":
            blocks.append([])
        elif blocks:
            blocks[-1].append(frame)
    return blocks


def parse_setup(text: str) -> Setup:
    files = _files(parse_frames(text))
    home, exq_dir = files.get("home"), files.get("exq")
    if not home or not exq_dir:
        raise WorkerError(f"unexpected setup output: {text[-500:]!r}")
    return Setup(home.decode(), exq_dir.decode(), files.get("runner"))


def parse_records(text: str, count: int) -> list[RunRecord]:
    """The records a poll printed for `count` attempt directories."""
    blocks = _blocks(parse_frames(text))
    if len(blocks) != count:
        raise WorkerError(f"poll returned {len(blocks)} records for {count} attempt directories")
    return [_record(b) for b in blocks]


def parse_launch(text: str, attempt_dir: str, workdir: str, host: str) -> RunRecord:
    """The record after a launch; LaunchRefused when the workdir is not a directory on `host` (nothing was
    started), WorkerError when the runner did not start the job."""
    frames = parse_frames(text)
    for frame in frames:
        if frame.kind == "workdir":
            what = "is not a directory" if frame.arg == "notdir" else "does not exist"
            raise LaunchRefused(f"workdir {workdir} {what} on {host}")
    blocks = _blocks(frames)
    record = _record(blocks[-1]) if blocks else RunRecord()
    if any(f.kind == "timeout" for f in frames):
        raise WorkerError(f"runner for {attempt_dir} did not start the job within {START_TIMEOUT:g}s")
    if record.tombstoned or record.started_at is not None:
        return record
    raise WorkerError(f"runner for {attempt_dir} exited before starting the job")


def parse_flag(text: str, kind: str) -> bool:
    """The value of a `@@exq KIND 0|1` line (tombstone: `claimed`, group_alive: `alive`)."""
    for frame in parse_frames(text):
        if frame.kind == kind:
            return frame.arg == "1"
    raise WorkerError(f"no {kind!r} in remote output: {text[-500:]!r}")


def _result(data: bytes | None, present: bool, path: str) -> tuple[dict[str, Any] | None, str | None]:
    if not present:
        return None, None
    if data is None:
        return None, f"cannot read result file {path}: not a readable file"
    return parse_result(data, path)


def parse_peek(text: str, paths: list[str]) -> dict[str, dict[str, Any]]:
    """The JSON objects a peek printed for `paths`, by path (those without one left out)."""
    blocks = _blocks(parse_frames(text))
    if len(blocks) != len(paths):
        raise WorkerError(f"peek returned {len(blocks)} results for {len(paths)} files")
    found = {path: parse_result(data, path)[0] for path, block in zip(paths, blocks, strict=True)
             if (data := _files(block).get("result")) is not None}
    return {path: value for path, value in found.items() if value is not None}


def parse_report(text: str, workdir: str, result_file: str, outputs: list[str]) -> AttemptReport:
    frames = parse_frames(text)
    blocks = _blocks(frames)
    if len(blocks) != 1:
        raise WorkerError(f"unexpected report output: {text[-500:]!r}")
    files = _files(blocks[0])
    path = result_file if result_file.startswith("/") else f"{workdir.rstrip('/')}/{result_file}"
    result, error = _result(files.get("result"), any(
        f.kind in ("hex", "unreadable") and f.arg == "result" for f in blocks[0]), path)
    return AttemptReport(
        record=_record(blocks[0]),
        log_tail=(files.get("log") or b"").decode("utf-8", errors="replace"),
        result=result,
        result_error=error,
        missing_outputs=_missing(blocks[0], outputs),
    )


def _missing(frames: list[Frame], globs: list[str]) -> list[str]:
    """The globs the `missing I` frames name, in order."""
    missing = {int(f.arg) for f in frames if f.kind == "missing" and f.arg.isdigit()}
    return [p for i, p in enumerate(globs) if i in missing]


def parse_missing(text: str, globs: list[str]) -> list[str]:
    """The globs a `missing_command` found matching nothing."""
    return _missing(parse_frames(text), globs)
