"""The generated prose: pure functions from numbers to markdown sentences, tables and pages.

Every verdict in a sentence is decided by the numbers against a threshold stated here, and the
pages state the thresholds next to the sentences:

- ``GAP_STANDARD_ERRORS``: two accuracies differ when their difference exceeds this many
  standard errors of the difference of two binomial proportions (``gap_threshold``);
- ``SAME_SHARPNESS``: two sharpness values or eigenvalues are the same within this fraction of
  the larger;
- ``LOSS_RISE``: a loss "rises" when it exceeds its reference by more than this fraction.

Used by ``lbtkit demo`` (``summarise``, ``render_index``) and ``lbtkit study keskar``
(``study_report``); nothing here trains, reads files or draws. Rows are the sweep report's
(``lbtkit.report.collect``) with ``global_step``; ``keskar`` is the demo's Keskar step:
{"interpolation": rows, "sharpness": {"sb", "lb"}, "train": {"sb", "lb"}, "ends", "paths"}.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lbtkit.config import RunConfig
from lbtkit.report import DASH, format_lr
from lbtkit.rundir import STATUS_COMPLETED

# A validation difference counts as a gap when it exceeds this many standard errors of the
# difference of two binomial proportions on the validation set (two-sided ~95%).
GAP_STANDARD_ERRORS = 2.0
# The training loss "rises" between or beyond the solutions when it exceeds the reference by
# more than this fraction of it.
LOSS_RISE = 0.05
# Below this relative difference two sharpness values (or eigenvalues) count as equal.
SAME_SHARPNESS = 0.05

LABELS = ("sb", "lb")


# --- sentences -------------------------------------------------------------------------------


def gap_threshold(p1: float, p2: float, n: int) -> float:
    """GAP_STANDARD_ERRORS standard errors of p1 - p2, two accuracies on n images each
    (binomial), as a fraction. Never below one image (1/n): a difference of 0 is no gap."""
    se = math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n)
    return max(GAP_STANDARD_ERRORS * se, 1.0 / n)


def summarise(rows: list[dict[str, Any]], keskar: dict[str, Any] | None, *, n_val: int,
              n_train: int) -> dict[str, Any]:
    """The numbers behind index.md's sentences, and the sentences themselves (under
    "sentences"): the sweep's peak, the SB/LB validation gap, then with a Keskar step the
    training fit, the sharpness and the interpolation."""
    sb, lb = rows[0], rows[-1]
    numbers: dict[str, Any] = {"sb_batch": sb["batch_size"], "lb_batch": lb["batch_size"],
                               "n_val": n_val, "n_train": n_train, "sentences": []}
    sentences = numbers["sentences"]
    peak_line = peak_sentence(rows, n_val=n_val)
    if peak_line:
        sentences.append(peak_line)
    if sb["best_val_acc"] is None or lb["best_val_acc"] is None:
        missing = sb if sb["best_val_acc"] is None else lb
        sentences.append(f"No accuracy comparison: the batch-{missing['batch_size']} run is "
                         f"{missing['status']}.")
        return numbers
    sentences.append(_gap_sentence(sb, lb, n_val, numbers))
    if keskar is None:
        return numbers
    sentences.append(_fit_sentence(sb, lb, keskar["train"], n_train, numbers))
    sentences.append(_sharpness_sentence(keskar["sharpness"], numbers))
    line = interpolation_sentence(keskar["interpolation"])
    recalibrated = recalibrated_sentence(keskar["interpolation"], n_val=n_val)
    if recalibrated:
        line = f"{line} {recalibrated}" if line else recalibrated
    if line:
        sentences.append(line)
    return numbers


def _gap_sentence(sb: dict[str, Any], lb: dict[str, Any], n_val: int,
                  numbers: dict[str, Any]) -> str:
    """SB's vs LB's best validation accuracy, against GAP_STANDARD_ERRORS; records the
    numbers and the verdict in ``numbers``."""
    a, b = sb["best_val_acc"], lb["best_val_acc"]
    diff = round(100 * a, 2) - round(100 * b, 2)  # the difference of the shown percentages
    threshold = 100 * gap_threshold(a, b, n_val)
    numbers.update(sb_best=a, lb_best=b, diff_points=diff, gap_threshold_points=threshold)
    lead = (f"At batch {sb['batch_size']} the best validation accuracy is {100 * a:.2f}%, at "
            f"batch {lb['batch_size']} {100 * b:.2f}%: ")
    if abs(diff) <= threshold:
        numbers["verdict"] = "no gap"
        return (lead + f"a difference of {diff:.2f} points, within two standard errors "
                f"({threshold:.2f} points on {n_val} validation images), so there is no "
                "generalisation gap at this scale.")
    if diff > 0:
        numbers["verdict"] = "large batch worse"
        return (lead + f"the largest batch is {diff:.2f} points worse, more than two standard "
                f"errors ({threshold:.2f} points on {n_val} validation images).")
    numbers["verdict"] = "large batch better"
    return (lead + f"the largest batch is {-diff:.2f} points better, more than two standard "
            f"errors ({threshold:.2f} points on {n_val} validation images): no large-batch "
            "gap here.")


def _fit_sentence(sb: dict[str, Any], lb: dict[str, Any], fit: dict[str, dict[str, float]],
                  n_train: int, numbers: dict[str, Any]) -> str:
    """How well SB and LB fit the (un-augmented) training set after the same epochs: is part
    of the gap under-training? Records the numbers and the verdict in ``numbers``."""
    fit_diff = round(100 * fit["sb"]["accuracy"], 2) - round(100 * fit["lb"]["accuracy"], 2)
    fit_threshold = 100 * gap_threshold(fit["sb"]["accuracy"], fit["lb"]["accuracy"], n_train)
    numbers.update(train_acc_sb=fit["sb"]["accuracy"], train_acc_lb=fit["lb"]["accuracy"],
                   train_diff_points=fit_diff, train_threshold_points=fit_threshold)
    steps = (f"Both ran the same number of epochs, which is {sb['global_step']} optimizer steps "
             f"at batch {sb['batch_size']} and {lb['global_step']} at batch "
             f"{lb['batch_size']}; on the un-augmented training set SB reaches "
             f"{100 * fit['sb']['accuracy']:.2f}% (loss {fit['sb']['loss']:.3g}) and LB "
             f"{100 * fit['lb']['accuracy']:.2f}% (loss {fit['lb']['loss']:.3g})")
    if fit_diff > fit_threshold:
        numbers["fit"] = "large batch under-fitted"
        return (steps + f", {fit_diff:.2f} points apart (two standard errors: "
                f"{fit_threshold:.2f}), so LB also fits its training data worse: part of its "
                "validation difference is under-training, not only the generalisation gap of "
                "Keskar et al., who compare solutions of similar training accuracy.")
    numbers["fit"] = "similar fit"
    return (steps + f", within two standard errors ({fit_threshold:.2f} points) of each other "
            "or better for LB, so any validation difference is a generalisation gap in the "
            "sense of Keskar et al.")


def _sharpness_sentence(sharpness: dict[str, dict[str, Any]], numbers: dict[str, Any]) -> str:
    """Keskar's sharpness (the first measure) and the top Hessian eigenvalue of SB vs LB,
    equal within SAME_SHARPNESS; needs ``numbers["fit"]`` (a point that is no minimum)."""
    phis = {label: sharpness[label]["sharpness"][0] for label in LABELS}
    numbers.update(phi_sb=phis["sb"]["phi"], phi_lb=phis["lb"]["phi"])
    tops = [sharpness[label]["hessian"]["top_eigenvalues"][0] for label in LABELS]
    numbers.update(hessian_sb=tops[0], hessian_lb=tops[1])
    sharp = (compare_sharpness(phis["sb"]["phi"], phis["lb"]["phi"],
                               what=f"full space, ε={phis['sb']['eps']:g}") + " "
             + compare_values(tops[0], tops[1], noun="The top Hessian eigenvalue",
                              relative=SAME_SHARPNESS))
    if numbers["fit"] == "large batch under-fitted":
        sharp += " LB's end point is not yet a minimum (see its training loss), so its " \
                 "numbers describe the slope there as much as the curvature."
    return sharp


def recalibrated_sentence(rows: list[dict[str, Any]], *, n_val: int) -> str | None:
    """The SB/LB validation comparison again with BatchNorm statistics re-estimated on the
    training set (the interpolation's alpha = 0 and 1): does the gap survive?"""
    test = {r["alpha"]: r["accuracy"] for r in rows
            if r["split"] == "test" and math.isfinite(r["accuracy"])}
    if 0.0 not in test or 1.0 not in test:
        return None
    a, b = test[0.0], test[1.0]
    diff = round(100 * a, 2) - round(100 * b, 2)
    threshold = 100 * gap_threshold(a, b, n_val)
    verdict = ("more than two standard errors" if abs(diff) > threshold
               else "within two standard errors")
    return (f"With BatchNorm statistics re-estimated on the training set (α=0 and α=1) instead "
            f"of the running averages the runs kept, validation accuracy is {100 * a:.2f}% (SB) "
            f"and {100 * b:.2f}% (LB), a difference of {diff:.2f} points, {verdict} "
            f"({threshold:.2f}).")


def peak_sentence(rows: list[dict[str, Any]], *, n_val: int) -> str | None:
    """Where validation accuracy peaks over the sweep, and which batch sizes are within two
    standard errors of that peak."""
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
        (close if within else far).append(row)
    text = (f"Over the sweep, the best validation accuracy peaks at batch {peak['batch_size']} "
            f"({100 * peak['best_val_acc']:.2f}%)")

    def listed(group: list[dict[str, Any]]) -> str:
        sizes = [str(r["batch_size"]) for r in group]
        return sizes[0] if len(sizes) == 1 else ", ".join(sizes[:-1]) + " and " + sizes[-1]

    if close and far:
        text += (f"; batch size{'s' if len(close) > 1 else ''} {listed(close)} "
                 f"{'are' if len(close) > 1 else 'is'} within two standard errors of it, "
                 + ", ".join(f"{r['batch_size']} ({100 * r['best_val_acc']:.2f}%)" for r in far)
                 + f" {'are' if len(far) > 1 else 'is'} not")
    elif close:
        text += "; every other batch size is within two standard errors of it"
    else:
        text += "; every other batch size is more than two standard errors below it"
    missing = [r for r in rows if r["best_val_acc"] is None]
    if missing:
        text += " (no accuracy for " + ", ".join(
            f"batch {r['batch_size']}: {r['status']}" for r in missing) + ")"
    return text + "."


def compare_values(sb: float, lb: float, *, noun: str, relative: float) -> str:
    """One sentence comparing an SB and an LB value: equal within ``relative`` of the larger."""
    values = f"{sb:.4g} (SB) vs {lb:.4g} (LB)"
    if not (math.isfinite(sb) and math.isfinite(lb)):
        return f"{noun} cannot be compared: {values}."
    top = max(abs(sb), abs(lb))
    if top == 0 or abs(lb - sb) <= relative * top:
        return f"{noun} is the same within {relative:.0%}: {values}."
    larger = "LB" if lb > sb else "SB"
    low = min(sb, lb)
    factor = f"{max(sb, lb) / low:.3g} times" if low > 0 else "above"
    return f"{noun} is larger for {larger}, {factor} the other's: {values}."


def interpolation_sentence(rows: list[dict[str, Any]]) -> str | None:
    """Barrier between the two solutions and the rise beyond each, from the training loss."""
    train = sorted((r for r in rows if r["split"] == "train" and math.isfinite(r["loss"])),
                   key=lambda r: r["alpha"])
    at = {r["alpha"]: r["loss"] for r in train}
    if 0.0 not in at or 1.0 not in at:
        return None
    l0, l1 = at[0.0], at[1.0]
    inside = [r for r in train if 0.0 < r["alpha"] < 1.0]
    text = (f"Along θ(α) = α·θ_LB + (1−α)·θ_SB the training loss is {l0:.3g} at SB (α=0) "
            f"and {l1:.3g} at LB (α=1)")
    if inside:
        peak = max(inside, key=lambda r: r["loss"])
        ends_max = max(l0, l1)
        if peak["loss"] > (1 + LOSS_RISE) * ends_max:
            text += (f"; between them it rises to {peak['loss']:.3g} (α={peak['alpha']:g}), "
                     "a barrier above both ends")
        else:
            text += (f"; between them it stays within {LOSS_RISE:.0%} of the higher end "
                     f"(at most {peak['loss']:.3g}): no barrier on the straight path")
    # Equal distances beyond both ends, when the grid has them: how steeply the loss rises.
    for t in sorted({-r["alpha"] for r in train if r["alpha"] < 0}, reverse=True):
        if 1.0 + t in at:
            rise_sb, rise_lb = at[-t] - l0, at[1.0 + t] - l1
            text += (f". At distance {t:g} beyond each end it is {at[-t]:.3g} beyond SB "
                     f"(α={-t:g}) and {at[1.0 + t]:.3g} beyond LB (α={1.0 + t:g})")
            top = max(abs(rise_sb), abs(rise_lb))
            if top > 0 and abs(rise_lb - rise_sb) > LOSS_RISE * top:
                steeper = "LB" if rise_lb > rise_sb else "SB"
                text += f": it rises more steeply beyond {steeper}"
            else:
                text += f": it rises about equally (within {LOSS_RISE:.0%}) beyond both"
            break
    return text + "."


# --- the demo's index.md ------------------------------------------------------------------


def render_index(output: Path, rows: list[dict[str, Any]], keskar: dict[str, Any] | None,
                 numbers: dict[str, Any], settings: dict[str, Any],
                 report_paths: dict[str, Path]) -> str:
    """index.md: plain words first, then the tables and figures, then how to rerun.

    ``output``: the directory index.md is written to (links are relative to it); ``numbers``:
    ``summarise``'s; ``settings``: the demo's settings (batch_sizes, epochs, seed, threads,
    alphas, eps, sharpness_iters, hessian_iters, sharpness_samples, sweep_dir, model, dataset,
    recipe, bn, parameters, quick); ``report_paths``: the sweep report's files.
    """
    def link(path: Path) -> str:
        return Path(os.path.relpath(path, output)).as_posix()

    lines = [*_intro(numbers, settings), *_sweep_section(rows, settings, report_paths, link),
             *_keskar_section(rows, keskar, settings, link),
             *_rerun_section(output, rows, settings, link)]
    return "\n".join(lines)


def _intro(numbers: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    batch_text = ", ".join(map(str, settings["batch_sizes"]))
    return [
        "# lbtkit demo: does the batch size change what a network learns?",
        "",
        f"Keskar et al.'s F1 network (an MLP, 5 × 512 units with BatchNorm, "
        f"{settings['parameters']:,} parameters) trained on real handwritten digits "
        f"(scikit-learn's bundled 8×8 digits: {numbers['n_train']} training, "
        f"{numbers['n_val']} validation images) at batch sizes {batch_text}, "
        f"{settings['epochs']} epoch{'s' if settings['epochs'] != 1 else ''} each, "
        f"seed {settings['seed']}. Then the solutions of the smallest and the largest batch "
        "are compared the way Keskar et al. (2016) do: the "
        f"loss along the line between them, and their sharpness.",
        "",
        "## What the numbers say",
        "",
        *(f"- {sentence}" for sentence in numbers["sentences"]),
        "",
        "A single seed and a small data set: these are the numbers of this run, not a general "
        "law. " + thresholds_sentence(),
        "",
    ]


def thresholds_sentence() -> str:
    """The thresholds behind every verdict, in words."""
    return ("The thresholds are stated, not tuned: a validation difference counts when it "
            f"exceeds {GAP_STANDARD_ERRORS:g} standard errors of the difference of two "
            "accuracies (binomial, on the images evaluated); two sharpness values or "
            f"eigenvalues count as equal within {SAME_SHARPNESS:.0%} of the larger; a loss "
            f"rises when it exceeds the reference by more than {LOSS_RISE:.0%}.")


def _sweep_section(rows: list[dict[str, Any]], settings: dict[str, Any],
                   report_paths: dict[str, Path], link) -> list[str]:
    recipe = settings["recipe"]
    report, csv_file = link(report_paths["report"]), link(report_paths["csv"])
    return [
        "## 1. The batch-size sweep",
        "",
        f"SGD with momentum {recipe['momentum']}, "
        f"weight decay {format_lr(recipe['weight_decay'])}, "
        f"learning rate {format_lr(recipe['base_lr'])} × batch/{recipe['base_batch_size']} "
        "(linear scaling, the rule of Goyal et al. 2017), cosine decay to zero, no warm-up: the "
        "`smoke` preset's recipe, chosen before this demo. Every batch size trains for the same "
        "number of epochs, so larger batches take fewer, larger steps.",
        "",
        *_sweep_table(rows),
        "",
        "Best: the highest validation accuracy over the epochs; final: the last epoch's. "
        "Train loss: the last epoch's running average over its (augmented) batches. "
        f"Full report with wall times and throughput: [{report}]({report}); every number: "
        f"[{csv_file}]({csv_file}).",
        "",
        f"![best validation accuracy vs batch size]({link(report_paths['accuracy_vs_batch'])})",
        "",
        f"![learning curves]({link(report_paths['learning_curves'])})",
        "",
    ]


def _keskar_section(rows: list[dict[str, Any]], keskar: dict[str, Any] | None,
                    settings: dict[str, Any], link) -> list[str]:
    sb, lb = rows[0], rows[-1]
    title = (f"## 2. Sharp minima: batch {sb['batch_size']} (SB) vs batch {lb['batch_size']} "
             "(LB)")
    if keskar is None:
        bad = sb if sb["status"] != STATUS_COMPLETED else lb
        return [title, "", f"Not run: the batch-{bad['batch_size']} run is {bad['status']}, so "
                "there is no trained solution to measure.", ""]
    paths = keskar["paths"]
    return [
        title,
        "",
        "Both runs come from the sweep above and start from the same initial weights (the "
        "model is built right after seeding torch with the run's seed).",
        "",
        f"![parametric plot]({link(paths['png'])})",
        "",
        "Cross-entropy (log scale, blue) and accuracy (red) along "
        "θ(α) = α·θ_LB + (1−α)·θ_SB; solid: training set (no augmentation), dashed: "
        f"validation set. BatchNorm statistics re-estimated on the training set at every α "
        f"(`--bn {settings['bn']}`). Numbers: [{link(paths['csv'])}]({link(paths['csv'])}).",
        "",
        *_keskar_table(keskar),
        "",
        "Train accuracy and loss: the final weights on all training images without "
        "augmentation; validation accuracy: the run's final epoch (results.json). φ is "
        "Keskar's sharpness (in %): the largest relative rise of the training loss in a box "
        "of size ε around the solution, over all parameters, sought by L-BFGS-B for "
        f"{settings['sharpness_iters']} iterations. The top Hessian eigenvalue comes from "
        f"{settings['hessian_iters']} Lanczos steps. Settings and timings: "
        f"[{link(paths['sharpness_sb'])}]({link(paths['sharpness_sb'])}), "
        f"[{link(paths['sharpness_lb'])}]({link(paths['sharpness_lb'])}).",
        "",
    ]


def _rerun_section(output: Path, rows: list[dict[str, Any]], settings: dict[str, Any],
                   link) -> list[str]:
    sb, lb = rows[0], rows[-1]
    threads, seed = settings["threads"], settings["seed"]
    flags = " ".join(
        f"--{key.replace('_', '-')} {value:g}" if isinstance(value, float)
        else f"--{key.replace('_', '-')} {value}"
        for key, value in {"model": settings["model"], "dataset": settings["dataset"],
                           "epochs": settings["epochs"], "seed": seed,
                           **settings["recipe"]}.items()
    )
    return [
        "## Run it again",
        "",
        f"    lbtkit demo --output {shlex.quote(str(output))}"
        f"{' --quick' if settings['quick'] else ''}",
        "",
        "(`make demo` runs `lbtkit demo --output docs/demo`, creating `.venv` first if needed.)",
        "",
        "Same machine, same numbers: the seeds are fixed and torch uses "
        + (f"{threads} thread{'s' if threads != 1 else ''} (another thread count changes "
           "float rounding)" if threads else "its default threads")
        + f". Re-running resumes: completed runs under `{link(settings['sweep_dir'].parent)}/` "
        "are kept; delete that directory to train again. The same study, step by step, "
        "with the commands a cluster uses (there `lbtkit sweep submit` instead of `sweep run`):",
        "",
        *([f"    export OMP_NUM_THREADS={threads}        # the demo's thread count"]
          if threads else []),
        f"    lbtkit sweep plan --output SWEEP --batch-sizes "
        f"{','.join(map(str, settings['batch_sizes']))} {flags}",
        "    lbtkit sweep run SWEEP",
        "    lbtkit report SWEEP --output OUT",
        f"    lbtkit interpolate SWEEP/runs/b{sb['batch_size']}-s{seed} "
        f"SWEEP/runs/b{lb['batch_size']}-s{seed} --output OUT/keskar "
        f"--alphas={_alphas_text(settings['alphas'])} --bn {settings['bn']}",
        f"    lbtkit sharpness SWEEP/runs/b{sb['batch_size']}-s{seed} "
        f"--eps {','.join(f'{e:g}' for e in settings['eps'])} --iters "
        f"{settings['sharpness_iters']} --hessian --hessian-iters {settings['hessian_iters']} "
        f"--samples {settings['sharpness_samples']} --output OUT/keskar/sharpness-sb.json",
        "    # ... and the same for the LB run into OUT/keskar/sharpness-lb.json",
        "",
        f"(The demo's sweep directory is `{link(settings['sweep_dir'])}`.)",
        "",
    ]


def _sweep_table(rows: list[dict[str, Any]]) -> list[str]:
    header = ["batch size", "initial lr (scaled)", "optimizer steps", "best val top-1",
              "final val top-1", "final train loss", "status"]
    body = [[str(r["batch_size"]), format_lr(r["lr"]), _text(r.get("global_step"), str),
             _text(r["best_val_acc"], lambda v: f"{100 * v:.2f}%"),
             _text(r["final_val_acc"], lambda v: f"{100 * v:.2f}%"),
             _text(r["final_train_loss"], lambda v: f"{v:.4f}"), r["status"]] for r in rows]
    return markdown_table(header, body)


def _keskar_table(keskar: dict[str, Any]) -> list[str]:
    sharp = keskar["sharpness"]
    measures = [m["eps"] for m in sharp["sb"]["sharpness"]]
    header = ["", "batch", "lr", "train acc", "train loss", "val acc",
              *(f"φ full space, ε={e:g}" for e in measures), "top Hessian eigenvalue"]
    body = []
    for label in LABELS:
        row, fit = keskar["ends"][label], keskar["train"][label]
        body.append([
            label.upper(), str(row["batch_size"]), format_lr(row["lr"]),
            f"{100 * fit['accuracy']:.2f}%", f"{fit['loss']:.4f}",
            _text(row["final_val_acc"], lambda v: f"{100 * v:.2f}%"),
            *(f"{m['phi']:.4g}" for m in sharp[label]["sharpness"]),
            f"{sharp[label]['hessian']['top_eigenvalues'][0]:.4g}",
        ])
    return markdown_table(header, body)


def _alphas_text(alphas: Sequence[float]) -> str:
    """START:STOP:COUNT when the grid is evenly spaced (as lbtkit interpolate reads it)."""
    import numpy as np

    if len(alphas) > 2 and np.allclose(np.linspace(alphas[0], alphas[-1], len(alphas)), alphas):
        return f"{alphas[0]:g}:{alphas[-1]:g}:{len(alphas)}"
    return ",".join(f"{a:g}" for a in alphas)


def markdown_table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cells) + " |" for cells in body)]


