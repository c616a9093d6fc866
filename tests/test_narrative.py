"""The demo's report regenerates the committed docs/demo/index.md from the committed numbers.

The inputs are the files ``make demo`` committed next to index.md (results.csv, the
interpolation CSV, both sharpness JSONs); the two numbers that only index.md holds are
recovered exactly: the optimizer steps (an epoch is ``n_train // batch`` steps, the last partial
batch dropped) and the training accuracy (a whole number of the 1437 training images).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from lbtkit.studies.demo import FULL, index_settings
from lbtkit.studies.demo_report import render_index, summarise

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "demo"
OUTPUT = Path("docs/demo")  # as `make demo` names it: the rerun line quotes it
N_TRAIN, N_VAL = 1437, 360


def _float(text: str) -> float | None:
    return float(text) if text else None


def _sweep_rows() -> list[dict]:
    with (DOCS / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return [{"batch_size": int(r["batch_size"]), "lr": float(r["lr"]),
             "best_val_acc": _float(r["best_val_acc"]), "final_val_acc": _float(r["final_val_acc"]),
             "final_train_loss": _float(r["final_train_loss"]), "status": r["status"],
             "global_step": int(r["epochs"]) * (N_TRAIN // int(r["batch_size"]))}
            for r in rows]


def _train_accuracy(index: str, label: str) -> float:
    """The training accuracy in the index's SB/LB table, back to a count of images."""
    row = next(line for line in index.splitlines() if line.startswith(f"| {label} |"))
    percent = float(row.split("|")[4].strip().rstrip("%"))
    return round(percent / 100 * N_TRAIN) / N_TRAIN


def _keskar(rows: list[dict], index: str) -> dict:
    with (DOCS / "keskar" / "interpolation.csv").open() as handle:
        interpolation = [{"alpha": float(r["alpha"]), "split": r["split"],
                          "loss": float(r["loss"]), "accuracy": float(r["accuracy"])}
                         for r in csv.DictReader(handle)]
    sharpness = {label: json.loads((DOCS / "keskar" / f"sharpness-{label}.json").read_text())
                 for label in ("sb", "lb")}
    # f in sharpness.json is the same loss as the demo's train fit: every training image
    # (4096 samples > 1437), BatchNorm on running statistics, no augmentation.
    train = {label: {"loss": sharpness[label]["train_loss"],
                     "accuracy": _train_accuracy(index, label.upper())}
             for label in ("sb", "lb")}
    out = OUTPUT / "keskar"
    paths = {kind: out / f"interpolation.{kind}" for kind in ("csv", "png", "json")}
    paths.update(sharpness_sb=out / "sharpness-sb.json", sharpness_lb=out / "sharpness-lb.json")
    return {"paths": paths, "interpolation": interpolation, "sharpness": sharpness, "train": train,
            "ends": {"sb": rows[0], "lb": rows[-1]}}


def test_committed_index_is_regenerated_from_the_committed_numbers():
    committed = (DOCS / "index.md").read_text()
    rows = _sweep_rows()
    keskar = _keskar(rows, committed)
    numbers = summarise(rows, keskar, n_val=N_VAL, n_train=N_TRAIN)
    sweep_dir = re.search(r"The demo's sweep directory is `([^`]+)`", committed)[1]
    report_paths = {"report": OUTPUT / "report.md", "csv": OUTPUT / "results.csv",
                    "accuracy_vs_batch": OUTPUT / "accuracy_vs_batch.png",
                    "learning_curves": OUTPUT / "learning_curves.png"}
    text = render_index(OUTPUT, rows, keskar, numbers, index_settings(FULL, OUTPUT / sweep_dir),
                        report_paths)
    assert text.splitlines() == committed.splitlines()  # a readable diff when it fails
    assert text == committed
    assert numbers["verdict"] == "large batch worse" and numbers["fit"] == \
        "large batch under-fitted"


# --- the Fashion-MNIST study's sentences, on made-up numbers -------------------------------------


def _stat(mean, std, n=5):
    return {"mean": mean, "std": std, "n": n}


