"""The generated prose of ``lbtkit study keskar`` (``study_report``) and the Fashion-MNIST
study's sentences: pure functions from numbers to markdown (the demo's moved to
``lbtkit.studies.demo_report``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lbtkit.markdown import DASH

# --- the Fashion-MNIST study (lbtkit study fashion) ------------------------------------------

# A B_simple estimate counts when it exceeds this many of its standard errors.
SEED_STANDARD_ERRORS = 2.0
# Both sides fit the training set alike when their mean training accuracies are within this
# many percentage points (Keskar's F1 sides are 0.26 points apart: 99.66 vs 99.92).
SAME_FIT_POINTS = 0.5
# Over a batch-size sweep, accuracy "has fallen" at the first batch size above the best one
# whose (best or final) validation accuracy is more than this many percentage points below
# the best.
FALL_POINTS = 1.0

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


def pm(stat: dict[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std`` of a {"mean", "std"} (std left out when there is none)."""
    if stat["mean"] is None:
        return DASH
    text = f"{scale * stat['mean']:.{digits}f}"
    return text if stat["std"] is None else f"{text} ± {scale * stat['std']:.{digits}f}"


def paired_text(d: dict[str, Any], scale: float = 1.0, unit: str = "") -> str:
    """``LB − SB = -0.92 points (95% interval -2.1 to 0.31), p = 0.16`` of a
    ``lbtkit.studies.paired.paired_difference``."""
    text = f"LB − SB = {scale * d['mean']:+.3g}{unit}"
    if d["p"] is None:
        return text + " (one seed: no interval, no test)"
    return (text + f" ({100 * d['confidence']:.0f}% interval {scale * d['low']:.3g} to "
            f"{scale * d['high']:.3g}{unit}), p = {d['p']:.2g}")


def paired_sentence(summary: dict[str, dict[str, Any]], paired: dict[str, dict[str, Any]],
                    key: str, *, noun: str, scale: float = 1.0, unit: str = "",
                    diff_unit: str | None = None) -> str:
    """SB vs LB on one number, paired by seed: the values, LB minus SB with its interval and
    p-value, and the verdict at the stated alpha ("differs" only below it)."""
    diff_unit = unit if diff_unit is None else diff_unit
    a, b, d = summary["sb"][key], summary["lb"][key], paired.get(key)
    if a["mean"] is None or b["mean"] is None or d is None or d["mean"] is None:
        return f"{noun}: not measured on both sides."
    values = f"{pm(a, scale)}{unit} (SB) vs {pm(b, scale)}{unit} (LB)"
    if d["p"] is None:
        return f"{noun}: {values}; too few paired seeds for a test."
    text = f"{noun}: {values}; {paired_text(d, scale, diff_unit)}"
    if not d["differs"]:
        return text + (f": no difference at α = {d['alpha']:g} over these {d['n']} seeds "
                       "(the interval includes 0).")
    higher = "higher" if d["mean"] > 0 else "lower"
    factor = ""
    if a["mean"] > 0 and b["mean"] > 0 and max(a["mean"], b["mean"]) > 2 * min(a["mean"],
                                                                            b["mean"]):
        factor = f", {b['mean'] / a['mean']:.3g} times SB's"
    return text + f": LB's is {higher}{factor} (p < {d['alpha']:g})."


