#!/usr/bin/env bash
# Bring up a real single-node SLURM cluster on this machine, for tests and
# local use:  munged -> (mariadbd + slurmdbd) -> slurmctld -> slurmd.
#
# The cluster lives in a directory of its own (DJO_SLURM_DIR): its config, state,
# logs, pid files and accounting database, its own ports and cluster name. It never
# reads or writes /etc/slurm and never stops a daemon it did not start, so a
# machine's own SLURM (or another test cluster) keeps running untouched beside it.
# SLURM's commands find it through SLURM_CONF, which this script prints last:
#     export SLURM_CONF=/var/tmp/dj-orchestrate-slurm/etc/slurm.conf
#
# Idempotent: re-running it when the cluster is already up with an unchanged
# config is a fast no-op (well under a second).  If the generated config
# changed, the slurm daemons are restarted (job state is kept).  When the cluster
# cannot come up, it says why and exits non-zero.
#
# Must run as root.  No systemd needed: daemons are started directly.
#
# Environment knobs (all optional):
#   DJO_SLURM_DIR=/var/tmp/dj-orchestrate-slurm   where everything of this cluster lives
#   SLURM_PORT_BASE=6917    slurmctld port; slurmd and slurmdbd take the next two
#   SLURM_START_TIMEOUT=60  seconds to wait for the node to become idle
#   SLURM_ACCOUNTING=1      run slurmdbd + a private MariaDB so that `sacct`
#                           works (submitit polls job states with sacct);
#                           0 = accounting_storage/none (sacct fails)
#   SLURM_DB_PORT=3317      TCP port (127.0.0.1 only) of the private MariaDB
#   SLURM_SKIP_INSTALL=1    never call apt-get (fail if packages are missing)
#   SLURM_PROCTRACK=...     force a ProctrackType (default proctrack/linuxproc)
set -euo pipefail

log() { echo "[slurm] $*"; }
die() { echo "[slurm] ERROR: $*" >&2; exit 1; }

START_TIMEOUT="${SLURM_START_TIMEOUT:-60}"
ACCOUNTING="${SLURM_ACCOUNTING:-1}"
DB_PORT="${SLURM_DB_PORT:-3317}"
PORT_BASE="${SLURM_PORT_BASE:-6917}"
CLUSTER=djorchestrate

# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"   # DIR, CONF, RUN_DIR, ours, stop_ours
DBD_CONF="$CONF_DIR/slurmdbd.conf"
LOG_DIR="$DIR/log"
CTLD_LOG="$LOG_DIR/slurmctld.log"
SLURMD_LOG="$LOG_DIR/slurmd.log"
DBD_LOG="$LOG_DIR/slurmdbd.log"
DB_LOG="$LOG_DIR/mariadb.log"
STATE_DIR="$DIR/state"
SPOOL_DIR="$DIR/spool"
MUNGE_KEY=/etc/munge/munge.key
# Private MariaDB instance for slurmdbd (separate from any system MariaDB).
DB_DIR="$DIR/mariadb"
DB_SOCK="$RUN_DIR/mariadb.sock"
DB_PID="$RUN_DIR/mariadbd.pid"

[ "$(id -u)" -eq 0 ] || die "must run as root (daemons are started as root)"
export PATH="$PATH:/usr/sbin:/sbin"
export SLURM_CONF="$CONF"  # every slurm command and daemon below: this cluster, never /etc/slurm

show_logs() {
  local f
  for f in "$CTLD_LOG" "$SLURMD_LOG" "$DBD_LOG" "$DB_LOG" /var/log/munge/munged.log; do
    if [ -s "$f" ]; then
      echo "[slurm] ---- tail of $f ----" >&2
      tail -n 25 "$f" >&2 || true
    fi
  done
}
fail() { echo "[slurm] ERROR: $*" >&2; show_logs; echo "[slurm] ERROR: the test cluster in $DIR did not come up: $*" >&2; exit 1; }

# --------------------------------------------------------------------------
# 1. Packages
# --------------------------------------------------------------------------
pkgs=()
for b in slurmctld slurmd munged sbatch sinfo scontrol; do
  command -v "$b" >/dev/null 2>&1 || { pkgs+=(slurm-wlm munge); break; }
done
if [ "$ACCOUNTING" = 1 ]; then
  command -v slurmdbd >/dev/null 2>&1 || pkgs+=(slurmdbd)
  { command -v mariadbd >/dev/null 2>&1 && command -v mariadb-install-db >/dev/null 2>&1; } \
    || pkgs+=(mariadb-server)
