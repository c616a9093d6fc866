"""The ``lbtkit`` command line: parse, validate, call library functions. No logic of its own.

Every ``RunConfig`` field is a ``run`` flag in kebab case (``--batch-size``); the flags are
generated from the dataclass so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from lbtkit.config import (
    RunConfig,
    build_config,
    field_type,
    list_presets,
    plan_batches,
    preset_description,
    preset_values,
)
from lbtkit.errors import EnvironmentFault, UserError
from lbtkit.rundir import read_json
from lbtkit.specs import (
    DEFAULT_ALPHAS,
    DEFAULT_GRID,
    InterpolationSpec,
    KeskarStudySpec,
    NoiseScaleSpec,
    PlaneSpec,
    SharpnessSpec,
)

app = typer.Typer(
    help="lbtkit: the large-batch training kit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain Click help: wraps to any width without cutting option names, and shows help
    # text as written ("[sweep]" is a TOML table, not Rich markup).
    rich_markup_mode=None,
)
# Files and pipes get a wide console: Rich would otherwise fold tables to 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
EXIT_USER_ERROR = 2
EXIT_ENVIRONMENT = 1


def _print_version(value: bool) -> None:
    if value:
        import lbtkit

        print(f"lbtkit {lbtkit.__version__}")
        raise typer.Exit()


@app.callback()
def _common(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="print the version and exit",
    )] = False,
) -> None:
    """lbtkit: the large-batch training kit."""


def user_errors(fn):
    """Print a user mistake as one line on stderr and exit 2; an environment fault (a full or
    read-only disk, a path the system refuses) as one line and exit 1. No traceback for
    either: anything else is a bug and keeps it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except EnvironmentFault as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(EXIT_ENVIRONMENT) from None
        except OSError as exc:
            if exc.filename is None:
                raise
            print(f"error: {_os_error_line(exc)}", file=sys.stderr)
            raise typer.Exit(EXIT_ENVIRONMENT) from None

    return wrapper


def _os_error_line(exc: OSError) -> str:
    where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    return f"{where}: {exc.strerror or exc}"


def with_config_flags(fn=None, *, exclude: tuple[str, ...] = ()):
    """Add one ``--kebab-case`` option per RunConfig field to a command's signature.

    Each defaults to None ("not given"), so only flags the user typed override the preset
    and the config file. The command receives them as ``config_flags: dict``.
    """
    if fn is None:
        return functools.partial(with_config_flags, exclude=exclude)
    original = inspect.signature(fn)
    # Resolve the string annotations (postponed evaluation) so Typer sees real types.
    hints = typing.get_type_hints(fn, include_extras=True)
    params = [p.replace(annotation=hints.get(p.name, p.annotation))
              for p in original.parameters.values() if p.name != "config_flags"]
    names = []
    for f in dataclasses.fields(RunConfig):
        if f.name in exclude:
            continue
        flag = "--output" if f.name == "output_dir" else "--" + f.name.replace("_", "-")
        kind = field_type(f.name)
        decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
        option = typer.Option(*decls, help=_field_help(f), show_default=False,
                              parser=_NUMBER_PARSERS.get(kind))
        params.append(inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY,
            default=None, annotation=Annotated[Optional[kind], option],  # noqa: UP045
        ))
        names.append(f.name)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        flags = {name: kwargs.pop(name) for name in names}
        return fn(*args, config_flags=flags, **kwargs)

    wrapper.__signature__ = original.replace(parameters=params)
    return wrapper


def _field_help(f: dataclasses.Field) -> str:
    """A field's help with its RunConfig default (what applies without a preset)."""
    text = f.metadata.get("help", "")
    if f.default is None or f.default == "":
        return text
    shown = (f"--{f.name.replace('_', '-')}" if f.default is True else
             f"--no-{f.name.replace('_', '-')}" if f.default is False else f"{f.default:g}"
             if isinstance(f.default, float) else str(f.default))
    return f"{text}  [default: {shown}]"


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a whole number") from None


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number") from None


# Typer's own messages ("Input should be a valid integer") do not repeat the value given.
_NUMBER_PARSERS = {int: _parse_int, float: _parse_float}