def generalisation_sentence(paired: dict[str, dict[str, Any]]) -> str | None:
    """Test accuracy and test loss read together: they can disagree, and what that means."""
    acc, loss = paired.get("test_acc"), paired.get("test_loss")
    if not acc or not loss or acc["p"] is None or loss["p"] is None:
        return None
    acc_dir = "lower" if acc["mean"] < 0 else "higher"
    loss_dir = "lower" if loss["mean"] < 0 else "higher"
    opposite = (acc["mean"] < 0) == (loss["mean"] < 0)  # fewer right, yet a lower loss
    meaning = (" Lower accuracy with lower cross-entropy would mean LB gets more test images "
               "wrong but is less over-confident: cross-entropy punishes a confident wrong "
               "answer heavily, so SB's errors would be the more confident ones, LB's "
               "predicted probabilities the better calibrated; accuracy counts errors, the "
               "loss weighs them by confidence." if opposite else "")
    if acc["differs"] and loss["differs"]:
        if not opposite:
            return (f"LB's test accuracy is {acc_dir} and its test loss {loss_dir}, both at "
                    f"α = {acc['alpha']:g}: on these seeds LB generalises "
                    f"{'worse' if acc['mean'] < 0 else 'better'} by both measures.")
        return (f"LB's test accuracy is {acc_dir} yet its test loss is {loss_dir}, both at "
                f"α = {acc['alpha']:g}." + meaning)
    if acc["differs"] or loss["differs"]:
        which, other = ("accuracy", "loss") if acc["differs"] else ("loss", "accuracy")
        return (f"Only the test {which} differs at α = {acc['alpha']:g} (LB's is "
                f"{acc_dir if which == 'accuracy' else loss_dir}); the test {other}'s "
                "difference is within what the seeds' spread allows, so the two measures "
                "do not establish one verdict together.")
    text = (f"Neither the test accuracy (LB {acc_dir}, p = {acc['p']:.2g}) nor the test loss "
            f"(LB {loss_dir}, p = {loss['p']:.2g}) differs at α = {acc['alpha']:g}: over these "
            "seeds the study does not show that LB generalises worse.")
    if opposite:
        text += (" Their directions disagree; were both real, that would mean LB errs more "
                 "often but less confidently, which these seeds do not establish.")
    return text


def fit_sentence(summary: dict[str, dict[str, Any]], records: Sequence[dict[str, Any]]) -> str:
    """How far each side trained (epochs, training accuracy, which rule stopped it), whether
    both fit the training set alike (SAME_FIT_POINTS), judged on the accuracy in evaluation
    mode (``train_acc_eval``) when it was measured on both sides, else on the running
    average; and the full-batch gradient norm at each solution, when measured."""
    sb, lb = summary["sb"], summary["lb"]
    capped = [r for r in records if r["stopped_by"].startswith("epochs cap")]  # stop_text
    text = (f"SB trained {pm(sb['epochs'], digits=1)} epochs, LB {pm(lb['epochs'], digits=1)} "
            f"(mean ± std over seeds); the last epoch's running training accuracy (train "
            f"mode, over its batches) is {pm(sb['train_acc'], 100)}% (SB) and "
            f"{pm(lb['train_acc'], 100)}% (LB)")
    key, kind = "train_acc", "training accuracies"
    if all(side.get("train_acc_eval", {}).get("mean") is not None for side in (sb, lb)):
        key, kind = "train_acc_eval", "training accuracies in evaluation mode"
        text += (f"; the final weights evaluated on the whole training set in evaluation "
                 f"mode reach {pm(sb[key], 100)}% (SB) and {pm(lb[key], 100)}% (LB)")
    diff = 100 * (lb[key]["mean"] - sb[key]["mean"])
    if capped:
        text += (f"; {len(capped)} of {len(records)} runs ran to the epochs cap, the rule not "
                 "met before it (" + ", ".join(f"seed {r['seed']} {r['side'].upper()}"
                                           for r in capped) + ")")
    grads = [k for k in sb if k.startswith("grad_norm") and sb[k]["mean"] is not None]
    if grads:
        text += ("; the gradient norm of the training loss at the solution is " + ", ".join(
                     f"{pm(sb[k], digits=3)} (SB) vs {pm(lb[k], digits=3)} (LB) with "
                     f"{k.split(' ', 1)[1]}" for k in grads)
                 + " (zero at a minimiser)")
    if abs(diff) <= SAME_FIT_POINTS:
        return text + (f". The two sides' {kind} are {abs(diff):.2f} points apart, "
                       f"within {SAME_FIT_POINTS:g}: the comparison below is between solutions "
                       "that fit the training set alike, as in Keskar et al.")
    worse = "LB" if diff < 0 else "SB"
    return text + (f". {worse} fits the training set {abs(diff):.2f} points worse, more than "
                   f"{SAME_FIT_POINTS:g}: part of any difference below is under-training, not "
                   "only the effect Keskar et al. describe.")


