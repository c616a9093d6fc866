"""The Fashion-MNIST study's index.md: numbers in, markdown out (no training, no files read).

``index_numbers`` gathers what the page shows (and study.json stores): the verdicts of
``lbtkit.studies.fashion_verdicts`` and the sentences rendered from them
(``fashion_sentences.md.j2``); ``render_index`` lays the page out from ``fashion.md.j2``: what was
run on which machine in how long, the sentences with their stated thresholds, the Keskar table
beside the paper's F1 row, how far each run trained, the interpolation band, the sweep table
with the falling batch and B_simple.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lbtkit.markdown import render, sentence
from lbtkit.specs import FashionStudySpec
from lbtkit.studies import fashion_verdicts as verdicts
from lbtkit.studies.common import LABELS, relative_link
from lbtkit.studies.fashion_presets import FULL, QUICK
from lbtkit.studies.fashion_verdicts import FALL_POINTS, PAPER_F1, THRESHOLDS, noise_resolved
from lbtkit.studies.paired import ALPHA, TEST
from lbtkit.studies.summary import falling_batch

SENTENCES = "fashion_sentences.md.j2"


# --- the sentences, one per verdict ------------------------------------------------------------


def paired_sentence(summary: dict[str, dict[str, Any]], paired: dict[str, dict[str, Any]],
                    key: str, *, noun: str, scale: float = 1.0, unit: str = "",
                    diff_unit: str | None = None) -> str:
    """SB vs LB on one number, paired by seed: the values, LB minus SB with its interval and
    p-value, and the verdict at the stated alpha (``fashion_verdicts.paired_verdict``)."""
    return sentence(SENTENCES, "paired", verdicts.paired_verdict(summary, paired, key), noun,
                    scale, unit, diff_unit)


def measure_sentence(summary: dict[str, dict[str, Any]], paired: dict[str, dict[str, Any]],
                     key: str) -> str:
    """``paired_sentence`` of a sharpness, Hessian or gradient-norm column, named in words."""
    noun = sentence(SENTENCES, "measure_noun", verdicts.describe_measure(key))
    return paired_sentence(summary, paired, key, noun=noun)


def generalisation_sentence(paired: dict[str, dict[str, Any]]) -> str | None:
    """Test accuracy and test loss read together: they can disagree, and what that means."""
    verdict = verdicts.generalisation_verdict(paired)
    return None if verdict is None else sentence(SENTENCES, "generalisation", verdict)


def fit_sentence(summary: dict[str, dict[str, Any]], records: Sequence[dict[str, Any]]) -> str:
    """How far each side trained and whether both fit the training set alike
    (``fashion_verdicts.fit_verdict``)."""
    return sentence(SENTENCES, "fit", verdicts.fit_verdict(summary, records))


def paper_sentence(paired: dict[str, dict[str, Any]]) -> str:
    """Does each comparison go the paper's way (``fashion_verdicts.paper_verdict``)?"""
    return sentence(SENTENCES, "paper", verdicts.paper_verdict(paired))


def fixed_budget_sentence(rows: Sequence[dict[str, Any]], best: dict[str, Any],
                          final: dict[str, Any], *, epochs: int) -> str:
    """What a fixed-epoch-budget sweep shows, and why its fall is not the critical batch
    (``fashion_verdicts.fixed_budget_verdict``)."""
    return sentence(SENTENCES, "fixed_budget",
                    verdicts.fixed_budget_verdict(rows, best, final, epochs=epochs))


def stability_sentence(rows: Sequence[dict[str, Any]]) -> str:
    """Which sweep runs were unstable and which diverged (``stability_verdict``)."""
    return sentence(SENTENCES, "stability", verdicts.stability_verdict(rows))


def noise_scale_sentence(noise: dict[str, Any] | None, *, noise_batch: int,
                         noise_init: dict[str, Any] | None = None) -> str:
    """B_simple of the batch-``noise_batch`` run at its initial (``noise_init``) and final
    weights (``noise``); it is set beside no fall of a fixed-budget sweep."""
    measured = [(where, verdicts.noise_verdict(n)) for where, n in
                (("initial", noise_init), ("final", noise)) if n is not None]
    return sentence(SENTENCES, "noise_scale", measured, noise_batch)


