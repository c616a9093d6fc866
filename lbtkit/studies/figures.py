"""Figures drawn from several runs: Keskar's parametric plot with a band over seeds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

STYLES = {"train": "-", "test": "--"}


def plot_interpolation_band(band: Sequence[dict[str, Any]], path: Path, *, seeds: int,
                            curves: Sequence[Sequence[dict[str, Any]]] = ()) -> None:
    """Keskar's parametric plot over seeds: the mean cross-entropy (log axis, blue) and
    accuracy in % (twin axis, red) along theta(alpha), each with a band of one standard
    deviation over the ``seeds`` runs; solid train, dashed test (``interpolation_band`` rows).
    ``curves``: each seed's own rows (alpha, split, loss, accuracy), with the alphas refined
    where its loss changes fastest: drawn thin (training split), so the cliff each seed has is
    seen at its own resolution. One legend names every line. Written atomically."""
    from matplotlib.figure import Figure

    from lbtkit.landscape.interpolate import label_parametric_axes, save_png

    figure = Figure(figsize=(7.2, 4.8), layout="constrained")
    loss_axis = figure.subplots()
    acc_axis = loss_axis.twinx()
    for number, rows in enumerate(curves):
        train = sorted((r for r in rows if r["split"] == "train"), key=lambda r: r["alpha"])
        first = number == 0
        loss = [r for r in train if r["loss"] > 0]
        loss_axis.plot([r["alpha"] for r in loss], [r["loss"] for r in loss], "b-",
                       linewidth=0.5, alpha=0.5,
                       label="train loss, each seed (refined)" if first else None)
        acc_axis.plot([r["alpha"] for r in train], [100 * r["accuracy"] for r in train], "r-",
                      linewidth=0.5, alpha=0.5,
                      label="train accuracy, each seed (refined)" if first else None)
    for split, style in STYLES.items():
        points = [p for p in band if p["split"] == split]
        loss = [p for p in points if p["loss_mean"] is not None and p["loss_mean"] > 0]
        acc = [p for p in points if p["accuracy_mean"] is not None]
        if loss:
            _curve(loss_axis, loss, "loss", 1.0, "b" + style, label=f"{split} loss, mean")
        if acc:
            _curve(acc_axis, acc, "accuracy", 100.0, "r" + style,
                   label=f"{split} accuracy, mean")
    loss_axis.set_yscale("log")
    acc_axis.set_ylim(0, 100)
    label_parametric_axes(loss_axis, acc_axis)
    figure.suptitle(f"SB vs LB over {seeds} seeds: mean, band ± 1 standard deviation",
                    fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(figure, path)


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