def paper_sentence(paired: dict[str, dict[str, Any]]) -> str:
    """Does each comparison go the paper's way (LB sharper, LB's test accuracy lower)? The
    direction is ours only when the paired test says the two sides differ."""
    agree, disagree, unclear = [], [], []
    for key in PAPER_F1["sb"]:
        if key == "train_acc" or paired.get(key) is None or paired[key]["mean"] is None:
            continue
        paper = PAPER_F1["lb"][key][0] - PAPER_F1["sb"][key][0]
        ours = paired[key]
        name = "test accuracy" if key == "test_acc" else key.replace(
            "phi ", "sharpness ").replace("eps=", "ε=")
        if not ours["differs"]:
            unclear.append(name)
        elif (ours["mean"] > 0) == (paper > 0):
            agree.append(name)
        else:
            disagree.append(name)
    parts = []
    if agree:
        parts.append("goes the paper's way for " + ", ".join(agree))
    if disagree:
        parts.append("goes against the paper for " + ", ".join(disagree))
    if unclear:
        parts.append("shows no difference (paired, p ≥ α) for " + ", ".join(unclear))
    return ("Against Keskar et al.'s F1 row (MNIST in the paper, Fashion-MNIST here: a "
            "harder data set, so lower accuracies are expected; their φ with batch "
            "statistics, so ours with bn=batch), the LB-minus-SB difference "
            + "; ".join(parts) + ".")


def fixed_budget_sentence(rows: Sequence[dict[str, Any]], best: dict[str, Any],
                          final: dict[str, Any], *, epochs: int) -> str:
    """What a fixed-epoch-budget sweep shows (``lbtkit.report`` rows): where best and where
    final validation accuracy first fall by more than FALL_POINTS (``falling_batch`` on
    each), the test accuracy of the run best on validation (reported, never selected on), and
    why the fall is not the critical batch."""
    top = best["best"]
    if top is None:
        return "No sweep run has an accuracy."
    held = {row.get("val_split") or 0 for row in rows}
    where = (f"{held.pop():,} training images held out" if len(held) == 1 and 0 not in held
             else "the test split" if held == {0} else "held out where val_split > 0")
    text = (f"With a fixed budget of {epochs} epoch{'s' * (epochs != 1)} at every batch size, "
            f"the best validation accuracy (on {where}) is {100 * top['best_val_acc']:.2f}% at "
            f"batch {top['batch_size']}")
    text += _fall_clause(best, "best_val_acc") + "; on final validation accuracy, " + (
        "no run has one" if final["best"] is None else
        f"the best is {100 * final['best']['final_val_acc']:.2f}% at batch "
        f"{final['best']['batch_size']}{_fall_clause(final, 'final_val_acc')}") + "."
    test = top.get("test_acc")
    if test is not None:
        text += (f" The test accuracy of the batch-{top['batch_size']} run, evaluated once at "
                 f"its end and not selected on, is {100 * test:.2f}%.")
    steps = sorted((r["batch_size"], r["steps"]) for r in rows if r.get("steps") is not None)
    if len(steps) > 1:
        text += (f" The budget gives batch {steps[-1][0]} {steps[-1][1]:,} optimizer steps "
                 f"against {steps[0][1]:,} at batch {steps[0][0]}")
    else:
        text += " The budget gives larger batches fewer optimizer steps"
    return text + (", so a fall mixes too few steps with the batch size and does not locate "
                   "the critical batch: `lbtkit study critical-batch` "
                   "(docs/critical-batch/index.md) measures steps to a target with the "
                   "learning rate tuned per batch size.")


def _fall_clause(fall: dict[str, Any], key: str) -> str:
    if fall["fall"] is None:
        return (f"; no larger batch is more than {FALL_POINTS:g} point below it up to batch "
                f"{fall['largest']}")
    f = fall["fall"]
    return (f"; it first falls by more than {FALL_POINTS:g} point at batch {f['batch_size']} "
            f"({100 * f[key]:.2f}%)")


