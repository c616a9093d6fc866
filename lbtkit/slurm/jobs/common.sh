# shellcheck shell=bash
# Sourced by lbtkit's job scripts. lbtkit decides what the job runs (`lbtkit job plan`,
# lbtkit/slurm/plan.py: processes, rendezvous port, container, srun); this file keeps only what
# must be shell: run it in the background, relay SIGUSR1/SIGTERM to it as SIGTERM (torchrun
# forwards SIGTERM to its workers, not SIGUSR1), and `scontrol requeue` on the host.

lbt_log() { printf '[lbtkit-job %s] %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$*"; }
lbt_die() { printf 'error: %s\n' "${*:2}" >&2; exit "$1"; }

# lbt_plan KIND ARGS...: eval `lbtkit job plan`: LBT_CMD, LBT_FINISH, LBT_RELAY, LBT_RUN_DIR.
lbt_plan() {
    local lbtkit=() binds=() arg runtime plan
    read -r -a lbtkit <<<"${LBT_LBTKIT:-lbtkit}"
    if [ -z "${LBT_IMAGE:-}" ] && [ -n "${LBT_EXEC:-}" ] &&
        ! command -v "${lbtkit[0]}" >/dev/null 2>&1; then  # plan where the run's lbtkit is
        read -r -a lbtkit <<<"$LBT_EXEC ${LBT_LBTKIT:-lbtkit}"
    fi
    if [ -n "${LBT_IMAGE:-}" ]; then  # lbtkit is in the image: plan there too
        [ -e "$LBT_IMAGE" ] || lbt_die 2 "LBT_IMAGE=$LBT_IMAGE does not exist (on $(hostname)):" \
            "give an image on a file system the nodes see, or unset LBT_IMAGE"
        for runtime in apptainer singularity ""; do
            command -v "$runtime" >/dev/null 2>&1 && break
        done
        [ -n "$runtime" ] || lbt_die 2 "LBT_IMAGE is set but neither apptainer nor" \
            "singularity is on PATH (on $(hostname)): load it, or unset LBT_IMAGE"
        export LBT_RUNTIME=$runtime
        IFS=, read -r -a binds <<<"${LBT_BIND:-}"
        for arg in ${binds[@]+"${binds[@]}"}; do  # checked here, on the host
            [ -e "${arg%%:*}" ] || lbt_die 2 "LBT_BIND: ${arg%%:*} does not exist (on $(hostname))"
        done
        binds=()
        for arg in "${@:2}"; do  # (a path with , or : cannot be bound: lbtkit says so)
            [ -e "$arg" ] && [ "${arg//[,:]/}" = "$arg" ] && binds+=(--bind "$(realpath -- "$arg")")
        done
        lbtkit=("$runtime" exec ${binds[@]+"${binds[@]}"} "$LBT_IMAGE" "${lbtkit[@]}")
    elif [ -z "${LBT_EXEC:-}" ] && ! command -v "${lbtkit[0]}" >/dev/null 2>&1; then
        lbt_die 2 "'${lbtkit[0]}' not found (PATH=$PATH): activate lbtkit's environment" \
            "before sbatch (sbatch passes it on), or set LBT_LBTKIT=/path/to/venv/bin/lbtkit"
    fi
    plan=$("${lbtkit[@]}" job plan "$1" -- "${@:2}") || exit $?
    eval "$plan"
}

LBT_SIGNALS="" LBT_CHILD="" LBT_TOLD=""  # LBT_TOLD: the run was sent its SIGTERM
trap 'lbt_relay USR1' USR1  # from the start: a signal must never kill the batch shell
trap 'lbt_relay TERM' TERM

lbt_relay() {  # the trap: lbt_relay USR1|TERM
    LBT_SIGNALS="${LBT_SIGNALS:+$LBT_SIGNALS }$1"
    if [ -z "$LBT_CHILD" ] || ! kill -0 "$LBT_CHILD" 2>/dev/null; then
        lbt_log "received SIG$1 (nothing running); kept: the run will not start, or is told"
    else lbt_stop_child "$1"; fi
}

lbt_stop_child() {  # lbt_stop_child USR1|TERM: SIGTERM to the run (checkpoint and stop)
    LBT_TOLD=1
    if [ "$LBT_RELAY" = steps ]; then  # a SIGTERM to srun would cancel its step at once
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

# lbt_run: run LBT_CMD in the background, relaying signals, until it really exits; LBT_STATUS.
# A signal before it (a time-limit USR1 while planning) is kept: the run does not start (75).
lbt_run() {
    local line again=0
    trap 'rm -f ${LBT_TEMP_FILES[@]+"${LBT_TEMP_FILES[@]}"}' EXIT
    LBT_STARTED=$(date +%s.%N)
    if [ -n "$LBT_SIGNALS" ]; then
        LBT_STATUS=75 && lbt_log "not starting the run: the job got SIG${LBT_SIGNALS// /, SIG}"
        return
    fi
    printf -v line '%q ' "${LBT_CMD[@]}"
    lbt_log "running: ${line% }"
    "${LBT_CMD[@]}" &
    LBT_CHILD=$!
    [ -z "$LBT_SIGNALS" ] || [ -n "$LBT_TOLD" ] || lbt_stop_child "${LBT_SIGNALS%% *}"  # pre-$!
    while :; do  # a trap cuts `wait` short (status > 128) while the child still runs
        LBT_STATUS=0
        wait "$LBT_CHILD" || LBT_STATUS=$?
        kill -0 "$LBT_CHILD" 2>/dev/null || break
    done
    wait "$LBT_CHILD" 2>/dev/null || again=$?  # the real status, if the last wait was cut
    [ "$again" -eq 127 ] || LBT_STATUS=$again
    lbt_log "exited with status $LBT_STATUS"
}

# lbt_finish KIND ARGS...: requeue, or exit with the code `lbtkit job finish` gives.
lbt_finish() {
    local action="" value="" state
    read -r action value < <("${LBT_FINISH[@]}" --exit-status "$LBT_STATUS" \
        --signals "$LBT_SIGNALS" --since "$LBT_STARTED" "$1" -- "${@:2}") || true
    [ "$action" = exit ] && exit "$value"
    [ "$action" = requeue ] || exit "$LBT_STATUS"
    # A job being cancelled is COMPLETING: a requeue would bring it back.
    state=$(scontrol show job "$value" 2>/dev/null |
        sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' | head -n 1) || true
    if [ "$state" != RUNNING ]; then
        lbt_log "job $value is ${state:-unknown}, not RUNNING: not requeueing"
        exit 75
    fi
    lbt_log "requeueing job $value (restart $((${SLURM_RESTART_COUNT:-0} + 1))):" \
        "it resumes from the checkpoint"
    scontrol requeue "$value" && exit 0  # exit 0: the requeue is not a failure
    exit 75
}
