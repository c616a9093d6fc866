"""The verdicts behind the pages' sentences, as data: each decided by its stated threshold,
on either side of it (no training, no files, no templates)."""

from __future__ import annotations

import pytest

from lbtkit.markdown import render, sentence
from lbtkit.studies import fashion_verdicts, verdicts


def _row(batch: int, acc: float | None, steps: int = 10, status: str = "completed") -> dict:
    return {"batch_size": batch, "best_val_acc": acc, "global_step": steps, "status": status}


def test_gap_verdict_on_either_side_of_two_standard_errors():
    threshold = verdicts.gap_threshold(0.95, 0.93, 360)  # ~3.5 points
    assert verdicts.GAP_STANDARD_ERRORS == 2.0
    inside = verdicts.gap_verdict(_row(8, 0.95), _row(1024, 0.93), 360)
    assert inside["verdict"] == verdicts.NO_GAP
    assert inside["threshold_points"] == pytest.approx(100 * threshold)
    assert inside["diff_points"] == pytest.approx(2.0)
    assert verdicts.gap_verdict(_row(8, 0.95), _row(1024, 0.85), 360)["verdict"] == \
        verdicts.LB_WORSE
    assert verdicts.gap_verdict(_row(8, 0.85), _row(1024, 0.95), 360)["verdict"] == \
        verdicts.LB_BETTER


def test_fit_verdict_calls_a_gap_in_training_accuracy_under_fitting():
    fit = {"sb": {"accuracy": 0.98, "loss": 0.1}, "lb": {"accuracy": 0.84, "loss": 0.8}}
    under = verdicts.fit_verdict(_row(8, 0.9, 3580), _row(1024, 0.8, 20), fit, 1437)
    assert under["verdict"] == verdicts.UNDER_FITTED and (under["sb_steps"], under["lb_steps"]) \
        == (3580, 20)
    fit["lb"]["accuracy"] = 0.979
    assert verdicts.fit_verdict(_row(8, 0.9), _row(1024, 0.8), fit, 1437)["verdict"] == \
        verdicts.SIMILAR_FIT


@pytest.mark.parametrize(("sb", "lb", "verdict", "larger", "factor"), [
    (1.0, 1.04, "same", None, None),          # within SAME_SHARPNESS (5%) of the larger
    (1.0, 1.2, "different", "LB", 1.2),
    (3.0, 1.0, "different", "SB", 3.0),
    (0.0, 2.0, "different", "LB", None),      # no factor against 0
    (0.0, 0.0, "same", None, None),
    (float("nan"), 1.0, "not comparable", None, None),
])
def test_relative_verdict(sb, lb, verdict, larger, factor):
    v = verdicts.relative_verdict(sb, lb)
    assert v["verdict"] == verdict
    assert v.get("larger") == larger
    assert v.get("factor") == (None if factor is None else pytest.approx(factor))


def test_peak_verdict_sorts_batches_by_the_threshold():
    v = verdicts.peak_verdict([_row(8, 0.94), _row(32, 0.95), _row(1024, 0.80),
                               _row(2048, None, status="diverged")], n_val=360)
    assert v["peak"] == {"batch_size": 32, "best_val_acc": 0.95}
    assert [r["batch_size"] for r in v["close"]] == [8]
    assert [r["batch_size"] for r in v["far"]] == [1024]
    assert v["missing"] == [{"batch_size": 2048, "status": "diverged"}]
    assert verdicts.peak_verdict([_row(8, 0.9)], n_val=360) is None


def test_interpolation_verdict_barrier_and_steepness():
    def rows(losses):
        return [{"alpha": a, "split": "train", "loss": v, "accuracy": 0.9}
                for a, v in losses.items()]

    barrier = verdicts.interpolation_verdict(rows({-1.0: 3.0, 0.0: 0.1, 0.5: 0.5, 1.0: 0.2,
                                                   2.0: 9.0}))
    assert barrier["between"] == {"loss": 0.5, "alpha": 0.5, "barrier": True}
    assert barrier["beyond"]["steeper"] == "LB" and barrier["beyond"]["distance"] == 1.0
    # 0.209 is within LOSS_RISE (5%) of the higher end, 0.2: no barrier
    flat = verdicts.interpolation_verdict(rows({0.0: 0.1, 0.5: 0.209, 1.0: 0.2}))
    assert flat["between"]["barrier"] is False and flat["beyond"] is None
    assert verdicts.interpolation_verdict(rows({0.5: 0.1})) is None


def _stat(mean, std=0.1):
    return {"mean": mean, "std": std, "n": 5}


def _paired(mean, p):
    return {"n": 5, "mean": mean, "p": p, "low": mean - 0.1, "high": mean + 0.1,
            "differs": p is not None and p < fashion_verdicts.ALPHA, "alpha": 0.05,
            "confidence": 0.95}


def test_paired_verdict_follows_the_paired_test():
    summary = {"sb": {"x": _stat(1.0)}, "lb": {"x": _stat(9.0)}}
    differs = fashion_verdicts.paired_verdict(summary, {"x": _paired(8.0, 0.001)}, "x")
    assert (differs["verdict"], differs["direction"]) == ("differs", "higher")
    assert differs["factor"] == pytest.approx(9.0)
    assert fashion_verdicts.paired_verdict(summary, {"x": _paired(8.0, 0.2)}, "x")["verdict"] \
        == "same"
    assert fashion_verdicts.paired_verdict(summary, {"x": _paired(8.0, None)}, "x")["verdict"] \
        == "untested"
    assert fashion_verdicts.paired_verdict(summary, {}, "x")["verdict"] == "not measured"


