"""``lbtkit run``: train one model (here, or on N launched processes)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from lbtkit.cli.common import app, check_num_processes, user_errors
from lbtkit.cli.flags import with_config_flags
from lbtkit.cli.options import (
    config_option,
    num_processes_option,
    preset_option,
    progress_option,
)
from lbtkit.config import build_config, plan_batches
from lbtkit.errors import UserError


@app.command()
@user_errors
@with_config_flags
def run(
    preset: preset_option("named preset (lbtkit presets)") = None,
    config: config_option("TOML file, or a run's config.json to repeat it") = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the resolved config as JSON and exit")
    ] = False,
    num_processes: num_processes_option("launch N processes (accelerate launch, DDP)") = None,
    progress: progress_option() = True,
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
