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
#   EXQ_RUNNER_DEFAULT_SIGNAL  "yes"/"no": whether env(1) has --default-signal (probed when unset)
#   EXQ_RUNNER_UMASK    the umask the runner was started with, when the launcher knows it (else asked)
#   EXQ_RUNNER_EVENTS   optional file the runner appends "ended ATTEMPT_DIR" to as its last act, for
#                       whoever follows the attempts of this host (best effort: the records count)
#
# The runner's stdout gets one line, "started", once the pid record is in place (or nothing, when the
# job was not started): whoever launched it learns of the start without polling. Nobody may be
# reading any more (the daemon died): the line is then dropped, never the runner.
#
# Files in ATTEMPT_DIR, all 0600 (the runner's umask is 077; the job gets the umask the runner had):
#   claim        exclusive create; "runner PID" here, "tombstone" when exq cancelled the attempt first
#   pid          "RUNNER_PID PGID START_EPOCH"   (once the job's group exists)
#   exit         "EXIT_STATUS END_EPOCH"        (128+N when killed by signal N)
#   log          the job's stdout and stderr, appended
#   result.json  created empty when $EXQ_RESULT_FILE names it (the job writes its metrics there)
#
# A full disk: pid and exit are reserved when the attempt is claimed (64 bytes: "pending" padded with
# '~'). Recording overwrites those bytes in place, in one write, with the record padded with spaces to
# the same width: no new block is needed, and no rename (no process either). A reader that catches the
# write half done sees some '~' still: no record holds one, so a record is whole or not there. If even
# the rewrite fails (a copy-on-write filesystem, an I/O error), the runner stays, so the attempt looks
# running rather than vanished, and tries again every second for up to an hour, noting it in the log.
# The claim's exclusive create needs no data block, its text and the reservations do: without room for
# them the job is not started. (Runners before this one renamed RECORD.tmp into place; readers still
# take an exit.tmp holding a whole record once such a runner is gone.)
#
# The job runs in its own session and process group (PGID = its pid): the runner is in the
# runner's own process group and a background child of a non-interactive shell is never a group
# leader, so setsid(1) calls setsid(2) in place instead of forking, and $! is the job's PGID.

dir=${1:?usage: runner.sh ATTEMPT_DIR}
grace=${EXQ_RUNNER_GRACE:-10}
set +m 2>/dev/null
job_umask=${EXQ_RUNNER_UMASK:-$(umask)}
umask 077

# Set t to the time now in seconds since the epoch (with nanoseconds where date(1) gives them).
now() {
    t=$(date +%s.%N 2>/dev/null)
    case $t in
        [0-9]*.[0-9]*) case $t in *[!0-9.]*) t=$(date +%s) ;; esac ;;
        *) t=$(date +%s) ;;
    esac
}

# Reserve record $1: its placeholder, as wide as any record, padded with '~'.
reserve() {
    printf '%s\n' pending~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~ > "$dir/$1"
}

# Write "$2" over the reservation of record $1, in place (`<>` does not truncate), in one write.
rewrite() {
    printf '%-63s\n' "$2" 1<> "$dir/$1"
}

# Record the job's end ($ended); true once exit holds it whole.
record_end() {
    rewrite exit "$ended"
} 2>/dev/null

# Append a line to the log, and say it on stderr (either may fail on a full disk).
note() {
    echo "exq runner: $1" >&2
    echo "exq runner: $1" >> "$dir/log"
} 2>/dev/null

