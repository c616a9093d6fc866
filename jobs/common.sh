# shellcheck shell=bash
# jobs/common.sh: shared by the lbtkit SLURM scripts (sweep.sh, run.sh, multinode.sh, report.sh).
# Sourced, never run. It decides which lbtkit to run, how many processes, and what the job does
# when the run stops: complete, diverge, or checkpoint on a signal and requeue itself.
#
# Which lbtkit runs: the one of the environment you submit from. sbatch passes the submitting
# shell's environment on (its default --export=ALL), so with lbtkit's venv activated (or its
# bin/ first on PATH) the job finds the same `lbtkit` and `accelerate`. `lbtkit sweep submit`
# pins them to its own interpreter (LBT_LBTKIT / LBT_ACCELERATE below). A site that submits with
# --export=NONE (SBATCH_EXPORT=NONE) passes nothing on: add --export=ALL, or pass the LBT_*
# variables (--export=NONE,LBT_LBTKIT=/path/to/venv/bin/lbtkit,...). Everything is optional:
#
#   LBT_LBTKIT         the lbtkit command                     [lbtkit, from PATH]
#   LBT_ACCELERATE     the accelerate command, same env       [accelerate, from PATH]
#                      (both are split on spaces: LBT_LBTKIT="/opt/venv/bin/python -m lbtkit")
#   LBT_EXEC           a prefix for both, e.g. a container    [none]
#                      (LBT_EXEC="apptainer exec --nv lbtkit.sif")
#   LBT_GPUS_PER_NODE  processes per node                     [detected: CUDA_VISIBLE_DEVICES,
#                      else SLURM_GPUS_ON_NODE, else `nvidia-smi -L`; 0 without GPUs]
#   LBT_PORT           rendezvous port of accelerate launch   [20000 + SLURM_JOB_ID % 20000]
#   LBT_IGNORE_ACCELERATE_CONFIG=1
#                      launch with a minimal accelerate config instead of the default file
#                      ($HF_HOME/accelerate/default_config.yaml, HF_HOME defaulting to
#                      ~/.cache/huggingface), which otherwise silently adds its settings
#                      (mixed precision, dynamo, gpu_ids, ...) to every launch.
#   LBT_JOBS_DIR       where these scripts live               [found; `lbtkit sweep submit` sets it]
#
# Processes: G >= 2 GPUs on the node -> `accelerate launch --multi_gpu --num_processes G`
# (DDP, one process per GPU); G <= 1 -> one plain `lbtkit` process (one GPU, or the CPU).
# Array tasks can share a node: each has its own job id, hence its own port.
#
# Signals: the scripts submit with --signal=B:USR1@<margin>, so before the time limit SLURM sends
# SIGUSR1 to the batch shell only. The shell runs the work in the background and relays USR1 (and
# TERM) to it as SIGTERM: torchrun (under accelerate launch) forwards SIGTERM to its workers but
# not SIGUSR1 (a SIGUSR1 would kill its agent and orphan the workers), and lbtkit's loop answers
# SIGTERM by finishing its step, writing a checkpoint and results.json status "interrupted", and
# exiting 75. After a USR1 the job then requeues itself (`scontrol requeue`, which needs the
# job's --requeue) and the requeued job resumes from the checkpoint. After a TERM alone (scancel,
# or a preemption that SLURM requeues by itself) the job only checkpoints: requeueing a job that
# is being cancelled would bring it back.

# Exit codes of lbtkit (lbtkit/train.py).
LBT_EXIT_DIVERGED=3
LBT_EXIT_INTERRUPTED=75
LBT_EXIT_USAGE=2

lbt_log() {
    printf '[lbtkit-job %s] %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$*"
}

lbt_die() {  # lbt_die CODE MESSAGE...
    local code=$1
    shift
    printf 'error: %s\n' "$*" >&2
    exit "$code"
}

# --- the commands ------------------------------------------------------------------------------

# Sets the arrays LBT_EXEC_CMD, LBT_LBTKIT_CMD, LBT_ACCELERATE_CMD and LBT_LAUNCH_ARGS (the
# `accelerate launch` options every launch gets).
lbt_setup() {
    read -r -a LBT_EXEC_CMD <<<"${LBT_EXEC:-}"
    read -r -a LBT_LBTKIT_CMD <<<"${LBT_LBTKIT:-lbtkit}"
    read -r -a LBT_ACCELERATE_CMD <<<"${LBT_ACCELERATE:-accelerate}"
    if [ "${#LBT_EXEC_CMD[@]}" -eq 0 ] && ! command -v "${LBT_LBTKIT_CMD[0]}" >/dev/null 2>&1; then
        lbt_die "$LBT_EXIT_USAGE" "'${LBT_LBTKIT_CMD[0]}' not found (PATH=$PATH): activate" \
            "lbtkit's environment before sbatch (sbatch passes your environment on)," \
            "or set LBT_LBTKIT=/path/to/venv/bin/lbtkit"
    fi
    # --multi_gpu also means N CPU processes over gloo on a node without GPUs (lbtkit then
    # makes a CPU Accelerator). Precision and compilation are lbtkit's RunConfig's business:
    # "no" here only silences accelerate's warning and overrides a default config's values.
    LBT_LAUNCH_ARGS=(--multi_gpu --mixed_precision no --dynamo_backend no)
    local hf_home=${HF_HOME:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/huggingface}
    if [ "${LBT_IGNORE_ACCELERATE_CONFIG:-0}" = 1 ]; then
        LBT_ACCELERATE_CONFIG=$(mktemp "${TMPDIR:-/tmp}/lbtkit-accelerate-XXXXXX.yaml")
        printf 'compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\n' \
            >"$LBT_ACCELERATE_CONFIG"
        LBT_LAUNCH_ARGS+=(--config_file "$LBT_ACCELERATE_CONFIG")
    elif [ -f "$hf_home/accelerate/default_config.yaml" ]; then
        lbt_log "note: accelerate launch will read $hf_home/accelerate/default_config.yaml" \
            "(set LBT_IGNORE_ACCELERATE_CONFIG=1 to ignore it)"
    fi
}

