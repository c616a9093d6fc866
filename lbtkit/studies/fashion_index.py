"""The Fashion-MNIST study's index.md: numbers in, markdown out (no training, no files read).

``index_numbers`` gathers what the page shows (and study.json stores); ``render_index`` lays
it out: what was run on which machine in how long, the sentences (``lbtkit.narrative``, each
with its stated threshold), the Keskar table beside the paper's F1 row, how far each run
trained, the interpolation band, the sweep table with the falling batch and B_simple.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lbtkit.markdown import DASH, markdown_table
from lbtkit.narrative import (
    FALL_POINTS,
    PAPER_F1,
    SEED_STANDARD_ERRORS,
    fashion_thresholds_sentence,
    fit_sentence,
    fixed_budget_sentence,
    generalisation_sentence,
    noise_resolved,
    noise_scale_sentence,
    paired_sentence,
    paper_sentence,
    pm,
    stability_sentence,
)
from lbtkit.report import format_duration, format_lr
from lbtkit.specs import FashionStudySpec
from lbtkit.studies.fashion_presets import FULL, QUICK
from lbtkit.studies.paired import ALPHA, TEST
from lbtkit.studies.summary import falling_batch, split_measure_key

LABELS = ("sb", "lb")


def index_numbers(spec: FashionStudySpec, keskar: dict[str, Any], sweep: dict[str, Any]
                  ) -> dict[str, Any]:
    """Everything index.md states, as plain JSON values (study.json keeps them)."""
    summary, paired = keskar["summary"], keskar.get("paired")
    fall = falling_batch(sweep["rows"], drop_points=FALL_POINTS)
    fall_final = falling_batch(sweep["rows"], drop_points=FALL_POINTS, key="final_val_acc")
    noise = sweep["noise"]
    sentences = []
    if summary is not None:
        sentences += [
            fit_sentence(summary, keskar["records"]),
            paired_sentence(summary, paired, "test_acc", noun="Test accuracy", scale=100,
                            unit="%", diff_unit=" points"),
            paired_sentence(summary, paired, "test_loss", noun="Test loss"),
            generalisation_sentence(paired),
            *(paired_sentence(summary, paired, key, noun=_measure_noun(key))
              for key in _phi_keys(summary)),
            *(paired_sentence(summary, paired, key, noun=_measure_noun(key))
              for key in summary["sb"] if key.startswith("hessian_top")),
            _conventions_sentence(summary),
            paper_sentence(paired),
        ]
        sentences = [sentence for sentence in sentences if sentence]
    sentences += [fixed_budget_sentence(sweep["rows"], fall, fall_final,
                                        epochs=spec.sweep_epochs),
                  stability_sentence(sweep["rows"]),
                  noise_scale_sentence(noise, noise_batch=spec.sweep_batch_sizes[0],
                                       noise_init=sweep.get("noise_init"))]
    return {
        "seeds_measured": sorted({r["seed"] for r in keskar["records"]}),
        "left_out": keskar["left_out"],
        "summary": summary,
        "paired": paired,
        "alpha": ALPHA,
        "test": TEST,
        "falling_batch": _fall_numbers(fall, "best_val_acc"),
        "falling_batch_final": _fall_numbers(fall_final, "final_val_acc"),
        "test_acc_of_best": None if fall["best"] is None else {
            "batch_size": fall["best"]["batch_size"], "test_acc": fall["best"].get("test_acc")},
        "b_simple": None if noise is None else noise.get("b_simple"),
        "b_simple_std_error": None if noise is None else noise.get("b_simple_std_error"),
        "noise_scale": {where: _noise_numbers(n) for where, n in
                        (("initial", sweep.get("noise_init")), ("final", noise))
                        if n is not None},
        "sentences": sentences,
    }


def _noise_numbers(noise: dict[str, Any]) -> dict[str, Any]:
    keys = ("grad_sq", "grad_sq_std_error", "trace_sigma", "trace_sigma_std_error",
            "b_simple", "b_simple_std_error")
    return {**{key: noise.get(key) for key in keys}, "resolved": noise_resolved(noise)}


def _noise_table(noise: dict[str, dict[str, Any]]) -> list[str]:
    def value(n: dict[str, Any], key: str, fmt: str) -> str:
        if n[key] is None:
            return DASH
        error = n[f"{key}_std_error"]
        return format(n[key], fmt) + ("" if error is None else " ± " + format(error, fmt))

    header = ["weights of the run", r"\|G\|²", "tr(Σ)", "B_simple", f"resolved (> "
              f"{SEED_STANDARD_ERRORS:g} std errors)"]
    body = [[where, value(n, "grad_sq", ".3g"), value(n, "trace_sigma", ".3g"),
             value(n, "b_simple", ",.0f"), "yes" if n["resolved"] else "no"]
            for where, n in noise.items()]
    return markdown_table(header, body)


def _fall_numbers(fall: dict[str, Any], key: str) -> dict[str, Any]:
    """study.json's record of ``falling_batch`` on ``key`` (best or final validation)."""
    def batch(row: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if row is None else {"batch_size": row["batch_size"], key: row[key]}

    return {"best": batch(fall["best"]), "fall": batch(fall["fall"]), "before": fall["before"],
            "largest": fall["largest"], "drop_points": FALL_POINTS}


def _phi_keys(summary: dict[str, Any]) -> list[str]:
    return [key for key in summary["sb"] if key.startswith("phi ")]


def _measure_noun(key: str) -> str:
    if key.startswith("hessian_top"):
        return f"The top Hessian eigenvalue ({_bn_words(key.split('bn=')[1])})"
    if key.startswith("grad_norm"):
        return f"The full-batch gradient norm ({_bn_words(key.split('bn=')[1])})"
    space, eps, bn = split_measure_key(key)
    where = "full space" if space == "full" else f"random {space.split(':')[1]}-dim subspace"
    return f"Sharpness φ ({where}, ε={eps}, {_bn_words(bn)})"


def _bn_words(bn: str) -> str:
    return {"batch": "BatchNorm on batch statistics",
            "running": "BatchNorm on running statistics"}.get(bn, f"bn={bn}")


def _conventions_sentence(summary: dict[str, Any]) -> str | None:
    """How much the BatchNorm convention changes φ, and whether the LB/SB ratio survives."""
    pairs = []
    for key in _phi_keys(summary):
        space, eps, bn = split_measure_key(key)
        other = f"phi {space} eps={eps} bn=running"
        if bn == "batch" and other in summary["sb"]:
            pairs.append((key, other, space, eps))
    if not pairs:
        return None
    key, other, space, eps = pairs[0]
    means = {(side, k): summary[side][k]["mean"] for side in LABELS for k in (key, other)}
    if any(v is None or v <= 0 for v in means.values()):
        return None
    ratio = {k: means[("lb", k)] / means[("sb", k)] for k in (key, other)}
    return (f"The BatchNorm convention changes the size of φ ({space} space, "
            f"ε={eps}): with batch statistics φ is {means[('sb', key)]:.3g} (SB) and "
            f"{means[('lb', key)]:.3g} (LB), with running statistics {means[('sb', other)]:.3g} "
            f"and {means[('lb', other)]:.3g}; LB/SB is {ratio[key]:.3g} and {ratio[other]:.3g}. "
            "With batch statistics each layer's pre-activations are re-centred and re-scaled "
            "by the batch itself, so the part of a perturbation that shifts or scales them is "
            "normalised away and the loss rises less in the box; with running statistics the "
            "normalisation is frozen and the whole perturbation passes on. The paper's "
            "numbers were measured the first way (Keras BatchNormalization(mode=2)).")


# --- the page --------------------------------------------------------------------------------


def render_index(output: Path, record: dict[str, Any], keskar: dict[str, Any],
                 sweep: dict[str, Any]) -> str:
    """index.md. ``record``: study.json's content (spec, quick, machine, seconds, numbers);
    links are relative to ``output``."""
    def link(path: Path) -> str:
        return Path(os.path.relpath(path, output)).as_posix()

    spec = FashionStudySpec.from_dict(record["spec"])
    numbers = record["numbers"]
    return "\n".join([*_intro(spec, record), *_keskar_section(spec, keskar, numbers, link),
                      *_sweep_section(spec, sweep, numbers, link), *_rerun(output, record)])


def _intro(spec: FashionStudySpec, record: dict[str, Any]) -> list[str]:
    machine, seconds = record["machine"], record["seconds"]
    quick = ("**This is the `--quick` variant: a smoke test of the pipeline (1-2 epochs per "
             "run, tiny measurements). Its numbers say nothing about the science.**\n\n"
             if record["quick"] else "" if record["full"] else
             "**Not the settings of `make study`: a custom spec (study.json has it).**\n\n")
    return [
        "# Fashion-MNIST: Keskar's F1 protocol over seeds, and the batch-size study",
        "",
        quick + f"Keskar et al.'s F1 network (784 → 5 × [dense 512, BatchNorm, ReLU] → 10) "
        "trained on Fashion-MNIST (60,000 training and 10,000 test images) on a CPU. "
        f"Machine: {machine['text']}. Measured wall time: "
        f"**{format_duration(seconds['total'])}** in all (" + ", ".join(
            f"{name} {format_duration(value)}" for name, value in seconds.items()
            if name != "total") + "; summed over the invocations that computed them).",
        "",
        "## What the numbers say",
        "",
        *(f"- {s}" for s in record["numbers"]["sentences"]),
        "",
        fashion_thresholds_sentence(),
        "",
    ]


def _keskar_section(spec: FashionStudySpec, keskar: dict[str, Any], numbers: dict[str, Any],
                    link) -> list[str]:
    summary = numbers["summary"]
    seeds = numbers["seeds_measured"]
    lines = [
        f"## 1. Sharp minima: batch {spec.sb} (SB) vs batch {spec.lb} (LB), "
        f"{len(seeds)} seeds",
        "",
        f"Preset `keskar-f1-fashion`: Adam, lr 1e-3 on both sides, constant, no weight decay, "
        f"no augmentation. For each seed ({', '.join(map(str, spec.seeds))}) both sides start "
        "from the same initial weights (that seed's `init.safetensors`) and train until "
        f"{_rule(spec)}, checked at the end of every epoch; the cap is "
        f"{spec.epochs_cap} epochs.",
        "",
    ]
    if summary is None:
        return [*lines, "No seed completed both runs: nothing to summarise.", ""]
    sharp = spec.sharpness
    lines += [*_keskar_table(summary), "",
              "Ours: mean ± std over the seeds (n − 1 divisor). \"eval\": the final weights "
              "evaluated on all 60,000 training images in evaluation mode, BatchNorm on the "
              "running statistics the run kept (the number the stopping rule reads, and the "
              "kind of the paper's train accuracy); \"running\": the last epoch's average "
              "over its batches in training mode; test: the 10,000 test images (the runs' "
              "validation set is Fashion-MNIST's test set), evaluated as \"eval\".",
              "", "### SB vs LB, paired by seed", "",
              *_paired_table(summary, numbers["paired"], numbers["alpha"]), "",
              f"LB − SB: the mean over seeds of each seed's LB value minus its SB value (both "
              f"from that seed's initial weights), its 95% interval and the p-value of the "
              f"{numbers['test']}; \"differs\" only when p < {numbers['alpha']:g}. φ is "
              "Keskar's sharpness (%): the largest relative rise of the training loss in a "
              "box of size ε around the solution, sought by L-BFGS-B for "
              f"{sharp.iters} iterations, with f the mean cross-entropy on a fixed seeded "
              f"subset of {sharp.samples:,} training images (not all 60,000: the time budget) "
              f"in batches of at most {sharp.batch_size:,}. bn=batch: BatchNorm normalises "
              "with each batch's own statistics, as the authors' Keras "
              "BatchNormalization(mode=2) does at evaluation too (their parametric plot "
              "evaluates in batches of 5,000); bn=running: with the running statistics the "
              "run kept (PyTorch's eval mode). The top Hessian eigenvalue of the same f from "
              f"{sharp.hessian_iters} Lanczos steps; the gradient norm: of the mean "
              "cross-entropy over " + ("all 60,000 training images" if
                                       sharp.gradient_samples is None else
                                       f"{sharp.gradient_samples:,} seeded training images")
              + " at the solution (0 at a minimiser). The paper measured φ on MNIST "
              "(Table 2; its Hessian and gradient are not reported for F1).",
              "", "### How far each run trained", "",
              *_runs_table(keskar["records"]), "",
              f"Every number per run: [{link(keskar['paths']['runs'])}]"
              f"({link(keskar['paths']['runs'])}).", ""]
    if numbers["left_out"]:
        lines += ["Left out of the means: " + ", ".join(
            f"seed {x['seed']} ({(x['side'] or '?').upper()} run {x['status']})"
            for x in numbers["left_out"]) + ".", ""]
    band = keskar["paths"]
    lines += [
        "### The parametric plot",
        "",
        f"![interpolation between SB and LB, mean and band over seeds]({link(band['band_png'])})",
        "",
        "Cross-entropy (log scale, blue) and accuracy (red) along θ(α) = α·θ_LB + (1−α)·θ_SB "
        f"for α in {spec.interpolation.alphas[0]:g}..{spec.interpolation.alphas[-1]:g} "
        f"({len(spec.interpolation.alphas)} points): the mean over the seeds, the band ± one "
        "standard deviation; solid: the 60,000 training images, dashed: the test images. "
        f"Thin lines: each seed's training curve with {spec.interpolation.refine} more α "
        "of its own, each halving the neighbouring pair whose training loss differs most "
        "(log scale), so the cliff is resolved. "
        f"BatchNorm statistics re-estimated at every α on the first "
        f"{spec.interpolation.bn_samples or 60_000:,} training images. Numbers: "
        f"[{link(band['band_csv'])}]({link(band['band_csv'])}); each seed's own study "
        "(report.md, interpolation, sharpness.json) is under `work/keskar-sSEED/`.",
        "",
    ]
    return lines


def _keskar_table(summary: dict[str, Any]) -> list[str]:
    header = ["", "epochs", "train acc, eval (%)", "train acc, running (%)", "test acc (%)",
              "train loss, eval", "test loss"]
    body = []
    for label in LABELS:
        s = summary[label]
        body.append([f"{label.upper()} (ours, Fashion-MNIST)", pm(s["epochs"], digits=1),
                     pm(s["train_acc_eval"], 100), pm(s["train_acc"], 100),
                     pm(s["test_acc"], 100), pm(s["train_loss_eval"], digits=4),
                     pm(s["test_loss"], digits=4)])
    for label in LABELS:
        paper = PAPER_F1[label]
        body.append([f"{label.upper()} (paper, MNIST)", DASH, _paper(paper, "train_acc"), DASH,
                     _paper(paper, "test_acc"), DASH, DASH])
    return markdown_table(header, body)


# The paired table's rows: (column, how it is shown: scale, digits, unit).
def _paired_rows(summary: dict[str, Any]) -> list[tuple[str, str, float, int]]:
    keys = list(summary["sb"])
    rows = [("train_acc_eval", "train acc, eval (%)", 100.0, 2),
            ("test_acc", "test acc (%)", 100.0, 2),
            ("train_loss_eval", "train loss, eval", 1.0, 4), ("test_loss", "test loss", 1.0, 4)]
    rows += [(k, _phi_header(k), 1.0, 3) for k in keys if k.startswith("phi ")]
    rows += [(k, f"top Hessian eigenvalue, {k.split(' ')[1]}", 1.0, 1)
             for k in keys if k.startswith("hessian_top")]
    rows += [(k, f"gradient norm, {k.split(' ')[1]}", 1.0, 3)
             for k in keys if k.startswith("grad_norm")]
    return rows


def _paired_table(summary: dict[str, Any], paired: dict[str, Any], alpha: float) -> list[str]:
    header = ["measure", "SB", "LB", "LB − SB", "95% interval", "p", f"differs (p < {alpha:g})",
              "paper SB (MNIST)", "paper LB (MNIST)"]
    body = []
    for key, name, scale, digits in _paired_rows(summary):
        d = paired[key]
        if d["mean"] is None:
            continue
        interval = DASH if d["low"] is None else \
            f"{scale * d['low']:.{digits}f} to {scale * d['high']:.{digits}f}"
        body.append([name, pm(summary["sb"][key], scale, digits),
                     pm(summary["lb"][key], scale, digits), f"{scale * d['mean']:+.{digits}f}",
                     interval, DASH if d["p"] is None else f"{d['p']:.2g}",
                     "yes" if d["differs"] else "no",
                     _paper(PAPER_F1["sb"], key), _paper(PAPER_F1["lb"], key)])
    return markdown_table(header, body)


def _phi_header(key: str) -> str:
    space, eps, bn = split_measure_key(key)
    where = "full" if space == "full" else f"random {space.split(':')[1]}-dim"
    return f"φ {where}, ε={eps}, bn={bn}"


def _paper(paper: dict[str, tuple[float, float]], key: str) -> str:
    if key not in paper:
        return DASH
    mean, std = paper[key]
    return f"{mean:.2f} ± {std:.2f}"


def _runs_table(records: list[dict[str, Any]]) -> list[str]:
    grads = [k for k in records[0] if k.startswith("grad_norm")]
    header = ["seed", "side", "batch", "epochs (cap)", "stopped by", "train acc",
              "train acc, eval", "test acc", "train loss", "test loss",
              *(f"gradient norm, {k.split(' ')[1]}" for k in grads), "training time"]
    body = [[str(r["seed"]), r["side"].upper(), str(r["batch_size"]),
             f"{r['epochs']} ({r['epochs_cap']})", r["stopped_by"],
             f"{100 * r['train_acc']:.2f}%",
             DASH if r["train_acc_eval"] is None else f"{100 * r['train_acc_eval']:.2f}%",
             f"{100 * r['test_acc']:.2f}%",
             f"{r['train_loss']:.4f}", f"{r['test_loss']:.4f}",
             *(DASH if r[k] is None else f"{r[k]:.3g}" for k in grads),
             DASH if r["train_seconds"] is None else format_duration(r["train_seconds"])]
            for r in records]
    return markdown_table(header, body)


def _sweep_section(spec: FashionStudySpec, sweep: dict[str, Any], numbers: dict[str, Any],
                   link) -> list[str]:
    report = sweep["report"]
    header = ["batch size", "lr (scaled)", "optimizer steps", "best val acc", "final val acc",
              "test acc", "status", ""]

    def percent(value: float | None) -> str:
        return DASH if value is None else f"{100 * value:.2f}%"

    body = [[str(row["batch_size"]), format_lr(row["lr"]),
             DASH if row.get("steps") is None else f"{row['steps']:,}",
             percent(row["best_val_acc"]), percent(row["final_val_acc"]),
             percent(row.get("test_acc")),
             row["status"] + (" (unstable)" if row.get("unstable")
                              and row["status"] != "diverged" else ""),
             _fall_marks(row["batch_size"], numbers)]
            for row in sweep["rows"]]
    warmup = (f"after a {spec.sweep_warmup_epochs:g}-epoch linear warm-up"
              if spec.sweep_warmup_epochs else "without warm-up")
    epochs = f"{spec.sweep_epochs} epoch{'s' if spec.sweep_epochs != 1 else ''}"
    return [
        "## 2. The batch-size sweep at a fixed epoch budget",
        "",
        f"Preset `fashion-batch-sweep`: SGD with momentum 0.9, lr = 0.1 × batch/256 (linear "
        f"scaling) {warmup}, cosine decay, "
        f"weight decay 1e-4, a fixed budget of {epochs} at every batch size, so larger batches "
        f"take fewer optimizer steps; one seed ({spec.sweep_seed}), so a difference of a few "
        "tenths of a point between neighbouring batch sizes is within seed-to-seed noise. "
        + _validation_words(sweep["rows"]),
        "",
        *markdown_table(header, body),
        "",
        f"Marked: the best batch size on each measure, and the first batch size above it whose "
        f"accuracy on that measure is more than {FALL_POINTS:g} point below its best. Under a "
        "fixed epoch budget that fall mixes too few optimizer steps with the batch size itself, "
        "so it does not locate the critical batch; the critical-batch study "
        "(`lbtkit study critical-batch`, docs/critical-batch/index.md) measures steps to a "
        "target with the learning rate tuned per batch size. Unstable: a training loss above "
        "chance (ln 10) at some epoch.",
        "",
        "The gradient noise scale B_simple = tr(Σ)/|G|² (McCandlish et al. 2018) of the "
        f"batch-{spec.sweep_batch_sizes[0]} run, at its initial weights (its seed's draw) "
        f"and at its final ones, each from {spec.noise_scale.draws} batches of "
        f"{spec.noise_scale.batch_sizes[0]} and of {spec.noise_scale.batch_sizes[1]} training "
        "images (finite-population estimator; `lbtkit noise-scale`); the noise scale grows "
        "as the loss falls, so the two bracket the run:",
        "",
        *_noise_table(numbers["noise_scale"]),
        "",
        f"![best and final validation and test accuracy vs batch size]"
        f"({link(report['accuracy_vs_batch'])})",
        "",
        f"![learning curves]({link(report['learning_curves'])})",
        "",
        f"Full sweep report (wall times, images/s): [{link(report['report'])}]"
        f"({link(report['report'])}); every number: [{link(report['csv'])}]"
        f"({link(report['csv'])}).",
        "",
    ]


def _fall_marks(batch: int, numbers: dict[str, Any]) -> str:
    marks = []
    for key, measure in (("falling_batch", "best val"), ("falling_batch_final", "final val")):
        fall = numbers[key]
        if fall["best"] and fall["best"]["batch_size"] == batch:
            marks.append(f"best ({measure})")
        if fall["fall"] and fall["fall"]["batch_size"] == batch:
            marks.append(f"fallen ({measure})")
    return ", ".join(marks)


def _validation_words(rows: list[dict[str, Any]]) -> str:
    held = {row.get("val_split") or 0 for row in rows}
    if 0 in held:
        return ("Validation here is the test split (these runs held out no validation "
                "images), so best accuracy is selected on the test set.")
    size = f"{held.pop():,} images" if len(held) == 1 else "images"
    return (f"Validation: {size} held out of the 60,000 training images (a fixed seeded draw, "
            "not trained on); best is the highest validation accuracy over the epochs, final "
            "the last. Test: the 10,000 test images, evaluated once at the end of each run, "
            "never selected on.")


def _rule(spec: FashionStudySpec) -> str:
    rules = []
    if spec.stop_train_acc is not None and spec.stop_train_acc_mode == "eval":
        rules.append(f"the whole training set, evaluated in evaluation mode at the epoch's "
                     f"end (BatchNorm on running statistics), is right for at least "
                     f"{100 * spec.stop_train_acc:g}% of its images")
    elif spec.stop_train_acc is not None:
        rules.append(f"the epoch's running training accuracy reaches {spec.stop_train_acc:g}")
    if spec.stop_plateau_epochs is not None:
        rules.append(f"the training loss has not improved by more than "
                     f"{spec.stop_plateau_delta:g} (relative) for {spec.stop_plateau_epochs} "
                     "epochs")
    return " or ".join(rules)


def _seeds_flag(record: dict[str, Any]) -> str:
    """``--seeds N`` when the seeds are 0..N-1 but not the default's."""
    seeds = tuple(record["spec"]["seeds"])
    default = (QUICK if record["quick"] else FULL).seeds
    return "" if seeds == default else f" --seeds {len(seeds)}"


def _rerun(output: Path, record: dict[str, Any]) -> list[str]:
    return [
        "## Run it again",
        "",
        f"    lbtkit study fashion --output {output}{' --quick' if record['quick'] else ''}"
        + _seeds_flag(record),
        "",
        "(`make study` runs `lbtkit study fashion --output docs/fashion`.) Re-running "
        "resumes: completed runs under `work/` are not retrained and analyses newer than "
        "their runs, with the same settings, are kept; delete `work/` to start over. "
        "Everything shown here, with the spec and the machine: `study.json`.",
        "",
    ]
