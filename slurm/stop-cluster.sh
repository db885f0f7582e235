#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by slurm/start-cluster.sh:
# cancel all jobs, then stop slurmd, slurmctld, slurmdbd, the private MariaDB
# used by slurmdbd, and munged.  Idempotent.  State (job ids, accounting DB)
# is kept, so a later start-cluster.sh continues where this left off.
#
#   --keep-munge   leave munged running
set -uo pipefail

log() { echo "[slurm] $*"; }

[ "$(id -u)" -eq 0 ] || { echo "[slurm] ERROR: must run as root" >&2; exit 1; }
export PATH="$PATH:/usr/sbin:/sbin"

KEEP_MUNGE=0
for a in "$@"; do
  case "$a" in
    --keep-munge) KEEP_MUNGE=1 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "[slurm] unknown option: $a" >&2; exit 2 ;;
  esac
done

# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

if running slurmctld && command -v scancel >/dev/null 2>&1; then
  if [ -n "$(squeue -h -o %i 2>/dev/null | head -n1)" ]; then
    log "cancelling all jobs"
    # scancel needs a filter: cancel per job owner (covers every user).
    squeue -h -o %u 2>/dev/null | sort -u | while read -r u; do
      scancel --full --quiet --user="$u" 2>/dev/null || true
    done
    # Give slurmd a moment to kill the job steps cleanly.
    for _ in $(seq 1 20); do
      [ -z "$(squeue -h -t R,CG -o %i 2>/dev/null | head -n1)" ] && break
      sleep 0.5
    done
  fi
fi


stop_daemon slurmd
# Leftover job step daemons (slurmstepd) would keep running after slurmd.
stop_daemon slurmstepd
stop_daemon slurmctld
stop_daemon slurmdbd

# The private MariaDB is stopped via its pid file only: a system MariaDB
# (e.g. on port 3306) must not be touched.
DB_PID=/run/slurm-mariadb/mysqld.pid
if [ -f "$DB_PID" ]; then
  pid="$(cat "$DB_PID" 2>/dev/null || true)"
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = mariadbd ]; then
    log "stopping private MariaDB (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    alive() { local st; st="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)"; [ -n "$st" ] && [ "$st" != Z ]; }
    for _ in $(seq 1 150); do
      alive || break
      sleep 0.2
    done
    alive && { log "MariaDB did not exit after 30s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
  fi
fi

[ "$KEEP_MUNGE" -eq 1 ] || stop_daemon munged

log "cluster stopped"
