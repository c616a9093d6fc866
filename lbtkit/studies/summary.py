"""The numbers a multi-seed study reports, from its runs' files: pure functions, no training.

- ``side_record``: one seed's SB or LB run as one flat row (how far it trained, which rule
  stopped it, accuracies and losses, every sharpness measure, the top Hessian eigenvalue);
- ``side_summary``: mean and standard deviation (n - 1 divisor, as a sample of seeds) of each
  number over the seeds, per side;
- ``interpolation_band``: mean and standard deviation over seeds of the interpolation curves;
- ``falling_batch``: where accuracy starts to fall over a batch-size sweep, by a stated rule.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

LABELS = ("sb", "lb")
# The per-run numbers summarised over seeds, in table order (sharpness columns follow).
RUN_NUMBERS = ("epochs", "train_acc", "train_loss", "train_acc_eval", "train_loss_eval",
               "test_acc", "test_loss")
# Where each side's own weights sit on the interpolation line theta(a) = a*LB + (1-a)*SB.
SIDE_ALPHA = {"sb": 0.0, "lb": 1.0}


def measure_key(subspace: str, eps: float) -> str:
    """The column name of one sharpness measure: ``phi full eps=0.001``."""
    return f"phi {subspace} eps={eps:g}"


def stop_text(results: dict[str, Any]) -> str:
    """Why a run ended: the stopping rule's reason (also when it was met at the cap epoch
    itself), else the epochs cap, else its status."""
    for key in ("stopped_early", "stop_rule_met"):
        stopped = results.get(key)
        if isinstance(stopped, dict) and stopped.get("reason"):
            return str(stopped["reason"])
    if results.get("status") == "completed":
        return f"epochs cap ({results['config']['epochs']})"
    return str(results.get("status"))


def side_record(seed: int, side: str, results: dict[str, Any], sharpness: dict[str, Any],
                curve: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """One run as one row: its results.json (final epoch: training accuracy and loss as the
    running average over the epoch's batches, which the stopping rule reads; test = the
    validation set), its sharpness.json, and from the interpolation ``curve`` (rows of
    alpha, split, loss, accuracy) the same weights evaluated on the whole training set in
    evaluation mode (``train_acc_eval``, ``train_loss_eval``; None when the curve has no
    point at this side's alpha)."""
    final = results["final"]
    own = [row for row in curve
           if row["split"] == "train" and math.isclose(row["alpha"], SIDE_ALPHA[side])]
    record: dict[str, Any] = {
        "seed": seed, "side": side, "batch_size": results["config"]["batch_size"],
        "lr": results["lr"], "status": results["status"],
        "epochs": results["epochs_completed"], "epochs_cap": results["config"]["epochs"],
        "stopped_by": stop_text(results),
        "train_acc": final["train_acc"], "train_loss": final["train_loss"],
        "train_acc_eval": own[0]["accuracy"] if own else None,
        "train_loss_eval": own[0]["loss"] if own else None,
        "test_acc": final["val_acc"], "test_loss": final["val_loss"],
        "train_seconds": results.get("train_seconds"),
    }
    for measure in sharpness["sharpness"]:
        record[measure_key(measure["subspace"], measure["eps"])] = measure["phi"]
    hessian = sharpness.get("hessian")
    record["hessian_top"] = hessian["top_eigenvalues"][0] if hessian else None
    return record


def number_columns(records: Sequence[dict[str, Any]]) -> list[str]:
    """The numeric columns of ``side_record`` rows that are summarised, in order."""
    phis = [key for key in records[0] if key.startswith("phi ")]
    return [*RUN_NUMBERS, *phis, "hessian_top"]


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """{"mean", "std", "n"} over the finite values (std: n - 1 divisor; None below 2)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return {"mean": statistics.fmean(finite) if finite else None,
            "std": statistics.stdev(finite) if len(finite) > 1 else None,
            "n": len(finite)}


def side_summary(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """side -> column -> mean_std over the seeds' rows of that side."""
    columns = number_columns(records)
    return {side: {column: mean_std([r[column] for r in records if r["side"] == side])
                   for column in columns}
            for side in LABELS}


def interpolation_band(per_seed: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of loss and accuracy at each (split, alpha) of
    the interpolation rows (``alpha``, ``split``, ``loss``, ``accuracy``); non-finite values
    are left out and counted (``n``)."""
    keys = sorted({(r["split"], r["alpha"]) for rows in per_seed for r in rows})
    band = []
    for split, alpha in keys:
        points = [r for rows in per_seed for r in rows
                  if r["split"] == split and r["alpha"] == alpha]
        loss = mean_std([p["loss"] for p in points])
        accuracy = mean_std([p["accuracy"] for p in points])
        band.append({"split": split, "alpha": alpha, "n": loss["n"],
                     "loss_mean": loss["mean"], "loss_std": loss["std"],
                     "accuracy_mean": accuracy["mean"], "accuracy_std": accuracy["std"]})
    return band


def falling_batch(rows: Sequence[dict[str, Any]], *, drop_points: float,
                  key: str = "best_val_acc") -> dict[str, Any]:
    """Where accuracy starts to fall over a sweep (rows with ``batch_size`` and ``key``, best
    or final validation accuracy): the first batch size above the best one whose ``key`` is
    more than ``drop_points`` percentage points below the best.

    Returns {"best": row, "fall": row or None, "before": the batch size below "fall" in the
    sweep (the fall lies between the two) or None, "largest": the largest batch size with an
    accuracy}. Rows without an accuracy are skipped.
    """
    done = sorted((r for r in rows if r.get(key) is not None), key=lambda r: r["batch_size"])
    if not done:
        return {"best": None, "fall": None, "before": None, "largest": None}
    best = max(done, key=lambda r: r[key])  # the smallest batch on ties
    above = [r for r in done if r["batch_size"] > best["batch_size"]]
    fall = next((r for r in above if 100 * (best[key] - r[key]) > drop_points), None)
    before = None
    if fall is not None:
        before = max(r["batch_size"] for r in done if r["batch_size"] < fall["batch_size"])
    return {"best": best, "fall": fall, "before": before, "largest": done[-1]["batch_size"]}
