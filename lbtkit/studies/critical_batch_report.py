"""The critical-batch study's outputs: verdicts as data, then files.

``analyse`` turns the records (one per run and target) into numbers and verdicts, each with
the threshold that decides it (``THRESHOLDS``); ``write_outputs`` writes steps.csv, fit.json,
study.json, the figures, and index.md rendered from the Jinja2 template
``lbtkit/templates/critical_batch.md.j2``. Nothing here trains or measures.
"""

from __future__ import annotations

import csv
import math
from io import StringIO
from pathlib import Path
from typing import Any

from lbtkit.critical_batch import (
    DIMINISHING,
    MAXIMAL,
    PERFECT,
    REGIME_FACTOR,
    ScalingFit,
    best_per_batch,
    bootstrap_fit,
    fit_best,
    ratio_interval,
    regime,
)
from lbtkit.fileio import atomic_write_text, write_json
from lbtkit.markdown import render
from lbtkit.specs import CriticalBatchSpec

# The thresholds behind every verdict in index.md.
THRESHOLDS = {
    # B_simple predicts B_crit when their ratio is within this factor either way.
    "prediction_factor": 2.0,
    # Regimes: perfect scaling at B <= B_crit / f, maximal data parallelism at B >= f B_crit.
    "regime_factor": REGIME_FACTOR,
    # A batch size is off the fitted curve when its measured steps differ from the curve's by
    # more than this factor either way.
    "off_fit_factor": 1.25,
    # A remedy takes fewer (more) steps than SGD when its mean over seeds is below (above)
    # SGD's by more than this fraction AND every seed agrees (same seed: same initial weights).
    "remedy_margin": 0.2,
    "ci_level": 0.95,
}
STEPS_COLUMNS = ("seed", "batch_size", "lr", "optimizer", "target", "steps", "examples",
                 "status", "round", "run", "test_acc")


