#!/usr/bin/env bash
# Start a single-node Slurm test cluster (munged, MariaDB, slurmdbd, slurmctld,
# slurmd) with every file it needs under DIR. Idempotent: if the cluster under
# DIR is already up, it does nothing. The last line printed is
#   export SLURM_CONF=DIR/slurm.conf
# so that `eval "$(slurm/testcluster/start.sh DIR | tail -n 1)"` works.
#
# Needs (Debian 12): munge slurmctld slurmd slurm-client slurmdbd mariadb-server,
# and root (every daemon runs as root).
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi

mkdir -p "$1"
DIR=$(cd "$1" && pwd -P)   # absolute: the daemons chdir and the confs need full paths

# Fixed, uncommon ports so that a system-wide Slurm on 6817-6819 does not clash.
# Override with SLURMCTLD_PORT / SLURMD_PORT / SLURMDBD_PORT if needed.
CTLD_PORT=${SLURMCTLD_PORT:-16817}
SLURMD_PORT=${SLURMD_PORT:-16818}
DBD_PORT=${SLURMDBD_PORT:-16819}

CLUSTER=testcluster
NODE=$(hostname -s)

CONF=$DIR/slurm.conf
DBDCONF=$DIR/slurmdbd.conf          # must sit beside slurm.conf (slurmdbd finds it there)
LOG=$DIR/log
RUN=$DIR/run
MUNGE_DIR=$DIR/munge
MUNGE_SOCK=$MUNGE_DIR/munge.socket.2
MUNGE_KEY=$DIR/munge.key
DB_DATA=$DIR/mysql
DB_SOCK=$RUN/mysqld.sock
DB_PID=$RUN/mariadb.pid

export SLURM_CONF=$CONF

fail() {
    # $1: message, $2: log file to look at
    echo "start.sh: ERROR: $1" >&2
    if [[ -n ${2:-} ]]; then
        echo "start.sh: see $2; its last lines:" >&2
        tail -n 15 "$2" >&2 2>/dev/null || true
    fi
    exit 1
}

