"""The demo's index.md: its verdicts as data (``lbtkit.studies.verdicts``), its words in the
templates ``demo.md.j2`` and ``sb_lb_sentences.md.j2``. Nothing here trains, reads files or
draws.

``keskar`` is the demo's Keskar step: {"interpolation": rows, "sharpness": {"sb", "lb"},
"train": {"sb", "lb"}, "ends", "paths"}; rows are the sweep report's with ``global_step``.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lbtkit.markdown import render, sentence
from lbtkit.studies import verdicts
from lbtkit.studies.common import LABELS, relative_link

SENTENCES = "sb_lb_sentences.md.j2"


def summarise(rows: list[dict[str, Any]], keskar: dict[str, Any] | None, *, n_val: int,
              n_train: int) -> dict[str, Any]:
    """The numbers behind index.md's sentences, their verdicts (under "verdicts") and the
    sentences themselves (under "sentences"): the sweep's peak, the SB/LB validation gap, then
    with a Keskar step the training fit, the sharpness and the interpolation."""
    sb, lb = rows[0], rows[-1]
    numbers: dict[str, Any] = {"sb_batch": sb["batch_size"], "lb_batch": lb["batch_size"],
                               "n_val": n_val, "n_train": n_train, "sentences": [],
                               "verdicts": {}}
    found, sentences = numbers["verdicts"], numbers["sentences"]
    found["peak"] = verdicts.peak_verdict(rows, n_val=n_val)
    if found["peak"]:
        sentences.append(sentence(SENTENCES, "peak", found["peak"]))
    if sb["best_val_acc"] is None or lb["best_val_acc"] is None:
        missing = sb if sb["best_val_acc"] is None else lb
        sentences.append(sentence(SENTENCES, "no_comparison", missing))
        return numbers
    gap = found["gap"] = verdicts.gap_verdict(sb, lb, n_val)
    numbers.update(sb_best=gap["sb_best"], lb_best=gap["lb_best"], diff_points=gap["diff_points"],
                   gap_threshold_points=gap["threshold_points"], verdict=gap["verdict"])
    sentences.append(sentence(SENTENCES, "gap", gap))
    if keskar is None:
        return numbers
    fit = found["fit"] = verdicts.fit_verdict(sb, lb, keskar["train"], n_train)
    numbers.update(train_acc_sb=fit["fit"]["sb"]["accuracy"],
                   train_acc_lb=fit["fit"]["lb"]["accuracy"], train_diff_points=fit["diff_points"],
                   train_threshold_points=fit["threshold_points"], fit=fit["verdict"])
    sentences.append(sentence(SENTENCES, "fit", fit))
    sharp = found["sharpness"] = verdicts.sharpness_verdict(keskar["sharpness"], fit["verdict"])
    numbers.update(phi_sb=sharp["phi"]["sb"], phi_lb=sharp["phi"]["lb"],
                   hessian_sb=sharp["hessian"]["sb"], hessian_lb=sharp["hessian"]["lb"])
    sentences.append(sentence(SENTENCES, "sharpness_and_hessian", sharp))
    line = " ".join(text for text in (interpolation_sentence(keskar["interpolation"]),
                                      recalibrated_sentence(keskar["interpolation"], n_val=n_val))
                    if text)
    if line:
        sentences.append(line)
    return numbers


def peak_sentence(rows: list[dict[str, Any]], *, n_val: int) -> str | None:
    """Where validation accuracy peaks over the sweep (``verdicts.peak_verdict``)."""
    verdict = verdicts.peak_verdict(rows, n_val=n_val)
    return None if verdict is None else sentence(SENTENCES, "peak", verdict)


def interpolation_sentence(rows: list[dict[str, Any]]) -> str | None:
    """The barrier between the solutions and the rise beyond each
    (``verdicts.interpolation_verdict``)."""
    verdict = verdicts.interpolation_verdict(rows)
    return None if verdict is None else sentence(SENTENCES, "interpolation", verdict)


def recalibrated_sentence(rows: list[dict[str, Any]], *, n_val: int) -> str | None:
    """The SB/LB validation comparison with BatchNorm re-estimated
    (``verdicts.recalibrated_verdict``)."""
    verdict = verdicts.recalibrated_verdict(rows, n_val=n_val)
    return None if verdict is None else sentence(SENTENCES, "recalibrated", verdict)


def render_index(output: Path, rows: list[dict[str, Any]], keskar: dict[str, Any] | None,
                 numbers: dict[str, Any], settings: dict[str, Any],
                 report_paths: dict[str, Path]) -> str:
    """index.md from ``demo.md.j2``.

    ``output``: the directory index.md is written to (links are relative to it); ``numbers``:
    ``summarise``'s; ``settings``: the demo's settings (batch_sizes, epochs, seed, threads,
    alphas, eps, sharpness_iters, hessian_iters, sharpness_samples, sweep_dir, model, dataset,
    recipe, bn, parameters, quick); ``report_paths``: the sweep report's files.
    """
    files = {**report_paths, "work": settings["sweep_dir"].parent,
             "sweep_dir": settings["sweep_dir"]}
    if keskar is not None:
        paths = keskar["paths"]
        files.update(png=paths["png"], interpolation_csv=paths["csv"],
                     sharpness_sb=paths["sharpness_sb"], sharpness_lb=paths["sharpness_lb"])
    return render("demo.md.j2", rows=rows, keskar=keskar, numbers=numbers, settings=settings,
                  labels=LABELS, thresholds=verdicts.THRESHOLDS,
                  link={kind: relative_link(path, output) for kind, path in files.items()},
                  output_text=shlex.quote(str(output)), flags=_plan_flags(settings),
                  alphas_text=_alphas_text(settings["alphas"]))


def _plan_flags(settings: dict[str, Any]) -> str:
    """``lbtkit sweep plan``'s flags for the demo's model, data, epochs, seed and recipe."""
    values = {"model": settings["model"], "dataset": settings["dataset"],
              "epochs": settings["epochs"], "seed": settings["seed"], **settings["recipe"]}
    return " ".join(f"--{key.replace('_', '-')} {value:g}" if isinstance(value, float)
                    else f"--{key.replace('_', '-')} {value}" for key, value in values.items())


def _alphas_text(alphas: Sequence[float]) -> str:
    """START:STOP:COUNT when the grid is evenly spaced (as lbtkit interpolate reads it)."""
    import numpy as np

    if len(alphas) > 2 and np.allclose(np.linspace(alphas[0], alphas[-1], len(alphas)), alphas):
        return f"{alphas[0]:g}:{alphas[-1]:g}:{len(alphas)}"
    return ",".join(f"{a:g}" for a in alphas)
