"""``lbtkit study fashion``: the budget arithmetic, the summaries over seeds and the sweep, and
the QUICK study end to end (index.md checked against the JSON and CSV it was computed from)."""

from __future__ import annotations

import csv
import json
import math
import re
import time

import pytest

from lbtkit.studies import budget
from lbtkit.studies.clock import StudyClock
from lbtkit.studies.fashion import run_fashion_study
from lbtkit.studies.fashion_presets import FULL, QUICK
from lbtkit.studies.summary import (
    falling_batch,
    interpolation_band,
    mean_std,
    side_record,
    side_summary,
    stop_text,
)

from helpers import (
    assert_user_error,
    invoke_cli,
    markdown_table,
    require_real_fashion_mnist,
    scaled_timeout,
)

HOUR, FIVE_MINUTES = 3600.0, 300.0


# --- the budget --------------------------------------------------------------------------------


def test_full_study_budget_sums():
    # the docstring of lbtkit.studies.budget writes these sums out
    expected = budget.estimate(FULL, epochs=budget.EXPECTED_EPOCHS)
    assert set(expected) == {*(f"keskar seed {s}" for s in FULL.seeds), "sweep",
                             "noise scale", "sweep report", "index"}
    assert len(FULL.seeds) == 5
    # the cap is a safety net far above the expected epochs, not the plan
    assert FULL.epochs_cap >= 2 * max(budget.EXPECTED_EPOCHS)
    assert budget.estimate(FULL)["keskar seed 0"] > 2 * expected["keskar seed 0"]


def test_the_eta_plans_the_measured_epochs_and_the_jobs_at_once(tmp_path):
    # the ETA a user sees: the epochs measured to the stopping rule, not the cap
    assert budget.expected(FULL) == budget.estimate(FULL, epochs=budget.EXPECTED_EPOCHS)
    assert budget.expected(QUICK) == budget.estimate(QUICK)  # its cap is below them
    clock = StudyClock(tmp_path / "timings.json", {"a": 100.0, "b": 100.0, "c": 50.0}, jobs=2)
    assert clock.remaining() == 125.0  # 250 s of steps, two at a time
    clock.record("a", 100.0)
    clock.record("b", 100.0)
    assert clock.remaining() == 50.0  # the last step runs alone
    clock.record_child("keskar seed 0", 90.0)  # inside step "a": not a step, not in the total
    assert clock.totals() == {"a": 100.0, "b": 100.0, "total": 200.0}
    assert StudyClock(tmp_path / "timings.json", {}).children() == {"keskar seed 0": 90.0}


def test_budget_docstring_states_the_estimates():
    expected = budget.estimate(FULL, epochs=budget.EXPECTED_EPOCHS)
    per_seed = expected["keskar seed 0"]
    doc = " ".join(budget.__doc__.split())  # line breaks as spaces
    assert f"SB {budget.EXPECTED_EPOCHS[0]} and LB {budget.EXPECTED_EPOCHS[1]} epochs" in doc
    assert f"~ {round(per_seed):,} s" in doc
    assert f"~ {round(len(FULL.seeds) * per_seed):,} s" in doc
    assert f"~ {round(expected['sweep']):,} s" in doc
    assert f"~ {round(expected['noise scale']):,} s" in doc
    assert f"~ {round(sum(expected.values())):,} s" in doc
    assert f"~ {round(budget.run_seconds(FULL.sb, budget.EXPECTED_EPOCHS[0], eval_train=True) + budget.run_seconds(FULL.lb, budget.EXPECTED_EPOCHS[1], eval_train=True))} s" in doc  # noqa: E501
    assert f"{round(sum(budget.estimate(FULL).values())):,} s" in doc
    assert f"about {round(sum(expected.values()) / 60)} minutes of one core" in doc
    assert f"~ {round(budget.interpolation_seconds(FULL))} s" in doc
    assert f"~ {round(2 * budget.sharpness_seconds(FULL))} s" in doc


def test_quick_study_fits_five_minutes_even_at_the_cap():
    assert sum(budget.estimate(QUICK).values()) < FIVE_MINUTES


def test_epoch_cost_model_matches_the_measurements():
    # bench/results/fashion_epochs_sweep_ends.json and _timing.json: CPU s per epoch
    assert budget.epoch_seconds(32) == pytest.approx(29.6, rel=0.1)
    assert budget.epoch_seconds(256) == pytest.approx(6.9, rel=0.3)
    assert budget.epoch_seconds(6000) == pytest.approx(5.6, rel=0.05)
    assert budget.epoch_seconds(256) > 6.9  # an over- rather than an under-estimate


