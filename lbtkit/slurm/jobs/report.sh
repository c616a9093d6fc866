#!/bin/bash
# `lbtkit report SWEEP_DIR` once the sweep's array is over (`lbtkit sweep submit` adds it):
#   sbatch --dependency=afterany:<array job id> report.sh SWEEP_DIR [lbtkit report flags]
#SBATCH --job-name=lbtkit-report
#SBATCH --output=%x_%j.out
#SBATCH --nodes=1
#SBATCH --ntasks=1
set -euo pipefail
# sbatch runs a copy of this script: find common.sh next to the one submitted.
for LBT_JOBS_DIR in "${LBT_JOBS_DIR:-}" "$(dirname -- "$0")" "$(scontrol show job \
    "${SLURM_JOB_ID:-0}" 2>/dev/null | sed -n 's|^ *Command=\([^ ]*\)/[^/ ]*.*$|\1|p' | head -n 1)" \
    "${SLURM_SUBMIT_DIR:-.}/jobs"; do
    [ -f "$LBT_JOBS_DIR/common.sh" ] && break
done
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$LBT_JOBS_DIR/common.sh" || { echo "error: set LBT_JOBS_DIR=\$(lbtkit jobs path)" >&2; exit 2; }

lbt_plan report "$@"
"${LBT_CMD[@]}" sweep status "$1" || true
exec "${LBT_CMD[@]}" report "$@"
