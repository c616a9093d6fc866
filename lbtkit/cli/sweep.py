"""``lbtkit sweep`` (plan, run-task, run, submit, status) and ``lbtkit report`` of a sweep."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from lbtkit.cli.common import (
    app,
    check_at_least_one,
    check_num_processes,
    console,
    user_errors,
)
from lbtkit.cli.flags import with_config_flags
from lbtkit.cli.options import (
    config_option,
    jobs_option,
    num_processes_option,
    output_option,
    preset_option,
    progress_option,
    threads_option,
)
from lbtkit.config import build_config

DEFAULT_BATCH_SIZES = "32,64,128,256,512,1024"

sweep_app = typer.Typer(
    help="Plan and run a grid of runs (the batch-size study).", no_args_is_help=True
)
app.add_typer(sweep_app, name="sweep")


@sweep_app.command("plan")
@user_errors
@with_config_flags(exclude=("output_dir", "name", "batch_size"))  # --batch-sizes
def sweep_plan(
    output: output_option("the sweep directory"),
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
    preset: preset_option("named preset (lbtkit presets)") = None,
    config: config_option("TOML file with base settings") = None,
    num_processes: num_processes_option("processes each run will use (GPUs per node)") = 1,
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
    from lbtkit.markdown import format_lr
    from lbtkit.sweep import parse_grid, plan_sweep, sweep_table

    check_num_processes(num_processes)
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
    progress: progress_option() = True,
    threads: threads_option("torch threads, unless the entry sets its own") = None,
) -> None:
    """Run one entry of a sweep (what each SLURM array task calls).

    \b
    Example:
        lbtkit sweep run-task sweeps/s --index 0
    """
    from lbtkit.sweep import run_task

    check_at_least_one("--threads", threads)
    raise typer.Exit(run_task(sweep_dir, index, progress=progress, threads=threads))


@sweep_app.command("run")
@user_errors
def sweep_run(
    sweep_dir: Annotated[Path, typer.Argument(help="the sweep directory")],
    progress: progress_option("show progress (one entry at a time only)") = True,
    jobs: jobs_option("entries at once, in N worker processes that each run their entries one "
                      "after another, with a share of the CPUs (and GPUs of their own); logs in "
                      "SWEEP_DIR/logs/") = 1,
    threads: threads_option("torch threads per entry, unless the entry sets its own "
                            "[default: torch's; with --jobs N, the usable CPUs / N]") = None,
) -> None:
    """Run every entry that is not completed on this machine: one after another, or --jobs N
    at once. Results equal one-at-a-time ones at the same --threads.

    \b
    Example:
        lbtkit sweep run sweeps/s
        lbtkit sweep run sweeps/s --jobs 2
    """
    from lbtkit.sweep import run_all, run_all_exit_code

    check_at_least_one("--jobs", jobs)
    check_at_least_one("--threads", threads)
    statuses = run_all(sweep_dir, progress=progress, jobs=jobs, threads=threads)
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

    from lbtkit.slurm.submit import SlurmUnavailable, submit_sweep

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
    output: output_option("where to write (default: the sweep directory)", optional=True) = None,
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
