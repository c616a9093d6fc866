"""Experiment tracking through Accelerate's trackers (TensorBoard, W&B, MLflow, ...).

lbtkit's own files (``metrics.jsonl``, ``results.json``) stay the record; trackers are a view
for the tools researchers already watch. Every run is one tracker run named like its run
directory, and local trackers write under ``tracking_dir`` (default ``<parent of the run
directory>/tracking``), so the entries of a sweep (``SWEEP/runs/NAME``) land side by side in
``SWEEP/runs/tracking`` and ``tensorboard --logdir SWEEP/runs/tracking`` shows the whole sweep.

Only the main process writes: Accelerate's trackers start and log on the main process.

The analysis commands log too, after they have written their files (``log_run_measurement``:
a finished run's noise scale or sharpness into that run's own tracker run, at its final step;
``log_grid``: an interpolation or a landscape as one tracker run named like its output
directory, one step per grid point).

Hosted trackers name runs by id, not by name: W&B and MLflow would open a second run of the
same name for a resumed (requeued) training run and for each analysis of it. So the ids of a
run's W&B and MLflow runs are kept in ``RUN/tracker_runs.json`` once they start, and every later
start for that directory continues them (TensorBoard appends to the run's folder anyway).
"""

from __future__ import annotations

import itertools
import logging
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lbtkit.config import TRACKER_EXTRAS, parse_trackers
from lbtkit.errors import UserError

log = logging.getLogger(__name__)

# Metrics rows carry these besides the step counters; None values (no evaluation this epoch,
# no noise scale) are left out, since trackers take numbers only.
_STEP_KEYS = ("epoch", "step")


def check_installed(names: list[str]) -> None:
    """Refuse a tracker whose package is missing, naming the extra that installs it."""
    from accelerate.utils import imports

    for name in names:
        available = getattr(imports, f"is_{name}_available")
        if not available():
            raise UserError(
                f"tracker {name!r} is not installed: pip install 'lbtkit[{TRACKER_EXTRAS[name]}]'"
            )


def requested_trackers(text: str | None) -> list[str]:
    """The trackers a ``--log-with`` names, each checked to be installed: for a command to
    call before the work, so that a missing package is one line, not a lost measurement."""
    names = parse_trackers(text)
    check_installed(names)
    return names


def tracking_dir(output_dir: str | Path, configured: str | None = None) -> Path:
    """Where local trackers write for the run in ``output_dir``."""
    if configured:
        return Path(configured)
    return Path(output_dir).parent / "tracking"


def run_name(output_dir: str | Path) -> str:
    """One tracker run per run directory, named like it."""
    return Path(output_dir).resolve().name


TRACKER_RUNS_FILE = "tracker_runs.json"  # in the run directory: {"wandb": id, "mlflow": id}


def tracker_runs(output_dir: str | Path) -> dict[str, str]:
    """The W&B / MLflow run ids recorded for the run in ``output_dir`` ({} before any)."""
    from lbtkit.fileio import read_json

    path = Path(output_dir) / TRACKER_RUNS_FILE
    stored = read_json(path) if path.is_file() else None
    return {k: v for k, v in stored.items() if isinstance(v, str)} if isinstance(stored, dict) \
        else {}


def record_tracker_runs(trackers: Iterable[Any], output_dir: str | Path) -> None:
    """Keep the run ids of started W&B / MLflow trackers in ``RUN/tracker_runs.json`` (main
    process), for the next start in that directory to continue them."""
    from lbtkit.fileio import write_json

    started = {}
    for tracker in trackers:
        if tracker.name == "wandb" and getattr(tracker, "run", None) is not None:
            started["wandb"] = tracker.run.id
        elif tracker.name == "mlflow" and getattr(tracker, "active_run", None) is not None:
            started["mlflow"] = tracker.active_run.info.run_id
    known = tracker_runs(output_dir)
    if started and {**known, **started} != known:
        write_json(Path(output_dir) / TRACKER_RUNS_FILE, {**known, **started})


