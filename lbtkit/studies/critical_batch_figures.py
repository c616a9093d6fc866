"""The critical-batch study's figures (matplotlib, Agg), from the records and the analysis.

    steps_vs_batch.png     steps to each target against the batch size, log-log (Shallue et
                           al.'s Figure 1 style): each seed at the best learning rate, the fit,
                           the perfect-scaling line E_min/B, S_min, and the regimes shaded
    steps_vs_examples.png  S against E = B*S per target, with the fitted hyperbola
                           (S/S_min - 1)(E/E_min - 1) = 1 (McCandlish et al.'s Figure 4 style)
    bcrit_vs_target.png    B_crit (bootstrap interval) and B_simple (+-2 standard errors)
                           against the target
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from lbtkit.critical_batch import REGIME_FACTOR
from lbtkit.specs import CriticalBatchSpec

MARKERS = {"sgd": "o", "lars": "s", "lamb": "^"}
COLORS = {"sgd": "tab:blue", "lars": "tab:orange", "lamb": "tab:green"}


def plot_all(output: Path, spec: CriticalBatchSpec, records: list[dict[str, Any]],
             analysis: dict[str, Any]) -> dict[str, str]:
    """Write the three figures into ``output``; {figure: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    targets = analysis["fit"]["targets"]
    files = {"steps_vs_batch": "steps_vs_batch.png", "steps_vs_examples": "steps_vs_examples.png",
             "bcrit_vs_target": "bcrit_vs_target.png"}
    _steps_vs_batch(output / files["steps_vs_batch"], spec, records, targets)
    _steps_vs_examples(output / files["steps_vs_examples"], targets)
    _bcrit_vs_target(output / files["bcrit_vs_target"], targets)
    return files


def _panels(count: int):
    import matplotlib.pyplot as plt

    cols = min(count, 2)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.6 * rows), squeeze=False)
    for extra in axes.flat[count:]:
        extra.set_visible(False)
    return fig, list(axes.flat[:count])


def _steps_vs_batch(path: Path, spec: CriticalBatchSpec, records: list[dict[str, Any]],
                    targets: list[dict[str, Any]]) -> None:
    import matplotlib.pyplot as plt

    fig, axes = _panels(len(targets))
    sizes = np.array(spec.batch_sizes, dtype=float)
    for ax, entry in zip(axes, targets, strict=True):
        for optimizer in ("sgd", *spec.remedies):
            _best_seed_points(ax, records, entry["target"], optimizer)
        if entry.get("b_crit") is not None:
            grid = np.geomspace(sizes[0] / 1.5, sizes[-1] * 1.5, 200)
            s_min, e_min, b_crit = entry["s_min"], entry["e_min"], entry["b_crit"]
            ax.plot(grid, s_min + e_min / grid, color="black", lw=1.5,
                    label=f"fit: B_crit = {b_crit:,.0f}")
            ax.plot(grid, e_min / grid, color="gray", ls="--", lw=1,
                    label="perfect scaling E_min/B")
            ax.axhline(s_min, color="gray", ls=":", lw=1, label="S_min")
            ax.axvspan(grid[0], b_crit / REGIME_FACTOR, color="tab:green", alpha=0.07,
                       label="perfect scaling")
            ax.axvspan(b_crit * REGIME_FACTOR, grid[-1], color="tab:red", alpha=0.07,
                       label="maximal data parallelism")
            ax.set_xlim(grid[0], grid[-1])
            measured = [b["steps"] for b in entry["best"] if b["steps"] is not None]
            ax.set_ylim(min([s_min, *measured]) / 2, max([s_min, *measured]) * 2)
        ax.set_xscale("log", base=2)
        _log_axes(ax, entry["target"], "batch size B", "optimizer steps to target", "upper right")
    fig.suptitle("Steps to target at the best learning rate per batch size", y=0.995)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _log_axes(ax, target: str, xlabel: str, ylabel: str, legend: str) -> None:
    """A log y-axis, the labels, the target as the title, a grid and the legend."""
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(target.replace("<=", " ≤ "), fontsize=11)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc=legend)


