"""The narrative regenerates the committed docs/demo/index.md from the committed numbers.

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

from lbtkit.demo import FULL, index_settings
from lbtkit.narrative import render_index, summarise

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
    from lbtkit.narrative import paired_sentence

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
    from lbtkit.narrative import generalisation_sentence

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
    from lbtkit.narrative import SAME_FIT_POINTS, fit_sentence

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
    from lbtkit.narrative import fit_sentence

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
    from lbtkit.narrative import paper_sentence

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


def test_critical_batch_sentence():
    from lbtkit.narrative import CRITICAL_FACTOR, critical_batch_sentence

    best = {"batch_size": 64, "best_val_acc": 0.91}
    fall = {"best": best, "fall": {"batch_size": 1024, "best_val_acc": 0.895},
            "before": 512, "largest": 8192}
    agree = critical_batch_sentence(fall, {"b_simple": 900.0, "b_simple_std_error": 50.0},
                                    noise_batch=32)
    assert "first falls by more than 1 point at batch 1024 (89.50%)" in agree
    assert "at its final weights B_simple ≈ 900 ± 50" in agree
    assert f"within a factor of {CRITICAL_FACTOR:g} of where accuracy falls (512-1024)" in agree
    far = critical_batch_sentence(fall, {"b_simple": 100.0}, noise_batch=32)
    assert "5.12 times below where accuracy falls" in far
    assert "4.1 times above" in critical_batch_sentence(fall, {"b_simple": 4200.0},
                                                          noise_batch=32)
    flat = critical_batch_sentence({**fall, "fall": None, "before": None},
                                   {"b_simple": 900.0}, noise_batch=32)
    assert "no fall up to batch 8192" in flat
    assert "not measured" in critical_batch_sentence(fall, None, noise_batch=32)
    lost = critical_batch_sentence(fall, {"b_simple": None, "grad_sq": -0.03,
                                          "grad_sq_std_error": 0.1}, noise_batch=32)
    assert "no B_simple (its |G|² estimate, -0.03 ± 0.1, is not positive" in lost
    assert "No measurement resolves B_simple" in lost


def test_critical_batch_sentence_with_the_noise_scale_at_both_ends_of_training():
    from lbtkit.narrative import critical_batch_sentence

    fall = {"best": {"batch_size": 128, "best_val_acc": 0.906},
            "fall": {"batch_size": 2048, "best_val_acc": 0.895}, "before": 1024,
            "largest": 8192}
    start = {"b_simple": 60.0, "b_simple_std_error": 5.0}
    # the study's case: |G|^2 at the end is 0.0015 +- 0.013, B_simple 99,183 +- 922,797
    end = {"b_simple": 99183.0, "b_simple_std_error": 922797.0, "grad_sq": 0.00148,
           "grad_sq_std_error": 0.0135}
    text = critical_batch_sentence(fall, end, noise_batch=32, noise_init=start)
    assert "at its initial weights B_simple ≈ 60 ± 5; at its final weights B_simple ≈ " \
           "99,183 ± 922,797, not resolved (|G|² = 0.00148 ± 0.013 is within 2" in text
    assert "The fall (1024-2048) lies between the noise scale at the start of training and " \
           "at its end" in text
    assert "predicts the critical batch" not in text
    # an unresolved final estimate is never the one that "predicts" the fall
    near = {**end, "b_simple": 1500.0}
    assert "No measurement resolves B_simple" in critical_batch_sentence(
        fall, near, noise_batch=32)
    # a resolved start within the factor predicts it
    assert "At the initial weights B_simple is within a factor of 2" in \
        critical_batch_sentence(fall, end, noise_batch=32,
                                noise_init={"b_simple": 800.0, "b_simple_std_error": 40.0})