def analyse(spec: CriticalBatchSpec, records: list[dict[str, Any]],
            noise: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """fit.json's dict: per target the fit, interval, regimes and prediction; the remedies."""
    targets = [_target_fit(spec, target, _select(records, "sgd", target), noise.get(target))
               for target in spec.targets]
    return {"fit": {"targets": targets, "thresholds": THRESHOLDS,
                    "method": _method(spec)},
            "remedies": _remedies(spec, records)}


def _select(records: list[dict[str, Any]], optimizer: str, target: str) -> list[dict[str, Any]]:
    return [r for r in records if r["optimizer"] == optimizer and r["target"] == target]


def _target_fit(spec: CriticalBatchSpec, target: str, group: list[dict[str, Any]],
                noise: dict[str, Any] | None) -> dict[str, Any]:
    best = best_per_batch(group)
    fit = fit_best(best)
    entry: dict[str, Any] = {
        "target": target,
        "best": [{"batch_size": b.batch_size, "lr": b.lr, "steps": b.steps, "edge": b.edge,
                  "lrs_tried": list(b.lrs)} for b in best.values()],
        "edges_left": [b.batch_size for b in best.values() if b.edge],
        "unreached": [b.batch_size for b in best.values() if b.steps is None],
    }
    if fit is None:
        return {**entry, "b_crit": None}
    interval = bootstrap_fit(group, samples=spec.bootstrap_samples)
    entry.update(fit.to_dict())
    entry.update({f"{k}_ci": list(interval[k]) for k in ("b_crit", "s_min", "e_min")
                  if k in interval})
    entry["bootstrap_samples"] = interval["samples"]
    entry["regimes"] = {str(b.batch_size): regime(b.batch_size, fit.b_crit)
                        for b in best.values()}
    entry["off_fit"] = [{"batch_size": b.batch_size, "steps": b.steps,
                         "fitted": fit.steps(b.batch_size)} for b in best.values()
                        if b.steps is not None and abs(math.log(b.steps / fit.steps(
                            b.batch_size))) > math.log(THRESHOLDS["off_fit_factor"])]
    entry["regime_batches"] = {name: [b.batch_size for b in best.values()
                                      if regime(b.batch_size, fit.b_crit) == name]
                               for name in (PERFECT, DIMINISHING, MAXIMAL)}
    entry["all_three_regimes"] = len(set(entry["regimes"].values())) == 3
    entry.update(_prediction(fit, entry.get("b_crit_ci"), noise))
    return entry


def _prediction(fit: ScalingFit, b_crit_ci: list[float] | None,
                noise: dict[str, Any] | None) -> dict[str, Any]:
    if noise is None or noise.get("b_simple") is None:
        return {"b_simple": None, "b_simple_se": None}
    b_simple, se = noise["b_simple"], noise.get("b_simple_se")
    ratio, (low, high) = ratio_interval(fit.b_crit, tuple(b_crit_ci or (fit.b_crit,) * 2),
                                        b_simple, se)
    factor = THRESHOLDS["prediction_factor"]
    return {"b_simple": b_simple, "b_simple_se": se, "b_simple_step": noise["step"],
            "b_simple_run": noise["run"], "b_simple_file": noise["file"],
            "ratio": ratio, "ratio_ci": [low, high],
            "within_factor": 1 / factor <= ratio <= factor}


def _remedies(spec: CriticalBatchSpec, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per target and remedy batch size: each optimizer's best steps, and the verdicts."""
    rows = []
    for target in spec.targets:
        best = {opt: best_per_batch(_select(records, opt, target))
                for opt in ("sgd", *spec.remedies)}
        for batch in spec.remedy_sizes():
            sgd = best["sgd"].get(batch)
            row: dict[str, Any] = {"target": target, "batch_size": batch,
                                   "sgd_steps": sgd.steps if sgd else None,
                                   "sgd_lr": sgd.lr if sgd else None}
            for opt in spec.remedies:
                mine = best[opt].get(batch)
                row[f"{opt}_steps"] = mine.steps if mine else None
                row[f"{opt}_lr"] = mine.lr if mine else None
                row[f"{opt}_verdict"] = _remedy_verdict(records, target, batch, sgd,
                                                        (opt, mine))
            rows.append(row)
    return rows


def _remedy_verdict(records: list[dict[str, Any]], target: str, batch: int, sgd: Any,
                    remedy: tuple[str, Any]) -> str:
    """The remedy's best against SGD's best at one batch size, by THRESHOLDS' rule."""
    optimizer, mine = remedy
    if sgd is None or mine is None or sgd.steps is None:
        return "not comparable"
    if mine.steps is None:
        return "did not reach the target"
    margin = THRESHOLDS["remedy_margin"]
    seeds_sgd = _seed_steps(records, "sgd", target, batch, sgd.lr)
    seeds_mine = _seed_steps(records, optimizer, target, batch, mine.lr)
    paired = [seeds_mine[s] / seeds_sgd[s] for s in seeds_sgd if s in seeds_mine]
    ratio = mine.steps / sgd.steps
    if ratio < 1 - margin and paired and all(p < 1 for p in paired):
        return "fewer steps"
    if ratio > 1 + margin and paired and all(p > 1 for p in paired):
        return "more steps"
    return "no clear difference"


def _seed_steps(records: list[dict[str, Any]], optimizer: str, target: str, batch: int,
                lr: float) -> dict[int, float]:
    return {r["seed"]: r["steps"] for r in records
            if r["target"] == target and r["batch_size"] == batch and r["lr"] == lr
            and r["optimizer"] == optimizer and r["steps"] is not None}


def _method(spec: CriticalBatchSpec) -> dict[str, Any]:
    return {
        "model": "S(B) = S_min + E_min / B (McCandlish et al. 2018, eq. 2.11), fitted by "
                 "least squares in log S to the best learning rate's mean steps at each batch "
                 "size; B_crit = E_min / S_min",
        "best_lr": "per batch size and target, the learning rate with the lowest mean steps "
                   "over the seeds, every seed having reached the target",
        "interval": f"percentile bootstrap over the {len(spec.seeds)} seeds "
                    f"({spec.bootstrap_samples} samples; the best learning rate re-chosen "
                    f"in each)",
        "steps": f"the first evaluated step meeting the target; evaluations after steps "
                 f"1, 2, ... each at least {spec.eval_growth:g}x the last",
        "train_loss": f"cross-entropy in eval mode (BatchNorm running statistics) on a fixed "
                      f"draw of {spec.train_eval_samples} training images",
        "val_error": f"error on {spec.val_split} images held out of the training set (a fixed "
                     f"draw); the test set is evaluated once, at the end of each run",
        "noise_scale": "B_simple = tr(Sigma)/|G|^2 (finite-population estimator) of the "
                       "reference run at the weights where it first met the target; "
                       "gradients in train mode (BatchNorm batch statistics)",
    }


# --- files -------------------------------------------------------------------------------------


def write_outputs(output: Path, spec: CriticalBatchSpec, records: list[dict[str, Any]],
                  analysis: dict[str, Any], *, machine: dict[str, Any],
                  seconds: dict[str, float]) -> Path:
    """steps.csv, fit.json, study.json, the figures and index.md; return index.md's path."""
    from lbtkit.studies.critical_batch_figures import plot_all

    write_steps_csv(output / "steps.csv", records)
    write_json(output / "fit.json", analysis["fit"])
    write_json(output / "study.json", {"spec": spec.to_dict(), "machine": machine,
                                       "seconds": seconds, "remedies": analysis["remedies"]})
    figures = plot_all(output, spec, records, analysis)
    index = output / "index.md"
    atomic_write_text(index, render_index(spec, analysis, figures=figures, machine=machine,
                                          seconds=seconds, records=records))
    return index


def write_steps_csv(path: Path, records: list[dict[str, Any]]) -> None:
    buffer = StringIO()
    writer = csv.DictWriter(buffer, fieldnames=STEPS_COLUMNS, lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    for r in sorted(records, key=lambda r: (r["optimizer"], r["target"], r["batch_size"],
                                            r["lr"], r["seed"])):
        writer.writerow({**r, "steps": "" if r["steps"] is None else r["steps"],
                         "examples": "" if r["examples"] is None else r["examples"],
                         "test_acc": "" if r.get("test_acc") is None else r["test_acc"]})
    atomic_write_text(path, buffer.getvalue())


def render_index(spec: CriticalBatchSpec, analysis: dict[str, Any], *, figures: dict[str, str],
                 machine: dict[str, Any], seconds: dict[str, float],
                 records: list[dict[str, Any]]) -> str:
    """index.md from the template: every number comes from ``analysis``."""
    runs = len({(r["round"], r["run"]) for r in records})
    rounds = max((int(r["round"]) for r in records), default=0)
    return render("critical_batch.md.j2", spec=spec, fit=analysis["fit"],
                  remedies=analysis["remedies"], thresholds=THRESHOLDS, figures=figures,
                  machine=machine, minutes={k: v / 60 for k, v in seconds.items()}, runs=runs,
                  extension_rounds_run=rounds, headline=headline(analysis["fit"]))


def headline(fit: dict[str, Any]) -> dict[str, Any] | None:
    """What the one-sentence answer says: the hardest training-loss target that was fitted
    (else the first fitted), its B_crit with interval, and where doublings stop paying
    (``REGIME_FACTOR`` x B_crit); None when no target was fitted."""
    fitted = [t for t in fit["targets"] if t.get("b_crit") is not None]
    if not fitted:
        return None
    train = [t for t in fitted if t["target"].startswith("train_loss")]
    chosen = min(train, key=lambda t: float(t["target"].split("<=")[1])) if train else fitted[0]
    return {"target": chosen["target"].replace("<=", " ≤ "), "b_crit": chosen["b_crit"],
            "ci": chosen.get("b_crit_ci"), "beyond": REGIME_FACTOR * chosen["b_crit"]}