def _summary(**lb_overrides):
    sb = {"epochs": _stat(20.0, 1.0), "train_acc": _stat(0.971, 0.001),
          "test_acc": _stat(0.900, 0.002), "test_loss": _stat(0.30, 0.01),
          "phi full eps=0.001": _stat(1.0, 0.2), "phi full eps=0.0005": _stat(0.5, 0.1),
          "phi random:100 eps=0.001": _stat(0.1, 0.01), "hessian_top": _stat(20.0, 2.0)}
    lb = {"epochs": _stat(17.0, 1.0), "train_acc": _stat(0.973, 0.001),
          "test_acc": _stat(0.890, 0.002), "test_loss": _stat(0.35, 0.01),
          "phi full eps=0.001": _stat(9.0, 1.0), "phi full eps=0.0005": _stat(0.52, 0.1),
          "phi random:100 eps=0.001": _stat(0.05, 0.01), "hessian_top": _stat(80.0, 5.0)}
    lb.update(lb_overrides)
    return {"sb": sb, "lb": lb}


def _paired(mean, p, low, high, n=5):
    return {"n": n, "mean": mean, "p": p, "low": low, "high": high, "differs": p < 0.05,
            "alpha": 0.05, "confidence": 0.95}


def test_paired_sentences_follow_the_paired_test():
    from lbtkit.studies.fashion_report import paired_sentence

    summary = _summary()
    paired = {"phi full eps=0.001": _paired(8.0, 0.001, 6.5, 9.5),
              "phi full eps=0.0005": _paired(0.02, 0.6, -0.1, 0.14),
              "test_acc": _paired(-0.01, 0.03, -0.019, -0.001)}
    sharp = paired_sentence(summary, paired, "phi full eps=0.001", noun="φ")
    assert sharp.startswith("φ: 1.00 ± 0.20 (SB) vs 9.00 ± 1.00 (LB); LB − SB = +8 "
                            "(95% interval 6.5 to 9.5), p = 0.001")
    assert sharp.endswith("LB's is higher, 9 times SB's (p < 0.05).")
    same = paired_sentence(summary, paired, "phi full eps=0.0005", noun="φ")
    assert "p = 0.6: no difference at α = 0.05 over these 5 seeds" in same
    acc = paired_sentence(summary, paired, "test_acc", noun="Test accuracy", scale=100,
                          unit="%", diff_unit=" points")
    assert "90.00 ± 0.20% (SB) vs 89.00 ± 0.20% (LB); LB − SB = -1 points (95% interval " \
           "-1.9 to -0.1 points), p = 0.03: LB's is lower (p < 0.05)." in acc
    assert "not measured" in paired_sentence(summary, paired, "hessian_top", noun="H")


def test_generalisation_sentence_reads_accuracy_and_loss_together():
    from lbtkit.studies.fashion_report import generalisation_sentence

    lower_both = {"test_acc": _paired(-0.01, 0.01, -0.02, -0.003),
                  "test_loss": _paired(-0.03, 0.02, -0.05, -0.005)}
    text = generalisation_sentence(lower_both)
    assert "LB's test accuracy is lower yet its test loss is lower" in text
    assert "over-confident" in text
    worse = generalisation_sentence({"test_acc": _paired(-0.01, 0.01, -0.02, -0.003),
                                     "test_loss": _paired(0.03, 0.02, 0.005, 0.05)})
    assert "LB generalises worse by both measures" in worse
    neither = generalisation_sentence({"test_acc": _paired(-0.009, 0.16, -0.03, 0.01),
                                       "test_loss": _paired(-0.03, 0.2, -0.09, 0.03)})
    assert neither.startswith("Neither the test accuracy (LB lower, p = 0.16) nor the test "
                              "loss (LB lower, p = 0.2) differs")
    assert "does not show that LB generalises worse" in neither
    assert "Their directions disagree" in neither
    one = generalisation_sentence({"test_acc": _paired(-0.01, 0.01, -0.02, -0.003),
                                   "test_loss": _paired(-0.03, 0.2, -0.09, 0.03)})
    assert one.startswith("Only the test accuracy differs at α = 0.05 (LB's is lower)")


