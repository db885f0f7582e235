#!/bin/bash
# Submit the pipeline: one array per table, downstream after upstream.
# The database credentials come from the environment (DJ_HOST, DJ_USER, DJ_PASS) or
# datajoint.json on the compute nodes; they are never written into these scripts.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p logs
deps=
j_Square=$(sbatch --parsable ${deps:+--dependency=afterany${deps}} 00-Square.sbatch)
echo "Square: $j_Square"
deps="${deps}:${j_Square}"
j_Total=$(sbatch --parsable ${deps:+--dependency=afterany${deps}} 01-Total.sbatch)
echo "Total: $j_Total"
