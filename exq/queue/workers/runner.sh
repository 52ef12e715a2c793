#!/bin/sh
# exq attempt runner.  Usage: sh runner.sh ATTEMPT_DIR
#
# Runs one attempt of a job and records what happened in ATTEMPT_DIR, so the attempt outlives the
# daemon (or an SSH connection) and can be re-attached or classified from these files alone.
# POSIX sh + coreutils + setsid only: it also runs on remote hosts.
#
# Environment: the job's variables, plus
#   EXQ_RUNNER_CMD      the job's shell command (run with sh -c)
#   EXQ_RUNNER_WORKDIR  directory the command runs in
#   EXQ_RUNNER_SETUP    optional shell prefix, run in the workdir before the command
#   EXQ_RUNNER_GRACE    seconds between SIGTERM and SIGKILL when cleaning up (default 10)
#
# Files in ATTEMPT_DIR:
#   claim  exclusive create; "runner PID" here, "tombstone" when exq cancelled the attempt first
#   pid    "RUNNER_PID PGID START_EPOCH"   (written atomically once the job's group exists)
#   exit   "EXIT_STATUS END_EPOCH"        (written atomically; 128+N when killed by signal N)
#   log    the job's stdout and stderr, appended
#
# The job runs in its own session and process group (PGID = its pid): the runner is in the
# runner's own process group and a background child of a non-interactive shell is never a group
# leader, so setsid(1) calls setsid(2) in place instead of forking, and $! is the job's PGID.

dir=${1:?usage: runner.sh ATTEMPT_DIR}
grace=${EXQ_RUNNER_GRACE:-10}
set +m 2>/dev/null

now() {
    t=$(date +%s.%N 2>/dev/null)
    case $t in
        [0-9]*.[0-9]*) case $t in *[!0-9.]*) date +%s ;; *) echo "$t" ;; esac ;;
        *) date +%s ;;
    esac
}

# Atomically write "$2" to file "$1" in the attempt directory.
record() {
    printf '%s\n' "$2" > "$dir/$1.tmp" && mv -f "$dir/$1.tmp" "$dir/$1"
}

# True while process group $1 has a process that is not a zombie (zombies of an orphaned job
# process may linger where init does not reap them).
group_alive() {
    kill -0 "-$1" 2>/dev/null || return 1
    [ -r /proc/self/stat ] || return 0
    _pg=$1
    for _f in /proc/[0-9]*/stat; do
        read -r _line 2>/dev/null < "$_f" || continue
        set -- ${_line##*') '}
        [ "$3" = "$_pg" ] && [ "$1" != Z ] && [ "$1" != X ] && return 0
    done
    return 1
}

# Sleep $1 seconds (fractions where sleep(1) supports them, else one second).
nap() {
    sleep "$1" 2>/dev/null || sleep 1
}

# True when process $1 is a zombie (Linux /proc; false elsewhere).
zombie() {
    read -r _line 2>/dev/null < "/proc/$1/stat" || return 1
    set -- ${_line##*') '}
    [ "$1" = Z ]
}

# 1. Claim the attempt; a tombstone (or another runner) that claimed it first means: do nothing.
if ! (set -C; echo "runner $$" > "$dir/claim") 2>/dev/null; then
    [ -e "$dir/claim" ] && exit 0
    echo "exq runner: cannot create $dir/claim" >&2
    exit 2
fi

# Hangups and interrupts must not end the runner. They are caught (not ignored) until the job is
# started, because an ignored signal would stay ignored in the job; SIGTERM is forwarded to the job.
job=
sig=
term_pending=
forward_term() {
    sig=1
    if [ -z "$job" ]; then
        term_pending=1
    else
        kill -TERM "-$job" 2>/dev/null || kill -TERM "$job" 2>/dev/null
    fi
}
trap 'sig=1' HUP INT
trap forward_term TERM

# 2. Start the job in its own session: cd, setup, then exec the command. sh ignores SIGINT and
# SIGQUIT in background jobs (and keeps what the runner inherited ignored): where env(1) can
# (coreutils >= 8.31), every signal is reset to its default action for the job.
dflt=
if env --default-signal true >/dev/null 2>&1; then
    dflt="env --default-signal"
fi
start=$(now)
setsid $dflt sh -c '
    cd "$EXQ_RUNNER_WORKDIR" || exit
    if [ -n "${EXQ_RUNNER_SETUP:-}" ]; then
        command -v source >/dev/null 2>&1 || source() { . "$@"; }
        eval "$EXQ_RUNNER_SETUP" || exit
    fi
    cmd=$EXQ_RUNNER_CMD
    unset EXQ_RUNNER_CMD EXQ_RUNNER_SETUP EXQ_RUNNER_WORKDIR EXQ_RUNNER_GRACE
    exec sh -c "$cmd"
' exq-job < /dev/null >> "$dir/log" 2>&1 &
job=$!
trap '' HUP INT

# setsid(2) happens in the child a moment after the fork: wait (bounded) until the group exists (or
# the job already ended), so that whoever reads the pid file can signal the group.
i=0
while ! kill -0 "-$job" 2>/dev/null && kill -0 "$job" 2>/dev/null && ! zombie "$job" && [ "$i" -lt 200 ]; do
    i=$((i + 1))
    nap 0.01
done
[ "$i" -lt 200 ] || echo "exq runner: warning: process group $job of the job not found" >> "$dir/log"

# 3. Record runner pid, job pgid and start time.
record pid "$$ $job $start"
[ -z "$term_pending" ] || kill -TERM "-$job" 2>/dev/null || kill -TERM "$job" 2>/dev/null

# 4. Wait for the job. A trapped signal interrupts wait (status > 128): wait again. If the job had
# in fact already been reported (it died of a signal just before the trap ran), the second wait
# fails with 127 and the first status stands.
prev=
while :; do
    sig=
    wait "$job"
    status=$?
    if [ -n "$prev" ] && [ "$status" -eq 127 ]; then
        status=$prev
        break
    fi
    [ -n "$sig" ] && [ "$status" -gt 128 ] || break
    prev=$status
done

# 5. Record the exit status.
record exit "$status $(now)"

# 6. Clean up what the job left in its process group: SIGTERM, up to $grace seconds, SIGKILL.
if group_alive "$job"; then
    kill -TERM "-$job" 2>/dev/null
    case $grace in
        *.*) whole=${grace%%.*}; frac=${grace#*.} ;;
        *) whole=$grace; frac=0 ;;
    esac
    frac=$(printf '%.1s' "${frac}0")
    case $whole$frac in ''|*[!0-9]*) whole=10; frac=0 ;; esac
    ticks=$(( ${whole:-0} * 10 + frac ))
    while [ "$ticks" -gt 0 ] && group_alive "$job"; do
        nap 0.1
        ticks=$((ticks - 1))
    done
    if group_alive "$job"; then
        kill -KILL "-$job" 2>/dev/null
        # SIGKILL is delivered asynchronously: exit only once the group is gone (bounded, 5 s), since
        # whoever sees the runner end takes it to mean the job holds nothing any more.
        i=0
        while [ "$i" -lt 50 ] && group_alive "$job"; do
            nap 0.1
            i=$((i + 1))
        done
    fi
fi
exit 0