def make_trackers(names: list[str], *, output_dir: str | Path, configured_dir: str | None,
                  project: str) -> list[Any]:
    """Accelerate tracker objects for ``names``, each naming the run like its directory and
    continuing the W&B / MLflow runs recorded for it (``record_tracker_runs``).

    Built here rather than by name in ``Accelerator(log_with=...)`` because Accelerate gives
    every tracker one ``project_name``: TensorBoard uses it as the run's folder and W&B as the
    project, and a sweep needs both (one project, one folder per run).
    """
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, MLflowTracker, TensorBoardTracker

    check_installed(names)
    directory = tracking_dir(output_dir, configured_dir)
    name = run_name(output_dir)
    ids = tracker_runs(output_dir)
    trackers: list[Any] = []
    for tracker in names:
        if tracker == "tensorboard":
            trackers.append(TensorBoardTracker(name, directory))
        elif tracker == "mlflow":
            trackers.append(MLflowTracker(experiment_name=project, logging_dir=str(directory),
                                          run_name=name, run_id=ids.get("mlflow")))
        elif tracker == "wandb":
            # W&B takes an id chosen here; "allow": continue it if it exists, else create it.
            trackers.append(LOGGER_TYPE_TO_CLASS["wandb"](
                project, name=name, dir=str(directory), id=ids.get("wandb") or uuid.uuid4().hex,
                resume="allow"))
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

    def __init__(self, accelerator: Any, enabled: bool, output_dir: str | Path) -> None:
        self.accelerator = accelerator
        self.enabled = enabled
        self.output_dir = output_dir

    def start(self, config: Mapping[str, Any], project: str) -> None:
        if self.enabled:
            self.accelerator.init_trackers(project, config=hyperparameters(config))
            if self.accelerator.is_main_process:
                record_tracker_runs(self.accelerator.trackers, self.output_dir)

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


# --- the analysis commands: log what they wrote ------------------------------------------


Rows = Iterable[tuple[int, Mapping[str, Any]]]


def log_scalars(names: Sequence[str], *, output_dir: str | Path, configured_dir: str | None,
                project: str, config: Mapping[str, Any], rows: Rows) -> None:
    """One tracker run per tracker in ``names``, named like ``output_dir`` (as
    ``make_trackers``): ``config`` as its hyper-parameters, each (step, values) of ``rows``
    logged at its step (non-numbers, e.g. None for an unmeasurable value, left out), then
    the trackers finished, which flushes and closes their files.

    Only the main process writes: a launched worker of rank > 0 logs nothing.
    """
    if not names or int(os.environ.get("RANK", "0")) != 0:
        return
    trackers = make_trackers(list(names), output_dir=output_dir,
                             configured_dir=configured_dir, project=project)
    started: list[Any] = []
    try:
        for tracker in trackers:
            tracker.start()
            started.append(tracker)
            tracker.store_init_configuration(hyperparameters(config))
        record_tracker_runs(started, output_dir)
        for step, values in rows:
            numbers = _numbers(values)
            for tracker in started:
                tracker.log(numbers, step=step)
    finally:
        for tracker in started:  # finishing one that never started would hide the error
            tracker.finish()
    log.info("logged to %s under %s", ", ".join(names),
             tracking_dir(output_dir, configured_dir) / run_name(output_dir))


def log_run_measurement(names: Sequence[str], run_dir: str | Path, analysis: str,
                        result: Mapping[str, Any], *, configured_dir: str | None = None,
                        project: str | None = None, step: int | None = None) -> None:
    """Log a finished run's measurement (``analysis``: "noise_scale" or "sharpness", its
    result as returned and written) into the run's own tracker run, beside its training
    curves: the run's ``tracking_dir`` and project unless given, at ``step`` (default the
    run's final optimizer step), with the measurement's spec as hyper-parameters (prefixed
    ``ANALYSIS/``)."""
    if not names:
        return
    from lbtkit.rundir import RunDir

    run = RunDir(run_dir)
    config = run.read_config()
    if step is None:
        step = (run.read_results() or {}).get("global_step") or 0
    log_scalars(
        names, output_dir=run.root,
        configured_dir=configured_dir or (config.tracking_dir if config else None),
        project=project or (config.tracking_project if config else "lbtkit"),
        config=_prefixed(analysis, result.get("spec") or {}),
        rows=[(int(step), MEASUREMENT_SCALARS[analysis](result))],
    )