@app.command()
@user_errors
@with_config_flags
def run(
    preset: Annotated[Optional[str], typer.Option(help="named preset (lbtkit presets)")] = None,  # noqa: UP045
    config: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--config", help="TOML file, or a run's config.json to repeat it"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the resolved config as JSON and exit")
    ] = False,
    num_processes: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--num-processes", help="launch N processes (accelerate launch, DDP)",
                     parser=_parse_int),
    ] = None,
    progress: Annotated[bool, typer.Option(help="show progress")] = True,
    *,
    config_flags: dict,
) -> None:
    """Train one model. Re-running the same command resumes from the last checkpoint.

    \b
    Example:
        lbtkit run --preset smoke --output runs/smoke
        lbtkit run --preset keskar-c1 --batch-size 512 --num-processes 2
    """
    from lbtkit import launch

    resolved = build_config(preset=preset, config_file=config, overrides=config_flags)
    _check_num_processes(num_processes)
    if num_processes and launch.in_launched_worker():
        raise UserError("--num-processes launches processes; inside accelerate launch, omit it")
    world = num_processes or launch.launched_world_size()
    batch_plan = plan_batches(resolved, world)
    if dry_run:
        shown = {**resolved.to_dict(), **batch_plan.to_dict()}
        print(json.dumps(shown, indent=2))
        return
    from lbtkit.preflight import preflight

    # Once here, not once per process (rank 0 of a launch holds the lock: others skip it).
    preflight(resolved, world_size=world, check_lock=not launch.in_launched_worker())
    if num_processes and num_processes > 1:
        raise typer.Exit(launch.launch_run(resolved, num_processes, progress=progress))

    from lbtkit.train import exit_code
    from lbtkit.train import run as train_run

    results = train_run(resolved, progress=progress)
    raise typer.Exit(exit_code(results["status"]))


DEFAULT_BATCH_SIZES = "32,64,128,256,512,1024"

sweep_app = typer.Typer(
    help="Plan and run a grid of runs (the batch-size study).", no_args_is_help=True
)
app.add_typer(sweep_app, name="sweep")


@sweep_app.command("plan")
@user_errors
@with_config_flags(exclude=("output_dir", "name", "batch_size"))  # --batch-sizes
def sweep_plan(
    output: Annotated[Path, typer.Option("--output", help="the sweep directory")],
    batch_sizes: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--batch-sizes", help="comma list of global batch sizes "
                     "[default: the preset's or config file's [sweep] table, else "
                     f"{DEFAULT_BATCH_SIZES}]"),
    ] = None,
    seeds: Annotated[Optional[str], typer.Option(help="comma list of seeds")] = None,  # noqa: UP045
    grid: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--grid", help="sweep any other field: KEY=V1,V2 (repeatable)"),
    ] = None,
    preset: Annotated[Optional[str], typer.Option(help="named preset (lbtkit presets)")] = None,  # noqa: UP045
    config: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--config", help="TOML file with base settings"),
    ] = None,
    num_processes: Annotated[
        int, typer.Option("--num-processes", help="processes each run will use (GPUs per node)")
    ] = 1,
    *,
    config_flags: dict,
) -> None:
    """Write SWEEP_DIR/sweep.json: one entry per point of the grid, lr scaled per entry.

    A preset or config file with a [sweep] table (e.g. remedies-mobilenetv2) supplies the
    default grid and named variants; command-line values replace its grid keys.

    \b
    Example:
        lbtkit sweep plan --preset smoke --batch-sizes 32,128 --output sweeps/s
    """
    from lbtkit.config import sweep_settings
    from lbtkit.report import format_lr
    from lbtkit.sweep import parse_grid, plan_sweep, sweep_table

    base = build_config(preset=preset, config_file=config, overrides=config_flags, resolve=False)
    table_grid: dict[str, list] = {}
    variants = None
    settings = sweep_settings(preset=preset, config_file=config)
    if settings is not None:
        table_grid, variants = sweep_table(settings, str(config or f"preset {preset!r}"))
    given = parse_grid(
        batch_sizes=batch_sizes or ",".join(map(str, table_grid.get("batch_size", [])))
        or DEFAULT_BATCH_SIZES,
        seeds=seeds, extra=grid or [],
    )
    values = {**{k: v for k, v in table_grid.items() if k != "batch_size"}, **given}
    plan = plan_sweep(base, values, output, world_size=num_processes, variants=variants)
    table = Table("index", "name", "batch", "per-device batch", "accumulation", "lr",
                  title=f"{output / 'sweep.json'}: {len(plan['runs'])} runs")
    for entry in plan["runs"]:
        table.add_row(
            str(entry["index"]), entry["config"]["name"], str(entry["config"]["batch_size"]),
            str(entry["batch_plan"]["per_device_batch_size"]),
            str(entry["batch_plan"]["grad_accum_steps"]), format_lr(entry["config"]["lr"]),
        )
    console.print(table)


@sweep_app.command("run-task")
@user_errors
def sweep_run_task(
    sweep_dir: Annotated[Path, typer.Argument(help="the sweep directory")],
    index: Annotated[int, typer.Option("--index", help="entry to run (array task id)")],
    progress: Annotated[bool, typer.Option(help="show progress")] = True,
) -> None:
    """Run one entry of a sweep (what each SLURM array task calls).

    \b
    Example:
        lbtkit sweep run-task sweeps/s --index 0
    """
    from lbtkit.sweep import run_task

    raise typer.Exit(run_task(sweep_dir, index, progress=progress))


