"""Submit a sweep to SLURM: one job array over its entries, then a report job after it.

    sbatch --parsable --array=0-(N-1)[%K] [extra...] JOBS/sweep.sh SWEEP_DIR
    sbatch --parsable --dependency=afterany:<array job id> [extra...] JOBS/report.sh SWEEP_DIR

The job scripts ship inside the package (``lbtkit/slurm/jobs``, ``lbtkit jobs path``); what
they run on the nodes (GPU count, accelerate launch, container, rendezvous port) is decided by
``lbtkit.slurm.plan``; the scripts relay SIGUSR1 and requeue (``lbtkit.slurm.requeue``). The
command builders are pure functions; ``submit_sweep`` runs them. The jobs run the lbtkit of
the submitting interpreter: ``submit_sweep`` exports ``LBT_LBTKIT`` / ``LBT_ACCELERATE`` as this
Python's ``-m lbtkit`` / ``-m accelerate...`` (sbatch passes the environment on), unless they
are set already, or ``LBT_IMAGE`` (a container image, whose lbtkit is on the image's PATH) or
``LBT_EXEC`` (a command prefix) is.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lbtkit.errors import EXIT_ENVIRONMENT, UserError
from lbtkit.launch import signal_margin
from lbtkit.slurm.plan import flag_value
from lbtkit.slurm.requeue import MAX_IDLE_RESTARTS

logger = logging.getLogger(__name__)

SBATCH = "sbatch"
SWEEP_SCRIPT = "sweep.sh"
REPORT_SCRIPT = "report.sh"
JOBS_DIR_ENV = "LBT_JOBS_DIR"
# What sbatch prints when it finds no slurm.conf and falls back to a DNS SRV lookup.
NO_CONFIG_SIGNS = ("DNS SRV", "fetch_config", "failed to fetch config",
                   "Could not establish a configuration source", "Unable to process configuration")


class SlurmUnavailable(UserError):
    """No usable SLURM here (no sbatch, no configuration): an environment fault, exit 1."""

    exit_code = EXIT_ENVIRONMENT


JOB_SCRIPTS = ("common.sh", "sweep.sh", "run.sh", "multinode.sh", "report.sh")
# sbatch flags that ask for GPUs: the report job needs none, and must not wait for them.
GPU_FLAGS = ("--gpus-per-node", "--gpus", "-G", "--gres", "--gpus-per-task",
             "--gpus-per-socket", "--cpus-per-gpu", "--mem-per-gpu", "--gpu-bind",
             "--gpu-freq", "--tres-per-task")


def jobs_dir() -> Path:
    """The folder holding the job scripts: ``$LBT_JOBS_DIR``, else the installed copies."""
    configured = os.environ.get(JOBS_DIR_ENV)
    if configured:
        folder = Path(configured).absolute()
        if not (folder / SWEEP_SCRIPT).is_file():
            raise UserError(f"{JOBS_DIR_ENV}={configured} has no {SWEEP_SCRIPT}")
        return folder
    folder = installed_jobs_dir()
    if not (folder / SWEEP_SCRIPT).is_file():
        raise SlurmUnavailable(f"this lbtkit installation has no job scripts in {folder} "
                               f"(a broken install?); reinstall lbtkit")
    return folder


def copy_jobs(directory: str | Path) -> list[Path]:
    """Copy the job scripts into ``directory`` (made if needed); return the copies."""
    source, target = jobs_dir(), Path(directory)
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} is not a directory")
    target.mkdir(parents=True, exist_ok=True)
    copies = []
    for name in JOB_SCRIPTS:
        copies.append(Path(shutil.copy2(source / name, target / name)))
    return copies


def without_gpu_flags(extra: Sequence[str]) -> list[str]:
    """``extra`` without the flags that request GPUs (``--gpus-per-node=4``, ``-G 4``...)."""
    kept: list[str] = []
    skip_value = False
    for arg in extra:
        if skip_value:
            skip_value = False
            continue
        name = arg.split("=", 1)[0]
        if name in GPU_FLAGS:
            skip_value = "=" not in arg
            continue
        kept.append(arg)
    return kept


def sweep_submit_command(
    sweep_dir: str | Path,
    *,
    num_entries: int,
    max_parallel: int | None,
    jobs_dir: str | Path,
    extra: Sequence[str] = (),
) -> list[str]:
    """``sbatch --parsable --array=0-(N-1)[%K] [extra...] JOBS/sweep.sh SWEEP_DIR`` (absolute)."""
    if isinstance(num_entries, bool) or not isinstance(num_entries, int) or num_entries < 1:
        raise UserError(f"a sweep needs at least one entry, got {num_entries!r}")
    if max_parallel is not None and (isinstance(max_parallel, bool) or max_parallel < 1):
        raise UserError(f"--max-parallel must be >= 1, got {max_parallel!r}")
    _check_extra(extra)
    array = f"0-{num_entries - 1}" + (f"%{max_parallel}" if max_parallel else "")
    return [
        SBATCH, "--parsable", f"--array={array}", *extra,
        str(Path(jobs_dir) / SWEEP_SCRIPT), str(Path(sweep_dir).absolute()),
    ]


def report_submit_command(
    array_job_id: str | int,
    sweep_dir: str | Path,
    jobs_dir: str | Path,
    extra: Sequence[str] = (),
) -> list[str]:
    """``sbatch --parsable --dependency=afterany:ID [extra...] JOBS/report.sh SWEEP_DIR``.

    afterany: the report also runs when some array tasks failed, and shows them.
    """
    job_id = str(array_job_id)
    if not job_id.isdigit():
        raise UserError(f"not a SLURM job id: {array_job_id!r}")
    return [
        SBATCH, "--parsable", f"--dependency=afterany:{job_id}", *extra,
        str(Path(jobs_dir) / REPORT_SCRIPT), str(Path(sweep_dir).absolute()),
    ]


def submit_sweep(
    sweep_dir: str | Path,
    *,
    max_parallel: int | None = None,
    extra: Sequence[str] = (),
    with_report: bool = True,
    report_extra: Sequence[str] | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Submit the sweep's job array (and a report job after it); return what was done.

    ``extra`` are sbatch flags for the array (partition, account, time, GPUs, CPUs...);
    the report job gets ``report_extra``, by default the same flags without the GPU
    requests (the report needs none). Returns
    ``{"array_job_id", "report_job_id", "commands"}`` (ids None with ``dry_run``, or
    ``report_job_id`` None without a report).
    """
    from lbtkit.sweep import load_sweep

    sweep = load_sweep(sweep_dir)  # a missing or broken plan fails here, before sbatch
    warn_short_time_limit(extra)
    root = Path(sweep["sweep_dir"])
    folder = jobs_dir()
    extra = list(extra)
    report_extra = without_gpu_flags(extra) if report_extra is None else list(report_extra)
    array_command = sweep_submit_command(
        root, num_entries=len(sweep["runs"]), max_parallel=max_parallel, jobs_dir=folder,
        extra=extra,
    )
    result: dict[str, Any] = {
        "array_job_id": None, "report_job_id": None, "commands": [array_command],
    }
    if dry_run:
        if with_report:
            # The real id exists only once the array is submitted: show where it goes.
            command = report_submit_command(0, root, folder, report_extra)
            result["commands"].append(
                [part.replace("afterany:0", "afterany:<array-job-id>") for part in command]
            )
        return result
    if shutil.which(SBATCH) is None:
        raise SlurmUnavailable("sbatch not found: run this on a SLURM login node")
    env = submit_environment(folder)
    result["array_job_id"] = _sbatch(array_command, env)
    if with_report:
        report_command = report_submit_command(result["array_job_id"], root, folder, report_extra)
        result["commands"].append(report_command)
        result["report_job_id"] = _sbatch(report_command, env)
    return result


