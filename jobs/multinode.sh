#!/bin/bash
# jobs/multinode.sh: one lbtkit run on N nodes x G GPUs (DDP over all N*G processes).
#
#   sbatch -N NODES [sbatch flags] jobs/multinode.sh --output RUN_DIR [lbtkit run flags...]
#   sbatch -N 4 -p gpu -A myproject -t 12:00:00 --gpus-per-node=8 --cpus-per-task=64 \
#          jobs/multinode.sh --preset seed-mobilenetv2-scratch --batch-size 16384 \
#          --output runs/b16384
#
# `srun` starts one task per node; each runs `accelerate launch --num_machines N
# --num_processes N*G --machine_rank <its SLURM_NODEID> -m lbtkit run ...`, rendezvousing (c10d)
# at the first node of the allocation on a port derived from the job id. The rank is expanded
# inside srun, per node (expanded in the batch shell, every node would be rank 0 and hang).
# srun runs with --kill-on-bad-exit=1: one node failing stops the others instead of leaving
# them blocked in a collective. G is this node's GPU count (nodes are assumed alike); nodes
# without GPUs run one CPU process each (gloo). --cpus-per-task is passed on to srun (since
# SLURM 22.05 srun does not inherit it from sbatch).
#
# In a container (LBT_IMAGE=IMAGE.sif, see jobs/common.sh) each node's task is `apptainer exec
# [--nv] --bind ... IMAGE accelerate launch ... --machine_rank <its SLURM_NODEID> -m lbtkit run
# ...`: the rank is still expanded per node, by bash on the node before apptainer starts, and
# the image and the bound directories must be on file systems every node sees.
#
# --output is required (the checkpoint and resume directory, on a file system all nodes see).
# Site settings are sbatch flags or SBATCH_* variables (see jobs/sweep.sh), LBT_* overrides are
# in jobs/common.sh. Before the time limit (--signal=B:USR1@120) the batch shell sends SIGTERM
# to the srun step's processes on every node (`scancel --signal=TERM JOB.STEP`; a SIGTERM to
# srun itself would cancel the step at once); the run checkpoints and the job requeues itself.
# Log: lbtkit-multinode_<job id>.out in the submit directory, appended across requeues.
#
# Exit codes: those of `lbtkit run` (0 completed, 3 diverged, 75 interrupted and not requeued,
# 2 usage errors), and 0 after requeueing itself.
#
#SBATCH --job-name=lbtkit-multinode
#SBATCH --output=%x_%j.out
#SBATCH --ntasks-per-node=1
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
[ -n "$run_dir" ] || lbt_die "$LBT_EXIT_USAGE" "usage: sbatch -N NODES [sbatch flags]" \
    "jobs/multinode.sh --output RUN_DIR [lbtkit run flags...] (--output is required)"
[ -n "${SLURM_JOB_ID:-}" ] || lbt_die "$LBT_EXIT_USAGE" "jobs/multinode.sh runs under SLURM:" \
    "submit it with sbatch -N NODES jobs/multinode.sh --output RUN_DIR ..."

mapfile -t paths < <(lbt_run_paths "$@")
lbt_setup "$run_dir" ${paths[@]+"${paths[@]}"}
if [ "$LBT_RELAY_TO_STEPS" = 1 ]; then
    lbt_die "$LBT_EXIT_USAGE" "LBT_EXEC starts with srun, and jobs/multinode.sh runs srun" \
        "itself (one task per node): a step inside a step would not start. For a container" \
        "use LBT_IMAGE (Apptainer); for pyxis add the --container-* flags to srun_args here"
fi
nodes=${SLURM_NNODES:-1}
gpus=$(lbt_gpus_per_node)
per_node=$((gpus > 1 ? gpus : 1))
mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
port=$(lbt_port)
lbt_log "run -> $run_dir; job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}):" \
    "$nodes node(s) x $per_node process(es), rendezvous at ${hosts[0]}:$port"

launch=(${LBT_EXEC_CMD[@]+"${LBT_EXEC_CMD[@]}"} "${LBT_ACCELERATE_CMD[@]}" launch
    "${LBT_LAUNCH_ARGS[@]}" --num_machines "$nodes" --num_processes $((nodes * per_node))
    --main_process_ip "${hosts[0]}" --main_process_port "$port" --rdzv_backend c10d)
srun_args=(--kill-on-bad-exit=1 --nodes="$nodes" --ntasks="$nodes" --ntasks-per-node=1)
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
    srun_args+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
fi
# Each node's task: the launch command (up to "--"), its own --machine_rank, then the rest.
# shellcheck disable=SC2016  # $SLURM_NODEID must expand inside srun, on each node
node_script='n=1; for arg in "$@"; do [ "$arg" = -- ] && break; n=$((n + 1)); done;
exec "${@:1:n-1}" --machine_rank "$SLURM_NODEID" "${@:n+1}"'

LBT_RELAY_TO_STEPS=1
lbt_run srun "${srun_args[@]}" bash -c "${node_script//$'\n'/ }" lbtkit-node \
    "${launch[@]}" -- -m lbtkit run "$@"
lbt_finish "$run_dir" "$LBT_EXIT_DIVERGED"
