#!/bin/bash
# jobs/report.sh: `lbtkit report SWEEP_DIR` as a job that runs once the sweep's array is over.
#
#   sbatch --dependency=afterany:<array job id> jobs/report.sh SWEEP_DIR [lbtkit report flags]
#
# `lbtkit sweep submit` submits it this way after the array (afterany: also when some tasks
# failed, so the report shows what happened). It needs no GPU; site settings are sbatch flags
# (e.g. -p cpu -A myproject -t 0:15:00). Log: lbtkit-report_<job id>.out in the submit directory.
#
#SBATCH --job-name=lbtkit-report
#SBATCH --output=%x_%j.out
#SBATCH --nodes=1
#SBATCH --ntasks=1

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

usage="usage: sbatch --dependency=afterany:<array job id> jobs/report.sh SWEEP_DIR [report flags]"
[ $# -ge 1 ] || lbt_die "$LBT_EXIT_USAGE" "$usage"
[ -f "$1/sweep.json" ] || lbt_die "$LBT_EXIT_USAGE" "no sweep plan at $1/sweep.json"
sweep_dir=$1
shift

lbt_setup "$sweep_dir" "$(lbt_flag_value --output "$@")"
lbt_log "report of $sweep_dir; job ${SLURM_JOB_ID:-none} on $(hostname)"
${LBT_EXEC_CMD[@]+"${LBT_EXEC_CMD[@]}"} "${LBT_LBTKIT_CMD[@]}" sweep status "$sweep_dir" || true
exec ${LBT_EXEC_CMD[@]+"${LBT_EXEC_CMD[@]}"} "${LBT_LBTKIT_CMD[@]}" report "$sweep_dir" "$@"
