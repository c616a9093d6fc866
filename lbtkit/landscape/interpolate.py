"""Keskar's parametric plot: loss and accuracy along theta(a) = a*theta_LB + (1-a)*theta_SB.

One model, one resident copy of the data and of both parameter sets on the device: per alpha
the mixture is written into the model's parameters in place (no state-dict reloads, no data
loaders). Only parameters are interpolated; BatchNorm statistics follow one of ``BN_MODES``:

- ``recalibrate``: reset and re-estimate them on un-augmented training images at every alpha;
- ``batch-stats``: normalise with each evaluated batch's statistics (Keskar's PyTorch script);
- ``interpolate``: mix the running statistics too (the seed's behaviour, for comparison). An
  extrapolated variance can drop below zero; such alphas are reported (``negative_variances``)
  and their loss is NaN in the CSV, never silently plotted.

Cross-entropy is the mean over samples of the log-softmax loss (``lbtkit.evaluate``), finite
for any finite logits. With several processes (Accelerate), each takes every world-th alpha.

After the grid, ``spec.refine`` extra alphas go where the training loss changes fastest
(``steepest_midpoints``): a cliff between two grid points (accuracy falling from 97% to 14%
within a step of 0.25) is resolved rather than drawn as one straight segment.
"""

from __future__ import annotations

import csv
import itertools
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import torch

from lbtkit.config import RunConfig
from lbtkit.data import load_dataset
from lbtkit.distributed import shard
from lbtkit.errors import ConfigError
from lbtkit.evaluate import InputSpec, evaluate_sums, mean_loss_and_accuracy
from lbtkit.fileio import atomic_write_text, write_json
from lbtkit.landscape.bn import evaluate_batch_stats, negative_variances, recalibrate_bn
from lbtkit.progress import TrainingProgress
from lbtkit.run_model import load_run
from lbtkit.rundir import versions
from lbtkit.specs import (
    SPLITS,
    InterpolationSpec,
    PlaneSpec,
)

__all__ = ["interpolate_runs", "interpolation_meta", "run_interpolation", "steepest_midpoints",
           "write_interpolation"]

log = logging.getLogger(__name__)
CSV_FIELDS = ("alpha", "split", "loss", "accuracy", "negative_variances")
# The run settings that must agree for two solutions to live in one parameter space.
_SAME_SETUP_FIELDS = ("model", "dataset", "num_classes", "image_size")


def check_same_setup(
    sb: tuple[RunConfig, torch.nn.Module, Path], lb: tuple[RunConfig, torch.nn.Module, Path]
) -> None:
    """Raise ConfigError unless both runs have the same architecture, data and tensor shapes."""
    (sb_config, sb_model, sb_dir), (lb_config, lb_model, lb_dir) = sb, lb
    for key in _SAME_SETUP_FIELDS:
        a, b = getattr(sb_config, key), getattr(lb_config, key)
        if a != b:
            raise ConfigError(
                f"the runs differ in {key}: {sb_dir} has {a!r}, {lb_dir} has {b!r}; "
                "comparing two solutions needs the same architecture and dataset"
            )
    sb_shapes = {k: tuple(v.shape) for k, v in sb_model.state_dict().items()}
    lb_shapes = {k: tuple(v.shape) for k, v in lb_model.state_dict().items()}
    if sb_shapes != lb_shapes:
        key = next(k for k in sorted(sb_shapes.keys() | lb_shapes.keys())
                   if sb_shapes.get(k) != lb_shapes.get(k))
        raise ConfigError(
            f"the runs' weights differ at {key}: {sb_dir} has shape {sb_shapes.get(key)}, "
            f"{lb_dir} has {lb_shapes.get(key)}"
        )