def _text(value: Any, fmt) -> str:
    return DASH if value is None else fmt(value)



# --- the study's report.md ---------------------------------------------------------------


def study_report(
    configs: dict[str, RunConfig],
    results: dict[str, dict[str, Any]],
    sharpness: dict[str, dict[str, Any]],
    *,
    bn: str,
) -> str:
    """report.md: the figure, the SB/LB table and sentences computed from the numbers."""
    sb_config = configs["sb"]
    settings = sharpness["sb"]["settings"]
    first_measure = sharpness["sb"]["sharpness"][0]
    space, eps = first_measure["subspace"], first_measure["eps"]
    first = [sharpness[label]["sharpness"][0]["phi"] for label in LABELS]
    test_gap = 100 * (results["sb"]["final"]["val_acc"] - results["lb"]["final"]["val_acc"])
    lines = [
        "# Sharp minima: small-batch vs large-batch solution (Keskar et al. 2016)",
        "",
        f"Model `{sb_config.model}` on `{sb_config.dataset}`, "
        f"{'up to ' if sb_config.stop_rule().active else ''}{sb_config.epochs} epochs "
        f"(each run's own count is in the table), {sb_config.optimizer}, seed "
        f"{sb_config.seed}; both runs start from `init.safetensors`. Runs: `sb/`, `lb/`.",
        "",
        "![parametric plot](interpolation/interpolation.png)",
        "",
        "Cross-entropy (log scale, blue) and accuracy (red) along "
        "θ(α) = α·θ_LB + (1−α)·θ_SB; solid: training set (no augmentation), dashed: test set. "
        f"BatchNorm statistics: `{bn}` (see `interpolation/interpolation.json`).",
        "",
        *_study_table(configs, results, sharpness),
        "",
        compare_sharpness(first[0], first[1], what=f"{_space(space)}, ε={eps:g}"),
        f"LB's test accuracy is {abs(test_gap):.2f} points "
        f"{'below' if test_gap > 0 else 'above'} SB's."
        if test_gap != 0 else "SB and LB reach the same test accuracy.",
        "",
        "Train accuracy is the last epoch's running average during training (the batches as "
        "trained, augmented when the data set is), test accuracy the validation set, both "
        "from each run's `results.json`. "
        f"φ is Keskar's sharpness (in %) of the mean training cross-entropy over "
        f"{sharpness['sb']['samples_used']} training images (seed {settings['seed']}), "
        f"maximised by L-BFGS-B for {settings['iters']} iterations; BatchNorm on running "
        "statistics. Settings and timings: `sb/sharpness.json`, `lb/sharpness.json`.",
        "",
    ]
    return "\n".join(lines)


