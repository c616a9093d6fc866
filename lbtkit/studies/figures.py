"""Figures drawn from several runs: Keskar's parametric plot with a band over seeds."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STYLES = {"train": "-", "test": "--"}


def plot_interpolation_band(band: Sequence[dict[str, Any]], path: Path, *, seeds: int) -> None:
    """Keskar's parametric plot over seeds: the mean cross-entropy (log axis, blue) and
    accuracy in % (twin axis, red) along theta(alpha), each with a band of one standard
    deviation over the ``seeds`` runs; solid train, dashed test (``interpolation_band`` rows).
    Written atomically."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    loss_axis = figure.subplots()
    acc_axis = loss_axis.twinx()
    for split, style in STYLES.items():
        points = [p for p in band if p["split"] == split]
        loss = [p for p in points if p["loss_mean"] is not None and p["loss_mean"] > 0]
        acc = [p for p in points if p["accuracy_mean"] is not None]
        if loss:
            _curve(loss_axis, loss, "loss", 1.0, "b" + style, label=split)
        if acc:
            _curve(acc_axis, acc, "accuracy", 100.0, "r" + style, label=None)
    loss_axis.set_yscale("log")
    for alpha, name in ((0.0, "SB"), (1.0, "LB")):
        loss_axis.axvline(alpha, color="0.8", linewidth=0.8, zorder=0)
        loss_axis.annotate(name, (alpha, 1.0), xycoords=("data", "axes fraction"),
                           ha="center", va="bottom", fontsize=8)
    loss_axis.set_xlabel("alpha  (0: small-batch solution, 1: large-batch solution)")
    loss_axis.set_ylabel("cross-entropy", color="b")
    acc_axis.set_ylabel("accuracy (%)", color="r")
    loss_axis.set_title(f"mean over {seeds} seeds, band: ± 1 standard deviation", fontsize=9)
    loss_axis.grid(True, which="both", alpha=0.3)
    if loss_axis.get_legend_handles_labels()[0]:
        loss_axis.legend(loc="upper left")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, path)


def _curve(axis, points: Sequence[dict[str, Any]], name: str, scale: float, style: str, *,
           label: str | None) -> None:
    alphas = [p["alpha"] for p in points]
    mean = [scale * p[f"{name}_mean"] for p in points]
    std = [scale * (p[f"{name}_std"] or 0.0) for p in points]
    axis.plot(alphas, mean, style, marker=".", label=label)
    low = [m - s for m, s in zip(mean, std, strict=True)]
    if name == "loss":  # a log axis: keep the band's lower edge positive
        low = [max(v, m * 0.01) for v, m in zip(low, mean, strict=True)]
    high = [m + s for m, s in zip(mean, std, strict=True)]
    axis.fill_between(alphas, low, high, color=style[0], alpha=0.15, linewidth=0)
