#!/bin/sh
# bench_slurm.py's `sbatch`, first on PATH (as a link named sbatch): logs each call's
# arguments to $DJO_BENCH_SBATCH_LOG, then runs the real sbatch, $DJO_BENCH_SBATCH.
echo "$*" >> "$DJO_BENCH_SBATCH_LOG"
exec "$DJO_BENCH_SBATCH" "$@"
