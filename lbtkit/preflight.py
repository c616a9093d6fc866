"""Checks made once, before any process or sweep entry starts.

A mistake found inside ``lbtkit.train.run`` is reported by every process of a launch and by
every entry of a sweep (a missing data set: N tracebacks, or 18 failed entries). What can be
known without loading data or building a model is therefore checked here first: the batch
plan, the data files, the pretrained weights, and the output directory. The first problem is
raised as one ``UserError`` line (exit 2), or ``WriteFailed`` (exit 1) when the system refuses
the output directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lbtkit.config import RunConfig, plan_batches
from lbtkit.errors import STATUS_COMPLETED, ConfigError, DataNotFoundError, UserError, WriteFailed
from lbtkit.fileio import check_not_locked, ensure_directory
from lbtkit.rundir import RunDir


def preflight(config: RunConfig, *, world_size: int = 1, check_lock: bool = True) -> None:
    """Raise the first problem that would stop ``config`` (resolved) on ``world_size``
    processes. A completed run directory needs nothing: the run would not train again.
    ``check_lock=False`` inside a launched worker: its own rank 0 may hold the lock already."""
    plan_batches(config, world_size)
    run = RunDir(config.output_dir)
    results = run.read_results() if run.root.is_dir() else None
    if results is not None and results["status"] == STATUS_COMPLETED:
        return  # before the writability check: a completed run on a read-only disk is fine
    check_output_dir(run.root)
    if check_lock:
        check_not_locked(run.root)
    check_data(config)
    check_weights(config)
    check_model(config)


def check_model(config: RunConfig) -> None:
    """An external model (``pkg.mod:fn``, ``torchvision:ARCH``, a plug-in) builds and runs on
    one batch (lbtkit.models.external checks it as it is built): once here, not once per
    process or per sweep entry. The registered models need no check."""
    from lbtkit.models import is_registered
    from lbtkit.run_model import build_model_for

    if not is_registered(config.model):
        build_model_for(config, initial_weights=False)


def preflight_all(configs: list[RunConfig], *, world_size: int = 1) -> None:
    """``preflight`` for several runs (a sweep's entries), each data set and weight file once."""
    seen: set[tuple] = set()
    for config in configs:
        plan_batches(config, world_size)
        check_output_dir(Path(config.output_dir))
        check_not_locked(config.output_dir)
        key = (config.dataset, config.data_dir, config.download, config.pretrained)
        if key not in seen:
            seen.add(key)
            check_data(config)
            check_weights(config)
        if (config.model, config.dataset, config.num_classes, config.image_size) not in seen:
            seen.add((config.model, config.dataset, config.num_classes, config.image_size))
            check_model(config)


def check_output_dir(path: Path) -> None:
    """Create ``path`` if needed and make sure a file can be created in it."""
    ensure_directory(path)
    try:
        with tempfile.TemporaryFile(dir=path, prefix=".lbtkit-probe-"):
            pass
    except OSError as exc:
        raise WriteFailed(path, exc.strerror or str(exc)) from None


def check_data(config: RunConfig) -> None:
    """The data set's files are where the config says (unless the run downloads them)."""
    from lbtkit.data import dataset_files

    files = dataset_files(config.dataset, config.data_dir)
    if config.download or files is None:
        return
    missing = [f for f in files if not f.is_file()]
    if missing:
        root = Path(config.data_dir).expanduser().absolute()
        raise DataNotFoundError(
            f"dataset {config.dataset!r} not found: looked for {missing[0]}; fetch it with "
            f"`lbtkit fetch {config.dataset} --data-dir {root}` or rerun with --download on a "
            f"machine with internet"
        )


# The models whose --pretrained imagenet means torchvision's ImageNet MobileNetV2 weights.
_MOBILENET_MODELS = ("mobilenet_v2", "mobilenet_v2_cifar")


def check_weights(config: RunConfig) -> None:
    """The pretrained weights exist: a file, or ImageNet's in the torch hub cache, fetched
    here once (in the one process that starts the launch) when the cache lacks them."""
    if config.pretrained == "none":
        return
    if config.pretrained != "imagenet":
        path = Path(config.pretrained).expanduser()
        if not path.is_file():
            raise ConfigError(f"pretrained weights file not found: {path}")
        return
    if config.model not in _MOBILENET_MODELS:
        return  # other builders fetch (or refuse) their own weights
    from lbtkit.fetch import fetch_weights
    from lbtkit.models.mobilenet import imagenet_weights_path

    path = Path(imagenet_weights_path())
    if path.is_file():
        return
    try:
        fetch_weights()
    except UserError as exc:
        home = os.environ.get("TORCH_HOME")
        fetch = f"TORCH_HOME={home} lbtkit fetch weights" if home else "lbtkit fetch weights"
        raise ConfigError(
            f"the ImageNet MobileNetV2 weights (--pretrained imagenet) are not in the torch hub "
            f"cache ({path}) and could not be downloaded ({exc}); fetch them on a machine with "
            f"internet: {fetch}"
        ) from None