fi
if [ "${#pkgs[@]}" -gt 0 ]; then
  [ "${SLURM_SKIP_INSTALL:-0}" = 1 ] && die "missing packages (${pkgs[*]}) and SLURM_SKIP_INSTALL=1"
  log "installing ${pkgs[*]} via apt-get (this takes a minute)"
  export DEBIAN_FRONTEND=noninteractive
  APT_LOG=/tmp/slurm-start-apt.log
  if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${pkgs[@]}"; } >"$APT_LOG" 2>&1; then
    tail -n 30 "$APT_LOG" >&2
    die "apt-get install ${pkgs[*]} failed (full log: $APT_LOG)"
  fi
fi

# --------------------------------------------------------------------------
# 2. Render configs
# --------------------------------------------------------------------------
NODE="$(hostname -s)"
[ -n "$NODE" ] || die "hostname -s returned nothing"

# `slurmd -C` prints e.g.
#   NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105
HW="$(slurmd -C 2>/dev/null | head -n1 || true)"
hw_field() { sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<<"$HW"; }
CPUS="$(hw_field CPUs)";                 CPUS="${CPUS:-$(nproc)}"
SOCKETS="$(hw_field SocketsPerBoard)";   SOCKETS="${SOCKETS:-1}"
CORES="$(hw_field CoresPerSocket)";      CORES="${CORES:-$CPUS}"
THREADS="$(hw_field ThreadsPerCore)";    THREADS="${THREADS:-1}"
MEM_DETECTED="$(hw_field RealMemory)"
if [ -z "$MEM_DETECTED" ]; then
  MEM_DETECTED=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 ))
fi
# Declare slightly less memory than detected (2%, rounded down to 64 MiB) so
# that small boot-to-boot variations never drain the node with "Low RealMemory".
REAL_MEM=$(( MEM_DETECTED * 98 / 100 / 64 * 64 ))
[ "$REAL_MEM" -ge 64 ] || REAL_MEM="$MEM_DETECTED"

# CR_Core: one task per core.  On a hyperthreaded machine that would waste
# half the CPUs for 1-cpu tasks, so use CR_CPU there.
if [ "$THREADS" -gt 1 ]; then SELECT_PARAMS=CR_CPU; else SELECT_PARAMS=CR_Core; fi

# cgroup-based tracking needs a delegated, writable cgroup hierarchy and a
# cgroup.conf, which containers / micro-VMs often lack; linuxproc (tracking
# by parent pid) works everywhere and is enough for a test cluster.
PROCTRACK="${SLURM_PROCTRACK:-proctrack/linuxproc}"

if [ "$ACCOUNTING" = 1 ]; then
  ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$(( PORT_BASE + 2 ))"
else
  ACCT_LINES="AccountingStorageType=accounting_storage/none"
fi

# NB: unquoted heredoc -- never put backticks or $(...) in it.
render_conf() {
  cat <<EOF
# Generated by slurm/start-cluster.sh -- do not edit by hand, re-run the script.
# dj-orchestrate's test cluster: everything in ${DIR}, found through SLURM_CONF.
ClusterName=${CLUSTER}
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start
# again (default 120 s); keep it short so requeue/checkpoint tests are quick.
AuthInfo=cred_expire=10
MpiDefault=none

SlurmctldPort=${PORT_BASE}
SlurmdPort=$(( PORT_BASE + 1 ))
SlurmctldPidFile=${RUN_DIR}/slurmctld.pid
SlurmdPidFile=${RUN_DIR}/slurmd.pid
StateSaveLocation=${STATE_DIR}
SlurmdSpoolDir=${SPOOL_DIR}
SlurmctldLogFile=${CTLD_LOG}
SlurmdLogFile=${SLURMD_LOG}
SlurmctldDebug=info
SlurmdDebug=info

# Process tracking / task binding (no cgroups)
ProctrackType=${PROCTRACK}
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30

# Scheduling: several 1-cpu tasks at once
SchedulerType=sched/backfill
# batch_sched_delay=0: start batch jobs / array tasks right away instead of
# in 3 s batches (10-task %2 array: ~13 s -> ~4 s); sched_interval/bf_interval:
# re-check pending jobs often, e.g. a requeued job once it is eligible again
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=2,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=${SELECT_PARAMS}

# Arrays: small on purpose so that array splitting is exercised by tests
# (valid indices are 0..100; --array=0-101 is rejected)
MaxArraySize=101
MaxJobCount=20000

# Keep finished jobs visible in "scontrol show job" / squeue for 5 minutes
MinJobAge=300
# Allow requeue (submitit checkpointing uses "scontrol requeue")
JobRequeue=1

# Accounting
${ACCT_LINES}
JobCompType=jobcomp/filetxt
JobCompLoc=${LOG_DIR}/jobcomp.log

# Timers
ReturnToService=2
SlurmctldTimeout=120
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
Waittime=0

NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} SocketsPerBoard=${SOCKETS} CoresPerSocket=${CORES} ThreadsPerCore=${THREADS} RealMemory=${REAL_MEM} State=UNKNOWN
PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
# a 5-minute limit: time limits are checked against the partition for real
PartitionName=short Nodes=${NODE} MaxTime=00:05:00 State=UP
EOF
}