def stability_sentence(rows: Sequence[dict[str, Any]]) -> str:
    """Which sweep runs were unstable (a training loss above chance, ln(classes), at some
    epoch) and which diverged (a non-finite loss), from ``lbtkit.report`` rows."""
    chance = {row["chance_loss"] for row in rows} - {None}
    rule = "ln(classes)" + (f" = {chance.pop():.2f}" if len(chance) == 1 else "")
    unstable = [r for r in rows if r.get("unstable") and r["status"] != "diverged"]
    diverged = [r for r in rows if r["status"] == "diverged"]
    if not unstable and not diverged:
        return (f"No sweep run was unstable (a training loss above chance, {rule}, at some "
                "epoch) or diverged.")
    parts = []
    if unstable:
        parts.append(f"unstable, its training loss above chance ({rule}) at some epoch: "
                     + ", ".join(f"batch {r['batch_size']} ({r['max_train_loss']:.2f} at epoch "
                                 f"{r['max_train_loss_epoch']})" for r in unstable))
    if diverged:
        parts.append("diverged (a non-finite loss stopped it): "
                     + ", ".join(f"batch {r['batch_size']}" for r in diverged))
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def noise_scale_sentence(noise: dict[str, Any] | None, *, noise_batch: int,
                         noise_init: dict[str, Any] | None = None) -> str:
    """B_simple of the batch-``noise_batch`` run at its initial (``noise_init``) and final
    weights (``noise``); it is set beside no fall of a fixed-budget sweep."""
    measured = [(where, n) for where, n in (("initial", noise_init), ("final", noise))
                if n is not None]
    if not measured:
        return "The gradient noise scale was not measured."
    return (f"The gradient noise scale of the batch-{noise_batch} run: "
            + "; ".join(f"at its {where} weights {_noise_phrase(n)}" for where, n in measured)
            + ". B_simple estimates the critical batch of steps to a target (McCandlish et al. "
            "2018), which a fixed epoch budget does not measure; `lbtkit study critical-batch` "
            "sets the two side by side.")


def noise_resolved(noise: dict[str, Any]) -> bool:
    """B_simple is positive and more than SEED_STANDARD_ERRORS standard errors from zero."""
    b, se = noise.get("b_simple"), noise.get("b_simple_std_error")
    return b is not None and math.isfinite(b) and b > 0 and (
        se is None or b > SEED_STANDARD_ERRORS * se)


def _noise_phrase(noise: dict[str, Any]) -> str:
    b, se = noise.get("b_simple"), noise.get("b_simple_std_error")
    g = f"{noise.get('grad_sq', float('nan')):.3g} ± {noise.get('grad_sq_std_error') or 0:.2g}"
    if b is None or not math.isfinite(b) or b <= 0:
        return (f"no B_simple (its |G|² estimate, {g}, is not positive: the true gradient is "
                "lost in the noise of the batches measured)")
    value = f"B_simple ≈ {b:,.0f}" + (f" ± {se:,.0f}" if se else "")
    if noise_resolved(noise):
        return value
    return (f"{value}, not resolved (|G|² = {g} is within {SEED_STANDARD_ERRORS:g} standard "
            "errors of zero: the true gradient is lost in the noise, so the noise scale is "
            "large but not measured by these batches)")


def fashion_thresholds_sentence(alpha: float = 0.05) -> str:
    """The thresholds behind the Fashion-MNIST study's verdicts, in words."""
    return (f"Thresholds, stated before the numbers: SB and LB differ when a paired t-test "
            f"over the seeds (each seed's SB and LB start from one initialisation; "
            f"scipy.stats.ttest_rel, two-sided) gives p < {alpha:g}, and every difference is "
            f"shown with its 95% interval (t, n − 1 degrees of freedom); both sides fit alike "
            f"within {SAME_FIT_POINTS:g} points of training accuracy; over the sweep, accuracy "
            f"has fallen at the first batch more than {FALL_POINTS:g} point below the sweep's "
            f"best; a B_simple is resolved when it exceeds {SEED_STANDARD_ERRORS:g} of its "
            f"standard errors; a run is unstable when its training loss exceeds chance, "
            f"ln(classes), at some epoch.")