# alive PIDFILE: true if PIDFILE names a live process.
alive() {
    local pid
    [[ -s $1 ]] || return 1
    pid=$(tr -dc '0-9' <"$1")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

# wait_for PIDFILE SECONDS CMD...: retry CMD every 0.2 s until it succeeds; give up
# when time runs out, or at once if the daemon of PIDFILE has written it and died
# (e.g. its port is taken), instead of waiting the full time.
wait_for() {
    local pidfile=$1 deadline=$((SECONDS + $2))
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        if [[ -s $pidfile ]] && ! alive "$pidfile"; then return 1; fi
        sleep 0.2
    done
}

PIDFILES=("$RUN/munged.pid" "$DB_PID" "$RUN/slurmdbd.pid" "$RUN/slurmctld.pid" "$RUN/slurmd.pid")

# ---- already up? -----------------------------------------------------------------
all_alive=1
for p in "${PIDFILES[@]}"; do alive "$p" || all_alive=0; done
if ((all_alive)) && [[ -f $CONF ]] && sinfo -h >/dev/null 2>&1; then
    echo "cluster under $DIR is already up"
    echo "export SLURM_CONF=$CONF"
    exit 0
fi

start_time=$SECONDS
mkdir -p "$LOG" "$RUN" "$DIR/state" "$DIR/spool" "$MUNGE_DIR"

# ---- munge -----------------------------------------------------------------------
# munged refuses to start unless the socket directory is world-executable (755)
# and the key is readable by its owner only (400).
chmod 755 "$DIR" "$MUNGE_DIR"
if [[ ! -s $MUNGE_KEY ]]; then
    dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
fi
chmod 400 "$MUNGE_KEY"
if ! alive "$RUN/munged.pid"; then
    rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
    # --force: munged as root complains otherwise (e.g. a stale socket, root owner).
    munged --force --key-file="$MUNGE_KEY" --socket="$MUNGE_SOCK" \
        --pid-file="$RUN/munged.pid" --log-file="$LOG/munged.log" \
        --seed-file="$DIR/munged.seed" \
        || fail "munged did not start" "$LOG/munged.log"
fi
wait_for "$RUN/munged.pid" 10 munge -S "$MUNGE_SOCK" -n \
    || fail "munged does not answer on $MUNGE_SOCK" "$LOG/munged.log"

# ---- MariaDB ---------------------------------------------------------------------
# Its own datadir, socket and pid file under DIR; no TCP at all (skip-networking),
# so it cannot clash with a system MariaDB. --no-defaults: ignore /etc/mysql.
DB_OPTS=(--no-defaults --datadir="$DB_DATA" --socket="$DB_SOCK" --pid-file="$DB_PID"
         --skip-networking --user=root --log-error="$LOG/mariadb.log")
if [[ ! -d $DB_DATA/mysql ]]; then
    mariadb-install-db --no-defaults --datadir="$DB_DATA" --user=root \
        --auth-root-authentication-method=socket --skip-test-db \
        >"$LOG/mariadb-install.log" 2>&1 \
        || fail "mariadb-install-db failed" "$LOG/mariadb-install.log"
fi
if ! alive "$DB_PID"; then
    rm -f "$DB_SOCK"
    # mariadbd does not daemonize itself (the Slurm daemons and munged do): run it
    # in its own session (setsid -f), detached from our stdio, so that neither
    # Ctrl-C in the caller's terminal nor a `| tail -n 1` pipe waits on it or kills it.
    setsid -f mariadbd "${DB_OPTS[@]}" </dev/null >>"$LOG/mariadb.log" 2>&1
fi
# root@localhost authenticates by unix_socket: we are root, so no password.
wait_for "$DB_PID" 30 mariadb --no-defaults --socket="$DB_SOCK" -e 'SELECT 1' \
    || fail "MariaDB does not answer on $DB_SOCK" "$LOG/mariadb.log"

# Accounting database and user (password kept in the mode-600 slurmdbd.conf).
DB_PASS_FILE=$DIR/.dbpass
if [[ ! -s $DB_PASS_FILE ]]; then
    (umask 077; od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$DB_PASS_FILE")
fi
DB_PASS=$(cat "$DB_PASS_FILE")
mariadb --no-defaults --socket="$DB_SOCK" >>"$LOG/mariadb-install.log" 2>&1 <<SQL \
    || fail "could not create the accounting database/user" "$LOG/mariadb-install.log"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL

# ---- configuration ---------------------------------------------------------------
# Node shape from the hardware: "NodeName=x CPUs=2 Boards=1 SocketsPerBoard=1 ...".
HW=$(slurmd -C | head -n 1)
hw() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$HW"; }
CPUS=$(hw CPUs); SOCKETS=$(hw SocketsPerBoard); CORES=$(hw CoresPerSocket)
THREADS=$(hw ThreadsPerCore); MEM=$(hw RealMemory)

cat >"$CONF" <<EOF
# Generated by slurm/testcluster/start.sh; rewritten at each start.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
# munge on our own socket, for every daemon and client that reads this file
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
# no cgroups in containers / without systemd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# schedule at once instead of on 3 s ticks (matters for job arrays)
SchedulerParameters=batch_sched_delay=0,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# cancelled jobs (submitit ignores SIGTERM) give their CPU back after 2 s, not 30
KillWait=2
MinJobAge=10
# a node that went down comes back by itself once slurmd registers
ReturnToService=2
# silence the "MailProg not found" startup error
MailProg=/bin/true
# slurmctld -> slurmdbd link is authenticated by munge: the "password" is the socket
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MUNGE_SOCK
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

# slurmdbd refuses a slurmdbd.conf readable by others.
(umask 077; cat >"$DBDCONF" <<EOF
# Generated by slurm/testcluster/start.sh; rewritten at each start.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
# "localhost" = MariaDB's unix socket; the socket path ($DB_SOCK) comes from
# MYSQL_UNIX_PORT in slurmdbd's environment (slurmdbd.conf has no socket option).
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
)
chmod 600 "$DBDCONF"

# ---- slurmdbd --------------------------------------------------------------------
if ! alive "$RUN/slurmdbd.pid"; then
    # libmariadb reads the socket path from MYSQL_UNIX_PORT.
    MYSQL_UNIX_PORT=$DB_SOCK slurmdbd >>"$LOG/slurmdbd.log" 2>&1 \
        || fail "slurmdbd did not start" "$LOG/slurmdbd.log"
fi
wait_for "$RUN/slurmdbd.pid" 30 sacctmgr -n list cluster \
    || fail "slurmdbd does not answer on port $DBD_PORT" "$LOG/slurmdbd.log"
if [[ -z $(sacctmgr -n -P list cluster "$CLUSTER" format=cluster) ]]; then
    sacctmgr -i add cluster "$CLUSTER" >>"$LOG/slurmdbd.log" 2>&1 \
        || fail "sacctmgr add cluster $CLUSTER failed" "$LOG/slurmdbd.log"
fi

# ---- slurmctld and slurmd --------------------------------------------------------
if ! alive "$RUN/slurmctld.pid"; then
    slurmctld -f "$CONF" >>"$LOG/slurmctld.log" 2>&1 \
        || fail "slurmctld did not start" "$LOG/slurmctld.log"
fi
wait_for "$RUN/slurmctld.pid" 30 scontrol ping \
    || fail "slurmctld does not answer on port $CTLD_PORT" "$LOG/slurmctld.log"
if ! alive "$RUN/slurmd.pid"; then
    slurmd -f "$CONF" >>"$LOG/slurmd.log" 2>&1 \
        || fail "slurmd did not start" "$LOG/slurmd.log"
fi

# A drained node stays drained across restarts (state is saved): resume it.
node_state() { sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n 1; }
# idle (or busy with jobs left from before a restart); a trailing "*" = not responding
node_idle() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }
deadline=$((SECONDS + 60))
until node_idle; do
    case $(node_state) in
        drain* | drained | down*)
            scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
    esac
    ((SECONDS < deadline)) \
        || fail "node $NODE is not idle after 60 s (state: $(node_state))" "$LOG/slurmd.log"
    sleep 0.3
done

echo "cluster up under $DIR in $((SECONDS - start_time)) s (node $NODE, ports $CTLD_PORT/$SLURMD_PORT/$DBD_PORT)"
echo "export SLURM_CONF=$CONF"
