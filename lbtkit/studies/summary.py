"""The numbers a multi-seed study reports, from its runs' files: pure functions, no training.

- ``side_record``: one seed's SB or LB run as one flat row (how far it trained, which rule
  stopped it, accuracies and losses, every sharpness measure, the top Hessian eigenvalue and
  the full-batch gradient norm, each under every BatchNorm convention measured, named in the
  column: ``phi full eps=0.001 bn=batch``);
- ``side_summary``: mean and standard deviation (n - 1 divisor, as a sample of seeds) of each
  number over the seeds, per side (the SB-vs-LB comparisons are paired by seed:
  ``lbtkit.studies.paired``);
- ``interpolation_band``: mean and standard deviation over seeds of the interpolation curves,
  at the alphas every seed has (the grid; refined alphas differ from seed to seed);
- ``falling_batch``: where accuracy starts to fall over a batch-size sweep, by a stated rule.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from lbtkit.studies.common import LABELS

# The per-run numbers summarised over seeds, in table order (sharpness columns follow).
RUN_NUMBERS = ("epochs", "train_acc", "train_loss", "train_acc_eval", "train_loss_eval",
               "test_acc", "test_loss")


def measure_key(subspace: str, eps: float, bn: str = "running") -> str:
    """The column name of one sharpness measure: ``phi full eps=0.001 bn=batch``."""
    return f"phi {subspace} eps={eps:g} bn={bn}"


def split_measure_key(key: str) -> tuple[str, str, str]:
    """(subspace, eps text, bn) of a ``measure_key``."""
    _, subspace, eps, bn = key.split(" ")
    return subspace, eps.split("=", 1)[1], bn.split("=", 1)[1]


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


def side_record(seed: int, side: str, results: dict[str, Any], sharpness: dict[str, Any]
                ) -> dict[str, Any]:
    """One run as one row: its results.json (final epoch: training accuracy and loss as the
    running average over the epoch's batches; ``train_acc_eval``/``train_loss_eval``: the
    whole training set evaluated at the end in eval mode, BatchNorm on running statistics,
    which the eval-mode stopping rule reads (None when the run did not measure it); test = the
    validation set, which for Fashion-MNIST is its test set), and its sharpness.json: every φ,
    and per BatchNorm convention the top Hessian eigenvalue and the full-batch gradient norm.
    """
    final = results["final"]
    record: dict[str, Any] = {
        "seed": seed, "side": side, "batch_size": results["config"]["batch_size"],
        "lr": results["lr"], "status": results["status"],
        "epochs": results["epochs_completed"], "epochs_cap": results["config"]["epochs"],
        "stopped_by": stop_text(results),
        "train_acc": final["train_acc"], "train_loss": final["train_loss"],
        "train_acc_eval": final.get("train_eval_acc"),
        "train_loss_eval": final.get("train_eval_loss"),
        "test_acc": final["val_acc"], "test_loss": final["val_loss"],
        "train_seconds": results.get("train_seconds"),
    }
    for measure in sharpness["sharpness"]:
        key = measure_key(measure["subspace"], measure["eps"], measure.get("bn", "running"))
        record[key] = measure["phi"]
    by_bn = sharpness.get("by_bn") or {"running": {
        "hessian": sharpness.get("hessian"), "gradient_norm": sharpness.get("gradient_norm")}}
    for bn, measured in by_bn.items():
        hessian = measured.get("hessian")
        record[f"hessian_top bn={bn}"] = hessian["top_eigenvalues"][0] if hessian else None
        record[f"grad_norm bn={bn}"] = measured.get("gradient_norm")
    return record


def number_columns(records: Sequence[dict[str, Any]]) -> list[str]:
    """The numeric columns of ``side_record`` rows that are summarised, in order."""
    keys = list(records[0])
    return [*RUN_NUMBERS, *(k for k in keys if k.startswith("phi ")),
            *(k for k in keys if k.startswith("hessian_top")),
            *(k for k in keys if k.startswith("grad_norm"))]


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
    the interpolation rows (``alpha``, ``split``, ``loss``, ``accuracy``) that every seed has;
    non-finite values are left out and counted (``n``)."""
    keys = sorted(set.intersection(*({(r["split"], r["alpha"]) for r in rows}
                                     for rows in per_seed))) if per_seed else []
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