def _best_seed_points(ax, records: list[dict[str, Any]], target: str, optimizer: str) -> None:
    """Each seed's steps at the best learning rate of its batch size, and their mean."""
    from lbtkit.critical_batch import best_per_batch

    group = [r for r in records if r["target"] == target and r["optimizer"] == optimizer]
    if not group:
        return
    best = best_per_batch(group)
    xs, ys, mean_x, mean_y = [], [], [], []
    for batch, b in best.items():
        if b.lr is None:
            continue
        seeds = [r["steps"] for r in group if r["batch_size"] == batch and r["lr"] == b.lr]
        xs += [batch] * len(seeds)
        ys += seeds
        mean_x.append(batch)
        mean_y.append(b.steps)
    if not mean_x:
        return
    color, marker = COLORS.get(optimizer, "black"), MARKERS.get(optimizer, "x")
    ax.scatter(xs, ys, s=12, color=color, marker=marker, alpha=0.45)
    ax.plot(mean_x, mean_y, ls="none", marker=marker, ms=7, color=color,
            label=f"{optimizer.upper()} (mean of seeds; dots: each seed)")


def _steps_vs_examples(path: Path, targets: list[dict[str, Any]]) -> None:
    import matplotlib.pyplot as plt

    fig, axes = _panels(len(targets))
    for ax, entry in zip(axes, targets, strict=True):
        points = [(b["batch_size"] * b["steps"], b["steps"], b["batch_size"])
                  for b in entry["best"] if b["steps"] is not None]
        if points:
            e, s, _ = zip(*points, strict=True)
            ax.plot(e, s, "o", color="tab:blue", label="measured (best lr, mean of seeds)")
            for ei, si, bi in points:
                ax.annotate(f"{bi}", (ei, si), textcoords="offset points", xytext=(4, 3),
                            fontsize=7)
        if entry.get("b_crit") is not None:
            s_min, e_min = entry["s_min"], entry["e_min"]
            scale = np.geomspace(1.02, 200, 300)
            ax.plot(e_min * scale, s_min * (1 + 1 / (scale - 1)), color="black",
                    label="fit: (S/S_min−1)(E/E_min−1) = 1")
            ax.axvline(e_min, color="gray", ls="--", lw=1, label="E_min")
            ax.axhline(s_min, color="gray", ls=":", lw=1, label="S_min")
        ax.set_xscale("log")
        _log_axes(ax, entry["target"], "training examples E = B·S", "optimizer steps S",
                  "upper right")
    fig.suptitle("Steps against examples (labels: batch size)", y=0.995)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bcrit_vs_target(path: Path, targets: list[dict[str, Any]]) -> None:
    import matplotlib.pyplot as plt

    fitted = [t for t in targets if t.get("b_crit") is not None]
    fig, ax = plt.subplots(figsize=(7, 4.4))
    x = np.arange(len(fitted))
    for i, t in enumerate(fitted):
        ci = t.get("b_crit_ci") or [t["b_crit"]] * 2
        ax.errorbar(i - 0.08, t["b_crit"], yerr=[[t["b_crit"] - ci[0]], [ci[1] - t["b_crit"]]],
                    fmt="o", color="tab:blue", capsize=4,
                    label="B_crit (fit; 95% bootstrap interval)" if i == 0 else None)
        if t.get("b_simple") is not None:
            se = 2 * (t.get("b_simple_se") or 0.0)
            ax.errorbar(i + 0.08, t["b_simple"], yerr=[[min(se, t["b_simple"] * 0.999)], [se]],
                        fmt="s", color="tab:orange", capsize=4,
                        label="B_simple (noise scale; ±2 s.e.)" if i == 0 else None)
    ax.set_xticks(x, [t["target"].replace("<=", " ≤ ") for t in fitted], fontsize=9)
    ax.set_yscale("log")
    ax.set_ylabel("batch size")
    ax.set_xlabel("target (a lower loss or error is harder)")
    ax.set_title("Critical batch size and its noise-scale prediction, per target")
    ax.grid(True, which="both", axis="y", alpha=0.25)
    if fitted:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
