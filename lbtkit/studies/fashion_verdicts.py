"""The Fashion-MNIST study's verdicts as data: numbers over seeds in, small dicts out, each
decided against a threshold stated here (and on the page, ``fashion_sentences.md.j2``).

- SB and LB differ on a number when the paired t-test over seeds gives p < ``ALPHA``
  (``lbtkit.studies.paired``: each dict there carries "differs");
- ``SAME_FIT_POINTS``: both sides fit the training set alike within this many points;
- ``FALL_POINTS``: over a sweep, accuracy "has fallen" at the first batch this many points
  below the best (``lbtkit.studies.summary.falling_batch``);
- ``SEED_STANDARD_ERRORS``: a B_simple is resolved when it exceeds this many standard errors.

Pure functions: nothing here trains, reads files or writes prose. ``summary`` is
``side_summary``'s {"sb", "lb"} -> column -> {"mean", "std", "n"}; ``paired`` is
``paired_comparisons``'s column -> {"mean", "low", "high", "p", "differs", "alpha", ...}; sweep
rows are ``lbtkit.report.collect``'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lbtkit.studies.paired import ALPHA
from lbtkit.studies.summary import split_measure_key

# A B_simple estimate counts when it exceeds this many of its standard errors.
SEED_STANDARD_ERRORS = 2.0
# Both sides fit the training set alike when their mean training accuracies are within this
# many percentage points (Keskar's F1 sides are 0.26 points apart: 99.66 vs 99.92).
SAME_FIT_POINTS = 0.5
# Over a batch-size sweep, accuracy "has fallen" at the first batch size above the best one
# whose (best or final) validation accuracy is more than this many percentage points below
# the best.
FALL_POINTS = 1.0

THRESHOLDS = {"alpha": ALPHA, "same_fit_points": SAME_FIT_POINTS, "fall_points": FALL_POINTS,
              "seed_standard_errors": SEED_STANDARD_ERRORS}

# Keskar et al. 2016, Table 2 (F1 on MNIST; mean ± std over 5 runs): train and test accuracy
# in %, sharpness (full space eps 1e-3 and 5e-4, a random 100-dim subspace eps 1e-3). Their
# code normalises with batch statistics (Keras BatchNormalization(mode=2)), so their φ sits
# beside ours under that convention (bn=batch).
PAPER_F1 = {
    "sb": {"train_acc": (99.66, 0.05), "test_acc": (98.03, 0.07),
           "phi full eps=0.001 bn=batch": (1.23, 0.83),
           "phi full eps=0.0005 bn=batch": (0.61, 0.27),
           "phi random:100 eps=0.001 bn=batch": (0.11, 0.00)},
    "lb": {"train_acc": (99.92, 0.01), "test_acc": (97.81, 0.07),
           "phi full eps=0.001 bn=batch": (205.14, 69.52),
           "phi full eps=0.0005 bn=batch": (42.90, 17.14),
           "phi random:100 eps=0.001 bn=batch": (9.22, 0.56)},
}


def paired_verdict(summary: dict[str, dict[str, Any]], paired: dict[str, dict[str, Any]],
                   key: str) -> dict[str, Any]:
    """SB vs LB on column ``key``, paired by seed: "not measured" (on one side), "untested"
    (too few seeds), "same" (p >= alpha) or "differs" with LB's direction and, when one mean
    is more than twice the other (both positive), LB's as a multiple of SB's."""
    a, b, d = summary["sb"][key], summary["lb"][key], paired.get(key)
    out: dict[str, Any] = {"sb": a, "lb": b, "diff": d}
    if a["mean"] is None or b["mean"] is None or d is None or d["mean"] is None:
        return {**out, "verdict": "not measured"}
    if d["p"] is None:
        return {**out, "verdict": "untested"}
    if not d["differs"]:
        return {**out, "verdict": "same"}
    factor = None
    if a["mean"] > 0 and b["mean"] > 0 and max(a["mean"], b["mean"]) > 2 * min(a["mean"],
                                                                             b["mean"]):
        factor = b["mean"] / a["mean"]
    return {**out, "verdict": "differs", "direction": "higher" if d["mean"] > 0 else "lower",
            "factor": factor}


def generalisation_verdict(paired: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Test accuracy and test loss read together: "both" differ, only "one" (``which``), or
    "neither"; ``opposite`` when LB has fewer right yet a lower loss (or the reverse)."""
    acc, loss = paired.get("test_acc"), paired.get("test_loss")
    if not acc or not loss or acc["p"] is None or loss["p"] is None:
        return None
    out = {"acc": acc, "loss": loss, "alpha": acc["alpha"],
           "acc_direction": "lower" if acc["mean"] < 0 else "higher",
           "loss_direction": "lower" if loss["mean"] < 0 else "higher",
           "opposite": (acc["mean"] < 0) == (loss["mean"] < 0)}
    if acc["differs"] and loss["differs"]:
        return {**out, "verdict": "both"}
    if acc["differs"] or loss["differs"]:
        return {**out, "verdict": "one", "which": "accuracy" if acc["differs"] else "loss"}
    return {**out, "verdict": "neither"}


