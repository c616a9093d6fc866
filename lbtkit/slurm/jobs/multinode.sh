#!/bin/bash
# One `lbtkit run` on N nodes x G processes (srun: one accelerate launch per node):
#   sbatch -N NODES [site flags] multinode.sh --output RUN_DIR [lbtkit run flags...]
# What runs: `lbtkit job plan multinode ARGS`; settings: docs/slurm.md, "On a SLURM cluster".
#SBATCH --job-name=lbtkit-multinode
#SBATCH --output=%x_%j.out
#SBATCH --ntasks-per-node=1
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

lbt_plan multinode "$@"
lbt_run
lbt_finish multinode "$@"
