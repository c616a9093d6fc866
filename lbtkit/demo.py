"""``lbtkit demo``: the kit's whole story, offline, on real data, in a few minutes on a CPU.

The batch-size study and the sharp-minima study on scikit-learn's bundled 8x8 handwritten
digits (no download) with Keskar's F1 MLP, through the same code paths as a cluster study:

1. a batch-size sweep (``lbtkit sweep plan`` + ``sweep run``: ``plan_sweep``, ``run_all``), lr
   scaled linearly with the batch, then ``lbtkit report`` (``write_report``);
2. the Keskar study on the smallest vs the largest batch of that sweep: the parametric
   interpolation plot (``run_interpolation``) and the sharpness table (``run_sharpness``);
3. ``index.md``: what was run, the tables and figures, and sentences computed from the numbers
   with the thresholds stated next to them. Nothing is tuned to produce a gap.

    OUTPUT/index.md                        start here
    OUTPUT/report.md, results.csv          the sweep report (all columns, timings included)
    OUTPUT/accuracy_vs_batch.png, learning_curves.png
    OUTPUT/keskar/interpolation.{csv,png,json}
    OUTPUT/keskar/sharpness-sb.json, sharpness-lb.json
    OUTPUT/work/                           the sweep and its run directories (weights,
                                           checkpoints): scratch, git-ignored

The Keskar step measures the sweep's own smallest- and largest-batch runs rather than training
two more: every sweep entry builds its model right after ``torch.manual_seed(seed)`` (as
``lbtkit.train.run`` does, and as ``keskar_study`` does for its ``init.safetensors``), so all
entries start from the same initial weights and draw the same data order.

Determinism: fixed seeds, and torch runs on ``threads`` intra-op threads (default 1) during the
demo, because a different thread count changes float reductions and hence the numbers. The
same machine gives the same tables; wall time and images/s (report.md, results.csv only) vary.
Re-running on the same OUTPUT resumes: completed sweep runs are not retrained.
"""

from __future__ import annotations

import math
import os
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lbtkit.config import build_config
from lbtkit.errors import ConfigError
from lbtkit.report import DASH, format_lr
from lbtkit.rundir import STATUS_COMPLETED, STATUS_INTERRUPTED, RunDir, atomic_write_text
from lbtkit.study import SAME_SHARPNESS, compare_sharpness

MODEL = "f1"
DATASET = "digits"
SEED = 0
BATCH_SIZES = (8, 32, 128, 512, 1024)
# Chosen to fit the time budget (3 minutes on 2 shared CPU cores), not to produce any result.
EPOCHS = 20
# The smoke preset's recipe for F1 on digits, unchanged: SGD with momentum, lr 0.05 at batch
# 64 scaled linearly with the batch (Goyal et al. 2017, the seed's rule), cosine to zero. At
# batch 64 it trains F1 to ~95% in 3 epochs; small batches get proportionally small steps.
RECIPE: dict[str, Any] = {
    "optimizer": "sgd",
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "base_lr": 0.05,
    "base_batch_size": 64,
    "lr_scaling": "linear",
    "scheduler": "cosine",
    "warmup_epochs": 0.0,
    # Checkpoints only on a signal (Ctrl-C still saves one): the runs take seconds.
    "checkpoint_every": 0,
}
ALPHAS: tuple[float, ...] = tuple(-1.0 + 0.125 * i for i in range(25))  # -1:2:25
BN = "recalibrate"
EPS = (1e-3, 5e-4)  # Keskar's two box sizes
SHARPNESS_ITERS = 10  # Keskar's L-BFGS-B iterations
HESSIAN_ITERS = 20
SHARPNESS_SAMPLES = 4096  # more than the 1437 training images: f is the full training loss
EVAL_BATCH = 1024

# ``lbtkit demo --quick`` and the test suite: the same steps in seconds.
QUICK: dict[str, Any] = {
    "batch_sizes": (16, 256),
    "epochs": 1,
    "alphas": (-0.5, 0.0, 0.5, 1.0, 1.5),
    "eps": (1e-3,),
    "sharpness_iters": 2,
    "hessian_iters": 3,
    "sharpness_samples": 256,
}