# --- summaries ---------------------------------------------------------------------------------


def _results(seed: int, batch: int, epochs: int, acc: float, reason: str | None) -> dict:
    return {"status": "completed", "lr": 1e-3, "epochs_completed": epochs, "train_seconds": 9.0,
            "config": {"batch_size": batch, "epochs": 30, "seed": seed},
            "stopped_early": None if reason is None else {"epoch": epochs, "reason": reason},
            "final": {"train_acc": acc, "train_loss": 1 - acc, "val_acc": acc - 0.05,
                      "val_loss": 1.2 - acc, "train_eval_acc": acc + 0.01,
                      "train_eval_loss": 0.9 - acc}}


def _sharpness(phi: float, top: float) -> dict:
    return {"sharpness": [{"subspace": "full", "eps": 1e-3, "bn": "batch", "phi": phi / 5},
                          {"subspace": "full", "eps": 1e-3, "bn": "running", "phi": phi},
                          {"subspace": "random:100", "eps": 1e-3, "bn": "running",
                           "phi": phi / 10}],
            "by_bn": {"batch": {"hessian": {"top_eigenvalues": [top / 5]},
                                "gradient_norm": 0.1},
                      "running": {"hessian": {"top_eigenvalues": [top]},
                                  "gradient_norm": top / 100}}}


def test_side_records_and_their_summary():
    records = [side_record(0, "sb", _results(0, 256, 20, 0.971, "train_acc 0.9710 >= 0.97"),
                           _sharpness(1.0, 10.0)),
               side_record(0, "lb", _results(0, 6000, 30, 0.95, None), _sharpness(5.0, 50.0)),
               side_record(1, "sb", _results(1, 256, 22, 0.973, "train_acc 0.9730 >= 0.97"),
                           _sharpness(3.0, 12.0)),
               side_record(1, "lb", _results(1, 6000, 17, 0.972, "plateau"),
                           _sharpness(7.0, 54.0))]
    assert records[0]["stopped_by"] == "train_acc 0.9710 >= 0.97"
    assert records[1]["stopped_by"] == "epochs cap (30)"
    # every sharpness column names its BatchNorm convention
    assert records[1]["phi random:100 eps=0.001 bn=running"] == 0.5
    assert records[1]["phi full eps=0.001 bn=batch"] == 1.0
    assert (records[1]["hessian_top bn=batch"], records[1]["grad_norm bn=running"]) == \
        (10.0, 0.5)
    summary = side_summary(records)
    assert summary["sb"]["epochs"] == {"mean": 21.0, "std": math.sqrt(2), "n": 2}
    assert summary["lb"]["phi full eps=0.001 bn=running"]["mean"] == 6.0
    assert summary["lb"]["hessian_top bn=running"]["std"] == pytest.approx(math.sqrt(8))
    assert summary["sb"]["test_acc"]["mean"] == pytest.approx(0.922)
    # the eval-mode training fit is the run's own (results.json's final, the rule's number)
    assert (records[3]["train_acc_eval"], records[3]["train_loss_eval"]) == \
        pytest.approx((0.982, 0.9 - 0.972))
    old_run = _results(2, 256, 5, 0.9, None)
    del old_run["final"]["train_eval_acc"], old_run["final"]["train_eval_loss"]
    assert side_record(2, "sb", old_run, _sharpness(1.0, 1.0))["train_acc_eval"] is None


def test_stop_text_of_a_run_that_did_not_complete():
    assert stop_text({"status": "diverged", "config": {"epochs": 5}}) == "diverged"


def test_mean_std_skips_missing_values():
    assert mean_std([1.0, None, float("nan"), 3.0]) == {"mean": 2.0, "std": math.sqrt(2),
                                                        "n": 2}
    assert mean_std([4.0]) == {"mean": 4.0, "std": None, "n": 1}
    assert mean_std([]) == {"mean": None, "std": None, "n": 0}


def test_interpolation_band_over_seeds():
    seed0 = [{"alpha": 0.0, "split": "train", "loss": 0.1, "accuracy": 0.9},
             {"alpha": 1.0, "split": "train", "loss": 0.3, "accuracy": 0.8},
             {"alpha": 1.125, "split": "train", "loss": 3.0, "accuracy": 0.2}]  # refined
    seed1 = [{"alpha": 0.0, "split": "train", "loss": 0.3, "accuracy": 0.7},
             {"alpha": 1.0, "split": "train", "loss": float("nan"), "accuracy": 0.6}]
    band = interpolation_band([seed0, seed1])
    assert [(p["split"], p["alpha"]) for p in band] == [("train", 0.0), ("train", 1.0)]
    assert band[0]["loss_mean"] == pytest.approx(0.2)
    assert band[0]["accuracy_std"] == pytest.approx(math.sqrt(0.02))
    assert (band[1]["n"], band[1]["loss_mean"], band[1]["loss_std"]) == (1, 0.3, None)