def test_fit_sentence_says_how_far_each_side_trained():
    from lbtkit.studies.fashion_report import fit_sentence
    from lbtkit.studies.fashion_verdicts import SAME_FIT_POINTS

    records = [{"seed": 0, "side": "lb", "stopped_by": "epochs cap (30)"},
               {"seed": 0, "side": "sb", "stopped_by": "train_acc 0.97 >= 0.97"}]
    text = fit_sentence(_summary(), records)
    assert "SB trained 20.0 ± 1.0 epochs, LB 17.0 ± 1.0 (mean ± std over seeds); the last " \
           "epoch's running training accuracy (train mode, over its batches) is 97.10 ± " \
           "0.10% (SB) and 97.30 ± 0.10% (LB)" in text
    assert "gradient norm" not in text  # not measured
    assert "1 of 2 runs ran to the epochs cap, the rule not met before it (seed 0 LB)" in text
    assert f"0.20 points apart, within {SAME_FIT_POINTS:g}" in text
    under = fit_sentence(_summary(train_acc=_stat(0.95, 0.01)), records[1:])
    assert "LB fits the training set 2.10 points worse" in under
    assert "cap" not in under
    assert "evaluation mode" not in under  # not measured: judged on the running average


def test_fit_sentence_judges_the_fit_in_evaluation_mode_when_measured():
    from lbtkit.studies.fashion_report import fit_sentence

    summary = _summary(train_acc_eval=_stat(0.95, 0.01))  # LB: running 97.30, eval 95.00
    summary["sb"]["train_acc_eval"] = _stat(0.968, 0.002)
    text = fit_sentence(summary, [])
    assert "in evaluation mode reach 96.80 ± 0.20% (SB) and 95.00 ± 1.00% (LB)" in text
    assert "LB fits the training set 1.80 points worse" in text
    summary["lb"]["train_acc_eval"] = _stat(0.97, 0.01)
    assert "training accuracies in evaluation mode are 0.20 points apart" in \
        fit_sentence(summary, [])
    summary["sb"]["grad_norm bn=running"] = _stat(0.4, 0.1)
    summary["lb"]["grad_norm bn=running"] = _stat(2.6, 0.3)
    assert "solution is 0.400 ± 0.100 (SB) vs 2.600 ± 0.300 (LB) with bn=running (zero at " \
           "a minimiser)" in fit_sentence(summary, [])


def test_paper_sentence_sorts_each_comparison():
    from lbtkit.studies.fashion_report import paper_sentence

    paired = {"test_acc": _paired(-0.01, 0.01, -0.02, -0.003),
              "phi full eps=0.001 bn=batch": _paired(8.0, 0.001, 6.5, 9.5),
              "phi full eps=0.0005 bn=batch": _paired(0.02, 0.6, -0.1, 0.14),
              "phi random:100 eps=0.001 bn=batch": _paired(-0.05, 0.01, -0.08, -0.02),
              "phi full eps=0.001 bn=running": _paired(-8.0, 0.001, -9.5, -6.5)}
    text = paper_sentence(paired)
    assert "goes the paper's way for test accuracy, sharpness full ε=0.001 bn=batch" in text
    assert "goes against the paper for sharpness random:100 ε=0.001 bn=batch" in text
    assert "no difference (paired, p ≥ α) for sharpness full ε=0.0005 bn=batch" in text
    assert "running" not in text  # the paper's φ sits beside ours with batch statistics


def _budget_rows(best: list[float], final: list[float], test: list[float | None]) -> list:
    return [{"batch_size": 32 * 2 ** i, "best_val_acc": b, "final_val_acc": f, "test_acc": t,
             "val_split": 5000, "steps": 10 * 1718 // 2 ** i, "status": "completed",
             "chance_loss": 2.302585, "unstable": False, "max_train_loss": 1.0,
             "max_train_loss_epoch": 1}
            for i, (b, f, t) in enumerate(zip(best, final, test, strict=True))]


