#!/usr/bin/env bash
# Smoke test for the cluster started by slurm/start-cluster.sh (~30 s):
# a plain job, a throttled array job, the MaxArraySize=101 limit, scancel of
# an array task, requeue and --signal.  Exits non-zero on the first failure.
set -uo pipefail

log() { echo "[slurm-check] $*"; }
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"
export SLURM_CONF="${SLURM_CONF:-$CONF}"  # the test cluster, unless told otherwise
die() { echo "[slurm-check] FAIL: $*" >&2; exit 1; }

WORK="$(mktemp -d /tmp/slurm-check.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

# wait_gone JOBID SECONDS: wait until no record of the job is pending/running
wait_gone() {
  local end=$(( $(date +%s) + $2 ))
  while [ -n "$(squeue -h -j "$1" -t PD,R,CG,CF,S 2>/dev/null)" ]; do
    [ "$(date +%s)" -lt "$end" ] || return 1
    sleep 0.5
  done
}
# wait_state JOBID STATE SECONDS
wait_state() {
  local end=$(( $(date +%s) + $3 ))
  until [ "$(squeue -h -j "$1" -t all -o %T 2>/dev/null | head -n1)" = "$2" ]; do
    [ "$(date +%s)" -lt "$end" ] || return 1
    sleep 0.3
  done
}

sinfo -h -o %T | grep -qE '^(idle|mixed|allocated)' || die "node not up: $(sinfo -h -o %T)"

log "1. sbatch --wrap hostname"
j=$(sbatch --parsable --wrap hostname) || die "sbatch failed"
wait_gone "$j" 30 || die "job $j did not finish"
st=$(squeue -h -j "$j" -t all -o %T)
[ "$st" = COMPLETED ] || die "job $j state '$st'"
[ "$(cat "slurm-$j.out")" = "$(hostname)" ] || die "unexpected output: $(cat "slurm-$j.out")"

log "2. sbatch --array=0-101 is rejected (MaxArraySize=101)"
if sbatch --array=0-101 --wrap true >/dev/null 2>&1; then die "--array=0-101 was accepted"; fi

log "3. sbatch --array=0-100%4 (101 tasks, ~1 min)"
j=$(sbatch --parsable --array=0-100%4 --wrap 'echo $SLURM_ARRAY_TASK_ID') || die "array sbatch failed"
wait_gone "$j" 300 || die "array $j did not finish"
n=$(squeue -h -r -j "$j" -t all -o %T | grep -c COMPLETED)
[ "$n" -eq 101 ] || die "array $j: $n/101 tasks COMPLETED"
[ "$(cat slurm-"$j"_*.out | sort -n | tr '\n' ' ')" = "$(seq 0 100 | tr '\n' ' ')" ] \
  || die "array outputs do not cover 0..100"

log "4. scancel of one running array task, requeue of another, --signal=USR2@90"
j=$(sbatch --parsable --array=0-2 --signal=USR2@90 --time=5 \
      --wrap 'echo start ${SLURM_RESTART_COUNT:-0}; sleep 5') || die "sbatch failed"
wait_state "${j}_0" RUNNING 30 || die "${j}_0 not running"
wait_state "${j}_1" RUNNING 30 || die "${j}_1 not running"
scancel "${j}_1" || die "scancel ${j}_1 failed"
scontrol requeue "${j}_0" || die "scontrol requeue ${j}_0 failed"
wait_gone "$j" 90 || die "array $j did not finish after requeue"
[ "$(squeue -h -j "${j}_1" -t all -o %T)" = CANCELLED ] || die "${j}_1 not CANCELLED"
[ "$(squeue -h -j "${j}_0" -t all -o %T)" = COMPLETED ] || die "${j}_0 not COMPLETED after requeue"
scontrol show job "${j}_0" | grep -q 'Restarts=1' || die "${j}_0 was not restarted"

if sacct -n -X -j "$j" >/dev/null 2>&1; then
  log "5. sacct"
  sacct -n -X -P -j "$j" -o JobID,State | grep -q "^${j}_2|COMPLETED" || die "sacct does not show ${j}_2"
fi

log "all checks passed"
