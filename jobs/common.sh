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
#   LBT_EXEC           a prefix for both, a wrapper command   [none]
#                      (e.g. the pyxis srun below; for Apptainer use LBT_IMAGE)
#   LBT_GPUS_PER_NODE  processes per node                     [detected: CUDA_VISIBLE_DEVICES,
#                      else SLURM_GPUS_ON_NODE, else `nvidia-smi -L`; 0 without GPUs]
#   LBT_PORT           rendezvous port of accelerate launch   [20000 + SLURM_JOB_ID % 20000]
#   LBT_IGNORE_ACCELERATE_CONFIG=1
#                      launch with a minimal accelerate config instead of the default file
#                      ($HF_HOME/accelerate/default_config.yaml, HF_HOME defaulting to
#                      ~/.cache/huggingface), which otherwise silently adds its settings
#                      (mixed precision, dynamo, gpu_ids, ...) to every launch.
#   LBT_JOBS_DIR       where these scripts live               [found; `lbtkit sweep submit` sets it]
#   LBT_TORCH_HOME     a shared torch cache (filled with `TORCH_HOME=DIR lbtkit fetch weights`):
#                      the job's TORCH_HOME, on the host and in the container  [unset: TORCH_HOME]
#
# Containers (Apptainer >= 1.0, or SingularityCE >= 3.6 for --env): with LBT_IMAGE set, every
# lbtkit and accelerate command of the job runs in that image; the batch shell (the signal
# relay, scontrol requeue, srun) stays on the host. The nodes need the runtime and must see
# the image; the job needs no lbtkit on the host:
#
#   LBT_IMAGE=/shared/lbtkit-0.1.0.sif LBT_BIND=/scratch lbtkit sweep submit SWEEP_DIR -- ...
#   each task: apptainer exec --nv --bind /scratch,<dirs> IMAGE lbtkit sweep run-task ...
#
#   LBT_IMAGE          the image: a .sif file (`make sif`) or a sandbox directory  [none: host]
#   LBT_BIND           more bind paths, comma-separated, as apptainer --bind takes them
#                      (LBT_BIND=/scratch,/shared or SRC:DEST[:ro]; each SRC must exist)
#   LBT_DATA_DIR       the data directory, bound (run.sh and multinode.sh also bind --data-dir,
#                      sweep.sh the data_dir values of sweep.json)
#   LBT_APPTAINER_ARGS more `apptainer exec` options, split on spaces (e.g. --nvccli, --cleanenv)
#
# - The runtime is `apptainer`, else `singularity`, from PATH. Before running anything the job
#   checks that the image exists, that one of them is found, that every LBT_BIND source exists
#   and that LBT_EXEC is not set as well; if not it exits 2 with the reason, and is not requeued.
# - LBT_LBTKIT and LBT_ACCELERATE then name commands in the image: lbtkit and accelerate, from
#   the image's PATH, unless set (`lbtkit sweep submit` does not pin them when LBT_IMAGE is set:
#   a host interpreter's path does not exist in the image). The multi-GPU launch is
#   `apptainer exec ... IMAGE accelerate launch ... -m lbtkit ...`, so accelerate, torchrun and
#   the workers all run in the image; in multinode.sh each node's srun task runs that command,
#   its --machine_rank still expanded per node (in bash on the node, before apptainer).
# - --nv (the host's NVIDIA driver libraries and devices) is passed when the job has GPUs on
#   the node (the GPU count below is >= 1, LBT_GPUS_PER_NODE included), not otherwise (the
#   report job, CPU nodes: Apptainer would only warn about the missing driver files). Add it
#   with LBT_APPTAINER_ARGS=--nv if the count misses your GPUs.
# - Bound: the parent directories of the sweep directory, the run directory (--output), the data
#   directory, the directories of --config and --init-weights files, LBT_TORCH_HOME and the
#   temporary accelerate config (LBT_IGNORE_ACCELERATE_CONFIG=1): parents, because a run
#   directory need not exist before the first run; the nearest existing ancestor when the parent
#   does not exist yet either; a directory right under / itself. Plus LBT_BIND. A path covered
#   by another bound directory is left out. Apptainer binds $HOME, /tmp and the working
#   directory (the submit directory, where relative paths start) by itself. Bind paths cannot
#   contain ',' or ':' (apptainer's separators): such a directory is an error (exit 2).
#   Anything else a run reads (a data_dir set in a config file, ...) needs LBT_BIND.
# - LBT_TORCH_HOME is bound and passed with --env TORCH_HOME=..., which wins over the image's
#   TORCH_HOME=/opt/lbtkit/torch (baked weights, with BAKE_WEIGHTS=1).
# - No --cleanenv by default: the job's environment must reach lbtkit in the container:
#   CUDA_VISIBLE_DEVICES (which GPUs of a shared node are this task's), SLURM_* (job id, node
#   id), LBT_*, NCCL_* / GLOO_* / OMP_NUM_THREADS settings. Apptainer sets PATH and
#   LD_LIBRARY_PATH for the image, and a variable the image sets wins over the host's: the
#   image (the Dockerfile's ENV, apptainer.def's %environment) sets HF_HOME=/opt/lbtkit/hf and
#   TORCH_HOME=/opt/lbtkit/torch, so an Accelerate default config of the host
#   (~/.cache/huggingface, or a host $HF_HOME) cannot reach the launches in the container.
#   A host PYTHONPATH or PYTHONHOME does pass in and can break the image's Python: unset them
#   before submitting. LBT_APPTAINER_ARGS=--cleanenv drops the whole host environment,
#   CUDA_VISIBLE_DEVICES and SLURM_* included; only for jobs that have the node to themselves.
# - Signals: the relay below is unchanged. The SIGTERM it sends in sweep.sh and run.sh reaches
#   the `apptainer exec` process, whose starter forwards it to the container's process (lbtkit,
#   or accelerate launch -> torchrun -> workers). That is Apptainer's documented behaviour, not
#   verified here (no Apptainer on the development machine; the tests use a stand-in). In
#   multinode.sh `scancel --signal=TERM JOB.STEP` signals every process of the step, the
#   container's included.
#
# Pyxis/enroot (`srun --container-image`) instead of Apptainer: not built in, and untested (no
# pyxis here). The training command can run as a job step in the container while the batch
# shell stays on the host (it needs scontrol; `sbatch --container-image` would put it in the
# image), for sweep.sh and run.sh:
#
#   export LBT_EXEC="srun --ntasks=1 --cpus-per-task=32 --container-image=/shared/lbtkit.sqsh
#                    --container-mounts=/shared:/shared,/scratch:/scratch --container-workdir=$PWD"
#   export LBT_LBTKIT=lbtkit LBT_ACCELERATE=accelerate  # the image's; `sweep submit` pins none
#   lbtkit sweep submit SWEEP_DIR -- ...                 # or sbatch ... jobs/run.sh ...
#
# (the .sqsh e.g. from `enroot import dockerd://lbtkit:0.1.0`). With an srun prefix the relay
# signals the job step (`scancel --signal=TERM JOB.STEP`, as in multinode.sh), not srun: a
# SIGTERM to srun cancels the step and kills the task before it can checkpoint (seen on SLURM
# 22.05). Tested with LBT_EXEC="srun --ntasks=1" (no container): USR1, checkpoint, requeue,
# resume. srun does not inherit --cpus-per-task from sbatch (SLURM >= 22.05): put it in
# LBT_EXEC. multinode.sh runs srun itself and refuses an srun LBT_EXEC (a step in a step); for
# pyxis there, add the --container-* flags to its srun_args.
#
# Processes: G >= 2 GPUs on the node -> `accelerate launch --multi_gpu --num_processes G`
# (DDP, one process per GPU); G <= 1 -> one plain `lbtkit` process (one GPU, or the CPU).
# Array tasks can share a node: each has its own job id, hence its own port.
#
# Signals: the scripts submit with --signal=B:USR1@<margin>, so before the time limit SLURM sends
# SIGUSR1 to the batch shell only. The shell runs the work in the background and relays USR1 (and
# TERM) to it as SIGTERM (to its job steps when the work is an srun): torchrun (under
# accelerate launch) forwards SIGTERM to its workers but not SIGUSR1 (a SIGUSR1 would kill its
# agent and orphan the workers), and lbtkit's loop answers SIGTERM by finishing its step,
# writing a checkpoint and results.json status "interrupted", and exiting 75. After a USR1 the
# job then requeues itself (`scontrol requeue`, which needs the job's --requeue) and the
# requeued job resumes from the checkpoint. After a TERM alone (scancel,
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

