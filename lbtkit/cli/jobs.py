"""``lbtkit jobs`` (the SLURM scripts shipped with lbtkit) and ``lbtkit job`` (what they run)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from lbtkit.cli.common import app, user_errors
from lbtkit.errors import EXIT_ENVIRONMENT, EXIT_USER_ERROR, EnvironmentFault, UserError

jobs_app = typer.Typer(help="The SLURM job scripts shipped with lbtkit.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
job_app = typer.Typer(help="What a job script runs (called by jobs/*.sh on the nodes).",
                      no_args_is_help=True)
app.add_typer(job_app, name="job")


@jobs_app.command("path")
def jobs_path() -> None:
    """Print the folder of the installed job scripts: sbatch $(lbtkit jobs path)/run.sh ...

    \b
    Example:
        sbatch $(lbtkit jobs path)/run.sh --preset smoke --output runs/smoke
    """
    from lbtkit.slurm.submit import installed_jobs_dir

    print(installed_jobs_dir())


@jobs_app.command("copy")
@user_errors
def jobs_copy(
    directory: Annotated[Path, typer.Argument(help="where to put sweep.sh, run.sh, ...")],
) -> None:
    """Copy the job scripts into DIRECTORY (to read, or submit from a shared folder).

    \b
    Example:
        lbtkit jobs copy /shared/lbtkit-jobs
    """
    from lbtkit.slurm.submit import copy_jobs

    for path in copy_jobs(directory):
        print(path)


def _job_log(notes: list[str]) -> None:
    import time

    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    for note in notes:
        print(f"[lbtkit-job {stamp}] {note}", file=sys.stderr, flush=True)


@job_app.command("plan")
@user_errors
def job_plan(
    kind: Annotated[str, typer.Argument(help="sweep, run, multinode or report")],
    args: Annotated[Optional[list[str]], typer.Argument(help="the script's arguments")] = None,  # noqa: UP045
) -> None:
    """Print, as bash assignments, the command a job script runs and how to relay signals.

    \b
    Example:
        lbtkit job plan sweep -- sweeps/s   (job scripts)
    """
    from lbtkit.slurm.plan import plan_job

    plan = plan_job(kind, args or [])
    _job_log(plan.notes)
    print(plan.to_shell(), end="")


@job_app.command("finish")
@user_errors
def job_finish(
    kind: Annotated[str, typer.Argument(help="sweep, run or multinode")],
    args: Annotated[Optional[list[str]], typer.Argument(help="the script's arguments")] = None,  # noqa: UP045
    exit_status: Annotated[int, typer.Option("--exit-status", help="the run's exit code")] = 0,
    signals: Annotated[str, typer.Option(help="signals the job received: 'USR1 TERM'")] = "",
    since: Annotated[float, typer.Option(help="when the run started (epoch seconds)")] = 0.0,
) -> None:
    """Print what the job does after its run: `requeue ID` or `exit CODE`.

    Always one of the two, also when it fails (`exit 2` after a one-line error, `exit 1` for
    an environment fault): the job script acts on it.

    \b
    Example:
        lbtkit job finish sweep --exit-status 75 -- sweeps/s   (job scripts)
    """
    from lbtkit.slurm.requeue import finish_job

    try:
        action, value, notes = finish_job(kind, args or [], exit_status=exit_status,
                                          signals=signals.split(), since=since)
    except (UserError, EnvironmentFault) as exc:
        code = EXIT_USER_ERROR if isinstance(exc, UserError) else EXIT_ENVIRONMENT
        print("exit", code)
        raise
    _job_log(notes)
    print(action, value)