render_dbd_conf() {
  cat <<EOF
# Generated by slurm/start-cluster.sh -- do not edit by hand, re-run the script.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$(( PORT_BASE + 2 ))
SlurmUser=root
LogFile=${DBD_LOG}
PidFile=${RUN_DIR}/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=${DB_PORT}
StorageUser=slurm
StoragePass=${DB_PASS}
StorageLoc=slurm_acct_db
EOF
}

# install_if_changed FILE CONTENT MODE -> returns 0 if the file was (re)written
install_if_changed() {
  local f="$1" content="$2" mode="$3"
  if [ -f "$f" ] && [ "$(cat "$f")" = "$content" ]; then
    return 1
  fi
  (umask 077; printf '%s\n' "$content" > "$f.tmp.$$")
  chmod "$mode" "$f.tmp.$$"
  mv -f "$f.tmp.$$" "$f"
  return 0
}

mkdir -p "$CONF_DIR" "$LOG_DIR" "$STATE_DIR" "$SPOOL_DIR" "$RUN_DIR" 2>/dev/null \
  || die "cannot create the test cluster's directory $DIR (set DJO_SLURM_DIR to a directory root may write)"
chmod 0755 "$DIR"  # the private MariaDB runs as mysql and must reach its datadir
CONF_CHANGED=0
if install_if_changed "$CONF" "$(render_conf)" 0644; then
  CONF_CHANGED=1
  log "wrote $CONF (node=$NODE cpus=$CPUS mem=${REAL_MEM}M select=$SELECT_PARAMS proctrack=$PROCTRACK accounting=$ACCOUNTING)"
fi
if [ "$ACCOUNTING" = 1 ]; then
  DB_PASS=""
  [ -f "$DBD_CONF" ] && DB_PASS="$(sed -n 's/^StoragePass=//p' "$DBD_CONF" | head -n1)"
  [ -n "$DB_PASS" ] || DB_PASS="$(head -c 64 /dev/urandom | tr -dc 'A-Za-z0-9' | head -c 24)"
  if install_if_changed "$DBD_CONF" "$(render_dbd_conf)" 0600; then
    CONF_CHANGED=1
    log "wrote $DBD_CONF"
  fi
fi

# --------------------------------------------------------------------------
# 3. Daemons
# --------------------------------------------------------------------------

if [ "$CONF_CHANGED" -eq 1 ] && { ours slurmctld || ours slurmd || ours slurmdbd; }; then
  log "config changed while daemons were running: restarting slurm daemons"
  stop_ours slurmd
  stop_ours slurmctld
  stop_ours slurmdbd
fi

# munge ----------------------------------------------------------------------
if ! running munged; then
  if [ ! -s "$MUNGE_KEY" ]; then
    log "creating munge key $MUNGE_KEY"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null 2>&1; then
      mungekey --create --keyfile="$MUNGE_KEY" --force
    else
      dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
    fi
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge "$MUNGE_RUN_DIR"
  chown munge:munge /etc/munge "$MUNGE_KEY" /run/munge /var/log/munge /var/lib/munge "$MUNGE_RUN_DIR"
  chmod 0700 /etc/munge /var/log/munge "$MUNGE_RUN_DIR"
  chmod 0600 "$MUNGE_KEY"
  chmod 0755 /run/munge
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  log "starting munged"
  # its pid file in our directory: stop-cluster.sh stops a munged only if this script started it
  runuser -u munge -- munged --pid-file="$(pid_file munged)" || fail "munged failed to start"
fi
for i in $(seq 1 25); do
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
  [ "$i" -eq 25 ] && fail "munge does not work (munge -n | unmunge failed)"
  sleep 0.2
done