def log_grid(names: Sequence[str], output_dir: str | Path, analysis: str, *,
             configured_dir: str | None = None, project: str | None = None) -> None:
    """Log the grid ``lbtkit interpolate|landscape`` wrote to ``OUTPUT/ANALYSIS.json``
    (``analysis``: "interpolation" or "landscape") as one tracker run named like OUTPUT,
    under ``tracking_dir(OUTPUT)``: step = the point's index in the grid, its coordinates and
    each split's loss and accuracy as scalars, the spec as hyper-parameters.

    Read back from the file so that every process count logs alike and only the process
    that launched the workers writes, after they have all finished."""
    if not names:
        return
    from lbtkit.fileio import read_json

    document = read_json(Path(output_dir) / f"{analysis}.json")
    log_scalars(names, output_dir=output_dir, configured_dir=configured_dir,
                project=project or "lbtkit", config=_prefixed(analysis, document["spec"]),
                rows=GRID_ROWS[analysis](document))


def noise_scale_scalars(result: Mapping[str, Any]) -> dict[str, Any]:
    """A ``run_noise_scale`` result as tracker scalars (``noise_scale/...``)."""
    values = {f"noise_scale/{key}": result.get(key) for key in (
        "b_simple", "grad_sq", "trace_sigma", "b_simple_std_error", "grad_sq_std_error",
        "trace_sigma_std_error")}
    for batch in result["batches"].values():
        values[f"noise_scale/E_G_B_sq/B={batch['batch_size']}"] = batch["mean"]
    return values


def sharpness_scalars(result: Mapping[str, Any]) -> dict[str, Any]:
    """A ``run_sharpness`` result as tracker scalars: ``sharpness/phi SUBSPACE eps=EPS`` per
    measurement, ``hessian/top_K`` and ``hessian/trace`` when measured."""
    values: dict[str, Any] = {"sharpness/train_loss": result.get("train_loss")}
    for measured in result["sharpness"]:
        # the convention is named when it is not PyTorch's eval mode (the default)
        bn = "" if measured.get("bn", "running") == "running" else f" bn={measured['bn']}"
        values[f"sharpness/phi {measured['subspace']} eps={measured['eps']:g}{bn}"] = \
            measured["phi"]
    for k, value in enumerate((result.get("hessian") or {}).get("top_eigenvalues", []), 1):
        values[f"hessian/top_{k}"] = value
    if result.get("trace"):
        values["hessian/trace"] = result["trace"]["mean"]
        values["hessian/trace_stderr"] = result["trace"]["stderr"]
    return values


def interpolation_rows(document: Mapping[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """An interpolation's rows per alpha: (index of alpha in the grid, {interpolation/alpha,
    interpolation/SPLIT_loss, interpolation/SPLIT_acc})."""
    return _grid_rows(document["rows"], "interpolation", ("alpha",),
                      [(alpha,) for alpha in document["alphas"]])


def landscape_rows(document: Mapping[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """A landscape's rows per point: (index of (x, y) in the grid, x-major as evaluated,
    {landscape/x, landscape/y, landscape/SPLIT_loss, landscape/SPLIT_acc})."""
    return _grid_rows(document["rows"], "landscape", ("x", "y"),
                      list(itertools.product(document["x"], document["y"])))


MEASUREMENT_SCALARS = {"noise_scale": noise_scale_scalars, "sharpness": sharpness_scalars}
GRID_ROWS = {"interpolation": interpolation_rows, "landscape": landscape_rows}


def _grid_rows(rows: Iterable[Mapping[str, Any]], prefix: str, axes: tuple[str, ...],
               points: list[tuple[float, ...]]) -> list[tuple[int, dict[str, Any]]]:
    index = {point: i for i, point in enumerate(points)}
    logged: dict[int, dict[str, Any]] = {}
    for row in rows:
        point = tuple(row[axis] for axis in axes)
        values = logged.setdefault(index[point], {
            f"{prefix}/{axis}": value for axis, value in zip(axes, point, strict=True)})
        values[f"{prefix}/{row['split']}_loss"] = row["loss"]
        values[f"{prefix}/{row['split']}_acc"] = row["accuracy"]
    return sorted(logged.items())


def _prefixed(analysis: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """An analysis spec as hyper-parameters apart from the run's own (``ANALYSIS/KEY``)."""
    return {f"{analysis}/{key}": value for key, value in spec.items()}


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}
