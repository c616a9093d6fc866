#!/bin/bash
# jobs/run.sh: one lbtkit training run as a SLURM job, on all GPUs of one node.
#
#   sbatch [sbatch flags] jobs/run.sh --output RUN_DIR [lbtkit run flags...]
#   sbatch -p gpu -A myproject -t 8:00:00 --gpus-per-node=4 --cpus-per-task=32 \
#          jobs/run.sh --preset seed-mobilenetv2-scratch --batch-size 4096 --output runs/b4096
#
# --output is required: it is where the run checkpoints, and where a requeued job resumes.
# G >= 2 GPUs on the node: `accelerate launch` with one process per GPU; otherwise one process
# (one GPU, or the CPU). Do not pass --num-processes: the GPU count decides.
#
# Site settings (partition, account, time, GPUs, CPUs) are sbatch flags or SBATCH_* variables,
# never lines here; see jobs/sweep.sh for the list and jobs/common.sh for the LBT_* overrides,
# among them LBT_IMAGE=IMAGE.sif: run lbtkit in that Apptainer image (the directories of
# --output, --data-dir, --config and --init-weights are bound into it).
# Before the time limit (--signal=B:USR1@120) the run checkpoints, the job requeues itself
# and resumes. Log: lbtkit-run_<job id>.out in the submit directory, appended across requeues.
#
# Exit codes: those of `lbtkit run` (0 completed, 3 diverged, 75 interrupted and not requeued,
# 2 usage errors), and 0 after requeueing itself.
#
#SBATCH --job-name=lbtkit-run
#SBATCH --output=%x_%j.out
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@120

set -euo pipefail

# Find jobs/common.sh: sbatch runs a copy of this script from its spool directory, so $0 is no
# guide there. Tried in order: $LBT_JOBS_DIR, this script's folder, the folder of the script as
# submitted (scontrol's Command=), $SLURM_SUBMIT_DIR/jobs.
lbt_jobs_dir() {
    local dir
    for dir in "${LBT_JOBS_DIR:-}" "$(dirname -- "$0")"; do
        [ -n "$dir" ] && [ -f "$dir/common.sh" ] && echo "$dir" && return 0
    done
    if [ -n "${SLURM_JOB_ID:-}" ]; then
        dir=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null |
            sed -n 's/^ *Command=\([^ ]*\)\/[^/ ]*.*$/\1/p') || true
        dir=${dir%%$'\n'*}
        [ -n "$dir" ] && [ -f "$dir/common.sh" ] && echo "$dir" && return 0
    fi
    dir=${SLURM_SUBMIT_DIR:-.}/jobs
    [ -f "$dir/common.sh" ] && echo "$dir" && return 0
    echo "error: cannot find lbtkit's jobs/common.sh; set LBT_JOBS_DIR=/path/to/lbtkit/jobs" >&2
    return 2
}
LBT_JOBS_DIR=$(lbt_jobs_dir) || exit 2
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$LBT_JOBS_DIR/common.sh"

run_dir=$(lbt_output_arg "$@")
[ -n "$run_dir" ] || lbt_die "$LBT_EXIT_USAGE" "usage: sbatch [sbatch flags] jobs/run.sh" \
    "--output RUN_DIR [lbtkit run flags...] (--output is required: the job resumes from it)"

mapfile -t paths < <(lbt_run_paths "$@")
lbt_setup "$run_dir" ${paths[@]+"${paths[@]}"}
gpus=$(lbt_gpus_per_node)
lbt_log "run -> $run_dir; job ${SLURM_JOB_ID:-none} (restart ${SLURM_RESTART_COUNT:-0})" \
    "on $(hostname), $gpus GPU(s)"
lbt_command "$gpus" run "$@"
lbt_run "${LBT_CMD[@]}"
lbt_finish "$run_dir" "$LBT_EXIT_DIVERGED"
