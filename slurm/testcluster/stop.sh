#!/usr/bin/env bash
# Stop the test cluster that slurm/testcluster/start.sh started under DIR.
# Only the processes named by DIR's pid files are signalled (never by process
# name, so other Slurm/MariaDB/munge instances on the machine are left alone),
# in reverse start order. A DIR with nothing running is a no-op. Exits 0.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
if [[ ! -d $1 ]]; then
    exit 0
fi
DIR=$(cd "$1" && pwd -P)
RUN=$DIR/run

# stop NAME PIDFILE: SIGTERM the pid in PIDFILE, wait up to 30 s, then SIGKILL.
stop() {
    local name=$1 pidfile=$2 pid i
    [[ -s $pidfile ]] || return 0
    pid=$(tr -dc '0-9' <"$pidfile")
    if [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$pidfile"          # stale pid file: the daemon is already gone
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "stop.sh: $name (pid $pid) still alive after 30 s, sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$pidfile"
    echo "stopped $name (pid $pid)"
}

# Cancel every job first, while slurmctld and slurmd still run. Otherwise (a) job
# processes outlive slurmd (slurmstepd keeps running), and (b) slurmctld saves jobs
# in flight to StateSaveLocation and the next start recovers them as RUNNING ghosts
# that hold a CPU until slurmctld gives up on them.
if [[ -f $DIR/slurm.conf && -s $RUN/slurmctld.pid ]] \
    && kill -0 "$(tr -dc '0-9' <"$RUN/slurmctld.pid")" 2>/dev/null; then
    export SLURM_CONF=$DIR/slurm.conf
    jobs=$(squeue -h -o %i 2>/dev/null || true)   # all users, array tasks as 8_[0-2]
    if [[ -n $jobs ]]; then
        # --full: signal the batch shell too, not only its steps
        # shellcheck disable=SC2086  # one job id per word
        scancel --full --quiet $jobs 2>/dev/null || true
        # KillWait=2: jobs are gone within a few seconds; give up after 15 s.
        for ((i = 0; i < 75; i++)); do
            [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break
            sleep 0.2
        done
    fi
fi

# Reverse of start order. slurmd first so no job step is left without its daemon;
# MariaDB after slurmdbd so slurmdbd can flush; munged last (the others use it).
stop slurmd    "$RUN/slurmd.pid"
stop slurmctld "$RUN/slurmctld.pid"
stop slurmdbd  "$RUN/slurmdbd.pid"
# mariadbd writes its pid file itself; SIGTERM is a clean shutdown.
stop mariadb   "$RUN/mariadb.pid"
stop munged    "$RUN/munged.pid"
exit 0