# The number of GPUs this job may use on this node (0 without any).
lbt_gpus_per_node() {
    local ids
    if [ -n "${LBT_GPUS_PER_NODE:-}" ]; then
        case $LBT_GPUS_PER_NODE in
        *[!0-9]*) lbt_die "$LBT_EXIT_USAGE" "LBT_GPUS_PER_NODE must be a number," \
            "got '$LBT_GPUS_PER_NODE'" ;;
        esac
        echo "$LBT_GPUS_PER_NODE"
    elif [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
        case $CUDA_VISIBLE_DEVICES in
        "" | -1 | NoDevFiles) echo 0 ;;
        *)
            read -r -a ids <<<"${CUDA_VISIBLE_DEVICES//,/ }"
            echo "${#ids[@]}"
            ;;
        esac
    elif [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then
        echo "$SLURM_GPUS_ON_NODE"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
    else
        echo 0
    fi
}

# The rendezvous port: unique per job, hence per array task (each task has its own job id).
lbt_port() {
    echo "${LBT_PORT:-$((20000 + ${SLURM_JOB_ID:-$$} % 20000))}"
}

# lbt_command G ARGS...: set LBT_CMD to `lbtkit ARGS` on G processes of this node.
# shellcheck disable=SC2034  # LBT_CMD is for the sourcing script
lbt_command() {
    local gpus=$1
    shift
    if [ "$gpus" -ge 2 ]; then
        LBT_CMD=(${LBT_EXEC_CMD[@]+"${LBT_EXEC_CMD[@]}"} "${LBT_ACCELERATE_CMD[@]}" launch
            "${LBT_LAUNCH_ARGS[@]}" --num_processes "$gpus" --num_machines 1
            --main_process_port "$(lbt_port)" -m lbtkit "$@")
    else
        LBT_CMD=(${LBT_EXEC_CMD[@]+"${LBT_EXEC_CMD[@]}"} "${LBT_LBTKIT_CMD[@]}" "$@")
    fi
}

# --- running with the signal relay -----------------------------------------------------------

LBT_SIGNALS=""
LBT_CHILD=""
LBT_ACCELERATE_CONFIG=""  # a temporary file (LBT_IGNORE_ACCELERATE_CONFIG=1)
LBT_RELAY_TO_STEPS=0  # 1: relay to this job's srun steps (multinode.sh), not the child process

lbt_relay() {  # the trap: lbt_relay USR1|TERM
    LBT_SIGNALS="${LBT_SIGNALS:+$LBT_SIGNALS }$1"
    if [ -z "$LBT_CHILD" ] || ! kill -0 "$LBT_CHILD" 2>/dev/null; then
        lbt_log "received SIG$1 (nothing running)"
        return 0
    fi
    if [ "$LBT_RELAY_TO_STEPS" = 1 ]; then
        # SIGTERM to srun itself would cancel the step at once: signal the step's processes.
        local step
        for step in $(squeue -h -s -j "$SLURM_JOB_ID" -o %i 2>/dev/null); do
            case $step in
            *.batch | *.extern) ;;
            *)
                lbt_log "received SIG$1: sending SIGTERM to job step $step (checkpoint and stop)"
                scancel --signal=TERM "$step" || true
                ;;
            esac
        done
    else
        lbt_log "received SIG$1: sending SIGTERM to pid $LBT_CHILD (checkpoint and stop)"
        kill -TERM "$LBT_CHILD" 2>/dev/null || true
    fi
}