# lbt_setup [PATH...]: sets the arrays LBT_EXEC_CMD, LBT_LBTKIT_CMD, LBT_ACCELERATE_CMD and
# LBT_LAUNCH_ARGS (the `accelerate launch` options every launch gets). With LBT_IMAGE, PATHs
# (the sweep, run and data directories, files the run reads) are bound into the container.
lbt_setup() {
    read -r -a LBT_EXEC_CMD <<<"${LBT_EXEC:-}"
    read -r -a LBT_LBTKIT_CMD <<<"${LBT_LBTKIT:-lbtkit}"
    read -r -a LBT_ACCELERATE_CMD <<<"${LBT_ACCELERATE:-accelerate}"
    if [ -n "${LBT_IMAGE:-}" ] && [ "${#LBT_EXEC_CMD[@]}" -gt 0 ]; then
        lbt_die "$LBT_EXIT_USAGE" "LBT_IMAGE and LBT_EXEC are both set: LBT_IMAGE runs the" \
            "commands in the image itself; unset LBT_EXEC"
    fi
    if [ -z "${LBT_IMAGE:-}" ] && [ "${#LBT_EXEC_CMD[@]}" -eq 0 ] &&
        ! command -v "${LBT_LBTKIT_CMD[0]}" >/dev/null 2>&1; then
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
    elif [ -z "${LBT_IMAGE:-}" ] && [ -f "$hf_home/accelerate/default_config.yaml" ]; then
        # (In the image HF_HOME is the image's own: no host config applies there.)
        lbt_log "note: accelerate launch will read $hf_home/accelerate/default_config.yaml" \
            "(set LBT_IGNORE_ACCELERATE_CONFIG=1 to ignore it)"
    fi
    # A job step as the prefix (pyxis: LBT_EXEC="srun --container-image=..."): a SIGTERM to
    # srun would cancel the step at once, without a checkpoint; the relay signals the step.
    case ${LBT_EXEC_CMD[0]:-} in
    srun | */srun) LBT_RELAY_TO_STEPS=1 ;;
    esac
    if [ -n "${LBT_IMAGE:-}" ]; then
        lbt_container "$@" ${LBT_ACCELERATE_CONFIG:+"$LBT_ACCELERATE_CONFIG"}
    elif [ -n "${LBT_TORCH_HOME:-}" ]; then
        export TORCH_HOME=$LBT_TORCH_HOME
    fi
}

