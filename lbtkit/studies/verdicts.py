"""The verdicts of the single-seed SB-vs-LB pages (``lbtkit demo``, ``lbtkit study keskar``) as
data: numbers in, a small dict out, each decided against a threshold stated here.

- ``GAP_STANDARD_ERRORS``: two accuracies differ when their difference exceeds this many
  standard errors of the difference of two binomial proportions (``gap_threshold``);
- ``SAME_SHARPNESS``: two sharpness values or eigenvalues are the same within this fraction of
  the larger;
- ``LOSS_RISE``: a loss "rises" when it exceeds its reference by more than this fraction.

Pure functions: nothing here trains, reads files or writes prose (the templates in
``lbtkit/templates`` do, from these dicts). Rows are the sweep report's (``lbtkit.report``) with
``global_step``; interpolation rows are {"alpha", "split", "loss", "accuracy"}.
"""

from __future__ import annotations

import math
from typing import Any

# A validation difference counts as a gap when it exceeds this many standard errors of the
# difference of two binomial proportions on the validation set (two-sided ~95%).
GAP_STANDARD_ERRORS = 2.0
# The training loss "rises" between or beyond the solutions when it exceeds the reference by
# more than this fraction of it.
LOSS_RISE = 0.05
# Below this relative difference two sharpness values (or eigenvalues) count as equal.
SAME_SHARPNESS = 0.05

THRESHOLDS = {"gap_standard_errors": GAP_STANDARD_ERRORS, "loss_rise": LOSS_RISE,
              "same_sharpness": SAME_SHARPNESS}

# Verdicts of ``gap_verdict`` and ``fit_verdict`` (the demo's numbers["verdict"], ["fit"]).
NO_GAP, LB_WORSE, LB_BETTER = "no gap", "large batch worse", "large batch better"
UNDER_FITTED, SIMILAR_FIT = "large batch under-fitted", "similar fit"


def gap_threshold(p1: float, p2: float, n: int) -> float:
    """GAP_STANDARD_ERRORS standard errors of p1 - p2, two accuracies on n images each
    (binomial), as a fraction. Never below one image (1/n): a difference of 0 is no gap."""
    se = math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n)
    return max(GAP_STANDARD_ERRORS * se, 1.0 / n)


def _points_apart(a: float, b: float, n: int) -> tuple[float, float]:
    """a - b in points as the page shows them (each rounded to 2 decimals), and the
    threshold in points."""
    return round(100 * a, 2) - round(100 * b, 2), 100 * gap_threshold(a, b, n)


def gap_verdict(sb: dict[str, Any], lb: dict[str, Any], n_val: int) -> dict[str, Any]:
    """SB's vs LB's best validation accuracy (sweep rows), against GAP_STANDARD_ERRORS."""
    diff, threshold = _points_apart(sb["best_val_acc"], lb["best_val_acc"], n_val)
    verdict = NO_GAP if abs(diff) <= threshold else LB_WORSE if diff > 0 else LB_BETTER
    return {"sb_batch": sb["batch_size"], "lb_batch": lb["batch_size"],
            "sb_best": sb["best_val_acc"], "lb_best": lb["best_val_acc"], "diff_points": diff,
            "threshold_points": threshold, "n_val": n_val, "verdict": verdict}


def fit_verdict(sb: dict[str, Any], lb: dict[str, Any], fit: dict[str, dict[str, float]],
                n_train: int) -> dict[str, Any]:
    """How well SB and LB fit the (un-augmented) training set after the same epochs
    (``fit``: {"sb", "lb"} -> {"loss", "accuracy"}): is part of the gap under-training?"""
    diff, threshold = _points_apart(fit["sb"]["accuracy"], fit["lb"]["accuracy"], n_train)
    return {"sb_batch": sb["batch_size"], "lb_batch": lb["batch_size"],
            "sb_steps": sb["global_step"], "lb_steps": lb["global_step"], "fit": fit,
            "diff_points": diff, "threshold_points": threshold,
            "verdict": UNDER_FITTED if diff > threshold else SIMILAR_FIT}


def relative_verdict(sb: float, lb: float, relative: float = SAME_SHARPNESS) -> dict[str, Any]:
    """An SB and an LB value: "not comparable" (one is not finite), "same" (within
    ``relative`` of the larger) or "different" with the larger side and the factor between
    them (None when the smaller is not positive)."""
    base = {"sb": sb, "lb": lb, "relative": relative}
    if not (math.isfinite(sb) and math.isfinite(lb)):
        return {**base, "verdict": "not comparable"}
    top = max(abs(sb), abs(lb))
    if top == 0 or abs(lb - sb) <= relative * top:
        return {**base, "verdict": "same"}
    low = min(sb, lb)
    return {**base, "verdict": "different", "larger": "LB" if lb > sb else "SB",
            "smaller": "SB" if lb > sb else "LB",
            "factor": max(sb, lb) / low if low > 0 else None}