@sweep_app.command("run")
@user_errors
def sweep_run(
    sweep_dir: Annotated[Path, typer.Argument(help="the sweep directory")],
    progress: Annotated[bool, typer.Option(help="show progress")] = True,
) -> None:
    """Run every entry that is not completed, one after another, on this machine.

    \b
    Example:
        lbtkit sweep run sweeps/s
    """
    from lbtkit.sweep import run_all, run_all_exit_code

    statuses = run_all(sweep_dir, progress=progress)
    _print_status(sweep_dir)
    raise typer.Exit(run_all_exit_code(statuses))


@sweep_app.command("submit")
@user_errors
def sweep_submit(
    sweep_dir: Annotated[Path, typer.Argument(help="the sweep directory")],
    max_parallel: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--max-parallel", help="at most K array tasks at once (%K)"),
    ] = None,
    report: Annotated[
        bool, typer.Option("--report/--no-report", help="submit the report job after the array")
    ] = True,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the sbatch commands only")
    ] = False,
    sbatch_args: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Argument(help="sbatch flags, after --: -- -p gpu -A proj -t 4:00:00"),
    ] = None,
) -> None:
    """Submit the sweep as one SLURM job array plus a report job after it (the job scripts
    installed with lbtkit: `lbtkit jobs path`).

    \b
    Example:
        lbtkit sweep submit sweeps/s --max-parallel 4 -- -p gpu --gpus-per-node=4
    """
    import shlex

    from lbtkit.slurm import SlurmUnavailable, submit_sweep

    try:
        result = submit_sweep(sweep_dir, max_parallel=max_parallel, extra=sbatch_args or [],
                              with_report=report, dry_run=dry_run)
    except SlurmUnavailable as exc:  # the machine, not the user: exit 1
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    for command in result["commands"]:
        print(shlex.join(command))
    if not dry_run:
        print(f"array job {result['array_job_id']}; report job {result['report_job_id']}; "
              f"logs lbtkit-sweep_{result['array_job_id']}_<index>.out in {Path.cwd()}")


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
    from lbtkit.cluster import installed_jobs_dir

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
    from lbtkit.slurm import copy_jobs

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
    from lbtkit.cluster import plan_job

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

    \b
    Example:
        lbtkit job finish sweep --exit-status 75 -- sweeps/s   (job scripts)
    """
    from lbtkit.cluster import finish_job

    action, value, notes = finish_job(kind, args or [], exit_status=exit_status,
                                      signals=signals.split(), since=since)
    _job_log(notes)
    print(action, value)


@sweep_app.command("status")
@user_errors
def sweep_status_command(
    sweep_dir: Annotated[Path, typer.Argument(help="the sweep directory")],
) -> None:
    """Show each entry's state and its best validation accuracy so far.

    \b
    Example:
        lbtkit sweep status sweeps/s
    """
    _print_status(sweep_dir)


def _print_status(sweep_dir: Path) -> None:
    from lbtkit.sweep import sweep_status

    table = Table("index", "name", "batch", "seed", "state", "epochs", "best val top-1")
    for row in sweep_status(sweep_dir):
        best = row["best_val_acc"]
        table.add_row(
            str(row["index"]), row["name"], str(row["batch_size"]), str(row["seed"]),
            row["state"], f"{row['epochs_completed']}/{row['epochs']}",
            "—" if best is None else f"{100 * best:.2f}%",
        )
    console.print(table)


@app.command()
@user_errors
def report(
    sweep_dir: Annotated[Path, typer.Argument(help="the sweep directory")],
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--output", help="where to write (default: the sweep directory)"),
    ] = None,
) -> None:
    """Write report.md, results.csv and the figures for a sweep.

    \b
    Example:
        lbtkit report sweeps/s
    """
    from lbtkit.report import write_report
    from lbtkit.sweep import load_sweep
    from lbtkit.tracking import tensorboard_dirs

    for kind, path in write_report(sweep_dir, output).items():
        print(f"{kind}: {path}")
    for folder in tensorboard_dirs(load_sweep(sweep_dir)):
        print(f"tracker logs: tensorboard --logdir {folder}")


# Options shared by the commands that evaluate grids in weight space.
SplitsOption = Annotated[str, typer.Option(help="comma list of train, test")]
BnSamplesOption = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(help="training samples for BN re-estimation (default: all)"),
]
EvalBatchOption = Annotated[int, typer.Option(help="evaluation batch per process")]
# Experiment trackers for the analysis commands (as `run --log-with`).
LogWithOption = Annotated[
    str, typer.Option("--log-with", help="also log the results to these experiment trackers, "
                      "comma-separated (tensorboard, wandb, mlflow, ...: Accelerate's); each "
                      "needs its extra, e.g. pip install 'lbtkit[tensorboard]'"),
]
GridTrackingDirOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--tracking-dir", help="where local trackers write (default: OUTPUT's "
                 "parent/tracking; the tracker run is named like OUTPUT)"),
]
RunTrackingDirOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--tracking-dir", help="where local trackers write (default: the run's own, "
                 "so the results sit beside its training curves at its final step)"),
]
TrackingProjectOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--tracking-project", help="tracker project / experiment name (W&B, MLflow; "
                 "default: the measured run's, otherwise lbtkit)"),
]


@app.command()
@user_errors
def interpolate(
    sb_run: Annotated[Path, typer.Argument(help="the small-batch run directory")],
    lb_run: Annotated[Path, typer.Argument(help="the large-batch run directory")],
    output: Annotated[Path, typer.Option("--output", help="where to write")],
    alphas: Annotated[
        str, typer.Option(help="START:STOP:COUNT (inclusive) or a comma list")
    ] = DEFAULT_ALPHAS,
    splits: SplitsOption = "train,test",
    bn: Annotated[
        str, typer.Option(help="recalibrate | batch-stats | interpolate (BatchNorm statistics)")
    ] = "recalibrate",
    bn_samples: BnSamplesOption = None,
    eval_batch_size: EvalBatchOption = 1024,
    num_processes: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--num-processes", help="split the alpha grid over N processes"),
    ] = None,
    log_with: LogWithOption = "",
    tracking_dir: GridTrackingDirOption = None,
    tracking_project: TrackingProjectOption = None,
) -> None:
    """Evaluate theta(a) = a*theta_LB + (1-a)*theta_SB over a grid of a (Keskar's plot).

    \b
    Example:
        lbtkit interpolate runs/sb runs/lb --alphas -1:2:25 --output interp
    """
    from lbtkit.landscape import run_interpolation
    from lbtkit.tracking import requested_trackers

    trackers = requested_trackers(log_with)
    spec = InterpolationSpec.from_dict({
        "alphas": alphas, "splits": splits, "bn": bn, "bn_samples": bn_samples,
        "eval_batch_size": eval_batch_size,
    }, source="the command line")
    _grid_command("interpolation", spec, [sb_run, lb_run], output, num_processes,
                  lambda: run_interpolation(spec, sb_run, lb_run, output),
                  trackers=trackers, tracking_dir=tracking_dir,
                  tracking_project=tracking_project)


@app.command()
@user_errors
def landscape(
    run_dir: Annotated[Path, typer.Argument(help="the run at the centre of the plane")],
    other: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--other", help="a second run (needed by, and only by, --directions between)"),
    ] = None,
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--output", help="where to write (default: RUN/landscape, or "
                     "RUN/landscape-to-OTHERNAME with --other)"),
    ] = None,
    grid: Annotated[
        str, typer.Option(help="START:STOP:COUNT (inclusive) for both axes, or X-SPEC,Y-SPEC")
    ] = DEFAULT_GRID,
    directions: Annotated[
        str, typer.Option(help="random: two random directions | between: x = OTHER - RUN "
                          "(x=1 is OTHER), y = one random direction")
    ] = "random",
    norm: Annotated[
        str, typer.Option(help="filter | layer | none: scaling of the random directions "
                          "against the run's weights (Li et al.)")
    ] = "filter",
    ignore_bn_bias: Annotated[
        bool, typer.Option("--ignore-bn-bias", help="random directions leave biases and "
                           "BatchNorm parameters (1-D tensors) at the run's values")
    ] = False,
    splits: SplitsOption = "train,test",
    bn: Annotated[
        str, typer.Option(help="recalibrate | batch-stats | interpolate (BatchNorm statistics, "
                          "as in interpolate; interpolate keeps RUN's along random axes)")
    ] = "recalibrate",
    bn_samples: BnSamplesOption = None,
    eval_batch_size: EvalBatchOption = 1024,
    seed: Annotated[int, typer.Option(help="seed of the random directions")] = 0,
    num_processes: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--num-processes", help="split the grid points over N processes"),
    ] = None,
    log_with: LogWithOption = "",
    tracking_dir: GridTrackingDirOption = None,
    tracking_project: TrackingProjectOption = None,
) -> None:
    """Loss and accuracy on a 2-D plane around RUN (Li et al. 2018): landscape.csv/png/json.

    \b
    Example:
        lbtkit landscape runs/sb --grid -1:1:21
        lbtkit landscape runs/sb --other runs/lb --directions between
    """
    from lbtkit.landscape.plane import check_runs, default_output, run_landscape
    from lbtkit.tracking import requested_trackers

    trackers = requested_trackers(log_with)
    spec = PlaneSpec.from_dict({
        "grid": grid, "directions": directions, "norm": norm, "ignore_bn_bias": ignore_bn_bias,
        "splits": splits, "bn": bn, "bn_samples": bn_samples, "eval_batch_size": eval_batch_size,
        "seed": seed,
    }, source="the command line")
    spec.check_other(other)
    output = output if output is not None else default_output(run_dir, other)
    if num_processes is not None and num_processes > 1:
        check_runs(run_dir, other)  # one error line here rather than one per worker
    _grid_command("landscape", spec, [run_dir, other], output, num_processes,
                  lambda: run_landscape(spec, run_dir, other, output),
                  trackers=trackers, tracking_dir=tracking_dir,
                  tracking_project=tracking_project)


def _grid_command(analysis: str, spec: Any, runs: list[Path | None], output: Path,
                  num_processes: int | None, run_here, *, trackers: list[str],
                  tracking_dir: str | None, tracking_project: str | None) -> None:
    """The tail of interpolate/landscape: run the grid here (``run_here()``, its paths
    printed) or on N launched processes, then log it to the trackers; exit with the code."""
    from lbtkit.analysis_jobs import launch_job
    from lbtkit.tracking import log_grid

    _check_num_processes(num_processes)
    if num_processes is not None and num_processes > 1:
        code = launch_job(analysis, spec, runs, output, num_processes)
    else:
        _print_paths(run_here())
        code = 0
    if code == 0:
        log_grid(trackers, output, analysis, configured_dir=tracking_dir,
                 project=tracking_project)
    raise typer.Exit(code)


def _check_num_processes(num_processes: int | None) -> None:
    if num_processes is not None and num_processes < 1:
        raise UserError(f"--num-processes must be >= 1, got {num_processes}")


@app.command("analysis-worker", hidden=True)
@user_errors
def analysis_worker(
    job_file: Annotated[Path, typer.Argument(help="a launch-spec.json written by the launcher")],
) -> None:
    """(internal) One process of an analysis run by --num-processes N."""
    from lbtkit.analysis_jobs import run_job

    _print_paths(run_job(job_file))


def _print_paths(paths: dict[str, Path] | None) -> None:
    for kind, path in (paths or {}).items():
        print(f"{kind}: {path}")


@app.command()
@user_errors
def sharpness(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    eps: Annotated[str, typer.Option(help="comma list of box sizes")] = "1e-3,5e-4",
    subspace: Annotated[
        str, typer.Option(help="full | random:P, or several comma-separated")
    ] = "full",
    iters: Annotated[int, typer.Option(help="L-BFGS-B iterations")] = 10,
    hessian: Annotated[bool, typer.Option(help="top Hessian eigenvalues (Lanczos)")] = False,
    top_k: Annotated[int, typer.Option(help="how many eigenvalues")] = 1,
    hessian_iters: Annotated[int, typer.Option(help="Lanczos iterations")] = 20,
    trace: Annotated[bool, typer.Option(help="Hutchinson estimate of the trace")] = False,
    trace_samples: Annotated[int, typer.Option(help="Hutchinson probe vectors")] = 100,
    samples: Annotated[int, typer.Option(help="training samples in the loss")] = 4096,
    eval_batch_size: Annotated[int, typer.Option(help="evaluation batch")] = 1024,
    seed: Annotated[int, typer.Option(help="seed for samples, subspace and probes")] = 0,
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--output", help="file to write (default RUN/sharpness.json)"),
    ] = None,
    num_processes: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--num-processes", help="split the sample's batches over N processes "
                     "(the loss and its derivatives are summed across them)"),
    ] = None,
    log_with: LogWithOption = "",
    tracking_dir: RunTrackingDirOption = None,
    tracking_project: TrackingProjectOption = None,
) -> None:
    """Keskar's sharpness of a trained solution, and optionally its Hessian spectrum/trace.

    \b
    Example:
        lbtkit sharpness runs/lb --eps 1e-3,5e-4 --subspace full,random:100
    """
    from lbtkit.landscape import run_sharpness
    from lbtkit.tracking import log_run_measurement, requested_trackers

    trackers = requested_trackers(log_with)
    spec = SharpnessSpec.from_dict({
        "eps": eps, "subspaces": subspace, "iters": iters, "hessian": hessian, "top_k": top_k,
        "hessian_iters": hessian_iters, "trace": trace, "trace_samples": trace_samples,
        "samples": samples, "batch_size": eval_batch_size, "seed": seed,
    }, source="the command line")
    output = output if output is not None else run_dir / "sharpness.json"
    if _launched("sharpness", spec, run_dir, output, num_processes):
        result = read_json(output)
    else:
        result = run_sharpness(spec, run_dir, output=output)
    print(json.dumps(result, indent=2))
    log_run_measurement(trackers, run_dir, "sharpness", result, configured_dir=tracking_dir,
                        project=tracking_project)


@app.command("noise-scale")
@user_errors
def noise_scale(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    batches: Annotated[
        str, typer.Option(help="the small and the big batch size, comma-separated")
    ] = "32,1024",
    draws: Annotated[int, typer.Option(help="random batches drawn per batch size")] = 32,
    seed: Annotated[int, typer.Option(help="seed of the batches and dropout masks")] = 0,
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--output", help="file to write (default RUN/noise_scale.json)"),
    ] = None,
    num_processes: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--num-processes", help="split the random batches over N processes "
                     "(the same numbers as one process)"),
    ] = None,
    weights: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--weights", help="measure at these weights of the run's model instead of "
                     "its final ones, e.g. RUN/checkpoints/step-N/model.safetensors (default "
                     "output RUN/noise_scale-step-N.json)"),
    ] = None,
    log_with: LogWithOption = "",
    tracking_dir: RunTrackingDirOption = None,
    tracking_project: TrackingProjectOption = None,
    renamed_samples: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--samples", hidden=True, help="renamed --draws"),
    ] = None,
) -> None:
    """The gradient noise scale B_simple = tr(Sigma)/|G|^2 at a run's final weights, or at a
    checkpoint's (McCandlish et al. 2018), from gradient norms at two batch sizes.

    \b
    Example:
        lbtkit noise-scale runs/b1024 --batches 32,1024 --draws 32
    """
    from lbtkit.noise_scale import default_output, parse_batches, run_noise_scale
    from lbtkit.tracking import log_run_measurement, requested_trackers

    if renamed_samples is not None:
        raise UserError("noise-scale --samples is now --draws (random batches per batch size; "
                        "--samples counts training images in sharpness)")
    trackers = requested_trackers(log_with)
    spec = NoiseScaleSpec(batch_sizes=parse_batches(batches), draws=draws, seed=seed)
    step = _measured_step(weights, trackers)
    output = output if output is not None else default_output(run_dir, weights)
    if _launched("noise-scale", spec, run_dir, output, num_processes, weights=weights):
        result = read_json(output)
    else:
        result = run_noise_scale(spec, run_dir, output=output, weights=weights)
    at = "" if weights is None else f" at {weights}"
    console.print(_noise_scale_table(result, title=f"gradient noise scale of {run_dir}{at} "
                                                   f"({draws} batches per size)"))
    print(f"written: {output}")
    log_run_measurement(trackers, run_dir, "noise_scale", result, configured_dir=tracking_dir,
                        project=tracking_project, step=step)


def _measured_step(weights: Path | None, trackers: list[str]) -> int | None:
    """The optimizer step a --weights measurement is logged at (its checkpoint's); None for
    the final weights (the run's last step). Refused before measuring when a tracker is
    asked for and the weights are not a checkpoint's: nothing would place them on the
    run's curves."""
    from lbtkit.checkpoint import checkpoint_step

    if weights is None:
        return None
    if not weights.is_file():
        raise UserError(f"--weights {weights}: no such file")
    step = checkpoint_step(weights)
    if step is None and trackers:
        raise UserError(f"--log-with with --weights needs a checkpoint's weights "
                        f"(RUN/checkpoints/step-N/model.safetensors: its step places the "
                        f"measurement on the run's curves), not {weights}")
    return step


def _launched(analysis: str, spec: Any, run_dir: Path, output: Path,
              num_processes: int | None, *, weights: Path | None = None) -> bool:
    """With --num-processes N > 1, run ``analysis`` of ``run_dir`` (at ``weights``, if given)
    on N launched processes (exit with their code when it is not 0) and return True; else
    False (run it here)."""
    from lbtkit.analysis_jobs import launch_job
    from lbtkit.checkpoint import load_weights
    from lbtkit.rundir import load_run

    _check_num_processes(num_processes)
    if num_processes is None or num_processes == 1:
        return False
    model, _ = load_run(run_dir, device="cpu")  # one error line here rather than one per worker
    if weights is not None:
        load_weights(model, weights)
    code = launch_job(analysis, spec, [run_dir], output, num_processes, weights=weights)
    if code != 0:
        raise typer.Exit(code)
    return True


def _noise_scale_table(result: dict[str, Any], *, title: str) -> Table:
    table = Table("quantity", "estimate", "std error", title=title)
    for batch in result["batches"].values():
        table.add_row(f"E|G_B|^2, B = {batch['batch_size']}", f"{batch['mean']:.6g}",
                      f"{batch['std_error']:.2g}")
    table.add_row("|G|^2", f"{result['grad_sq']:.6g}", f"{result['grad_sq_std_error']:.2g}")
    table.add_row("tr(Sigma)", f"{result['trace_sigma']:.6g}",
                  f"{result['trace_sigma_std_error']:.2g}")
    b_simple = result["b_simple"]
    error = result.get("b_simple_std_error")
    table.add_row("B_simple", "not measurable (an estimate <= 0)" if b_simple is None
                  else f"{b_simple:.4g}", "" if error is None else f"{error:.2g}")
    return table


study_app = typer.Typer(help="Whole studies in one command.", no_args_is_help=True)
app.add_typer(study_app, name="study")


@study_app.command("keskar")
@user_errors
@with_config_flags(exclude=("output_dir", "name", "batch_size"))
def study_keskar(
    output: Annotated[Path, typer.Option("--output", help="the study directory")],
    preset: Annotated[Optional[str], typer.Option(help="e.g. keskar-c1")] = None,  # noqa: UP045
    config: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--config", help="TOML file with base settings"),
    ] = None,
    sb: Annotated[int, typer.Option("--sb", help="small batch size")] = 256,
    lb: Annotated[int, typer.Option("--lb", help="large batch size")] = 5000,
    alphas: Annotated[str, typer.Option(help="interpolation grid")] = DEFAULT_ALPHAS,
    bn: Annotated[str, typer.Option(help="BatchNorm handling (see interpolate)")] = "recalibrate",
    eps: Annotated[str, typer.Option(help="comma list of sharpness box sizes")] = "1e-3,5e-4",
    subspace: Annotated[str, typer.Option(help="full | random:P")] = "full",
    iters: Annotated[int, typer.Option(help="L-BFGS-B iterations")] = 10,
    hessian_k: Annotated[int, typer.Option(help="top Hessian eigenvalues (0: skip)")] = 1,
    trace: Annotated[bool, typer.Option(help="Hutchinson trace")] = True,
    samples: Annotated[int, typer.Option(help="training samples in the loss")] = 4096,
    progress: Annotated[bool, typer.Option(help="show progress")] = True,
    num_processes: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--num-processes", help="run each training, the interpolation and "
                     "each sharpness on N processes (accelerate launch, DDP)"),
    ] = None,
    *,
    config_flags: dict,
) -> None:
    """Train SB and LB from one initialisation, interpolate, measure sharpness, report.

    \b
    Example:
        lbtkit study keskar --preset keskar-c1 --sb 256 --lb 5000 --output c1
    """
    from lbtkit.studies.keskar import keskar_study
    from lbtkit.train import exit_code

    base = build_config(preset=preset, config_file=config, overrides=config_flags, resolve=False)
    spec = KeskarStudySpec(
        sb=sb, lb=lb,
        interpolation=InterpolationSpec.from_dict(
            {"alphas": alphas, "bn": bn, "eval_batch_size": base.eval_batch_size},
            source="the command line"),
        sharpness=SharpnessSpec.from_dict(
            {"eps": eps, "subspaces": subspace, "iters": iters, "hessian": hessian_k != 0,
             "top_k": hessian_k or 1, "trace": trace, "samples": samples,
             "batch_size": base.eval_batch_size, "seed": base.seed},
            source="the command line"),
    )
    _check_num_processes(num_processes)
    summary = keskar_study(base, spec, output, progress=progress,
                           num_processes=num_processes or 1)
    print(f"report: {output / 'report.md'}")
    raise typer.Exit(exit_code(summary["status"]))