# --- containers (LBT_IMAGE) ----------------------------------------------------------------

# lbt_bind_dir PATH: the directory to bind so that PATH is seen in the container: its absolute
# parent, else the nearest existing ancestor; PATH itself when that is /; nothing if it is /
# and PATH does not exist. Relative paths start at $PWD, the job's working directory.
lbt_bind_dir() {
    local path=$1 dir
    case $path in
    /*) ;;
    *) path=$PWD/$path ;;
    esac
    path=$(realpath -ms -- "$path")  # absolute, without . and .., symlinks kept
    dir=$(dirname -- "$path")
    while [ "$dir" != / ] && [ ! -d "$dir" ]; do
        dir=$(dirname -- "$dir")
    done
    if [ "$dir" != / ]; then
        echo "$dir"
    elif [ "$path" != / ] && [ -e "$path" ]; then
        echo "$path"
    fi
}

# lbt_container PATH...: LBT_EXEC_CMD=(apptainer exec [--nv] --bind ... [--env ...] IMAGE), or
# exit 2 (no requeue) if the image or the runtime is missing.
lbt_container() {
    local runtime="" name gpus spec path dir covered kept
    local specs=() binds=() dirs=() extra=()
    [ -e "$LBT_IMAGE" ] || lbt_die "$LBT_EXIT_USAGE" "LBT_IMAGE=$LBT_IMAGE does not exist" \
        "(on $(hostname)): give the path of the image (a .sif file, \`make sif\`) on a file" \
        "system the compute nodes see, or unset LBT_IMAGE to run lbtkit on the host"
    for name in apptainer singularity; do
        if command -v "$name" >/dev/null 2>&1; then
            runtime=$name
            break
        fi
    done
    [ -n "$runtime" ] || lbt_die "$LBT_EXIT_USAGE" "LBT_IMAGE is set but neither apptainer" \
        "nor singularity is on PATH (on $(hostname), PATH=$PATH): load it (module load" \
        "apptainer?) before submitting, or unset LBT_IMAGE to run lbtkit on the host"
    IFS=, read -r -a specs <<<"${LBT_BIND:-}"
    for spec in ${specs[@]+"${specs[@]}"}; do
        [ -n "$spec" ] || continue
        [ -e "${spec%%:*}" ] || lbt_die "$LBT_EXIT_USAGE" "LBT_BIND: ${spec%%:*} does not" \
            "exist (on $(hostname))"
        binds+=("$spec")
    done
    for path in "$@" ${LBT_DATA_DIR:+"$LBT_DATA_DIR"} ${LBT_TORCH_HOME:+"$LBT_TORCH_HOME"}; do
        [ -n "$path" ] || continue
        dir=$(lbt_bind_dir "$path")
        if [ -z "$dir" ]; then
            lbt_log "note: $path is not bound into the container (bind it with LBT_BIND)"
            continue
        fi
        case $dir in
        *,* | *:*) lbt_die "$LBT_EXIT_USAGE" "cannot bind $dir into the container:" \
            "apptainer bind paths cannot contain ',' or ':'" ;;
        esac
        dirs+=("$dir")
    done
    # Sorted, an ancestor comes before what it covers: keep a directory unless a plain bind
    # (no ':', same path inside) already covers it.
    if [ "${#dirs[@]}" -gt 0 ]; then
        while IFS= read -r dir; do
            covered=0
            for kept in ${binds[@]+"${binds[@]}"}; do
                case $kept in *:*) continue ;; esac
                case $dir/ in "${kept%/}"/*) covered=1 && break ;; esac
            done
            [ "$covered" = 1 ] || binds+=("$dir")
        done < <(printf '%s\n' "${dirs[@]}" | LC_ALL=C sort -u)
    fi
    gpus=$(lbt_gpus_per_node) || exit "$LBT_EXIT_USAGE"
    LBT_EXEC_CMD=("$runtime" exec)
    [ "$gpus" -gt 0 ] && LBT_EXEC_CMD+=(--nv)
    if [ "${#binds[@]}" -gt 0 ]; then
        LBT_EXEC_CMD+=(--bind "$(IFS=,; echo "${binds[*]}")")
    fi
    if [ -n "${LBT_TORCH_HOME:-}" ]; then
        path=$(realpath -ms -- "$LBT_TORCH_HOME")
        case $path in
        *,*) lbt_die "$LBT_EXIT_USAGE" "LBT_TORCH_HOME cannot contain ',': $path" ;;
        esac
        LBT_EXEC_CMD+=(--env "TORCH_HOME=$path")
    fi
    read -r -a extra <<<"${LBT_APPTAINER_ARGS:-}"
    LBT_EXEC_CMD+=(${extra[@]+"${extra[@]}"} "$LBT_IMAGE")
    lbt_log "container: $LBT_IMAGE via $runtime ($gpus GPU(s): $([ "$gpus" -gt 0 ] &&
        echo --nv || echo no --nv)); bound: $(IFS=,; echo "${binds[*]:-nothing}")"
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
LBT_RELAY_TO_STEPS=0  # 1: relay to this job's srun steps (multinode.sh, an srun LBT_EXEC)

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

# lbt_flag_value FLAG ARGS...: the value of FLAG (FLAG VALUE or FLAG=VALUE) among ARGS.
lbt_flag_value() {
    local flag=$1 previous="" arg
    shift
    for arg in "$@"; do
        if [ "${arg#"$flag"=}" != "$arg" ]; then
            echo "${arg#"$flag"=}"
            return 0
        fi
        if [ "$previous" = "$flag" ]; then
            echo "$arg"
            return 0
        fi
        previous=$arg
    done
}

# lbt_output_arg ARGS...: the value of --output (or --output=) among lbtkit run flags.
lbt_output_arg() {
    lbt_flag_value --output "$@"
}

# lbt_run_paths ARGS...: the paths of lbtkit run flags that a container must see besides
# --output: --data-dir, and the files of --config and --init-weights; one a line.
lbt_run_paths() {
    local flag value
    for flag in --data-dir --config --init-weights; do
        value=$(lbt_flag_value "$flag" "$@")
        [ -z "$value" ] || echo "$value"
    done
}

# --- sweeps ------------------------------------------------------------------------------------

# lbt_sweep_data_dirs SWEEP_DIR: the distinct data_dir values of sweep.json, one a line.
lbt_sweep_data_dirs() {
    grep -o '"data_dir": *"[^"]*"' "$1/sweep.json" | sed 's/^"data_dir": *"\(.*\)"$/\1/' |
        sort -u || true
}

# lbt_sweep_run_dirs SWEEP_DIR: the entries' run directories in index order, one a line, as
# sweep.json records them (relative to SWEEP_DIR). Read with grep: no Python needed here.
lbt_sweep_run_dirs() {
    grep -o '"run_dir": *"[^"]*"' "$1/sweep.json" | sed 's/^"run_dir": *"\(.*\)"$/\1/'
}
