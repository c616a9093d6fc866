"""Loss and accuracy on a 2-D plane around a solution (Li et al. 2018, "Visualizing the Loss
Landscape of Neural Nets").

The plane is theta(x, y) = theta + x*d1 + y*d2 around a trained solution theta:

- ``directions="random"``: d1 and d2 are Gaussian directions, each normalised against theta
  (``normalize_direction``: filter-wise by default, Li et al.'s remedy for the scale invariance
  that makes unnormalised plots of different networks incomparable);
- ``directions="between"``: d1 = theta_other - theta, unnormalised, so (1, 0) is the other
  solution itself (written with lerp, so bit-exactly), and d2 is one normalised random direction
  as above. d2 is not orthogonalised against d1: two random directions in millions of dimensions
  are nearly orthogonal anyway, and the JSON reports their cosine. This is the reference code's
  ``--model_file2`` layout.

Parameters with one dimension (biases, BatchNorm weights and biases) follow the reference
code (github.com/tomgoldstein/loss-landscape, ``net_plotter.normalize_directions_for_weights``):
with ``ignore_bn_bias`` their direction is zero (they stay at theta's values), otherwise the
direction is a copy of theta's values. Only parameters span the plane; BatchNorm running
statistics follow one of ``BN_MODES`` exactly as in ``lbtkit.landscape.interpolate``, where
``interpolate`` means they move with the plane: mixed along d1 with ``between`` (negative
variances are reported and give NaN), the centre's own along a random direction, which carries
no statistics (the reference code's ``dir_type=weights``). With ``random`` directions that mode
therefore keeps the centre's statistics everywhere.

One resident model, one copy of the data, of theta and of both directions on the device; per
grid point the weights are written in place with foreach ops. With several processes
(Accelerate), each takes every world-th grid point and all processes return all rows.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lbtkit.distributed import shard
from lbtkit.errors import ConfigError
from lbtkit.landscape.bn import negative_variances
from lbtkit.landscape.interpolate import (
    _describe,
    check_same_setup,
    evaluate_point,
    resident_splits,
    write_grid_files,
)
from lbtkit.progress import TrainingProgress
from lbtkit.run_model import load_run
from lbtkit.rundir import versions
from lbtkit.specs import NORMS, SPLITS, PlaneSpec

__all__ = ["between_direction", "landscape_meta", "landscape_runs", "normalize_direction",
           "random_direction", "run_landscape", "write_landscape"]

CSV_FIELDS = ("x", "y", "split", "loss", "accuracy", "negative_variances")


# --- directions (pure) -----------------------------------------------------------------------


def random_direction(
    params: Sequence[torch.Tensor], generator: torch.Generator
) -> list[torch.Tensor]:
    """One standard normal tensor per parameter, same shapes, dtypes and devices.

    Drawn on the generator's device (the CPU for ``torch.Generator()``) in parameter order, so a
    seed gives the same direction on every process and every device.
    """
    return [
        torch.randn(p.shape, generator=generator, dtype=p.dtype,
                    device=generator.device).to(p.device)
        for p in params
    ]


def normalize_direction(
    direction: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    norm: str = "filter",
    *,
    ignore_bn_bias: bool = False,
) -> list[torch.Tensor]:
    """Scale ``direction`` against ``weights`` (new tensors; the inputs are not modified).

    ``filter``: each filter (slice along dim 0 of a tensor with >= 2 dims: an output channel of
    a convolution, a row of a linear layer) becomes d_f / |d_f| * |w_f|. ``layer``: the same per
    tensor. ``none``: unchanged. Tensors with <= 1 dim are zero with ``ignore_bn_bias``, else a
    copy of the weights for ``filter``/``layer`` (the reference code's convention: a bias or BN
    entry is its own filter, and copying gives it its own norm with a fixed sign) and unchanged
    for ``none``. A zero filter of the direction stays zero.
    """
    if norm not in NORMS:
        raise ConfigError(f"unknown direction normalisation {norm!r}; choose from {NORMS}")
    if len(direction) != len(weights):
        raise ValueError(f"{len(direction)} direction tensors for {len(weights)} weights")
    normalized = []
    for d, w in zip(direction, weights, strict=True):
        if d.shape != w.shape:
            raise ValueError(f"direction shape {tuple(d.shape)} != weight shape {tuple(w.shape)}")
        w = w.detach()
        if d.dim() <= 1:
            if ignore_bn_bias:
                normalized.append(torch.zeros_like(d))
            elif norm == "none":
                normalized.append(d.clone())
            else:
                normalized.append(w.to(d.dtype, copy=True))
        elif norm == "filter":
            shape = (-1,) + (1,) * (d.dim() - 1)
            d_norm = d.flatten(1).norm(dim=1)
            w_norm = w.flatten(1).norm(dim=1).to(d.dtype)
            scale = torch.where(d_norm > 0, w_norm / d_norm.clamp_min(torch.finfo(d.dtype).tiny),
                                torch.zeros_like(d_norm))
            normalized.append(d * scale.view(shape))
        elif norm == "layer":
            d_norm = d.norm()
            normalized.append(d * (w.norm().to(d.dtype) / d_norm) if d_norm > 0 else d.clone())
        else:
            normalized.append(d.clone())
    return normalized


def between_direction(
    weights: Sequence[torch.Tensor], other: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """theta_other - theta, per tensor: unnormalised, so a step of 1 reaches the other solution."""
    if len(weights) != len(other):
        raise ValueError(f"{len(weights)} weight tensors against {len(other)} of the other run")
    return [o.detach() - w.detach() for w, o in zip(weights, other, strict=True)]


def direction_stats(d1: Sequence[torch.Tensor], d2: Sequence[torch.Tensor]) -> dict[str, float]:
    """The L2 norms of two directions and the cosine between them (to judge the plot's axes)."""
    n1 = math.sqrt(sum(float(t.double().square().sum()) for t in d1))
    n2 = math.sqrt(sum(float(t.double().square().sum()) for t in d2))
    dot = sum(float((a.double() * b.double()).sum()) for a, b in zip(d1, d2, strict=True))
    cosine = dot / (n1 * n2) if n1 > 0 and n2 > 0 else float("nan")
    return {"x_norm": n1, "y_norm": n2, "cosine": cosine}


# --- evaluation ------------------------------------------------------------------------------


def landscape_runs(
    spec: PlaneSpec,
    run: str | Path,
    other: str | Path | None = None,
    *,
    accelerator=None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate theta + x*d1 + y*d2 on the grid of ``spec`` around ``run`` (``other``: the
    second solution of ``directions="between"``); rows {x, y, split, loss, accuracy,
    negative_variances}, sorted by x, y, then split. As ``lbtkit.landscape.interpolate_runs``
    otherwise."""
    return _landscape(spec, run, other, accelerator=accelerator, progress=progress)[0]


def _landscape(
    spec: PlaneSpec, run: str | Path, other: str | Path | None, *, accelerator: Any,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    spec.check_other(other)
    splits, bn, directions = list(spec.splits), spec.bn, spec.directions
    rank, world = (0, 1) if accelerator is None else (
        accelerator.process_index, accelerator.num_processes)
    device = accelerator.device if accelerator is not None else _default_device()

    model, config = load_run(run, device=device)
    params = dict(model.named_parameters())
    names = list(params)
    # Floating buffers (BN running statistics) move only in "interpolate" mode with "between":
    # random directions have no component on them, so otherwise they are never written here.
    buffer_names = [n for n, b in model.named_buffers() if b.is_floating_point()] if (
        bn == "interpolate" and directions == "between") else []
    own = {**params, **dict(model.named_buffers())}
    targets = [own[n].data for n in names + buffer_names]
    theta = [t.detach().clone() for t in targets]
    weights = theta[:len(names)]

    theta_other = None
    if directions == "between":
        # x is written as lerp(theta, theta_other, x), which is exact at x = 0 and x = 1.
        theta_other = _other_solution((config, model, Path(run)), other, names + buffer_names,
                                      device)
    d1, d2, stats = _directions(
        spec, weights, None if theta_other is None else theta_other[:len(names)])
    param_targets = targets[:len(names)]

    data = resident_splits(config, device, bn_samples=spec.bn_samples)

    points = [(x, y) for x in spec.x for y in spec.y]
    rows: list[dict[str, Any]] = []
    mine = shard(points, rank, world)
    display = TrainingProgress(
        total_steps=len(mine), done_steps=0, enabled=progress and rank == 0,
        log_every=max(1, len(mine) // 20), description="landscape", unit="point",
    )
    for done, (x, y) in enumerate(mine, start=1):
        with torch.no_grad():
            torch._foreach_copy_(targets, theta)
            if theta_other is not None:
                torch._foreach_lerp_(targets, theta_other, x)
            else:
                torch._foreach_add_(param_targets, d1, alpha=x)
            torch._foreach_add_(param_targets, d2, alpha=y)
        where = f"({x:g}, {y:g})"
        negative = negative_variances(model) if buffer_names else 0
        for result in evaluate_point(model, data, spec, negative=negative,
                                     where=f"(x, y)={where}"):
            rows.append({"x": x, "y": y, **result})
        display.step(done, lambda where=where: _describe(rows[-len(splits):], where))
    display.close()
    if world > 1:
        from accelerate.utils import gather_object

        rows = gather_object(rows)
    return sorted(rows, key=lambda r: (r["x"], r["y"], splits.index(r["split"]))), stats


def _other_solution(
    centre: tuple[Any, torch.nn.Module, Path], other: str | Path, names: list[str],
    device: torch.device,
) -> list[torch.Tensor]:
    """The tensors ``names`` of the second solution, checked to share the centre's space."""
    other_model, other_config = load_run(other, device=device)
    check_same_setup(centre, (other_config, other_model, Path(other)))
    other_own = {**dict(other_model.named_parameters()), **dict(other_model.named_buffers())}
    return [other_own[n].detach() for n in names]


def _directions(
    spec: PlaneSpec, weights: list[torch.Tensor], other: list[torch.Tensor] | None
) -> tuple[list[torch.Tensor] | None, list[torch.Tensor], dict[str, float]]:
    """(d1, d2, their norms and cosine). Through a second solution (``other``, its
    parameters) d1 is None: x moves by lerp towards it; otherwise both are random."""
    generator = torch.Generator().manual_seed(spec.seed)

    def drawn() -> list[torch.Tensor]:
        return normalize_direction(random_direction(weights, generator), weights, spec.norm,
                                   ignore_bn_bias=spec.ignore_bn_bias)

    if other is not None:
        d2 = drawn()
        return None, d2, direction_stats(between_direction(weights, other), d2)
    d1 = drawn()  # one stream, x's direction first: one seed fixes the whole plane
    d2 = drawn()
    return d1, d2, direction_stats(d1, d2)


# --- files -----------------------------------------------------------------------------------


def landscape_meta(
    spec: PlaneSpec, run: str | Path, other: str | Path | None = None
) -> dict[str, Any]:
    """Everything that determines a landscape's numbers, as stored in its JSON: the runs, the
    spec (``PlaneSpec.from_dict(meta["spec"])`` gives it back) and its settings in words."""
    norm, seed, directions, bn = spec.norm, spec.seed, spec.directions, spec.bn
    normalised = {"filter": "filter-wise normalised against the run's weights",
                  "layer": "layer-wise normalised against the run's weights",
                  "none": "unnormalised"}[norm]
    random_axis = (f"random Gaussian direction (seed {seed}), {normalised}; 1-D parameters "
                   + ("zero" if spec.ignore_bn_bias else
                      "unnormalised" if norm == "none" else "a copy of the weights"))
    return {
        "run": str(Path(run).resolve()),
        "other_run": None if other is None else str(Path(other).resolve()),
        "spec": spec.to_dict(),
        "x": list(spec.x),
        "y": list(spec.y),
        "directions": directions,
        "norm": norm,
        "ignore_bn_bias": spec.ignore_bn_bias,
        "seed": seed,
        "x_axis": "theta_other - theta, unnormalised (x=1 is the other run)"
        if directions == "between" else random_axis,
        "y_axis": random_axis,
        "random_draws": "torch.Generator().manual_seed(seed): standard normals on the CPU in "
                        "the parameters' dtype and order"
                        + (", x then y" if directions == "random" else ""),
        "splits": list(spec.splits),
        "bn": bn,
        "bn_running_stats": {
            "recalibrate": "re-estimated at every point",
            "batch-stats": "unused: each evaluated batch's own statistics",
            "interpolate": "mixed along x with the other run's" if directions == "between"
            else "the run's own everywhere (random directions carry no statistics)",
        }[bn],
        "bn_samples": None if bn != "recalibrate" else (
            "all training images" if spec.bn_samples is None
            else f"first {spec.bn_samples} training images"
        ),
        "eval_batch_size": spec.eval_batch_size,
        "bn_batches": "near-equal consecutive batches of at most eval_batch_size images",
        "train_split": "training set without augmentation",
        "test_split": "the validation set of the run's results.json",
        "loss": "mean cross-entropy over samples (log-softmax of float32 logits)",
    }


def write_landscape(
    rows: list[dict[str, Any]], output_dir: str | Path, *, meta: dict[str, Any]
) -> dict[str, Path]:
    """Write ``landscape.csv``, ``landscape.png`` and ``landscape.json`` (meta and rows)."""
    def plot(points: list[dict[str, Any]], path: Path) -> None:
        plot_landscape(points, path, xs=meta["x"], ys=meta["y"],
                       between=meta["directions"] == "between")

    return write_grid_files(rows, output_dir, stem="landscape", fields=CSV_FIELDS, meta=meta,
                            plot=plot)


def plot_landscape(
    rows: list[dict[str, Any]], path: Path, *, xs: Sequence[float], ys: Sequence[float],
    between: bool = False,
) -> None:
    """Loss contours (log-spaced levels) per split, side by side; the centre marked, and with
    ``between`` the other solution at (1, 0). A grid too thin or too flat for contours is drawn
    as coloured points; non-finite losses are left blank (the CSV keeps them)."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter

    splits = [s for s in SPLITS if any(r["split"] == s for r in rows)] or ["train"]
    figure = Figure(figsize=(4.8 * len(splits), 4.2), layout="constrained")
    axes = figure.subplots(1, len(splits), squeeze=False)[0]
    for axis, split in zip(axes, splits, strict=True):
        loss = {(r["x"], r["y"]): r["loss"] for r in rows if r["split"] == split}
        grid = np.array([[loss.get((float(x), float(y)), np.nan) for x in xs] for y in ys],
                        dtype=float)
        good = np.isfinite(grid) & (grid > 0)
        if good.any():
            low, high = float(grid[good].min()), float(grid[good].max())
            norm = LogNorm(vmin=low, vmax=high) if high > low else None
            contourable = len(xs) >= 2 and len(ys) >= 2 and high > low and good.sum() >= 4
            if contourable:
                levels = np.geomspace(low, high, 16)
                image = axis.contour(xs, ys, np.ma.masked_where(~good, grid), levels=levels,
                                     norm=norm, cmap="viridis")
            else:
                gx, gy = np.meshgrid(xs, ys)
                image = axis.scatter(gx[good], gy[good], c=grid[good], norm=norm, cmap="viridis")
            # plain numbers: the default log formatter labels only some levels, in sci notation
            bar = figure.colorbar(image, ax=axis, label="cross-entropy",
                                  format=FormatStrFormatter("%.3g"))
            bar.minorticks_off()
            if high > low:
                bar.set_ticks(np.geomspace(low, high, 6))  # every third contour level
        marks = [((0.0, 0.0), "*", "this run")]
        if between:
            marks.append(((1.0, 0.0), "o", "other run"))
        for (mx, my), marker, label in marks:
            if min(xs) <= mx <= max(xs) and min(ys) <= my <= max(ys):
                axis.plot([mx], [my], marker, color="red", markersize=9, label=label)
        axis.set_title(f"{split} loss")
        axis.set_xlabel("x  (1: the other run)" if between else "x  (random direction 1)")
        axis.set_ylabel("y  (random direction)" if between else "y  (random direction 2)")
        if axis.get_legend_handles_labels()[0]:
            axis.legend(loc="upper right", fontsize=8)
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, path)


def run_landscape(
    spec: PlaneSpec,
    run: str | Path,
    other: str | Path | None,
    output_dir: str | Path,
    *,
    accelerator=None,
    progress: bool = True,
) -> dict[str, Path] | None:
    """``landscape_runs`` then ``write_landscape`` on the main process; its paths (None on the
    other processes).

    Under ``accelerate launch`` with several processes and no ``accelerator`` given, one is
    created (CPU/gloo without CUDA) and shut down at the end.
    """
    from lbtkit.distributed import worker_accelerator

    with worker_accelerator(accelerator) as accelerator:
        rows, stats = _landscape(spec, run, other, accelerator=accelerator, progress=progress)
        paths = None
        if accelerator is None or accelerator.is_main_process:
            meta = landscape_meta(spec, run, other)
            meta["direction_norms"] = stats
            meta["processes"] = 1 if accelerator is None else accelerator.num_processes
            meta["versions"] = versions()
            paths = write_landscape(rows, output_dir, meta=meta)
        if accelerator is not None:
            accelerator.wait_for_everyone()
        return paths


def check_runs(run: str | Path, other: str | Path | None = None) -> None:
    """Raise a UserError unless ``run`` (and ``other``) load and share one parameter space.

    For a launcher to call before starting workers, so that a bad path is one error line
    rather than one per process."""
    model, config = load_run(run)
    if other is not None:
        other_model, other_config = load_run(other)
        check_same_setup((config, model, Path(run)), (other_config, other_model, Path(other)))


def default_output(run: str | Path, other: str | Path | None = None) -> Path:
    """RUN/landscape, or RUN/landscape-to-OTHERNAME through a second solution (so the two
    kinds of plane of one run do not overwrite each other)."""
    name = "landscape" if other is None else f"landscape-to-{Path(other).resolve().name}"
    return Path(run) / name


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
