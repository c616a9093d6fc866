"""``lbtkit study critical-batch --quick`` end to end on the real Fashion-MNIST: the same code
path as the full study (rounds, extensions, remedies, noise scale, fit, report) on three batch
sizes and easy targets; then a rerun resumes without training and refits the same numbers, and
fit.json is recomputed from steps.csv alone."""

from __future__ import annotations

import csv
import json

import pytest

from lbtkit.specs import CriticalBatchSpec
from lbtkit.studies.critical_batch import (
    QUICK,
    Point,
    extensions,
    initial_points,
    read_steps_csv,
    run_critical_batch_study,
)
from lbtkit.studies.critical_batch_report import STEPS_COLUMNS, analyse

from helpers import require_real_fashion_mnist

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    require_real_fashion_mnist()
    output = tmp_path_factory.mktemp("critical") / "study"
    result = run_critical_batch_study(output, QUICK.updated(jobs=2), data_dir="data",
                                      progress=False)
    return output, result


def test_quick_study_writes_the_table_the_fit_and_the_figures(quick_study):
    output, result = quick_study
    assert result["status"] == "completed"
    for name in ("index.md", "fit.json", "steps.csv", "study.json", "steps_vs_batch.png",
                 "steps_vs_examples.png", "bcrit_vs_target.png"):
        assert (output / name).is_file(), name
    with (output / "steps.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == STEPS_COLUMNS
    runs = {(r["round"], r["run"]) for r in rows}
    assert len(rows) == len(runs) * len(QUICK.targets)
    # Every SGD point of round 0 is there for every seed, and the remedies at the largest batch.
    for point in initial_points(QUICK):
        seeds = {int(r["seed"]) for r in rows if r["optimizer"] == point.optimizer and
                 int(r["batch_size"]) == point.batch_size and float(r["lr"]) == point.lr}
        assert seeds == set(QUICK.seeds), point
    fit = json.loads((output / "fit.json").read_text())
    assert [t["target"] for t in fit["targets"]] == list(QUICK.targets)
    fitted = [t for t in fit["targets"] if t["b_crit"] is not None]
    assert fitted, "no target was fitted"
    for t in fitted:
        low, high = t["b_crit_ci"]
        assert low <= high and t["b_crit"] == pytest.approx(t["e_min"] / t["s_min"])
        assert set(t["regimes"]) <= {str(b) for b in QUICK.batch_sizes}
    index = (output / "index.md").read_text()
    assert "B_crit" in index and "steps_vs_batch.png" in index and "{{" not in index


def test_the_fit_is_recomputed_from_steps_csv_alone(quick_study):
    output, _ = quick_study
    stored = json.loads((output / "fit.json").read_text())
    noise = {t["target"]: {"b_simple": t["b_simple"], "b_simple_se": t["b_simple_se"],
                           "step": t.get("b_simple_step"), "run": t.get("b_simple_run"),
                           "file": t.get("b_simple_file")}
             for t in stored["targets"] if t.get("b_simple") is not None}
    again = analyse(QUICK, read_steps_csv(output / "steps.csv"), noise)["fit"]
    assert json.loads(json.dumps(again)) == stored


def test_rerunning_resumes_without_training_and_gives_the_same_fit(quick_study):
    output, _ = quick_study
    before = (output / "fit.json").read_text()
    weights = sorted(output.glob("work/round-*/runs/*/model.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in weights]
    again = run_critical_batch_study(output, QUICK, data_dir="data", progress=False)
    assert again["status"] == "completed"
    assert (output / "fit.json").read_text() == before
    assert [p.stat().st_mtime_ns for p in weights] == stamps


def test_an_edge_of_grid_optimum_triggers_the_extension():
    spec = CriticalBatchSpec(batch_sizes=(64, 128, 256), lr_factors=(0.5, 1.0, 2.0),
                             remedies=(), reference_batch=64)

    def records_of(table):
        return [{"optimizer": "sgd", "target": "train_loss<=0.5", "batch_size": batch,
                 "lr": lr, "seed": seed, "steps": steps, "status": "reached"}
                for batch, lr, steps in table for seed in (0, 1)]

    records = records_of([(64, 0.1, 300), (64, 0.2, 200), (64, 0.4, 250),  # interior
                          (128, 0.1, 300), (128, 0.2, 200), (128, 0.4, 150),  # best high
                          (256, 0.1, 100), (256, 0.2, 200), (256, 0.4, 300)])  # best low
    assert extensions(spec, records) == [Point("sgd", 128, 0.8), Point("sgd", 256, 0.05)]
    # Once tried and worse, the best is interior: nothing more to add.
    records += records_of([(128, 0.8, 170), (256, 0.05, 120)])
    assert extensions(spec, records) == []


def test_the_headline_names_the_hardest_fitted_training_loss_target():
    from pathlib import Path

    from lbtkit.studies.critical_batch_report import REGIME_FACTOR, headline

    docs = Path(__file__).resolve().parents[1] / "docs" / "critical-batch"
    fit = json.loads((docs / "fit.json").read_text())
    said = headline(fit)
    hardest = next(t for t in fit["targets"] if t["target"] == "train_loss<=0.4")
    assert said["target"] == "train_loss ≤ 0.4" and said["b_crit"] == hardest["b_crit"]
    assert said["beyond"] == REGIME_FACTOR * said["b_crit"]
    low, high = hardest["b_crit_ci"]
    assert f"B_crit = {hardest['b_crit']:,.0f} (95% interval {low:,.0f}–{high:,.0f})" in \
        (docs / "index.md").read_text()
    only_val = {"targets": [{"target": "val_error<=0.16", "b_crit": 400.0, "b_crit_ci": None},
                            {"target": "train_loss<=0.5", "b_crit": None}]}
    assert headline(only_val)["target"] == "val_error ≤ 0.16"
    assert headline({"targets": [{"target": "train_loss<=0.5", "b_crit": None}]}) is None