def time_limit_seconds(sbatch_args: Sequence[str]) -> int | None:
    """The ``-t``/``--time`` of sbatch flags in seconds (MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]);
    None when absent or not a length (UNLIMITED)."""
    value = flag_value("--time", sbatch_args) or flag_value("-t", sbatch_args)
    if not value:
        return None
    days, dash, clock = value.rpartition("-")
    try:
        parts = [int(part) for part in clock.split(":")]
        whole_days = int(days) if dash else 0
    except ValueError:
        return None
    if dash:  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = [*parts, 0, 0][:3]
    else:  # M, M:S, H:M:S
        hours, minutes, seconds = ([0, *parts] if len(parts) == 2 else
                                   [0, parts[0], 0] if len(parts) == 1 else parts)[:3]
    return ((whole_days * 24 + hours) * 60 + minutes) * 60 + seconds


def warn_short_time_limit(sbatch_args: Sequence[str]) -> None:
    """Warn when the time limit leaves no training time before the time-limit signal: every
    attempt would checkpoint nothing and requeue (lbtkit job finish stops that after a few)."""
    limit, margin = time_limit_seconds(sbatch_args), signal_margin(os.environ)
    if limit is not None and limit <= margin:
        logger.warning("the time limit (%d s) is not longer than the signal margin (%d s, "
                       "LBT_SIGNAL_MARGIN): the jobs are told to stop before they train, and "
                       "give up after %d requeues without progress; raise -t", limit, margin,
                       MAX_IDLE_RESTARTS)