def interpolate_runs(
    spec: InterpolationSpec,
    sb_dir: str | Path,
    lb_dir: str | Path,
    *,
    accelerator=None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate theta(a) for every alpha of ``spec``; rows {alpha, split, loss, accuracy,
    negative_variances}.

    Split "train" is the training set, un-augmented; "test" the validation set the runs report
    in results.json. With an ``accelerator`` of several processes, the alphas are shared out
    and every process returns all rows. Rows are sorted by alpha, then split. ``progress``
    shows a bar (periodic lines off a terminal) on the main process.
    """
    splits, bn = list(spec.splits), spec.bn
    rank, world = (0, 1) if accelerator is None else (
        accelerator.process_index, accelerator.num_processes)
    device = accelerator.device if accelerator is not None else _default_device()

    model, config = load_run(sb_dir, device=device)
    lb_model, lb_config = load_run(lb_dir, device=device)
    check_same_setup((config, model, Path(sb_dir)), (lb_config, lb_model, Path(lb_dir)))

    # The tensors written per alpha are the model's own; the two endpoints stay resident.
    names = [name for name, _ in model.named_parameters()]
    if bn == "interpolate":
        names += [name for name, b in model.named_buffers() if b.is_floating_point()]
    own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    other = {**dict(lb_model.named_parameters()), **dict(lb_model.named_buffers())}
    targets = [own[name].data for name in names]
    theta_sb = [t.detach().clone() for t in targets]
    theta_lb = [other[name].detach() for name in names]  # the LB module itself is dropped
    del lb_model, other

    data = resident_splits(config, device, bn_samples=spec.bn_samples)

    mine = shard(list(spec.alphas), rank, world)
    total = len(mine) + -(-spec.refine // world)
    display = TrainingProgress(
        total_steps=total, done_steps=0, enabled=progress and rank == 0,
        log_every=max(1, total // 10), description="interpolation", unit="alpha",
    )
    done = 0

    def evaluate(alphas: list[float]) -> list[dict[str, Any]]:
        """Every process's rows at ``alphas`` (each evaluates its share)."""
        nonlocal done
        rows: list[dict[str, Any]] = []
        for alpha in shard(alphas, rank, world):
            with torch.no_grad():
                torch._foreach_copy_(targets, theta_sb)
                torch._foreach_lerp_(targets, theta_lb, float(alpha))
            where = f"alpha {alpha:g}"
            negative = negative_variances(model) if bn == "interpolate" else 0
            for result in evaluate_point(model, data, spec, negative=negative,
                                         where=f"alpha={alpha:g}"):
                rows.append({"alpha": float(alpha), **result})
            done += 1
            display.step(done, lambda where=where: _describe(rows[-len(splits):], where))
        if world > 1:
            from accelerate.utils import gather_object

            rows = gather_object(rows)
        return rows

    rows = evaluate(list(spec.alphas))
    guide = "train" if "train" in splits else splits[0]
    added = 0
    while added < spec.refine:  # each round: one new alpha per process
        new = steepest_midpoints(
            [(r["alpha"], r["loss"]) for r in rows if r["split"] == guide],
            min(world, spec.refine - added))
        if not new:
            break
        rows += evaluate(new)
        added += len(new)
    display.close()
    return sorted(rows, key=lambda r: (r["alpha"], splits.index(r["split"])))


def steepest_midpoints(points: Sequence[tuple[float, float]], count: int) -> list[float]:
    """The midpoints of the ``count`` neighbouring pairs of ``points`` (alpha, loss) whose
    losses differ most on the log scale, largest difference first; pairs with a non-finite
    or non-positive loss are skipped (so is a pair whose midpoint rounds to an end)."""
    ordered = sorted({a: loss for a, loss in points}.items())
    jumps = []
    for (a, la), (b, lb) in itertools.pairwise(ordered):
        middle = (a + b) / 2
        if _finite(la) and _finite(lb) and la > 0 and lb > 0 and a < middle < b:
            jumps.append((abs(math.log(lb) - math.log(la)), middle))
    jumps.sort(key=lambda jump: -jump[0])
    return [middle for _, middle in jumps[:count]]


@dataclass(frozen=True)
class ResidentData:
    """A run's dataset on the device once: the input transform, each split's (images,
    labels), and the training images that re-estimate BatchNorm statistics."""

    inputs: InputSpec
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    bn_images: torch.Tensor


def resident_splits(
    config: RunConfig, device: torch.device, *, bn_samples: int | None = None
) -> ResidentData:
    """The run's dataset on ``device``: "train" and "test" (the validation set), and the first
    ``bn_samples`` training images for BatchNorm re-estimation (default all)."""
    data = load_dataset(
        config.dataset, config.data_dir, image_size=config.image_size,
        num_classes=config.num_classes,
    ).to(device)
    inputs = InputSpec(data.info, config.image_size, config.channels_last)
    splits = {"train": (data.train_images, data.train_labels),
              "test": (data.val_images, data.val_labels)}
    return ResidentData(inputs, splits, data.train_images[:bn_samples])


def evaluate_point(
    model: torch.nn.Module,
    data: ResidentData,
    spec: InterpolationSpec | PlaneSpec,
    *,
    negative: int = 0,
    where: str = "",
) -> list[dict[str, Any]]:
    """Loss and accuracy of the model's current weights on each of ``spec.splits``, BatchNorm
    per ``spec.bn``; one {split, loss, accuracy, negative_variances} per split. Shared by
    every grid over weight space (the interpolation line, the 2-D plane).

    ``negative``: running variances below zero in the current buffers (``bn="interpolate"``);
    the point is evaluated anyway (its loss is NaN) and a warning names ``where``.
    """
    if negative:
        log.warning("%s: %d BatchNorm running variances are negative after interpolating "
                    "them; the loss there is NaN (use --bn recalibrate)", where, negative)
    batch = spec.eval_batch_size
    if spec.bn == "recalibrate":
        recalibrate_bn(model, data.bn_images, data.inputs, batch_size=batch)
    results = []
    for split in spec.splits:
        images, labels = data.splits[split]
        if spec.bn == "batch-stats":
            totals = evaluate_batch_stats(model, images, labels, data.inputs, batch_size=batch)
        else:
            totals = evaluate_sums(model, images, labels, data.inputs, batch_size=batch)
        loss, accuracy = mean_loss_and_accuracy(totals)
        if math.isnan(loss):
            accuracy = float("nan")  # argmax over NaN logits is no prediction
        results.append({"split": split, "loss": loss, "accuracy": accuracy,
                        "negative_variances": negative})
    return results


def write_interpolation(
    rows: list[dict[str, Any]], output_dir: str | Path, *, meta: dict[str, Any]
) -> dict[str, Path]:
    """Write ``interpolation.csv``, ``interpolation.png`` and ``interpolation.json`` (meta)."""
    return write_grid_files(rows, output_dir, stem="interpolation", fields=CSV_FIELDS,
                            meta=meta, plot=plot_interpolation)


def write_grid_files(
    rows: list[dict[str, Any]],
    output_dir: str | Path,
    *,
    stem: str,
    fields: Sequence[str],
    meta: dict[str, Any],
    plot: Callable[[list[dict[str, Any]], Path], None],
) -> dict[str, Path]:
    """``STEM.csv`` (``fields`` of every row), ``STEM.png`` (``plot``) and ``STEM.json`` (meta
    and rows), each written atomically."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    paths = {kind: output / f"{stem}.{kind}" for kind in ("csv", "png", "json")}
    text = StringIO()
    writer = csv.DictWriter(text, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in fields})
    atomic_write_text(paths["csv"], text.getvalue())
    plot(rows, paths["png"])
    # strict JSON has no NaN: a missing value is null there (the CSV says nan)
    clean = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
             for r in rows]
    write_json(paths["json"], {**meta, "rows": clean})
    return paths


def plot_interpolation(rows: list[dict[str, Any]], path: Path) -> None:
    """The paper's figure: cross-entropy (log axis, left), accuracy in % (twin axis, right);
    solid train, dashed test. Non-finite points are left out (the CSV keeps them)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    loss_axis = figure.subplots()
    acc_axis = loss_axis.twinx()
    styles = {"train": "-", "test": "--"}
    for split in SPLITS:
        points = [r for r in rows if r["split"] == split]
        if not points:
            continue
        loss = [r for r in points if _finite(r["loss"]) and r["loss"] > 0]
        acc = [r for r in points if _finite(r["accuracy"])]
        if loss:
            loss_axis.semilogy([r["alpha"] for r in loss], [r["loss"] for r in loss],
                               "b" + styles[split], marker=".", label=f"{split} loss")
        if acc:
            acc_axis.plot([r["alpha"] for r in acc], [100 * r["accuracy"] for r in acc],
                          "r" + styles[split], marker=".", label=f"{split} accuracy")
    label_parametric_axes(loss_axis, acc_axis)
    save_png(figure, path)


def label_parametric_axes(loss_axis, acc_axis) -> None:
    """Keskar's parametric plot's furniture: the SB/LB marks (inside the axes, at the
    bottom, clear of any title), axis labels, grid, and one legend below the axes for the
    lines of both (loss and accuracy). The figure needs ``layout="constrained"``."""
    for alpha, name in ((0.0, "SB"), (1.0, "LB")):
        loss_axis.axvline(alpha, color="0.8", linewidth=0.8, zorder=0)
        loss_axis.annotate(name, (alpha, 0.02), xycoords=("data", "axes fraction"),
                           ha="center", va="bottom", fontsize=8,
                           bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none"})
    loss_axis.set_xlabel("alpha  (0: small-batch solution, 1: large-batch solution)")
    loss_axis.set_ylabel("cross-entropy", color="b")
    acc_axis.set_ylabel("accuracy (%)", color="r")
    loss_axis.grid(True, which="both", alpha=0.3)
    handles, labels = loss_axis.get_legend_handles_labels()
    more_handles, more_labels = acc_axis.get_legend_handles_labels()
    if handles or more_handles:  # below the axes: no line is hidden behind it
        loss_axis.figure.legend(handles + more_handles, labels + more_labels,
                                loc="outside lower center", ncols=2, fontsize="small")


def save_png(figure, path: Path) -> None:
    """Write ``figure`` to ``path`` atomically (a temporary name, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, path)


def run_interpolation(
    spec: InterpolationSpec,
    sb_dir: str | Path,
    lb_dir: str | Path,
    output_dir: str | Path,
    *,
    accelerator=None,
    progress: bool = True,
) -> dict[str, Path] | None:
    """``interpolate_runs`` then ``write_interpolation`` on the main process; its paths
    (None on the other processes).

    Under ``accelerate launch`` with several processes and no ``accelerator`` given, one is
    created (CPU/gloo without CUDA) and shut down at the end.
    """
    from lbtkit.distributed import worker_accelerator

    with worker_accelerator(accelerator) as accelerator:
        rows = interpolate_runs(spec, sb_dir, lb_dir, accelerator=accelerator,
                                progress=progress)
        paths = None
        if accelerator is None or accelerator.is_main_process:
            meta = interpolation_meta(spec, sb_dir, lb_dir)
            meta["processes"] = 1 if accelerator is None else accelerator.num_processes
            meta["versions"] = versions()
            paths = write_interpolation(rows, output_dir, meta=meta)
        if accelerator is not None:
            accelerator.wait_for_everyone()
        return paths


def interpolation_meta(
    spec: InterpolationSpec, sb_dir: str | Path, lb_dir: str | Path
) -> dict[str, Any]:
    """Everything that determines an interpolation's numbers, as stored in its JSON: the
    runs, the spec (``InterpolationSpec.from_dict(meta["spec"])`` gives it back) and, for a
    reader, its settings in words."""
    return {
        "sb_run": str(Path(sb_dir).resolve()),
        "lb_run": str(Path(lb_dir).resolve()),
        "spec": spec.to_dict(),
        "alphas": list(spec.alphas),
        "refine": (f"{spec.refine} extra alphas, one at a time, each the midpoint of the "
                   "neighbouring pair whose training loss differs most on the log scale"
                   if spec.refine else "none"),
        "splits": list(spec.splits),
        "bn": spec.bn,
        "bn_samples": None if spec.bn != "recalibrate" else (
            "all training images" if spec.bn_samples is None
            else f"first {spec.bn_samples} training images"
        ),
        "eval_batch_size": spec.eval_batch_size,
        "bn_batches": "near-equal consecutive batches of at most eval_batch_size images",
        "train_split": "training set without augmentation",
        "test_split": "the validation set of the runs' results.json",
        "loss": "mean cross-entropy over samples (log-softmax of float32 logits)",
    }


def _describe(rows: list[dict[str, Any]], where: str) -> str:
    """``alpha 0.5: train loss 0.12 acc 0.97, test ...`` for a progress line."""
    parts = [f"{r['split']} loss {r['loss']:.4g} acc {r['accuracy']:.3f}" for r in rows]
    return f"{where}: " + ", ".join(parts)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
