"""Experiment tracking through Accelerate's trackers (TensorBoard, W&B, MLflow, ...).

lbtkit's own files (``metrics.jsonl``, ``results.json``) stay the record; trackers are a view
for the tools researchers already watch. Every run is one tracker run named like its run
directory, and local trackers write under ``tracking_dir`` (default ``<parent of the run
directory>/tracking``), so the entries of a sweep (``SWEEP/runs/NAME``) land side by side in
``SWEEP/runs/tracking`` and ``tensorboard --logdir SWEEP/runs/tracking`` shows the whole sweep.

Only the main process writes: Accelerate's trackers start and log on the main process.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lbtkit.errors import ConfigError, UserError

log = logging.getLogger(__name__)

# Tracker name (Accelerate's) -> the lbtkit extra that installs it.
TRACKER_EXTRAS = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "comet_ml": "comet",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
    "trackio": "trackio",
}
# Metrics rows carry these besides the step counters; None values (no evaluation this epoch,
# no noise scale) are left out, since trackers take numbers only.
_STEP_KEYS = ("epoch", "step")


def parse_trackers(text: str | None) -> list[str]:
    """``"tensorboard,wandb"`` -> ``["tensorboard", "wandb"]``; unknown names are refused."""
    names = [part.strip() for part in (text or "").split(",") if part.strip()]
    for name in names:
        if name not in TRACKER_EXTRAS:
            raise ConfigError(
                f"unknown tracker {name!r} in log_with; choose from {', '.join(TRACKER_EXTRAS)}"
            )
    return list(dict.fromkeys(names))


def check_installed(names: list[str]) -> None:
    """Refuse a tracker whose package is missing, naming the extra that installs it."""
    from accelerate.utils import imports

    for name in names:
        available = getattr(imports, f"is_{name}_available")
        if not available():
            raise UserError(
                f"tracker {name!r} is not installed: pip install 'lbtkit[{TRACKER_EXTRAS[name]}]'"
            )


def tracking_dir(output_dir: str | Path, configured: str | None = None) -> Path:
    """Where local trackers write for the run in ``output_dir``."""
    if configured:
        return Path(configured)
    return Path(output_dir).parent / "tracking"


def run_name(output_dir: str | Path) -> str:
    """One tracker run per run directory, named like it."""
    return Path(output_dir).resolve().name


def make_trackers(names: list[str], *, output_dir: str | Path, configured_dir: str | None,
                  project: str) -> list[Any]:
    """Accelerate tracker objects for ``names``, each naming the run like its directory.

    Built here rather than by name in ``Accelerator(log_with=...)`` because Accelerate gives
    every tracker one ``project_name``: TensorBoard uses it as the run's folder and W&B as the
    project, and a sweep needs both (one project, one folder per run).
    """
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, MLflowTracker, TensorBoardTracker

    check_installed(names)
    directory = tracking_dir(output_dir, configured_dir)
    name = run_name(output_dir)
    trackers: list[Any] = []
    for tracker in names:
        if tracker == "tensorboard":
            trackers.append(TensorBoardTracker(name, directory))
        elif tracker == "mlflow":
            trackers.append(MLflowTracker(experiment_name=project,
                                          logging_dir=str(directory), run_name=name))
        elif tracker == "wandb":
            trackers.append(LOGGER_TYPE_TO_CLASS["wandb"](project, name=name,
                                                          dir=str(directory)))
        elif LOGGER_TYPE_TO_CLASS[tracker].requires_logging_directory:
            trackers.append(LOGGER_TYPE_TO_CLASS[tracker](project, directory))
        else:
            trackers.append(LOGGER_TYPE_TO_CLASS[tracker](project))
    return trackers


def hyperparameters(values: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """A config as tracker hyper-parameters: scalars kept, None as "", the rest as text
    (TensorBoard's hparams take only bool, int, float and str)."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in values.items():
        if value is None:
            out[key] = ""
        elif isinstance(value, (bool, int, float, str)):
            out[key] = value
        else:
            out[key] = str(value)
    return out


def scalars(row: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric entries of a metrics row (None and step counters left out)."""
    return {
        f"{prefix}{key}": float(value) for key, value in row.items()
        if key not in _STEP_KEYS and isinstance(value, (int, float))
        and not isinstance(value, bool)
    }


class Tracking:
    """The trackers of one run, driven by the training loop through its Accelerator.

    With no trackers configured every method is a no-op, so the loop calls them
    unconditionally.
    """

    def __init__(self, accelerator: Any, enabled: bool) -> None:
        self.accelerator = accelerator
        self.enabled = enabled

    def start(self, config: Mapping[str, Any], project: str) -> None:
        if self.enabled:
            self.accelerator.init_trackers(project, config=hyperparameters(config))

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        if self.enabled:
            self.accelerator.log({f"step/{k}": v for k, v in values.items()}, step=step)

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        """One metrics row, at its optimizer step (so every run shares one x axis)."""
        if self.enabled:
            self.accelerator.log({**scalars(row), "epoch": row["epoch"]}, step=row["step"])

    def finish(self, results: Mapping[str, Any]) -> None:
        """The final metrics as the run's summary (``accelerator.end_training`` closes the
        writers)."""
        if not self.enabled:
            return
        final = results.get("final") or {}
        summary = {**scalars(final, "final/"), "final/epochs_completed":
                   float(results.get("epochs_completed") or 0)}
        if results.get("best_val_acc") is not None:
            summary["final/best_val_acc"] = float(results["best_val_acc"])
        self.accelerator.log(summary, step=results.get("global_step") or 0)


def tensorboard_dirs(sweep: Mapping[str, Any]) -> list[Path]:
    """The TensorBoard folders that a loaded sweep's runs wrote to (one for a whole sweep
    with the default ``tracking_dir``)."""
    folders = {
        tracking_dir(entry["config"]["output_dir"], entry["config"].get("tracking_dir"))
        for entry in sweep["runs"]
        if "tensorboard" in parse_trackers(entry["config"].get("log_with"))
    }
    return sorted(folder for folder in folders if folder.is_dir())