def submit_environment(folder: Path) -> dict[str, str]:
    """The environment sbatch passes to the jobs: ours, plus where the scripts and lbtkit are.

    In a container (``LBT_IMAGE``) or behind a prefix (``LBT_EXEC``) the jobs' lbtkit is not
    this interpreter: nothing is pinned, the scripts default to ``lbtkit`` / ``accelerate``.
    """
    env = dict(os.environ)
    env[JOBS_DIR_ENV] = str(folder)
    python = sys.executable
    in_container = env.get("LBT_IMAGE") or env.get("LBT_EXEC")
    if not in_container and python and " " not in python:
        env.setdefault("LBT_LBTKIT", f"{python} -m lbtkit")
        env.setdefault("LBT_ACCELERATE", f"{python} -m accelerate.commands.accelerate_cli")
    return env


def _check_extra(extra: Sequence[str]) -> None:
    for arg in extra:
        if not isinstance(arg, str):
            raise UserError(f"sbatch arguments must be strings, got {arg!r}")
        if arg in ("-a", "--array") or arg.startswith("--array="):
            raise UserError("the array is set from the sweep's entries: use --max-parallel K "
                            "for the %K limit instead of passing --array")


def _sbatch(command: list[str], env: dict[str, str]) -> str:
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    except OSError as exc:
        raise SlurmUnavailable(f"cannot run sbatch: {exc}") from None
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable("sbatch did not answer within 120 s: is slurmctld up?") from None
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip()
        if any(sign in message for sign in NO_CONFIG_SIGNS):
            raise SlurmUnavailable(
                "no SLURM configuration on this machine (no SLURM_CONF, no slurm.conf, no "
                "DNS SRV record for slurmctld): run this on a login node of the cluster")
        raise UserError(f"sbatch failed (exit {done.returncode}): {message}")
    job_id = done.stdout.strip().split(";")[0]  # --parsable: "id" or "id;cluster"
    if not job_id.isdigit():
        raise UserError(f"unexpected sbatch output: {done.stdout.strip()!r}")
    return job_id


def installed_jobs_dir() -> Path:
    """The job scripts shipped inside the package (``lbtkit/slurm/jobs``)."""
    return Path(__file__).resolve().parent / "jobs"
