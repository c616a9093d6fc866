"""After a job's run: requeue it, or exit with which code (``lbtkit job finish``).

The run's fresh results.json decides over the exit code (under accelerate launch every worker
exit code arrives as 1). A run interrupted by the time-limit signal (SIGUSR1, relayed as
SIGTERM) is requeued under SLURM, unless its last attempts made no progress (a time limit that
leaves no time to train); a SIGTERM alone (scancel, or a preemption SLURM requeues itself) is
not. The job script (``lbtkit/slurm/jobs/common.sh``, ``lbt_finish``) acts on the answer.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from lbtkit.errors import (
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    STATUS_COMPLETED,
    STATUS_DIVERGED,
    STATUS_INTERRUPTED,
    EnvironmentFault,
    UserError,
)
from lbtkit.slurm.env import SlurmEnv
from lbtkit.slurm.plan import output_dir


def fresh_status(run_dir: str | Path, since: float) -> str | None:
    """The status in RUN_DIR/results.json if it was written at or after ``since``."""
    from lbtkit.rundir import RunDir

    run = RunDir(Path(run_dir))
    try:
        if run.results_path.stat().st_mtime < since:
            return None
        results = run.read_results()
    except (OSError, ValueError, UserError):
        return None
    status = results.get("status") if isinstance(results, dict) else None
    return status if isinstance(status, str) else None


# Requeues in a row that found the run's last checkpoint where the previous attempt left it:
# after this many, the job stops requeueing (a time limit that leaves no time to train, a run
# that dies on start) instead of coming back until someone cancels it.
MAX_IDLE_RESTARTS = 3
REQUEUE_FILE = ".requeues.json"  # in the run directory: the step and idle count so far


def outcome(*, status: str | None, exit_status: int, signals: Sequence[str],
            diverged_exit: int, slurm: SlurmEnv, run_dir: str,
            checkpoint: str | None = None, idle_restarts: int = 0
            ) -> tuple[str, str, list[str]]:
    """What the job does after its run: ``("requeue", ID, notes)`` or ``("exit", CODE,
    notes)``. The run's fresh results.json decides over the exit code: under accelerate
    launch every worker exit code arrives as 1, and a signal that came as a run completed
    may end it with 75. A run the job told to stop (``signals``) that ended without an
    outcome (killed while starting: 143) was interrupted too. ``checkpoint``: the run's
    latest, if any; ``idle_restarts``: attempts in a row that made no progress."""
    told_to_stop = bool(signals) and exit_status != EXIT_OK
    if status == STATUS_INTERRUPTED or (status is None and (
            exit_status == EXIT_INTERRUPTED or told_to_stop)):
        return _interrupted(exit_status, signals, slurm, run_dir, checkpoint, idle_restarts)
    if status is None and exit_status == EXIT_DIVERGED:
        status = STATUS_DIVERGED
    if status == STATUS_DIVERGED:
        return "exit", str(diverged_exit), [
            f"run diverged (non-finite loss), recorded in {run_dir}/results.json"]
    if status == STATUS_COMPLETED:
        notes = [f"run completed: {run_dir}"]
        if exit_status != 0:
            notes.insert(0, f"note: the run completed; its command exited {exit_status} "
                            f"after that (a launcher's code, or a signal as it finished)")
        return "exit", str(EXIT_OK), notes
    if exit_status != 0:
        detail = f", status {status}" if status else ""
        return "exit", str(exit_status), [
            f"run failed (exit {exit_status}{detail}); see the log above"]
    return "exit", str(exit_status), []


def _interrupted(exit_status: int, signals: Sequence[str], slurm: SlurmEnv, run_dir: str,
                 checkpoint: str | None, idle_restarts: int) -> tuple[str, str, list[str]]:
    where = (f"with a checkpoint in {checkpoint}" if checkpoint else
             f"before its first checkpoint (it starts {run_dir} from the beginning)")
    if "USR1" not in signals and "TERM" in signals:
        return "exit", str(EXIT_INTERRUPTED), [
            f"stopped by SIGTERM (scancel, or preemption that SLURM requeues itself) {where}; "
            f"not requeueing; resubmit the same job to resume"]
    notes = [f"run interrupted {where} (exit {exit_status})"]
    if not slurm.requeue_id:
        return "exit", str(EXIT_INTERRUPTED), [
            *notes, "not under SLURM: rerun the same command to resume"]
    if idle_restarts >= MAX_IDLE_RESTARTS:
        return "exit", str(EXIT_INTERRUPTED), [*notes, (
            f"not requeueing: the last {idle_restarts} attempts made no progress (restart "
            f"{slurm.restart_count}); a time limit (-t) must leave training time beyond the "
            f"signal margin (LBT_SIGNAL_MARGIN, --signal=B:USR1@N); fix it and resubmit the "
            f"same job to resume")]
    return "requeue", slurm.requeue_id, notes


def finish_job(kind: str, args: Sequence[str], *, exit_status: int, signals: Sequence[str],
               since: float, environ: Mapping[str, str] | None = None,
               cwd: str | Path | None = None) -> tuple[str, str, list[str]]:
    """``outcome`` for a job script's run (the run directory found as ``plan_job`` does)."""
    environ = os.environ if environ is None else environ
    cwd = Path(cwd or os.getcwd())
    slurm = SlurmEnv.from_environ(environ)
    if kind == "sweep":
        run_dir = _sweep_entry_dir(list(args), slurm, cwd)
        diverged_exit = EXIT_OK  # a diverged entry is a result of the sweep, not a crash
    elif kind in ("run", "multinode"):
        run_dir = output_dir(list(args), f"jobs/{kind}.sh")
        diverged_exit = EXIT_DIVERGED
    else:
        raise UserError(f"unknown job kind {kind!r} to finish: one of sweep, run, multinode")
    status = fresh_status(cwd / run_dir, since)
    checkpoint = _latest_checkpoint(cwd / run_dir)
    idle = 0
    if slurm.requeue_id and status in (None, STATUS_INTERRUPTED):
        idle = count_idle_restart(cwd / run_dir, checkpoint)
    return outcome(status=status, exit_status=exit_status, signals=signals,
                   diverged_exit=diverged_exit, slurm=slurm, run_dir=run_dir,
                   checkpoint=checkpoint and str(Path(run_dir) / "checkpoints" /
                                                 Path(checkpoint).name),
                   idle_restarts=idle)