def test_falling_batch_rule():
    def rows(*accs):
        return [{"batch_size": 32 * 2 ** i, "best_val_acc": a} for i, a in enumerate(accs)]

    found = falling_batch(rows(0.90, 0.905, 0.899, 0.896, 0.80), drop_points=1.0)
    assert found["best"]["batch_size"] == 64
    assert found["fall"]["batch_size"] == 512 and found["before"] == 256
    # 0.9 points below is not a fall; the smaller batch wins a tie for the best
    none = falling_batch(rows(0.90, 0.891, 0.90), drop_points=1.0)
    assert (none["best"]["batch_size"], none["fall"], none["largest"]) == (32, None, 128)
    # a batch below the best does not count as a fall, and missing runs are skipped
    low_first = rows(0.85, 0.90, None, 0.88)
    found = falling_batch(low_first, drop_points=1.0)
    assert found["fall"]["batch_size"] == 256 and found["before"] == 64


# --- end to end ------------------------------------------------------------------------------




@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    require_real_fashion_mnist()
    out = tmp_path_factory.mktemp("fashion") / "out"
    start = time.monotonic()
    summary = run_fashion_study(out, QUICK, data_dir=str(out / "no-data-here"),
                                progress=False)
    return out, summary, time.monotonic() - start


@pytest.mark.slow
def test_quick_study_runs_within_five_minutes_and_links_everything(quick):
    out, summary, seconds = quick
    assert summary["status"] == "completed"
    assert seconds < scaled_timeout(FIVE_MINUTES), f"took {seconds:.0f} s"
    index = (out / "index.md").read_text()
    assert "This is the `--quick` variant" in index
    for target in re.findall(r"\]\(([^)]+)\)", index):
        assert (out / target).is_file(), target
    assert (out / ".gitignore").read_text() == "/work/\n"
    from matplotlib.image import imread

    assert imread(out / "keskar" / "interpolation_band.png").shape[2] in (3, 4)