@study_app.command("fashion")
@user_errors
def study_fashion(
    output: Annotated[Path, typer.Option("--output", help="where index.md and the artefacts go")],
    quick: Annotated[
        bool, typer.Option("--quick", help="2 seeds, 1-2 epochs, small measurements: minutes")
    ] = False,
    seeds: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--seeds", help="seeds 0..N-1 for the Keskar part (default: 3; 2 with "
                     "--quick); each seed adds about 10 minutes")
    ] = None,
    data_dir: Annotated[
        str, typer.Option("--data-dir", help="where to look for fashion-mnist first (then "
                          "/usr/share/datasets/fashion-mnist)")
    ] = RunConfig.data_dir,
    progress: Annotated[bool, typer.Option(help="show progress")] = True,
) -> None:
    """Keskar's F1 protocol over seeds and the batch-size sweep on Fashion-MNIST -> index.md.

    \b
    Example:
        lbtkit study fashion --output docs/fashion          # what make study runs
        lbtkit study fashion --output /tmp/fashion --quick
    """
    from lbtkit.studies.fashion import FULL, QUICK, run_fashion_study
    from lbtkit.train import exit_code

    spec = QUICK if quick else FULL
    if seeds is not None:
        spec = spec.updated(seeds=tuple(range(seeds)))
    summary = run_fashion_study(output, spec, data_dir=data_dir, progress=progress)
    if summary["status"] == "completed":
        print(f"index: {summary['index']}")
    raise typer.Exit(exit_code(summary["status"]))