def test_fit_verdict_prefers_evaluation_mode_and_lists_capped_runs():
    summary = {"sb": {"train_acc": _stat(0.97), "train_acc_eval": _stat(0.99)},
               "lb": {"train_acc": _stat(0.97), "train_acc_eval": _stat(0.98)}}
    records = [{"seed": 0, "side": "lb", "stopped_by": "epochs cap (30)"},
               {"seed": 0, "side": "sb", "stopped_by": "train_acc 0.99 >= 0.99"}]
    v = fashion_verdicts.fit_verdict(summary, records)
    assert v["key"] == "train_acc_eval" and v["diff_points"] == pytest.approx(-1.0)
    assert (v["verdict"], v["worse"]) == ("apart", "LB")  # 1 point > SAME_FIT_POINTS (0.5)
    assert [r["side"] for r in v["capped"]] == ["lb"]
    summary["lb"]["train_acc_eval"] = _stat(None)
    assert fashion_verdicts.fit_verdict(summary, records)["verdict"] == "alike"  # running


def test_paper_and_noise_verdicts():
    paper = fashion_verdicts.paper_verdict({
        "test_acc": _paired(-0.01, 0.01), "phi full eps=0.001 bn=batch": _paired(-8.0, 0.001),
        "phi full eps=0.0005 bn=batch": _paired(1.0, 0.5)})
    assert paper == {"agree": ["test_acc"], "disagree": ["phi full eps=0.001 bn=batch"],
                     "unclear": ["phi full eps=0.0005 bn=batch"]}
    noise = fashion_verdicts.noise_verdict
    assert noise({"b_simple": 315.0, "b_simple_std_error": 4.0})["verdict"] == "resolved"
    assert noise({"b_simple": 99183.0, "b_simple_std_error": 922797.0})["verdict"] == \
        "unresolved"
    assert noise({"b_simple": None, "grad_sq": -0.03})["verdict"] == "lost"


def test_templates_render_the_verdicts():
    """The words come from the templates: a sentence is one line, a page ends in one newline."""
    v = verdicts.gap_verdict(_row(8, 0.95), _row(1024, 0.85), 360)
    text = sentence("sb_lb_sentences.md.j2", "gap", v)
    assert "\n" not in text
    assert text.startswith("At batch 8 the best validation accuracy is 95.00%, at batch 1024 "
                           "85.00%: the largest batch is 10.00 points worse")
    page = render("demo.md.j2", rows=[{**_row(8, 0.95), "lr": 0.1, "final_val_acc": None,
                                       "final_train_loss": None, "status": "failed"}],
                  keskar=None, numbers={"n_train": 1, "n_val": 1, "sentences": ["S."]},
                  settings={"parameters": 10, "batch_sizes": [8], "epochs": 1, "seed": 0,
                            "recipe": {"momentum": 0.9, "weight_decay": 0.0, "base_lr": 0.1,
                                       "base_batch_size": 8},
                            "threads": None, "bn": "recalibrate", "quick": False, "eps": [],
                            "sharpness_iters": 1, "hessian_iters": 1, "sharpness_samples": 1},
                  labels=("sb", "lb"), thresholds=verdicts.THRESHOLDS,
                  link={"report": "r", "csv": "c", "accuracy_vs_batch": "a",
                        "learning_curves": "l", "work": "w", "sweep_dir": "w/s"},
                  output_text="out", flags="", alphas_text="0,1")
    assert "- S.\n" in page and page.endswith("`w/s`.)\n") and not page.endswith("\n\n")
    assert "Not run: the batch-8 run is failed" in page


def test_the_keskar_report_names_each_batchnorm_convention_with_its_own_phi():
    from lbtkit.config import RunConfig
    from lbtkit.studies.keskar_report import study_report

    def measured(phis: dict[str, float]) -> dict:
        return {"sharpness": [{"subspace": "full", "eps": 1e-3, "bn": bn, "phi": phi}
                              for bn, phi in phis.items()],
                "hessian": {"top_eigenvalues": [5.0]}, "trace": None, "samples_used": 64,
                "settings": {"seed": 0, "iters": 10, "bn": {"batch": "batch text",
                                                            "running": "running text"}}}

    configs = {"sb": RunConfig().updated({"batch_size": 32, "lr": 0.01}),
               "lb": RunConfig().updated({"batch_size": 512, "lr": 0.1})}
    results = {side: {"final": {"train_acc": 0.99, "val_acc": 0.9}, "epochs_completed": 3}
               for side in ("sb", "lb")}
    sharp = {"sb": measured({"batch": 30.9, "running": 117.2}),
             "lb": measured({"batch": 86.3, "running": 644.9})}
    page = study_report(configs, results, sharp, bn="train")
    header = next(line for line in page.splitlines() if line.startswith("|  | batch"))
    assert "φ full space ε=0.001 bn=batch" in header
    assert "φ full space ε=0.001 bn=running" in header
    assert "top Hessian eigenvalue bn=batch" in header
    sb_row = next(line for line in page.splitlines() if line.startswith("| SB"))
    assert sb_row.split(" | ")[-3:-1] == ["30.9", "117.2"]  # each column its own convention
    assert "(full space, ε=0.001, bn=batch): φ = 30.9 (SB) vs 86.3 (LB)" in page
    assert "bn=batch: batch text; bn=running: running text." in page
    # one convention: the columns as before, unnamed
    single = {side: measured({"running": v}) for side, v in (("sb", 1.0), ("lb", 9.0))}
    table = study_report(configs, results, single, bn="train").split("\n\n")[4]
    assert "φ full space ε=0.001 |" in table and "bn=" not in table