@pytest.mark.slow
def test_quick_index_agrees_with_its_json_and_csv(quick):
    out, _, _ = quick
    index = (out / "index.md").read_text()
    study = json.loads((out / "study.json").read_text())
    with (out / "keskar" / "runs.csv").open() as handle:
        runs = list(csv.DictReader(handle))
    assert {int(r["seed"]) for r in runs} == set(QUICK.seeds)
    assert study["quick"] is True and study["spec"] == QUICK.to_dict()

    # How far each run trained: one row per seed and side, as in runs.csv.
    shown = markdown_table(index, "seed")
    assert [(r["seed"], r["side"], r["epochs (cap)"], r["stopped by"]) for r in shown] == [
        (r["seed"], r["side"].upper(), f"{r['epochs']} ({r['epochs_cap']})", r["stopped_by"])
        for r in runs]
    # QUICK's rule: SB (eval-mode training accuracy ~0.875 after epoch 1) meets the 0.85
    # target and stops early; LB (~0.82 after 2) runs to the 2-epoch cap, which the index
    # says. results.json records the rule that fired.
    assert [(r["side"], r["epochs"]) for r in runs] == [("sb", "1"), ("lb", "2")] * len(QUICK.seeds)
    for run in runs:
        if run["side"] == "sb":
            assert run["stopped_by"] == f"train_eval_acc {float(run['train_acc_eval']):.4f} " \
                                        ">= 0.85 at epoch 1", run
        else:
            assert run["stopped_by"] == "epochs cap (2)" and float(run["train_acc_eval"]) < 0.85
    assert "2 of 4 runs ran to the epochs cap" in index
    for row, run in zip(shown, runs, strict=True):
        assert row["train acc"] == f"{100 * float(run['train_acc']):.2f}%"
        results = json.loads((out / "work" / f"keskar-s{run['seed']}" / run["side"]
                              / "results.json").read_text())
        assert float(run["train_acc"]) == results["final"]["train_acc"]
        assert int(run["epochs"]) == results["epochs_completed"] <= QUICK.epochs_cap

    # The per-side means ± std, from study.json, beside the paper's row.
    keskar = {r[""]: r for r in markdown_table(index, "")}
    summary = study["numbers"]["summary"]
    for side in ("sb", "lb"):
        ours = keskar[f"{side.upper()} (ours, Fashion-MNIST)"]
        acc = summary[side]["test_acc"]
        assert ours["test acc (%)"] == f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f}"
        values = [float(r["test_acc"]) for r in runs if r["side"] == side]
        assert acc["mean"] == pytest.approx(sum(values) / len(values))
    assert keskar["SB (paper, MNIST)"]["test acc (%)"] == "98.03 ± 0.07"

    # Every SB-vs-LB difference, paired by seed, with its interval and p-value.
    paired = {r["measure"]: r for r in markdown_table(index, "measure")}
    for bn in ("batch", "running"):  # both conventions, named in the columns and the table
        assert f"phi full eps=0.001 bn={bn}" in runs[0]
        key = f"phi full eps=0.001 bn={bn}"
        row, d = paired[f"φ full, ε=0.001, bn={bn}"], study["numbers"]["paired"][key]
        phi = summary["lb"][key]
        assert row["LB"] == f"{phi['mean']:.3f} ± {phi['std']:.3f}"
        assert row["LB − SB"] == f"{d['mean']:+.3f}" and row["p"] == f"{d['p']:.2g}"
        assert row[f"differs (p < {study['numbers']['alpha']:g})"] == \
            ("yes" if d["p"] < study["numbers"]["alpha"] else "no")
        assert f"grad_norm bn={bn}" in runs[0] and float(runs[0][f"grad_norm bn={bn}"]) > 0
    assert paired["φ full, ε=0.001, bn=batch"]["paper LB (MNIST)"] == "205.14 ± 69.52"
    assert paired["φ full, ε=0.001, bn=running"]["paper LB (MNIST)"] == "—"
    assert "p = " in index and "paired t-test" in index

    # The sentences are study.json's, and the wall time is printed.
    for sentence in study["numbers"]["sentences"]:
        assert f"- {sentence}" in index
    assert "Measured wall time: **" in index and study["seconds"]["total"] > 0
    assert f"{study['machine']['cores']} cores" in index

    # The sweep table and the noise scale agree with the sweep's CSV and noise_scale.json.
    with (out / "sweep" / "results.csv").open() as handle:
        sweep = list(csv.DictReader(handle))
    shown = markdown_table(index, "batch size")
    assert [int(r["batch size"]) for r in shown] == list(QUICK.sweep_batch_sizes)
    for row, csv_row in zip(shown, sweep, strict=True):
        assert row["best val acc"] == f"{100 * float(csv_row['best_val_acc']):.2f}%"
        assert row["final val acc"] == f"{100 * float(csv_row['final_val_acc']):.2f}%"
        # validation held out of the training set; the test split once, in its own column
        assert csv_row["val_split"] == "5000"
        if csv_row["status"] == "completed":
            assert row["test acc"] == f"{100 * float(csv_row['test_acc']):.2f}%"
        assert row["status"].startswith(csv_row["status"])
        assert row["status"].endswith("(unstable)") == (csv_row["unstable"] == "True")
    assert "## 2. The batch-size sweep at a fixed epoch budget" in index
    assert "does not locate the critical batch" in index
    assert study["numbers"]["falling_batch_final"]["drop_points"] == 1.0
    noise = json.loads((out / "work" / "sweep" / "runs" / f"b{QUICK.sweep_batch_sizes[0]}-s0"
                        / "noise_scale.json").read_text())
    assert study["numbers"]["b_simple"] == noise["b_simple"]
    assert noise["spec"] == QUICK.noise_scale.to_dict()


@pytest.mark.slow
def test_rerun_resumes_without_training_or_measuring_again(quick, caplog):
    out, _, _ = quick
    watched = sorted((out / "work").rglob("*.json")) + sorted((out / "work").rglob("*.csv"))
    before = {p: p.stat().st_mtime_ns for p in watched if p.name != "timings.json"}
    caplog.set_level("INFO", logger="lbtkit")
    start = time.monotonic()
    again = run_fashion_study(out, QUICK, data_dir=str(out / "no-data-here"), progress=False)
    assert again["status"] == "completed"
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert "up to date" in caplog.text
    assert time.monotonic() - start < scaled_timeout(120)


def test_cli_study_fashion_is_wired(tmp_path):
    result = invoke_cli("study", "fashion", "--help", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--quick" in result.stdout and "--output" in result.stdout


def test_cli_refuses_a_single_seed_in_one_line(tmp_path):
    result = invoke_cli("study", "fashion", "--seeds", "1", "--output", tmp_path / "out",
                        tmp_path=tmp_path)
    assert_user_error(result, "seeds must be at least two different seeds")
    assert not (tmp_path / "out").exists()