def test_fixed_budget_sentence_reports_both_falls_and_the_test_once():
    from lbtkit.studies.fashion_report import fixed_budget_sentence
    from lbtkit.studies.fashion_verdicts import FALL_POINTS
    from lbtkit.studies.summary import falling_batch

    rows = _budget_rows([0.905, 0.906, 0.903, 0.89, 0.86], [0.904, 0.905, 0.9, 0.898, 0.85],
                       [0.90, 0.899, 0.897, 0.885, 0.85])
    best = falling_batch(rows, drop_points=FALL_POINTS)
    final = falling_batch(rows, drop_points=FALL_POINTS, key="final_val_acc")
    text = fixed_budget_sentence(rows, best, final, epochs=10)
    assert text.startswith("With a fixed budget of 10 epochs at every batch size, the best "
                           "validation accuracy (on 5,000 training images held out) is 90.60% "
                           "at batch 64; it first falls by more than 1 point at batch 256 "
                           "(89.00%); on final validation accuracy, the best is 90.50% at "
                           "batch 64; it first falls by more than 1 point at batch 512 (85.00%).")
    # the test accuracy of the run chosen on validation, not the best test accuracy (90.00%)
    assert "The test accuracy of the batch-64 run, evaluated once at its end and not " \
           "selected on, is 89.90%." in text
    assert "batch 512 1,073 optimizer steps against 17,180 at batch 32" in text
    assert "does not locate the critical batch" in text and "predicts" not in text

    flat = _budget_rows([0.9, 0.899], [0.9, 0.9], [None, None])
    text = fixed_budget_sentence(flat, falling_batch(flat, drop_points=1.0),
                                 falling_batch(flat, drop_points=1.0, key="final_val_acc"),
                                 epochs=1)
    assert "no larger batch is more than 1 point below it up to batch 64" in text
    assert "test accuracy" not in text
    old = [{**row, "val_split": 0} for row in flat]
    assert "(on the test split)" in fixed_budget_sentence(
        old, falling_batch(old, drop_points=1.0),
        falling_batch(old, drop_points=1.0, key="final_val_acc"), epochs=1)


def test_stability_sentence():
    from lbtkit.studies.fashion_report import stability_sentence

    rows = _budget_rows([0.9, 0.89, 0.5, 0.1], [0.9] * 4, [None] * 4)
    assert stability_sentence(rows).startswith("No sweep run was unstable (a training loss "
                                               "above chance, ln(classes) = 2.30")
    rows[2].update(unstable=True, max_train_loss=5.32, max_train_loss_epoch=2)
    rows[3].update(unstable=True, max_train_loss=9.0, status="diverged")
    assert stability_sentence(rows) == (
        "Unstable, its training loss above chance (ln(classes) = 2.30) at some epoch: batch "
        "128 (5.32 at epoch 2); diverged (a non-finite loss stopped it): batch 256.")


def test_noise_scale_sentence_reports_without_comparing_to_the_fall():
    from lbtkit.studies.fashion_report import noise_scale_sentence

    start = {"b_simple": 60.0, "b_simple_std_error": 5.0}
    # the study's case: |G|^2 at the end is 0.0015 +- 0.013, B_simple 99,183 +- 922,797
    end = {"b_simple": 99183.0, "b_simple_std_error": 922797.0, "grad_sq": 0.00148,
           "grad_sq_std_error": 0.0135}
    text = noise_scale_sentence(end, noise_batch=32, noise_init=start)
    assert "at its initial weights B_simple ≈ 60 ± 5; at its final weights B_simple ≈ " \
           "99,183 ± 922,797, not resolved (|G|² = 0.00148 ± 0.013 is within 2" in text
    assert "which a fixed epoch budget does not measure" in text
    assert "predicts" not in text and "factor" not in text
    assert "not measured" in noise_scale_sentence(None, noise_batch=32)
    lost = noise_scale_sentence({"b_simple": None, "grad_sq": -0.03, "grad_sq_std_error": 0.1},
                                noise_batch=32)
    assert "no B_simple (its |G|² estimate, -0.03 ± 0.1, is not positive" in lost