@app.command()
@user_errors
def demo(
    output: Annotated[Path, typer.Option("--output", help="where index.md and the artefacts go")],
    quick: Annotated[
        bool, typer.Option("--quick", help="2 batch sizes, 1 epoch, tiny measurements: seconds")
    ] = False,
    progress: Annotated[bool, typer.Option(help="show progress")] = True,
) -> None:
    """The whole study offline on the bundled digits: sweep, report, Keskar study, index.md.

    \b
    Example:
        lbtkit demo --output docs/demo
        lbtkit demo --output /tmp/demo --quick
    """
    from lbtkit.demo import FULL, QUICK, run_demo
    from lbtkit.preflight import check_output_dir
    from lbtkit.train import exit_code

    check_output_dir(output)
    summary = run_demo(output, QUICK if quick else FULL, progress=progress)
    raise typer.Exit(exit_code(summary["status"]))


@app.command()
@user_errors
def doctor(
    preset: Annotated[
        Optional[str], typer.Option(help="check for what this preset needs")  # noqa: UP045
    ] = None,
    config: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--config", help="check for what this config file needs"),
    ] = None,
    dataset: Annotated[
        Optional[str], typer.Option(help="data set to look for")  # noqa: UP045
    ] = None,
    data_dir: Annotated[
        Optional[str], typer.Option("--data-dir", help="where the data sets are")  # noqa: UP045
    ] = None,
    pretrained: Annotated[
        Optional[str], typer.Option(help="none | imagenet | weights file")  # noqa: UP045
    ] = None,
    output: Annotated[
        Optional[str], typer.Option("--output", help="run directory to check")  # noqa: UP045
    ] = None,
    require_gpu: Annotated[
        bool, typer.Option("--require-gpu", help="fail (not warn) when no GPU is visible")
    ] = False,
) -> None:
    """Check this environment before a run: versions, GPUs, data, weights, output dir.

    Exits 1 when something required is missing; each problem names its fix.

    \b
    Example:
        lbtkit doctor --preset keskar-c1 --data-dir /shared/data
    """
    from lbtkit.doctor import doctor_settings, run_doctor

    settings = doctor_settings(
        preset=preset, config_file=config,
        overrides={"dataset": dataset, "data_dir": data_dir, "pretrained": pretrained,
                   "output_dir": output},
    )
    raise typer.Exit(run_doctor(**settings, require_gpu=require_gpu, console=console))


