"""A run's network: ``build_model_for(config)`` builds the one a run of ``config`` trains,
``load_run(path)`` gives back a finished run's, its final weights loaded.

These sit above the model registry (``lbtkit.models``, which knows nothing of RunConfig) and
the run-directory format (``lbtkit.rundir``). The registry, the data sets and torch are
imported when called, not at import: ``import lbtkit`` (which exports ``load_run``) and the
CLI's start stay free of torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lbtkit.config import RunConfig
from lbtkit.errors import CheckpointError
from lbtkit.rundir import RunDir

if TYPE_CHECKING:
    from torch import nn

    from lbtkit.data import DatasetInfo


def build_model_for(
    config: RunConfig, info: DatasetInfo | None = None, *, initial_weights: bool = True
) -> nn.Module:
    """The network a run of ``config`` trains: the one place that derives the builder's
    arguments from a config (unset sizes are the dataset's; ``info`` defaults to
    ``dataset_info(config.dataset)``).

    With ``initial_weights`` it starts as training starts: from ``config.pretrained``, then
    ``config.init_weights``. Without, it is freshly initialised, for callers that load other
    weights into it (a run's final ones) or only need its shape. Seed the RNG first when the
    initial draw matters.
    """
    from lbtkit.models import build_model

    if info is None:
        from lbtkit.data import dataset_info

        info = dataset_info(config.dataset)
    model = build_model(
        config.model,
        num_classes=config.num_classes or info.num_classes,
        in_channels=info.channels,
        image_size=config.image_size or info.image_size,
        pretrained=config.pretrained if initial_weights else "none",
    )
    if initial_weights and config.init_weights:
        from lbtkit.checkpoint import load_weights

        load_weights(model, config.init_weights)
    return model


def load_run(path: str | Path, *, device: str = "cpu") -> tuple[nn.Module, RunConfig]:
    """Return ``(model, config)`` of a completed run, its final weights loaded, in eval mode."""
    from lbtkit.checkpoint import load_weights

    run = RunDir(path)
    if not run.root.is_dir():
        raise CheckpointError(f"run directory not found: {run.root}")
    config = run.read_config()
    if config is None:
        raise CheckpointError(f"{run.root} is not a run directory (no config.json)")
    if not run.model_path.exists():
        status = (run.read_results() or {}).get("status", "not finished")
        raise CheckpointError(f"{run.root} has no final weights (run status: {status})")
    model = build_model_for(config, initial_weights=False)
    load_weights(model, run.model_path)
    return model.to(device).eval(), config
