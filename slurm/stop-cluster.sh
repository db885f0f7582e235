#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by slurm/start-cluster.sh: cancel its
# jobs, then stop its slurmd, slurmctld, slurmdbd and private MariaDB, and munged if
# start-cluster.sh started it. Only daemons whose pid files are in the cluster's own
# directory (DJO_SLURM_DIR) are stopped: a machine's own SLURM is never touched.
# Idempotent. State (job ids, accounting DB) is kept, so a later start-cluster.sh
# continues where this left off.
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
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "[slurm] unknown option: $a" >&2; exit 2 ;;
  esac
done

# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"
export SLURM_CONF="$CONF"

if ours slurmctld && command -v scancel >/dev/null 2>&1; then
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

stop_ours slurmd
stop_ours slurmctld
stop_ours slurmdbd
stop_ours mariadbd
[ "$KEEP_MUNGE" -eq 1 ] || stop_ours munged

log "cluster stopped"