@app.command()
@user_errors
def fetch(
    what: Annotated[
        str, typer.Argument(help="cifar10 | cifar100 | mnist | fashion-mnist | weights")
    ],
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="where data sets go: the directory jobs read")
    ] = Path(RunConfig.data_dir),
) -> None:
    """Download a data set, or the ImageNet weights into $TORCH_HOME, on a machine with internet.

    Run it on a login node into the shared directories that jobs on compute nodes read.

    \b
    Example:
        lbtkit fetch fashion-mnist --data-dir /shared/data
        lbtkit fetch weights
    """
    from lbtkit.fetch import fetch as fetch_item

    print(f"{what}: {fetch_item(what, data_dir=data_dir)}")


@app.command()
def presets() -> None:
    """List the named presets.

    \b
    Example:
        lbtkit presets
    """
    table = Table("preset", "model", "dataset", "epochs", "batch", "lr rule", "description")
    for name in list_presets():
        values = preset_values(name)
        rule = (f"{values.get('base_lr')} x ({values.get('lr_scaling', 'linear')}) "
                f"batch/{values.get('base_batch_size')}")
        table.add_row(
            name, str(values.get("model")), str(values.get("dataset")),
            str(values.get("epochs")), str(values.get("batch_size")), rule,
            preset_description(name),
        )
    console.print(table)