def conventions_sentence(summary: dict[str, Any]) -> str | None:
    """How much the BatchNorm convention changes φ (``conventions_verdict``)."""
    verdict = verdicts.conventions_verdict(summary)
    return None if verdict is None else sentence(SENTENCES, "conventions", verdict)


def fashion_thresholds_sentence(alpha: float = ALPHA) -> str:
    """The thresholds behind the Fashion-MNIST study's verdicts, in words."""
    return sentence(SENTENCES, "thresholds", {**THRESHOLDS, "alpha": alpha})


# --- the numbers study.json keeps --------------------------------------------------------------


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
            *(measure_sentence(summary, paired, key) for key in _phi_keys(summary)),
            *(measure_sentence(summary, paired, key)
              for key in summary["sb"] if key.startswith("hessian_top")),
            conventions_sentence(summary),
            paper_sentence(paired),
        ]
        sentences = [text for text in sentences if text]
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


def _fall_numbers(fall: dict[str, Any], key: str) -> dict[str, Any]:
    """study.json's record of ``falling_batch`` on ``key`` (best or final validation)."""
    def batch(row: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if row is None else {"batch_size": row["batch_size"], key: row[key]}

    return {"best": batch(fall["best"]), "fall": batch(fall["fall"]), "before": fall["before"],
            "largest": fall["largest"], "drop_points": FALL_POINTS}


def _phi_keys(summary: dict[str, Any]) -> list[str]:
    return [key for key in summary["sb"] if key.startswith("phi ")]


# --- the page ----------------------------------------------------------------------------------


def render_index(output: Path, record: dict[str, Any], keskar: dict[str, Any],
                 sweep: dict[str, Any]) -> str:
    """index.md. ``record``: study.json's content (spec, quick, machine, seconds, numbers);
    links are relative to ``output``."""
    spec = FashionStudySpec.from_dict(record["spec"])
    numbers = record["numbers"]
    files = {"runs": keskar["paths"]["runs"], "band_png": keskar["paths"]["band_png"],
             "band_csv": keskar["paths"]["band_csv"], **sweep["report"]}
    summary = numbers["summary"]
    return render(
        "fashion.md.j2", spec=spec, record=record, numbers=numbers, labels=LABELS,
        records=keskar["records"], rows=sweep["rows"], paper=PAPER_F1,
        link={kind: relative_link(path, output) for kind, path in files.items()},
        thresholds_sentence=fashion_thresholds_sentence(),
        paired_rows=[] if summary is None else _paired_rows(summary),
        measures={key: verdicts.describe_measure(key) for key in
                  (summary["sb"] if summary else {}) if key.startswith(("phi ", "hessian_top",
                                                                        "grad_norm"))},
        grad_keys=[k for k in keskar["records"][0] if k.startswith("grad_norm")]
        if keskar["records"] else [],
        output_text=str(output), seeds_flag=_seeds_flag(record), fall_points=FALL_POINTS,
        thresholds=THRESHOLDS)


def _paired_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The paired table's rows in order: each column with its scale and digits."""
    keys = list(summary["sb"])
    rows = [{"key": "train_acc_eval", "scale": 100.0, "digits": 2},
            {"key": "test_acc", "scale": 100.0, "digits": 2},
            {"key": "train_loss_eval", "scale": 1.0, "digits": 4},
            {"key": "test_loss", "scale": 1.0, "digits": 4}]
    rows += [{"key": k, "scale": 1.0, "digits": 3} for k in keys if k.startswith("phi ")]
    rows += [{"key": k, "scale": 1.0, "digits": 1} for k in keys if k.startswith("hessian_top")]
    rows += [{"key": k, "scale": 1.0, "digits": 3} for k in keys if k.startswith("grad_norm")]
    return rows


def _seeds_flag(record: dict[str, Any]) -> str:
    """``--seeds N`` when the seeds are 0..N-1 but not the default's."""
    seeds = tuple(record["spec"]["seeds"])
    default = (QUICK if record["quick"] else FULL).seeds
    return "" if seeds == default else f" --seeds {len(seeds)}"
