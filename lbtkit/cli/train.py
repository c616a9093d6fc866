"""``lbtkit run``: train one model (here, or on N launched processes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from lbtkit.cli.common import app, check_num_processes, parse_int, user_errors, with_config_flags
from lbtkit.config import build_config, plan_batches
from lbtkit.errors import UserError


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
                     parser=parse_int),
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
    from lbtkit import distributed, launch

    resolved = build_config(preset=preset, config_file=config, overrides=config_flags)
    check_num_processes(num_processes)
    if num_processes and distributed.in_launched_worker():
        raise UserError("--num-processes launches processes; inside accelerate launch, omit it")
    world = num_processes or distributed.launched_world_size()
    batch_plan = plan_batches(resolved, world)
    if dry_run:
        shown = {**resolved.to_dict(), **batch_plan.to_dict()}
        print(json.dumps(shown, indent=2))
        return
    from lbtkit.preflight import preflight

    # Once here, not once per process (rank 0 of a launch holds the lock: others skip it).
    preflight(resolved, world_size=world, check_lock=not distributed.in_launched_worker())
    if num_processes and num_processes > 1:
        raise typer.Exit(launch.launch_run(resolved, num_processes, progress=progress))

    from lbtkit.errors import exit_code
    from lbtkit.train import run as train_run

    results = train_run(resolved, progress=progress)
    raise typer.Exit(exit_code(results["status"]))