def _sweep_entry_dir(args: list[str], slurm: SlurmEnv, cwd: Path) -> str:
    from lbtkit.sweep import load_sweep

    if len(args) != 1:
        raise UserError("usage: lbtkit job finish sweep -- SWEEP_DIR (what jobs/sweep.sh runs)")
    sweep = load_sweep(cwd / args[0])
    index = slurm.array_task_id or 0
    if index >= len(sweep["runs"]):
        raise UserError(f"array index {index} is out of range: {args[0]} has "
                        f"{len(sweep['runs'])} entries")
    return sweep["runs"][index]["run_dir"]


def _latest_checkpoint(run_dir: Path) -> str | None:
    from lbtkit.checkpoint import latest_checkpoint

    try:
        found = latest_checkpoint(run_dir / "checkpoints")
    except (OSError, UserError):
        return None
    return str(found) if found is not None else None


def count_idle_restart(run_dir: Path, checkpoint: str | None) -> int:
    """Record this attempt's end in RUN/.requeues.json; how many attempts in a row ended with
    the latest checkpoint where the one before left it (0 when this one made progress)."""
    from lbtkit.fileio import read_json, write_json

    path = run_dir / REQUEUE_FILE
    try:  # damaged or hand-made: count from here
        record = read_json(path, kind=dict) if path.exists() else {}
    except UserError:
        record = {}
    before, idle = record.get("checkpoint"), record.get("idle")
    idle = idle if isinstance(idle, int) and not isinstance(idle, bool) else 0
    idle = idle + 1 if before == (checkpoint and Path(checkpoint).name) else 0
    with contextlib.suppress(OSError, UserError, EnvironmentFault):  # cannot record: count 0
        write_json(path, {"checkpoint": checkpoint and Path(checkpoint).name, "idle": idle})
    return idle
