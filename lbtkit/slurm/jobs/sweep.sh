#!/bin/bash
# One entry of an lbtkit sweep per array task; submitted by `lbtkit sweep submit SWEEP_DIR` as
#   sbatch --array=0-<N-1>[%K] [site flags: -p -A -t --gpus-per-node ...] sweep.sh SWEEP_DIR
# What runs: `lbtkit job plan sweep SWEEP_DIR`; settings: docs/slurm.md, "On a SLURM cluster".
#SBATCH --job-name=lbtkit-sweep
#SBATCH --output=%x_%A_%a.out
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@120
set -euo pipefail
# sbatch runs a copy of this script: find common.sh next to the one submitted.
for LBT_JOBS_DIR in "${LBT_JOBS_DIR:-}" "$(dirname -- "$0")" "$(scontrol show job \
    "${SLURM_JOB_ID:-0}" 2>/dev/null | sed -n 's|^ *Command=\([^ ]*\)/[^/ ]*.*$|\1|p' | head -n 1)" \
    "${SLURM_SUBMIT_DIR:-.}/jobs"; do
    [ -f "$LBT_JOBS_DIR/common.sh" ] && break
done
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$LBT_JOBS_DIR/common.sh" || { echo "error: set LBT_JOBS_DIR=\$(lbtkit jobs path)" >&2; exit 2; }

lbt_plan sweep "$@"
lbt_run
lbt_finish sweep "$@"