@app.command()
def models() -> None:
    """List the registered model names.

    \b
    Example:
        lbtkit models
    """
    from lbtkit.models import list_models

    for name in list_models():
        print(name)


class _StandardStream(logging.StreamHandler):
    """A handler on whatever ``sys.stdout`` (or ``sys.stderr``) is when a record comes, not
    when it was made: a live progress bar swaps in a proxy that prints above the bar."""

    def __init__(self, name: str) -> None:
        self._stream_name = name
        super().__init__()

    @property
    def stream(self):
        return getattr(sys, self._stream_name)

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; the lookup wins
        pass


def configure_logging() -> None:
    """Show the library's log records as the CLI's own lines: info on stdout as the bare
    message, warnings and errors on stderr as "warning: message". The library itself only logs
    (``logging.getLogger(__name__)``): as a library it is quiet unless its user configures
    logging."""

    class _LevelPrefix(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            text = super().format(record)
            return text if record.levelno < logging.WARNING else \
                f"{record.levelname.lower()}: {text}"

    out = _StandardStream("stdout")
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err = _StandardStream("stderr")
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(_LevelPrefix("%(message)s"))
    logger = logging.getLogger("lbtkit")
    logger.handlers[:] = [out, err]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main() -> None:
    from lbtkit.signals import exit_interrupted_during_startup

    exit_interrupted_during_startup()  # the console script's entry; python -m did it already
    configure_logging()
    app()


if __name__ == "__main__":
    main()