def sharpness_verdict(sharpness: dict[str, dict[str, Any]], fit: str) -> dict[str, Any]:
    """Keskar's sharpness (the first measure) and the top Hessian eigenvalue of SB vs LB;
    ``fit``: ``fit_verdict``'s verdict (an under-fitted point is no minimum)."""
    phis = [sharpness[label]["sharpness"][0] for label in ("sb", "lb")]
    tops = [sharpness[label]["hessian"]["top_eigenvalues"][0] for label in ("sb", "lb")]
    return {"phi": relative_verdict(phis[0]["phi"], phis[1]["phi"]), "eps": phis[0]["eps"],
            "hessian": relative_verdict(tops[0], tops[1]), "not_a_minimum": fit == UNDER_FITTED}


def recalibrated_verdict(rows: list[dict[str, Any]], *, n_val: int) -> dict[str, Any] | None:
    """The SB/LB validation comparison again with BatchNorm statistics re-estimated on the
    training set (the interpolation's alpha = 0 and 1): does the gap survive?"""
    test = {r["alpha"]: r["accuracy"] for r in rows
            if r["split"] == "test" and math.isfinite(r["accuracy"])}
    if 0.0 not in test or 1.0 not in test:
        return None
    diff, threshold = _points_apart(test[0.0], test[1.0], n_val)
    return {"sb": test[0.0], "lb": test[1.0], "diff_points": diff, "threshold_points": threshold,
            "differs": abs(diff) > threshold}


def peak_verdict(rows: list[dict[str, Any]], *, n_val: int) -> dict[str, Any] | None:
    """Where validation accuracy peaks over the sweep, and which batch sizes are within
    GAP_STANDARD_ERRORS of that peak ("close") and which are not ("far")."""
    done = [r for r in rows if r["best_val_acc"] is not None]
    if len(done) < 2:
        return None
    peak = max(done, key=lambda r: r["best_val_acc"])  # the first (smallest batch) on ties
    close, far = [], []
    for row in done:
        if row is peak:
            continue
        gap = peak["best_val_acc"] - row["best_val_acc"]
        within = gap <= gap_threshold(peak["best_val_acc"], row["best_val_acc"], n_val)
        (close if within else far).append(_batch(row, "best_val_acc"))
    return {"peak": _batch(peak, "best_val_acc"), "close": close, "far": far,
            "missing": [_batch(r, "status") for r in rows if r["best_val_acc"] is None]}


def _batch(row: dict[str, Any], key: str) -> dict[str, Any]:
    return {"batch_size": row["batch_size"], key: row[key]}


def interpolation_verdict(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The training loss along the line from SB (alpha 0) to LB (alpha 1): a "barrier"
    between them (a peak above (1 + LOSS_RISE) x the higher end) or "none", and at the first
    distance beyond both ends the grid has, which side it rises more steeply beyond ("SB",
    "LB", or None: equally within LOSS_RISE)."""
    train = sorted((r for r in rows if r["split"] == "train" and math.isfinite(r["loss"])),
                   key=lambda r: r["alpha"])
    at = {r["alpha"]: r["loss"] for r in train}
    if 0.0 not in at or 1.0 not in at:
        return None
    l0, l1 = at[0.0], at[1.0]
    out: dict[str, Any] = {"sb": l0, "lb": l1, "loss_rise": LOSS_RISE, "between": None,
                           "beyond": None}
    inside = [r for r in train if 0.0 < r["alpha"] < 1.0]
    if inside:
        peak = max(inside, key=lambda r: r["loss"])
        out["between"] = {"loss": peak["loss"], "alpha": peak["alpha"],
                          "barrier": peak["loss"] > (1 + LOSS_RISE) * max(l0, l1)}
    for t in sorted({-r["alpha"] for r in train if r["alpha"] < 0}, reverse=True):
        if 1.0 + t in at:
            rise_sb, rise_lb = at[-t] - l0, at[1.0 + t] - l1
            top = max(abs(rise_sb), abs(rise_lb))
            steeper = None
            if top > 0 and abs(rise_lb - rise_sb) > LOSS_RISE * top:
                steeper = "LB" if rise_lb > rise_sb else "SB"
            out["beyond"] = {"distance": t, "sb": at[-t], "lb": at[1.0 + t], "steeper": steeper}
            break
    return out