# accounting: private MariaDB + slurmdbd ------------------------------------
db_running() { ours mariadbd; }
db_sql() { mariadb --no-defaults --socket="$DB_SOCK" -u root -N -B -e "$1"; }

if [ "$ACCOUNTING" = 1 ]; then
  if ! db_running; then
    mkdir -p "$DB_DIR"
    chown mysql:mysql "$DB_DIR" "$RUN_DIR"
    if [ ! -d "$DB_DIR/mysql" ]; then
      log "initialising private MariaDB in $DB_DIR"
      mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR" \
        --auth-root-authentication-method=socket --skip-test-db >>"$DB_LOG" 2>&1 \
        || fail "mariadb-install-db failed"
    fi
    log "starting private MariaDB (127.0.0.1:$DB_PORT)"
    rm -f "$DB_SOCK" "$DB_PID"
    setsid -f mariadbd --no-defaults --user=mysql --datadir="$DB_DIR" \
      --socket="$DB_SOCK" --pid-file="$DB_PID" --port="$DB_PORT" \
      --bind-address=127.0.0.1 --skip-name-resolve --log-error="$DB_LOG" \
      --innodb-buffer-pool-size=128M --innodb-log-file-size=64M \
      --innodb-lock-wait-timeout=900 </dev/null >>"$DB_LOG" 2>&1
    for i in $(seq 1 100); do
      db_sql 'SELECT 1' >/dev/null 2>&1 && break
      [ "$i" -eq 100 ] && fail "private MariaDB did not come up"
      sleep 0.2
    done
    db_sql "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
      CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
      ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
      FLUSH PRIVILEGES;" || fail "could not create the slurm database user"
  fi
  if ! ours slurmdbd; then
    log "starting slurmdbd"
    slurmdbd >>"$DBD_LOG" 2>&1 || fail "slurmdbd failed to start"
    for i in $(seq 1 150); do
      sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1 && break
      ours slurmdbd || fail "slurmdbd died during startup"
      [ "$i" -eq 150 ] && fail "slurmdbd does not answer (sacctmgr list cluster)"
      sleep 0.2
    done
  fi
  if ! sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; then
    log "registering cluster '$CLUSTER' in slurmdbd"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || fail "sacctmgr add cluster failed"
  fi
fi

# slurmctld ------------------------------------------------------------------
if ! ours slurmctld; then
  log "starting slurmctld"
  slurmctld >>"$CTLD_LOG" 2>&1 || fail "slurmctld failed to start"
fi
for i in $(seq 1 75); do
  scontrol ping 2>/dev/null | grep -q 'is UP' && break
  ours slurmctld || fail "slurmctld died during startup"
  [ "$i" -eq 75 ] && fail "slurmctld does not answer 'scontrol ping'"
  sleep 0.2
done

# slurmd ---------------------------------------------------------------------
slurmd_answers() { scontrol show slurmd >/dev/null 2>&1; }
if ours slurmd && ! slurmd_answers; then
  # e.g. a slurmd that is just shutting down: give it a moment, else replace it
  sleep 1
  slurmd_answers || stop_ours slurmd
fi
if ! ours slurmd; then
  log "starting slurmd"
  slurmd >>"$SLURMD_LOG" 2>&1 || fail "slurmd failed to start"
fi

# --------------------------------------------------------------------------
# 4. Wait for the node to be usable
# --------------------------------------------------------------------------
deadline=$(( $(date +%s) + START_TIMEOUT ))
resumed=0
state=""
while :; do
  # %T gives e.g. idle, mixed, allocated, down*, drained; strip flag suffixes
  state="$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1 | tr -d '*~#!%$@^-' || true)"
  case "$state" in
    idle|mixed|allocated|completing)
      break ;;
    down|drained|draining|drain|fail|failing)
      if [ "$resumed" -lt 3 ]; then
        log "node $NODE is '$state': resuming it"
        scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
        resumed=$(( resumed + 1 ))
      fi ;;
  esac
  ours slurmd || fail "slurmd died during startup"
  ours slurmctld || fail "slurmctld died during startup"
  if [ "$(date +%s)" -ge "$deadline" ]; then
    sinfo -N -l >&2 || true
    scontrol show node "$NODE" >&2 || true
    fail "node $NODE not idle after ${START_TIMEOUT}s (state='${state:-none}')"
  fi
  sleep 0.5
done

log "cluster up: node=$NODE state=$state partition=debug cpus=$CPUS mem=${REAL_MEM}M accounting=$ACCOUNTING dir=$DIR"
echo "export SLURM_CONF=$CONF"
