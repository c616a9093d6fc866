"""The machine and the catalogue: ``lbtkit doctor``, ``fetch``, ``presets``, ``models``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from lbtkit.cli.common import app, console, user_errors
from lbtkit.cli.options import config_option, preset_option
from lbtkit.config import RunConfig, list_presets, preset_description, preset_values


@app.command()
@user_errors
def doctor(
    preset: preset_option("check for what this preset needs") = None,
    config: config_option("check for what this config file needs") = None,
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
