#!/bin/bash
# jobs/sweep.sh: an lbtkit sweep as ONE SLURM job array, one array task per sweep entry.
#
#   lbtkit sweep plan --preset P --batch-sizes 256,1024,4096 --output SWEEP_DIR
#   lbtkit sweep submit SWEEP_DIR [--max-parallel K] [-- more sbatch flags]
#
# `lbtkit sweep submit` runs (N = entries in SWEEP_DIR/sweep.json, K = tasks at a time):
#
#   sbatch --array=0-<N-1>[%K] [flags] jobs/sweep.sh SWEEP_DIR
#
# and then a report job, `sbatch --dependency=afterany:<array job id> jobs/report.sh SWEEP_DIR`.
# Without --array the script refuses to run (exit 2): a plain sbatch would train one entry only.
#
# Each task runs `lbtkit sweep run-task SWEEP_DIR --index $SLURM_ARRAY_TASK_ID` on all GPUs of its
# node (accelerate launch, one process per GPU, a port derived from the task's job id), or as one
# process on a node without GPUs. A task that finds its run completed does not retrain it; one
# that finds a checkpoint resumes from it.
#
# Site settings are sbatch flags (or SBATCH_* variables), never lines in this file; unset, they
# are the cluster's defaults. For example:
#
#   sbatch -p gpu -A myproject -t 4:00:00 --gpus-per-node=4 --cpus-per-task=32 \
#          --array=0-5%2 jobs/sweep.sh SWEEP_DIR
#   (or SBATCH_PARTITION=gpu SBATCH_ACCOUNT=myproject SBATCH_TIMELIMIT=4:00:00
#       SBATCH_GPUS_PER_NODE=4 ...; --cpus-per-task has no SBATCH_ variable)
#
# Request GPUs (--gpus-per-node / --gres) so SLURM sets CUDA_VISIBLE_DEVICES: array tasks may
# share a node, and the GPU count comes from that (see jobs/common.sh for LBT_* overrides).
#
# In a container: LBT_IMAGE=/shared/lbtkit-0.1.0.sif [LBT_BIND=/scratch,...] lbtkit sweep submit ...
# runs each task as `apptainer exec [--nv] --bind <the sweep's parent,...> IMAGE lbtkit sweep
# run-task ...` (jobs/common.sh has the rules: binds, --nv, environment, pyxis).
#
# Time limit: --signal=B:USR1@120 asks SLURM for SIGUSR1 120 s before the time limit (SLURM may
# send it up to 60 s earlier: it checks on a periodic pass). The task then finishes its step,
# checkpoints, requeues itself and resumes; 120 s covers a step plus a checkpoint of the models
# here, raise it for slower ones: sbatch --signal=B:USR1@300 ... A scancel (SIGTERM) also
# checkpoints but does not requeue; a preempted job with --requeue is requeued by SLURM itself.
# Logs: %x_%A_%a.out in the directory you submit from (lbtkit-sweep_<array job id>_<index>.out),
# appended to across requeues.
#
# Exit codes: 0 completed, 0 diverged (a result of the sweep, recorded in results.json and shown
# by `lbtkit report`; afterok dependencies still run), 0 after a requeue, 75 interrupted and not
# requeued (scancel; resubmit to resume), 2 usage errors, anything else a failure.
#
#SBATCH --job-name=lbtkit-sweep
#SBATCH --output=%x_%A_%a.out
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

usage="usage: sbatch --array=0-<N-1>[%K] [sbatch flags] jobs/sweep.sh SWEEP_DIR
   or: lbtkit sweep submit SWEEP_DIR"
[ $# -eq 1 ] || lbt_die "$LBT_EXIT_USAGE" "$usage"
[ -f "$1/sweep.json" ] || lbt_die "$LBT_EXIT_USAGE" "no sweep plan at $1/sweep.json" \
    "(make one with: lbtkit sweep plan ... --output $1)"
sweep_dir=$(cd "$1" && pwd)
mapfile -t run_dirs < <(lbt_sweep_run_dirs "$sweep_dir")
n=${#run_dirs[@]}
[ "$n" -gt 0 ] || lbt_die "$LBT_EXIT_USAGE" "$sweep_dir/sweep.json lists no runs"

if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
    lbt_die "$LBT_EXIT_USAGE" "jobs/sweep.sh runs one sweep entry per SLURM array task," \
        "and SLURM_ARRAY_TASK_ID is not set. Submit all $n entries with
    lbtkit sweep submit $sweep_dir
or
    sbatch --array=0-$((n - 1)) jobs/sweep.sh $sweep_dir"
fi
index=$SLURM_ARRAY_TASK_ID
if [ "$index" -ge "$n" ]; then
    lbt_die "$LBT_EXIT_USAGE" "array index $index is out of range: $sweep_dir has $n entries" \
        "(submit with --array=0-$((n - 1)))"
fi
run_dir=${run_dirs[$index]}
[ "${run_dir#/}" != "$run_dir" ] || run_dir=$sweep_dir/$run_dir

mapfile -t data_dirs < <(lbt_sweep_data_dirs "$sweep_dir")
lbt_setup "$sweep_dir" "$run_dir" ${data_dirs[@]+"${data_dirs[@]}"}
gpus=$(lbt_gpus_per_node)
lbt_log "sweep $sweep_dir entry $index of $n -> $run_dir"
lbt_log "job ${SLURM_JOB_ID:-} (array ${SLURM_ARRAY_JOB_ID:-}_$index," \
    "restart ${SLURM_RESTART_COUNT:-0}) on $(hostname), $gpus GPU(s)"
planned=$(sed -n 's/^  "world_size": *\([0-9]*\).*$/\1/p' "$sweep_dir/sweep.json") || true
if [ -n "$planned" ] && [ "$planned" != "$((gpus > 1 ? gpus : 1))" ]; then
    lbt_log "note: the plan was checked for $planned process(es), this task runs" \
        "$((gpus > 1 ? gpus : 1)): same global batch, per-device batch and accumulation differ" \
        "(plan with --num-processes $((gpus > 1 ? gpus : 1)) to match)"
fi
lbt_command "$gpus" sweep run-task "$sweep_dir" --index "$index"
lbt_run "${LBT_CMD[@]}"
# A diverged entry exits 0: a recorded result of the sweep, not a crash.
lbt_finish "$run_dir" 0