# A validation difference counts as a gap when it exceeds this many standard errors of the
# difference of two binomial proportions on the validation set (two-sided ~95%).
GAP_STANDARD_ERRORS = 2.0
# The training loss "rises" between or beyond the solutions when it exceeds the reference by
# more than this fraction of it.
LOSS_RISE = 0.05

LABELS = ("sb", "lb")


def run_demo(
    output: str | Path,
    *,
    work_dir: str | Path | None = None,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    epochs: int = EPOCHS,
    seed: int = SEED,
    alphas: Sequence[float] = ALPHAS,
    eps: Sequence[float] = EPS,
    sharpness_iters: int = SHARPNESS_ITERS,
    hessian_iters: int = HESSIAN_ITERS,
    sharpness_samples: int = SHARPNESS_SAMPLES,
    threads: int | None = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo into ``output``; return {"status", "index", "sweep_dir", "numbers", ...}.

    ``work_dir`` holds the sweep and its run directories (default ``output/work``, git-ignored
    by an ``output/.gitignore``). ``threads``: torch intra-op threads during the demo (None:
    leave torch's setting). Status "interrupted" means a run was stopped (rerun to resume);
    "completed" means index.md was written, whatever the runs' own outcomes (a diverged run is a
    result and index.md says so).
    """
    output = Path(output)
    batch_sizes = sorted({int(b) for b in batch_sizes})
    if len(batch_sizes) < 2:
        raise ConfigError(f"the demo needs at least two batch sizes, got {batch_sizes}")
    alphas = [float(a) for a in alphas]
    eps = [float(e) for e in eps]
    clock = _Clock()
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        output.mkdir(parents=True, exist_ok=True)
        work = Path(work_dir) if work_dir is not None else output / "work"
        _ignore_work_dir(output, work)
        sweep_dir = work / f"sweep-{MODEL}-s{seed}-e{epochs}-b{'-'.join(map(str, batch_sizes))}"
        base = build_config(overrides={"model": MODEL, "dataset": DATASET, "epochs": epochs,
                                       "seed": seed, **RECIPE}, resolve=False)

        from lbtkit.report import collect, write_report
        from lbtkit.sweep import load_sweep, plan_sweep, run_all

        clock.stage(f"1/4 batch-size sweep: {MODEL} on {DATASET}, batch sizes "
                    f"{', '.join(map(str, batch_sizes))}, {epochs} epoch"
                    f"{'s' if epochs != 1 else ''} each, in {sweep_dir}")
        plan_sweep(base, {"batch_size": batch_sizes}, sweep_dir)
        statuses = run_all(sweep_dir, progress=progress)
        if STATUS_INTERRUPTED in statuses.values() or len(statuses) < len(batch_sizes):
            clock.stage("interrupted: rerun the same command to resume")
            return {"status": STATUS_INTERRUPTED, "sweep_dir": sweep_dir}

        clock.stage(f"2/4 sweep report into {output}")
        report_paths = write_report(sweep_dir, output)
        sweep = load_sweep(sweep_dir)
        rows = collect(sweep_dir)
        for row, entry in zip(rows, sweep["runs"], strict=True):
            results = RunDir(entry["run_dir"]).read_results() or {}
            row["global_step"] = results.get("global_step")
            row["run_path"] = Path(entry["run_dir"])

        ends = {"sb": rows[0], "lb": rows[-1]}  # rows are in plan order: batch size ascending
        keskar: dict[str, Any] | None = None
        not_done = [r for r in ends.values() if r["status"] != STATUS_COMPLETED]
        if not_done:
            clock.stage(f"3/4 skipped: the batch-{not_done[0]['batch_size']} run is "
                        f"{not_done[0]['status']}, so there is no solution to measure")
        else:
            keskar = _keskar(ends, output / "keskar", clock=clock, alphas=alphas, eps=eps,
                             iters=sharpness_iters, hessian_iters=hessian_iters,
                             samples=sharpness_samples, seed=seed)

        clock.stage("4/4 index.md")
        n_train, n_val = _split_sizes()
        numbers = summarise(rows, keskar, n_val=n_val, n_train=n_train)
        settings = {"batch_sizes": batch_sizes, "epochs": epochs, "seed": seed, "alphas": alphas,
                    "eps": eps, "sharpness_iters": sharpness_iters,
                    "hessian_iters": hessian_iters, "sharpness_samples": sharpness_samples,
                    "threads": threads, "sweep_dir": sweep_dir}
        index = output / "index.md"
        atomic_write_text(index, render_index(output, rows, keskar, numbers, settings,
                                              report_paths))
        clock.stage(f"done: open {index}")
        return {"status": STATUS_COMPLETED, "index": index, "sweep_dir": sweep_dir,
                "report": report_paths, "keskar": keskar, "numbers": numbers,
                "seconds": clock.elapsed()}
    finally:
        torch.set_num_threads(previous_threads)


# --- the Keskar step ------------------------------------------------------------------------


def _keskar(ends: dict[str, dict[str, Any]], out: Path, *, clock: _Clock, alphas: list[float],
            eps: list[float], iters: int, hessian_iters: int, samples: int, seed: int
            ) -> dict[str, Any]:
    """Interpolate between the two end runs, measure both, evaluate both on the training set."""
    from lbtkit.landscape import run_interpolation, run_sharpness

    sb, lb = ends["sb"], ends["lb"]
    clock.stage(f"3/4 Keskar study, SB = batch {sb['batch_size']} vs LB = batch "
                f"{lb['batch_size']}: interpolating over {len(alphas)} alphas "
                f"(BatchNorm: {BN})")
    paths = run_interpolation(sb["run_path"], lb["run_path"], out, alphas=alphas, bn=BN,
                              eval_batch_size=EVAL_BATCH)
    interpolation = _read_interpolation(paths["csv"])
    sharpness, train = {}, {}
    for label, row in ends.items():
        clock.stage(f"3/4 sharpness of the {label.upper()} solution (batch {row['batch_size']}):"
                    f" full space, eps {', '.join(f'{e:g}' for e in eps)}, {iters} L-BFGS-B "
                    f"iterations; top Hessian eigenvalue ({hessian_iters} Lanczos steps)")
        target = out / f"sharpness-{label}.json"
        sharpness[label] = run_sharpness(
            row["run_path"], eps=eps, subspace="full", iters=iters, hessian=True, top_k=1,
            hessian_iters=hessian_iters, trace=False, samples=samples, batch_size=EVAL_BATCH,
            seed=seed, output=target,
        )
        train[label] = _train_fit(row["run_path"])
    return {"paths": {**paths, "sharpness_sb": out / "sharpness-sb.json",
                      "sharpness_lb": out / "sharpness-lb.json"},
            "interpolation": interpolation, "sharpness": sharpness, "train": train,
            "ends": ends}


def _train_fit(run_path: Path) -> dict[str, float]:
    """Loss and accuracy of the final weights on the un-augmented training set (BatchNorm on
    running statistics, as the validation numbers in results.json)."""
    from lbtkit.data import load_dataset
    from lbtkit.evaluate import InputSpec, evaluate_sums, mean_loss_and_accuracy
    from lbtkit.rundir import load_run

    model, config = load_run(run_path)
    data = load_dataset(config.dataset, config.data_dir, image_size=config.image_size,
                        num_classes=config.num_classes)
    inputs = InputSpec(data.info, config.image_size, config.channels_last)
    totals = evaluate_sums(model, data.train_images, data.train_labels, inputs,
                           batch_size=EVAL_BATCH)
    loss, accuracy = mean_loss_and_accuracy(totals)
    return {"loss": loss, "accuracy": accuracy}


def _read_interpolation(path: Path) -> list[dict[str, Any]]:
    import csv

    with path.open() as handle:
        return [{"alpha": float(r["alpha"]), "split": r["split"], "loss": float(r["loss"]),
                 "accuracy": float(r["accuracy"])} for r in csv.DictReader(handle)]


def _split_sizes() -> tuple[int, int]:
    from lbtkit.data import load_dataset

    data = load_dataset(DATASET, "data")
    return data.train_labels.shape[0], data.val_labels.shape[0]


# --- the numbers and the sentences -----------------------------------------------------------


def gap_threshold(p1: float, p2: float, n: int) -> float:
    """GAP_STANDARD_ERRORS standard errors of p1 - p2, two accuracies on n images each
    (binomial), as a fraction. Never below one image (1/n): a difference of 0 is no gap."""
    se = math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n)
    return max(GAP_STANDARD_ERRORS * se, 1.0 / n)


def summarise(rows: list[dict[str, Any]], keskar: dict[str, Any] | None, *, n_val: int,
              n_train: int) -> dict[str, Any]:
    """The numbers behind index.md's sentences, and the sentences themselves."""
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
    a, b = sb["best_val_acc"], lb["best_val_acc"]
    diff = round(100 * a, 2) - round(100 * b, 2)  # the difference of the shown percentages
    threshold = 100 * gap_threshold(a, b, n_val)
    numbers.update(sb_best=a, lb_best=b, diff_points=diff, gap_threshold_points=threshold)
    lead = (f"At batch {sb['batch_size']} the best validation accuracy is {100 * a:.2f}%, at "
            f"batch {lb['batch_size']} {100 * b:.2f}%: ")
    if abs(diff) <= threshold:
        numbers["verdict"] = "no gap"
        sentences.append(
            lead + f"a difference of {diff:.2f} points, within two standard errors "
            f"({threshold:.2f} points on {n_val} validation images), so there is no "
            "generalisation gap at this scale.")
    elif diff > 0:
        numbers["verdict"] = "large batch worse"
        sentences.append(
            lead + f"the largest batch is {diff:.2f} points worse, more than two standard "
            f"errors ({threshold:.2f} points on {n_val} validation images).")
    else:
        numbers["verdict"] = "large batch better"
        sentences.append(
            lead + f"the largest batch is {-diff:.2f} points better, more than two standard "
            f"errors ({threshold:.2f} points on {n_val} validation images): no large-batch "
            "gap here.")
    if keskar is None:
        return numbers

    fit = keskar["train"]
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
        sentences.append(
            steps + f", {fit_diff:.2f} points apart (two standard errors: "
            f"{fit_threshold:.2f}), so LB also fits its training data worse: part of its "
            "validation difference is under-training, not only the generalisation gap of "
            "Keskar et al., who compare solutions of similar training accuracy.")
    else:
        numbers["fit"] = "similar fit"
        sentences.append(
            steps + f", within two standard errors ({fit_threshold:.2f} points) of each other "
            "or better for LB, so any validation difference is a generalisation gap in the "
            "sense of Keskar et al.")

    phis = {label: keskar["sharpness"][label]["sharpness"][0] for label in LABELS}
    first = phis["sb"]
    numbers.update(phi_sb=phis["sb"]["phi"], phi_lb=phis["lb"]["phi"])
    tops = [keskar["sharpness"][label]["hessian"]["top_eigenvalues"][0] for label in LABELS]
    numbers.update(hessian_sb=tops[0], hessian_lb=tops[1])
    sharp = (compare_sharpness(phis["sb"]["phi"], phis["lb"]["phi"],
                               what=f"full space, ε={first['eps']:g}") + " "
             + compare_values(tops[0], tops[1], noun="The top Hessian eigenvalue",
                              relative=SAME_SHARPNESS))
    if numbers["fit"] == "large batch under-fitted":
        sharp += " LB's end point is not yet a minimum (see its training loss), so its " \
                 "numbers describe the slope there as much as the curvature."
    sentences.append(sharp)
    line = interpolation_sentence(keskar["interpolation"])
    recalibrated = recalibrated_sentence(keskar["interpolation"], n_val=n_val)
    if recalibrated:
        line = f"{line} {recalibrated}" if line else recalibrated
    if line:
        sentences.append(line)
    return numbers


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


# --- index.md --------------------------------------------------------------------------------


def render_index(output: Path, rows: list[dict[str, Any]], keskar: dict[str, Any] | None,
                 numbers: dict[str, Any], settings: dict[str, Any],
                 report_paths: dict[str, Path]) -> str:
    """index.md: plain words first, then the tables and figures, then how to rerun."""
    def link(path: Path) -> str:
        return Path(os.path.relpath(path, output)).as_posix()

    batch_text = ", ".join(map(str, settings["batch_sizes"]))
    threads = settings["threads"]
    lines = [
        "# lbtkit demo: does the batch size change what a network learns?",
        "",
        f"Keskar et al.'s F1 network (an MLP, 5 × 512 units with BatchNorm, "
        f"{_parameter_count():,} parameters) trained on real handwritten digits "
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
        "law. The thresholds are stated, not tuned: a validation difference counts when it "
        f"exceeds {GAP_STANDARD_ERRORS:g} standard errors of the difference of two accuracies "
        "(binomial, on the images evaluated); two sharpness values or eigenvalues count as "
        f"equal within {SAME_SHARPNESS:.0%} of the larger; a loss rises when it exceeds the "
        f"reference by more than {LOSS_RISE:.0%}.",
        "",
        "## 1. The batch-size sweep",
        "",
        f"SGD with momentum {RECIPE['momentum']}, "
        f"weight decay {format_lr(RECIPE['weight_decay'])}, "
        f"learning rate {format_lr(RECIPE['base_lr'])} × batch/{RECIPE['base_batch_size']} "
        "(linear scaling, the rule of Goyal et al. 2017), cosine decay to zero, no warm-up: the "
        "`smoke` preset's recipe, chosen before this demo. Every batch size trains for the same "
        "number of epochs, so larger batches take fewer, larger steps.",
        "",
        *_sweep_table(rows),
        "",
        "Best: the highest validation accuracy over the epochs; final: the last epoch's. "
        "Train loss: the last epoch's running average over its (augmented) batches. "
        f"Full report with wall times and throughput: [{link(report_paths['report'])}]"
        f"({link(report_paths['report'])}); every number: "
        f"[{link(report_paths['csv'])}]({link(report_paths['csv'])}).",
        "",
        f"![best validation accuracy vs batch size]({link(report_paths['accuracy_vs_batch'])})",
        "",
        f"![learning curves]({link(report_paths['learning_curves'])})",
        "",
    ]
    sb, lb = rows[0], rows[-1]
    lines += [f"## 2. Sharp minima: batch {sb['batch_size']} (SB) vs batch {lb['batch_size']} "
              "(LB)", ""]
    if keskar is None:
        bad = sb if sb["status"] != STATUS_COMPLETED else lb
        lines += [f"Not run: the batch-{bad['batch_size']} run is {bad['status']}, so there is "
                  "no trained solution to measure.", ""]
    else:
        paths = keskar["paths"]
        lines += [
            "Both runs come from the sweep above and start from the same initial weights (the "
            "model is built right after seeding torch with the run's seed).",
            "",
            f"![parametric plot]({link(paths['png'])})",
            "",
            "Cross-entropy (log scale, blue) and accuracy (red) along "
            "θ(α) = α·θ_LB + (1−α)·θ_SB; solid: training set (no augmentation), dashed: "
            f"validation set. BatchNorm statistics re-estimated on the training set at every α "
            f"(`--bn {BN}`). Numbers: [{link(paths['csv'])}]({link(paths['csv'])}).",
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
    quoted = shlex.quote(str(output))
    sweep_rel = link(settings["sweep_dir"])
    flags = " ".join(
        f"--{key.replace('_', '-')} {value:g}" if isinstance(value, float)
        else f"--{key.replace('_', '-')} {value}"
        for key, value in {"model": MODEL, "dataset": DATASET, "epochs": settings["epochs"],
                           "seed": settings["seed"], **RECIPE}.items()
    )
    lines += [
        "## Run it again",
        "",
        f"    lbtkit demo --output {quoted}{' --quick' if _is_quick(settings) else ''}",
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
        f"    lbtkit sweep plan --output SWEEP --batch-sizes {batch_text.replace(', ', ',')} "
        f"{flags}",
        "    lbtkit sweep run SWEEP",
        "    lbtkit report SWEEP --output OUT",
        f"    lbtkit interpolate SWEEP/runs/b{sb['batch_size']}-s{settings['seed']} "
        f"SWEEP/runs/b{lb['batch_size']}-s{settings['seed']} --output OUT/keskar "
        f"--alphas={_alphas_text(settings['alphas'])} --bn {BN}",
        f"    lbtkit sharpness SWEEP/runs/b{sb['batch_size']}-s{settings['seed']} "
        f"--eps {','.join(f'{e:g}' for e in settings['eps'])} --iters "
        f"{settings['sharpness_iters']} --hessian --hessian-iters {settings['hessian_iters']} "
        f"--samples {settings['sharpness_samples']} --output OUT/keskar/sharpness-sb.json",
        "    # ... and the same for the LB run into OUT/keskar/sharpness-lb.json",
        "",
        f"(The demo's sweep directory is `{sweep_rel}`.)",
        "",
    ]
    return "\n".join(lines)


def _sweep_table(rows: list[dict[str, Any]]) -> list[str]:
    header = ["batch size", "initial lr (scaled)", "optimizer steps", "best val top-1",
              "final val top-1", "final train loss", "status"]
    body = [[str(r["batch_size"]), format_lr(r["lr"]), _text(r.get("global_step"), str),
             _text(r["best_val_acc"], lambda v: f"{100 * v:.2f}%"),
             _text(r["final_val_acc"], lambda v: f"{100 * v:.2f}%"),
             _text(r["final_train_loss"], lambda v: f"{v:.4f}"), r["status"]] for r in rows]
    return _table(header, body)


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
    return _table(header, body)


def _is_quick(settings: dict[str, Any]) -> bool:
    return all(list(settings[key]) == list(value) if isinstance(value, tuple)
               else settings[key] == value for key, value in QUICK.items())


def _alphas_text(alphas: Sequence[float]) -> str:
    """START:STOP:COUNT when the grid is evenly spaced (as lbtkit interpolate reads it)."""
    import numpy as np

    if len(alphas) > 2 and np.allclose(np.linspace(alphas[0], alphas[-1], len(alphas)), alphas):
        return f"{alphas[0]:g}:{alphas[-1]:g}:{len(alphas)}"
    return ",".join(f"{a:g}" for a in alphas)


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cells) + " |" for cells in body)]


def _text(value: Any, fmt) -> str:
    return DASH if value is None else fmt(value)


def _parameter_count() -> int:
    from lbtkit.data import dataset_info
    from lbtkit.models import build_model

    info = dataset_info(DATASET)
    with torch.random.fork_rng():  # building draws initial weights: leave the global RNG alone
        model = build_model(MODEL, num_classes=info.num_classes, in_channels=info.channels,
                            image_size=info.image_size)
    return sum(p.numel() for p in model.parameters())


def _ignore_work_dir(output: Path, work: Path) -> None:
    """Keep the bulky run directories out of git when they live under ``output``."""
    try:
        relative = work.resolve().relative_to(output.resolve())
    except ValueError:
        return
    entry = f"/{relative.as_posix()}/\n"
    ignore = output / ".gitignore"
    if not ignore.exists() or entry not in ignore.read_text():
        atomic_write_text(ignore, entry)


class _Clock:
    """Stage lines with the time since the demo started."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def stage(self, text: str) -> None:
        minutes, seconds = divmod(int(self.elapsed()), 60)
        print(f"demo [{minutes}:{seconds:02d}] {text}", flush=True)