def _study_table(configs: dict[str, RunConfig], results: dict[str, dict[str, Any]],
                 sharpness: dict[str, dict[str, Any]]) -> list[str]:
    """The layout of Keskar et al.'s Tables 2-3: per solution its batch, lr, accuracies, every
    sharpness measure, and the Hessian's top eigenvalue and trace when measured."""
    measures = [(m["subspace"], m["eps"]) for m in sharpness["sb"]["sharpness"]]
    header = ["", "batch", "lr", "epochs", "train acc (%)", "test acc (%)"]
    header += [f"φ {_space(space)} ε={eps:g}" for space, eps in measures]
    has_hessian = sharpness["sb"].get("hessian") is not None
    has_trace = sharpness["sb"].get("trace") is not None
    if has_hessian:
        header.append("top Hessian eigenvalue")
    if has_trace:
        header.append("Hessian trace (± s.e.)")
    body = []
    for label in LABELS:
        final = results[label]["final"]
        phis = {(m["subspace"], m["eps"]): m["phi"] for m in sharpness[label]["sharpness"]}
        row = [label.upper(), str(configs[label].batch_size), f"{configs[label].lr:g}",
               str(results[label].get("epochs_completed", configs[label].epochs)),
               f"{100 * final['train_acc']:.2f}", f"{100 * final['val_acc']:.2f}"]
        row += [f"{phis[key]:.4g}" for key in measures]
        if has_hessian:
            row.append(f"{sharpness[label]['hessian']['top_eigenvalues'][0]:.4g}")
        if has_trace:
            t = sharpness[label]["trace"]
            row.append(f"{t['mean']:.4g} ± {t['stderr']:.2g}")
        body.append(row)
    return markdown_table(header, body)


def compare_sharpness(sb: float, lb: float, *, what: str) -> str:
    """One sentence comparing two sharpness values, decided by the numbers alone."""
    values = f"φ = {sb:.4g} (SB) vs {lb:.4g} (LB)"
    if not (math.isfinite(sb) and math.isfinite(lb)):
        return f"No sharpness comparison possible ({what}): {values}."
    top = max(abs(sb), abs(lb))
    if top == 0 or abs(lb - sb) <= SAME_SHARPNESS * top:
        return f"No sharpness gap measured ({what}): {values}."
    sharper, flatter = ("LB", "SB") if lb > sb else ("SB", "LB")
    low = min(sb, lb)
    factor = f"by a factor of {max(sb, lb) / low:.3g}" if low > 0 else "(the other is 0)"
    return f"{sharper} is sharper than {flatter} {factor} ({what}): {values}."


def _space(subspace: str) -> str:
    return "full space" if subspace == "full" else f"subspace {subspace}"



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