# lbt_run COMMAND...: run it in the background, relaying SIGUSR1/SIGTERM, until it really exits.
# Sets LBT_STATUS (its exit code); LBT_SIGNALS lists the signals received.
lbt_run() {
    LBT_STARTED=$(mktemp "${TMPDIR:-/tmp}/lbtkit-job-start-XXXXXX")
    trap 'rm -f "$LBT_STARTED" ${LBT_ACCELERATE_CONFIG:+"$LBT_ACCELERATE_CONFIG"}' EXIT
    trap 'lbt_relay USR1' USR1
    trap 'lbt_relay TERM' TERM
    local line
    printf -v line '%q ' "$@"
    lbt_log "running: ${line% }"
    "$@" &
    LBT_CHILD=$!
    LBT_STATUS=0
    while :; do
        LBT_STATUS=0
        wait "$LBT_CHILD" || LBT_STATUS=$?
        # A trap cuts `wait` short (status > 128); the child is then still running.
        kill -0 "$LBT_CHILD" 2>/dev/null || break
    done
    # If the cut-short wait raced with the child's exit, this wait returns its real status.
    local again=0
    wait "$LBT_CHILD" 2>/dev/null || again=$?
    [ "$again" -ne 127 ] && LBT_STATUS=$again
    lbt_log "exited with status $LBT_STATUS"
}

# The status in RUN_DIR/results.json if this job wrote it (newer than lbt_run's start), else "".
lbt_fresh_status() {
    local file="$1/results.json" status
    if [ -f "$file" ] && [ "$file" -nt "$LBT_STARTED" ]; then
        # write_json puts one top-level key per line, indented by two spaces.
        status=$(sed -n 's/^  "status": *"\([A-Za-z_]*\)".*$/\1/p' "$file") || true
        echo "${status%%$'\n'*}"
    fi
}

# Requeue this job (this task of an array). Refuses unless the job is RUNNING (a job being
# cancelled is COMPLETING, and a requeue would bring it back).
lbt_requeue() {
    local id=${SLURM_JOB_ID:-} state
    if [ -z "$id" ]; then
        lbt_log "not under SLURM: rerun the same command to resume"
        return 1
    fi
    # For an array task, the task's own SLURM_JOB_ID can equal the array's job id, and
    # `scontrol requeue <array job id>` requeues EVERY task of the array: name the task.
    if [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
        id="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
    fi
    state=$(scontrol show job "$id" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p') || true
    state=${state%%$'\n'*}
    if [ "$state" != RUNNING ]; then
        lbt_log "job $id is ${state:-unknown}, not RUNNING: not requeueing"
        return 1
    fi
    lbt_log "requeueing job $id (restart $((${SLURM_RESTART_COUNT:-0} + 1))):" \
        "it resumes from the checkpoint"
    scontrol requeue "$id"
}

# lbt_finish RUN_DIR DIVERGED_EXIT: after lbt_run, requeue or pass the outcome on; exits.
# The run's fresh results.json decides over the exit code: under accelerate launch every
# worker exit code arrives as 1.
lbt_finish() {
    local run_dir=$1 diverged_exit=$2 status
    status=$(lbt_fresh_status "$run_dir")
    if [ "$LBT_STATUS" -eq "$LBT_EXIT_INTERRUPTED" ] || [ "$status" = interrupted ]; then
        case " $LBT_SIGNALS " in
        *" USR1 "*) ;;
        *" TERM "*)
            lbt_log "stopped by SIGTERM (scancel, or preemption that SLURM requeues itself):" \
                "checkpoint in $run_dir; not requeueing; resubmit the same job to resume"
            exit "$LBT_EXIT_INTERRUPTED"
            ;;
        esac
        lbt_log "run interrupted with a checkpoint in $run_dir"
        if lbt_requeue; then
            exit 0  # the requeue ends this instance; exit 0 so it is not counted as a failure
        fi
        exit "$LBT_EXIT_INTERRUPTED"
    fi
    if [ -z "$status" ] && [ "$LBT_STATUS" -eq "$LBT_EXIT_DIVERGED" ]; then
        status=diverged
    fi
    if [ "$status" = diverged ]; then
        lbt_log "run diverged (non-finite loss), recorded in $run_dir/results.json"
        exit "$diverged_exit"
    fi
    if [ "$status" = completed ]; then
        if [ "$LBT_STATUS" -ne 0 ]; then
            lbt_log "warning: the run completed but the launcher exited $LBT_STATUS"
        fi
        lbt_log "run completed: $run_dir"
        exit 0
    fi
    if [ "$LBT_STATUS" -ne 0 ]; then
        lbt_log "run failed (exit $LBT_STATUS${status:+, status $status}); see the log above"
    fi
    exit "$LBT_STATUS"
}

# lbt_output_arg ARGS...: the value of --output (or --output=) among lbtkit run flags.
lbt_output_arg() {
    local previous=""
    for arg in "$@"; do
        case $arg in
        --output=*)
            echo "${arg#--output=}"
            return 0
            ;;
        esac
        if [ "$previous" = --output ]; then
            echo "$arg"
            return 0
        fi
        previous=$arg
    done
}

# --- sweeps ------------------------------------------------------------------------------------

# lbt_sweep_run_dirs SWEEP_DIR: the entries' run directories in index order, one a line, as
# sweep.json records them (relative to SWEEP_DIR). Read with grep: no Python needed here.
lbt_sweep_run_dirs() {
    grep -o '"run_dir": *"[^"]*"' "$1/sweep.json" | sed 's/^"run_dir": *"\(.*\)"$/\1/'
}
