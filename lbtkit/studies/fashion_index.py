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

from lbtkit.narrative import (
    FALL_POINTS,
    PAPER_F1,
    SEED_STANDARD_ERRORS,
    fashion_thresholds_sentence,
    fit_sentence,
    fixed_budget_sentence,
    markdown_table,
    noise_resolved,
    noise_scale_sentence,
    paper_sentence,
    pm,
    seed_comparison_sentence,
    stability_sentence,
)
from lbtkit.report import DASH, format_duration, format_lr
from lbtkit.specs import FashionStudySpec
from lbtkit.studies.summary import falling_batch

LABELS = ("sb", "lb")


def index_numbers(spec: FashionStudySpec, keskar: dict[str, Any], sweep: dict[str, Any]
                  ) -> dict[str, Any]:
    """Everything index.md states, as plain JSON values (study.json keeps them)."""
    summary = keskar["summary"]
    fall = falling_batch(sweep["rows"], drop_points=FALL_POINTS)
    fall_final = falling_batch(sweep["rows"], drop_points=FALL_POINTS, key="final_val_acc")
    noise = sweep["noise"]
    sentences = []
    if summary is not None:
        sentences += [
            fit_sentence(summary, keskar["records"]),
            seed_comparison_sentence(summary, "test_acc", noun="Test accuracy", scale=100,
                                     unit="%", diff_unit=" points"),
            seed_comparison_sentence(summary, "test_loss", noun="Test loss"),
            *(seed_comparison_sentence(summary, key, noun=_measure_noun(key))
              for key in _phi_keys(summary)),
            seed_comparison_sentence(summary, "hessian_top", noun="The top Hessian eigenvalue"),
            paper_sentence(summary),
        ]
    sentences += [fixed_budget_sentence(sweep["rows"], fall, fall_final,
                                        epochs=spec.sweep_epochs),
                  stability_sentence(sweep["rows"]),
                  noise_scale_sentence(noise, noise_batch=spec.sweep_batch_sizes[0],
                                       noise_init=sweep.get("noise_init"))]
    return {
        "seeds_measured": sorted({r["seed"] for r in keskar["records"]}),
        "left_out": keskar["left_out"],
        "summary": summary,
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
    _, space, eps = key.split(" ")
    where = "full space" if space == "full" else f"random {space.split(':')[1]}-dim subspace"
    return f"Sharpness φ ({where}, ε={eps.split('=')[1]})"


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
    lines += [*_keskar_table(summary), "",
              "Ours: mean ± std over the seeds (n − 1 divisor). Train accuracy and loss: the "
              "last epoch's running average over its batches (BatchNorm in training mode), "
              "what the stopping rule reads; \"eval\": the final weights evaluated on all "
              "60,000 training images in evaluation mode, BatchNorm re-estimated as for the "
              "parametric plot below (its α = 0 and α = 1 points; the paper's train accuracy "
              "is of this kind); test: the 10,000 test images after the last "
              "epoch. φ is Keskar's sharpness (%): the largest relative rise of the training "
              "loss in a box of size ε around the solution, sought by L-BFGS-B for "
              f"{spec.sharpness.iters} iterations, with f the mean cross-entropy on a fixed "
              f"seeded subset of {spec.sharpness.samples:,} training images (not all 60,000: "
              "the time budget), BatchNorm on running statistics; the top Hessian eigenvalue "
              f"of the same f from {spec.sharpness.hessian_iters} Lanczos steps. The paper "
              "measured φ on MNIST (Table 2; its Hessian is not reported for F1).",
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
        f"BatchNorm statistics re-estimated at every α on the first "
        f"{spec.interpolation.bn_samples or 60_000:,} training images. Numbers: "
        f"[{link(band['band_csv'])}]({link(band['band_csv'])}); each seed's own study "
        "(report.md, interpolation, sharpness.json) is under `work/keskar-sSEED/`.",
        "",
    ]
    return lines


def _keskar_table(summary: dict[str, Any]) -> list[str]:
    phis = [key for key in summary["sb"] if key.startswith("phi ")]
    header = ["", "train acc (%)", "train acc, eval (%)", "test acc (%)", "train loss",
              "train loss, eval", "test loss", *(_phi_header(key) for key in phis),
              "top Hessian eigenvalue"]
    body = []
    for label in LABELS:
        s = summary[label]
        body.append([f"{label.upper()} (ours, Fashion-MNIST)", pm(s["train_acc"], 100),
                     pm(s["train_acc_eval"], 100), pm(s["test_acc"], 100),
                     pm(s["train_loss"], digits=4), pm(s["train_loss_eval"], digits=4),
                     pm(s["test_loss"], digits=4), *(pm(s[key], digits=3) for key in phis),
                     pm(s["hessian_top"], digits=1)])
    for label in LABELS:
        paper = PAPER_F1[label]
        body.append([f"{label.upper()} (paper, MNIST)", DASH, _paper(paper, "train_acc"),
                     _paper(paper, "test_acc"), DASH, DASH, DASH,
                     *(_paper(paper, key) for key in phis), DASH])
    return markdown_table(header, body)


def _phi_header(key: str) -> str:
    _, space, eps = key.split(" ")
    where = "full" if space == "full" else f"random {space.split(':')[1]}-dim"
    return f"φ {where}, ε={eps.split('=')[1]}"


def _paper(paper: dict[str, tuple[float, float]], key: str) -> str:
    if key not in paper:
        return DASH
    mean, std = paper[key]
    return f"{mean:.2f} ± {std:.2f}"


def _runs_table(records: list[dict[str, Any]]) -> list[str]:
    header = ["seed", "side", "batch", "epochs (cap)", "stopped by", "train acc",
              "train acc, eval", "test acc", "train loss", "test loss", "training time"]
    body = [[str(r["seed"]), r["side"].upper(), str(r["batch_size"]),
             f"{r['epochs']} ({r['epochs_cap']})", r["stopped_by"],
             f"{100 * r['train_acc']:.2f}%",
             DASH if r["train_acc_eval"] is None else f"{100 * r['train_acc_eval']:.2f}%",
             f"{100 * r['test_acc']:.2f}%",
             f"{r['train_loss']:.4f}", f"{r['test_loss']:.4f}",
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
    if spec.stop_train_acc is not None:
        rules.append(f"the epoch's training accuracy reaches {spec.stop_train_acc:g}")
    if spec.stop_plateau_epochs is not None:
        rules.append(f"the training loss has not improved by more than "
                     f"{spec.stop_plateau_delta:g} (relative) for {spec.stop_plateau_epochs} "
                     "epochs")
    return " or ".join(rules)


def _seeds_flag(record: dict[str, Any]) -> str:
    """``--seeds N`` when the seeds are 0..N-1 but not the default's."""
    from lbtkit.studies.fashion import FULL, QUICK

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