def fit_verdict(summary: dict[str, dict[str, Any]], records: Sequence[dict[str, Any]]
                ) -> dict[str, Any]:
    """Whether both sides fit the training set alike (within SAME_FIT_POINTS), judged on the
    accuracy in evaluation mode (``train_acc_eval``) when both sides have it, else on the
    running average; the runs that hit the epochs cap; the gradient norms measured."""
    sb, lb = summary["sb"], summary["lb"]
    eval_mode = all(side.get("train_acc_eval", {}).get("mean") is not None for side in (sb, lb))
    key = "train_acc_eval" if eval_mode else "train_acc"
    diff = 100 * (lb[key]["mean"] - sb[key]["mean"])
    return {"sb": sb, "lb": lb, "eval_mode": eval_mode, "key": key, "diff_points": diff,
            "same_fit_points": SAME_FIT_POINTS, "runs": len(records),
            "capped": [r for r in records if r["stopped_by"].startswith("epochs cap")],
            "grad_norms": [k for k in sb if k.startswith("grad_norm") and sb[k]["mean"]
                           is not None],
            "verdict": "alike" if abs(diff) <= SAME_FIT_POINTS else "apart",
            "worse": "LB" if diff < 0 else "SB"}


def paper_verdict(paired: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Each measure of Keskar et al.'s F1 row we have (but the training accuracy): does LB
    minus SB go the paper's way ("agree"), against it ("disagree"), or do the seeds show no
    difference ("unclear")? The direction counts only when the paired test says they differ."""
    out: dict[str, list[str]] = {"agree": [], "disagree": [], "unclear": []}
    for key in PAPER_F1["sb"]:
        if key == "train_acc" or paired.get(key) is None or paired[key]["mean"] is None:
            continue
        paper = PAPER_F1["lb"][key][0] - PAPER_F1["sb"][key][0]
        ours = paired[key]
        if not ours["differs"]:
            out["unclear"].append(key)
        elif (ours["mean"] > 0) == (paper > 0):
            out["agree"].append(key)
        else:
            out["disagree"].append(key)
    return out


def fixed_budget_verdict(rows: Sequence[dict[str, Any]], best: dict[str, Any],
                         final: dict[str, Any], *, epochs: int) -> dict[str, Any]:
    """A fixed-epoch-budget sweep: ``falling_batch`` on best (``best``) and final validation
    accuracy (``final``), where validation was held out, the test accuracy of the run best on
    validation, and the optimizer steps of the smallest and the largest batch."""
    held = {row.get("val_split") or 0 for row in rows}
    where = ({"kind": "held out", "images": next(iter(held))}
             if len(held) == 1 and 0 not in held else
             {"kind": "test split"} if held == {0} else {"kind": "mixed"})
    steps = sorted((r["batch_size"], r["steps"]) for r in rows if r.get("steps") is not None)
    return {"epochs": epochs, "where": where, "best": best, "final": final,
            "test_acc": None if best["best"] is None else best["best"].get("test_acc"),
            "steps": {"smallest": steps[0], "largest": steps[-1]} if len(steps) > 1 else None,
            "fall_points": FALL_POINTS}


def stability_verdict(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Which sweep runs were unstable (a training loss above chance, ln(classes), at some
    epoch) and which diverged (a non-finite loss)."""
    chance = {row["chance_loss"] for row in rows} - {None}
    return {"chance_loss": chance.pop() if len(chance) == 1 else None,
            "unstable": [r for r in rows if r.get("unstable") and r["status"] != "diverged"],
            "diverged": [r for r in rows if r["status"] == "diverged"]}


def noise_resolved(noise: dict[str, Any]) -> bool:
    """B_simple is positive and more than SEED_STANDARD_ERRORS standard errors from zero."""
    b, se = noise.get("b_simple"), noise.get("b_simple_std_error")
    return b is not None and math.isfinite(b) and b > 0 and (
        se is None or b > SEED_STANDARD_ERRORS * se)


def noise_verdict(noise: dict[str, Any]) -> dict[str, Any]:
    """One B_simple: "lost" (no positive estimate: |G|² is not positive), "resolved", or
    "unresolved" (|G|² within SEED_STANDARD_ERRORS of zero)."""
    b = noise.get("b_simple")
    verdict = ("lost" if b is None or not math.isfinite(b) or b <= 0 else
               "resolved" if noise_resolved(noise) else "unresolved")
    return {"b_simple": b, "b_simple_std_error": noise.get("b_simple_std_error"),
            "grad_sq": noise.get("grad_sq", float("nan")),
            "grad_sq_std_error": noise.get("grad_sq_std_error") or 0,
            "seed_standard_errors": SEED_STANDARD_ERRORS, "verdict": verdict}


def describe_measure(key: str) -> dict[str, Any]:
    """A measure column (``hessian_top bn=...``, ``grad_norm bn=...``, ``phi SPACE eps=E
    bn=B``) as {"kind": "hessian" | "grad_norm" | "phi", "space", "eps", "bn"}."""
    if key.startswith("hessian_top"):
        return {"kind": "hessian", "bn": key.split("bn=")[1]}
    if key.startswith("grad_norm"):
        return {"kind": "grad_norm", "bn": key.split("bn=")[1]}
    space, eps, bn = split_measure_key(key)
    return {"kind": "phi", "space": space, "eps": eps, "bn": bn}


def conventions_verdict(summary: dict[str, Any]) -> dict[str, Any] | None:
    """How much the BatchNorm convention changes φ (the first φ measured both ways), and
    LB/SB under each; None when no φ was measured both ways or a mean is not positive."""
    pairs = []
    for key in (k for k in summary["sb"] if k.startswith("phi ")):
        space, eps, bn = split_measure_key(key)
        other = f"phi {space} eps={eps} bn=running"
        if bn == "batch" and other in summary["sb"]:
            pairs.append((key, other, space, eps))
    if not pairs:
        return None
    key, other, space, eps = pairs[0]
    means = {(side, k): summary[side][k]["mean"] for side in ("sb", "lb") for k in (key, other)}
    if any(v is None or v <= 0 for v in means.values()):
        return None
    return {"space": space, "eps": eps, "sb_batch": means[("sb", key)],
            "lb_batch": means[("lb", key)], "sb_running": means[("sb", other)],
            "lb_running": means[("lb", other)],
            "ratio_batch": means[("lb", key)] / means[("sb", key)],
            "ratio_running": means[("lb", other)] / means[("sb", other)]}