# --- shared functions: exq's remote commands use these same definitions (exq/workers/remote.py) ---
# True while process group $1 has a process that is not a zombie (zombies of an orphaned job
# process may linger where init does not reap them).
galive() {
    kill -0 "-$1" 2>/dev/null || return 1
    [ -r /proc/self/stat ] || return 0
    _pg=$1
    for _f in /proc/[0-9]*/stat; do
        read -r _l 2>/dev/null < "$_f" || continue
        set -- ${_l##*') '}
        [ "$3" = "$_pg" ] && [ "$1" != Z ] && [ "$1" != X ] && return 0
    done
    return 1
}
# Sleep $1 seconds (fractions where sleep(1) supports them, else one second).
nap() { sleep "$1" 2>/dev/null || sleep 1; }
# --- end of shared functions ---

# 1. Claim the attempt (an exclusive create: it needs no data block); a tombstone (or another runner)
# that claimed it first means: do nothing. Then write the claim and reserve the records; without room
# for them the job is not started (the daemon sees a runner that ended before starting it).
set -C
if ! { true > "$dir/claim"; } 2>/dev/null; then
    [ -e "$dir/claim" ] && exit 0
    echo "exq runner: cannot create $dir/claim" >&2
    exit 2
fi
set +C
result=
case ${EXQ_RESULT_FILE:-} in "$dir"/*) result=$EXQ_RESULT_FILE ;; esac
if ! { echo "runner $$" > "$dir/claim" && reserve pid && reserve exit &&
       { [ -z "$result" ] || [ -e "$result" ] || : > "$result"; }; } 2>/dev/null; then
    note "cannot write the attempt's records in $dir (disk full?): the job was not started"
    exit 3
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

# 2. Start the job in its own session: cd, setup, record the pid, tell the launcher, then exec the
# command. sh ignores SIGINT and SIGQUIT in background jobs (and keeps what the runner inherited
# ignored): where env(1) can (coreutils >= 8.31), every signal is reset to its default action for
# the job. The job's first process records "RUNNER_PID PGID START" itself, as the leader of its new
# group, so the group exists once the record does; without that record nobody could find the job,
# so it is not started (the runner then ends without an exit record: the job never ran).
case ${EXQ_RUNNER_DEFAULT_SIGNAL:-} in
    yes) dflt="env --default-signal" ;;
    no) dflt= ;;
    *) dflt=; ! env --default-signal true >/dev/null 2>&1 || dflt="env --default-signal" ;;
esac
now
start=$t
setsid $dflt sh -c '
    { printf "%-63s\n" "$3 $$ $4" 1<> "$2/pid"; } 2>/dev/null || {
        echo "exq runner: cannot record the pid in $2 (disk full?): the job was not started"
        exit 3
    }
    trap "" PIPE
    echo started >&3
    trap - PIPE
    exec 3>&-
    [ -z "$1" ] || umask "$1" || exit
    cd "$EXQ_RUNNER_WORKDIR" || exit
    if [ -n "${EXQ_RUNNER_SETUP:-}" ]; then
        command -v source >/dev/null 2>&1 || source() { . "$@"; }
        eval "$EXQ_RUNNER_SETUP" || exit
    fi
    cmd=$EXQ_RUNNER_CMD
    unset EXQ_RUNNER_CMD EXQ_RUNNER_SETUP EXQ_RUNNER_WORKDIR EXQ_RUNNER_GRACE EXQ_RUNNER_DEFAULT_SIGNAL \
        EXQ_RUNNER_EVENTS EXQ_RUNNER_UMASK
    exec sh -c "$cmd"
' exq-job "$job_umask" "$dir" "$$" "$start" 3>&1 < /dev/null >> "$dir/log" 2>&1 &
job=$!
trap '' HUP INT PIPE
exec >/dev/null
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

# A job that never recorded its pid was not started: it has no exit status to record.
started=
{ read -r started _ < "$dir/pid"; } 2>/dev/null
case $started in ''|*[!0-9]*) started= ;; esac
if [ -z "$started" ]; then
    note "the job was not started (exit status $status before its pid was recorded)"
    exit 3
fi

# 5. Record the exit status (see the top for what happens when that fails).
now
ended="$status $t"
recorded=
if record_end; then
    recorded=1
else
    note "could not record exit status $status in $dir (disk full?): trying again every second"
fi

# 6. Clean up what the job left in its process group: SIGTERM, up to $grace seconds, SIGKILL.
if galive "$job"; then
    kill -TERM "-$job" 2>/dev/null
    case $grace in
        *.*) whole=${grace%%.*}; frac=${grace#*.} ;;
        *) whole=$grace; frac=0 ;;
    esac
    frac=$(printf '%.1s' "${frac}0")
    case $whole$frac in ''|*[!0-9]*) whole=10; frac=0 ;; esac
    ticks=$(( ${whole:-0} * 10 + frac ))
    while [ "$ticks" -gt 0 ] && galive "$job"; do
        nap 0.1
        ticks=$((ticks - 1))
    done
    if galive "$job"; then
        kill -KILL "-$job" 2>/dev/null
        # SIGKILL is delivered asynchronously: exit only once the group is gone (bounded, 5 s), since
        # whoever sees the runner end takes it to mean the job holds nothing any more.
        i=0
        while [ "$i" -lt 50 ] && galive "$job"; do
            nap 0.1
            i=$((i + 1))
        done
    fi
fi

# 7. An end not recorded yet: try again (bounded: an hour); meanwhile the runner looks alive.
i=0
while [ -z "$recorded" ] && [ "$i" -lt 3600 ]; do
    nap 1
    i=$((i + 1))
    if record_end; then
        recorded=1
        note "recorded exit status $status ${i}s late: there was no room for it (disk full?)"
    fi
done
[ -n "$recorded" ] || note "gave up recording exit status $status in $dir"
[ -z "${EXQ_RUNNER_EVENTS:-}" ] || { echo "ended $dir" >> "$EXQ_RUNNER_EVENTS"; } 2>/dev/null
exit 0
