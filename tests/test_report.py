"""The sweep report: tables that match the run files, CSV, figures, and damaged sweeps."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from lbtkit.config import RunConfig, preset_values
from lbtkit.fileio import write_json
from lbtkit.markdown import format_duration, format_lr
from lbtkit.report import collect, write_report
from lbtkit.rundir import RunDir
from lbtkit.sweep import plan_sweep, run_all

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_base() -> RunConfig:
    # log_every=1: the loop checks for a non-finite loss every step, so divergence is quick.
    return RunConfig().updated(preset_values("smoke")).updated({"epochs": 1, "log_every": 1})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trained tiny sweep: b32/b64 x base_lr 0.05 (completes) / 1e6 (diverges)."""
    import torch

    root = tmp_path_factory.mktemp("tiny-sweep")
    plan_sweep(tiny_base(), {"batch_size": [32, 64], "base_lr": [0.05, 1e6]}, root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads on a shared 2-core box thrash; tiny ops gain nothing
    try:
        run_all(root, progress=False)
    finally:
        torch.set_num_threads(threads)
    return root


def fake_run(entry: dict, status: str, *, best: float | None = None, epochs: int = 3,
             seconds: float = 100.0, rate: float = 1000.0,
             losses: list[float] | None = None) -> dict:
    """Write a run directory as train.run would, with made-up numbers (``losses``: the
    training loss per epoch, else 2/epoch); return results."""
    run = RunDir(entry["run_dir"])
    run.create()
    write_json(run.config_path, entry["config"])
    accs = [] if best is None else [best - 0.1 * (epochs - 1 - e) for e in range(epochs)]
    for epoch, acc in enumerate(accs, start=1):
        loss = 2.0 / epoch if losses is None else losses[epoch - 1]
        run.append_metrics({"epoch": epoch, "step": 10 * epoch, "train_loss": loss,
                            "val_acc": acc, "images_per_second": rate,
                            "elapsed_s": seconds * epoch / epochs})
    results = {
        "status": status, **entry["batch_plan"], "lr": entry["config"]["lr"],
        "epochs_completed": len(accs), "best_val_acc": best,
        "final": None if best is None else {"train_loss": 2.0 / epochs, "train_acc": 0.5,
                                            "val_loss": 0.3, "val_acc": accs[-1]},
        "train_seconds": seconds, "images_per_second": rate if best is not None else None,
    }
    write_json(run.results_path, results)
    return results


def table(markdown: str, heading: str) -> list[dict[str, str]]:
    """The rows of the first markdown table after ``heading``, as dicts by column name."""
    lines = markdown.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    header, body = rows[0], rows[2:]
    return [dict(zip(header, cells, strict=True)) for cells in body]


def assert_png(path) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.load()
        assert image.width > 100 and image.height > 100


# --- from a trained sweep ----------------------------------------------------------------------


def test_report_table_matches_results_files(trained, tmp_path):
    paths = write_report(trained, tmp_path)
    assert set(paths) == {"report", "csv", "accuracy_vs_batch", "learning_curves"}
    text = paths["report"].read_text()
    assert "f1 on digits, 1 epoch, sgd" in text and "2 completed, 2 diverged" in text
    rows = table(text, "## Results")
    assert [r["batch size"] for r in rows] == ["32", "32", "64", "64"]
    assert [r["base_lr"] for r in rows] == ["0.05", "1e6", "0.05", "1e6"]
    assert [r["status"] for r in rows] == ["completed", "diverged", "completed", "diverged"]
    assert [r["initial lr (scaled)"] for r in rows] == ["0.025", "5e5", "0.05", "1e6"]
    names = ["b32-s0-base_lr0.05", "b32-s0-base_lr1e6", "b64-s0-base_lr0.05",
             "b64-s0-base_lr1e6"]
    for row, name in zip(rows, names, strict=True):
        results = json.loads((trained / "runs" / name / "results.json").read_text())
        if results["status"] == "completed":
            assert row["best val top-1"] == f"{100 * results['best_val_acc']:.2f}%"
            assert row["final val top-1"] == f"{100 * results['final']['val_acc']:.2f}%"
            assert row["epochs"] == "1/1" and row["per-GPU batch"] == row["batch size"]
            assert row["wall time"] == format_duration(results["train_seconds"])
        else:
            assert row["best val top-1"] == row["final val top-1"] == "—"
    for name in ("accuracy_vs_batch.png", "learning_curves.png", "results.csv"):
        assert f"]({name})" in text
    assert_png(paths["accuracy_vs_batch"])
    assert_png(paths["learning_curves"])


def test_csv_rows_match_results_json(trained, tmp_path):
    paths = write_report(trained, tmp_path)
    with open(paths["csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    for row in rows:
        results = json.loads((trained / row["run_dir"] / "results.json").read_text())
        assert row["status"] == results["status"]
        assert int(row["batch_size"]) == results["config"]["batch_size"]
        assert float(row["lr"]) == results["lr"]
        assert float(row["train_seconds"]) == results["train_seconds"]
        if results["status"] == "completed":
            assert float(row["best_val_acc"]) == results["best_val_acc"]
            assert float(row["final_val_acc"]) == results["final"]["val_acc"]
            assert float(row["final_train_loss"]) == results["final"]["train_loss"]
            assert float(row["images_per_second"]) == results["images_per_second"]
            assert 0 <= float(row["best_val_acc"]) <= 1
        else:
            assert row["best_val_acc"] == row["final_val_acc"] == ""


def test_validation_on_the_test_split_is_said_and_has_no_test_column(trained, tmp_path):
    text = write_report(trained, tmp_path)["report"].read_text()
    assert "Validation is the dataset's test split" in text
    assert "selected on the test set" in text
    assert "test top-1" not in table(text, "## Results")[0]
    assert "# Batch-size sweep at a fixed epoch budget: " in text


@pytest.fixture(scope="module")
def held_out_sweep(tmp_path_factory):
    """A trained tiny sweep that holds 300 of digits' training images out as validation."""
    import torch

    root = tmp_path_factory.mktemp("held-out-sweep")
    plan_sweep(tiny_base().updated({"val_split": 300, "num_classes": 10}),
               {"batch_size": [32, 64]}, root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_all(root, progress=False)
    finally:
        torch.set_num_threads(threads)
    return root


def test_held_out_validation_and_the_test_accuracy_are_reported_apart(held_out_sweep, tmp_path):
    paths = write_report(held_out_sweep, tmp_path)
    text = paths["report"].read_text()
    assert "Validation: 300 images held out of the training set" in text
    assert "evaluated once at the end of each completed run, never selected on" in text
    assert "# Batch-size sweep at a fixed epoch budget: " in text
    assert "**A fixed epoch budget**: every run trains 1 epoch, whatever its batch size" in text
    with open(paths["csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    shown = table(text, "## Results")
    for row, cells in zip(rows, shown, strict=True):
        results = json.loads((held_out_sweep / row["run_dir"] / "results.json").read_text())
        assert results["status"] == "completed"
        # the test split, once at the end, is a column of its own beside best and final val
        assert float(row["test_acc"]) == results["test_acc"]
        assert float(row["test_loss"]) == results["test_loss"]
        assert float(row["best_val_acc"]) == results["best_val_acc"]
        assert float(row["final_val_acc"]) == results["final"]["val_acc"]
        assert row["val_split"] == "300"
        assert cells["test top-1"] == f"{100 * results['test_acc']:.2f}%"
        assert cells["best val top-1"] == f"{100 * results['best_val_acc']:.2f}%"
        steps = (1437 - 300) // int(row["batch_size"])  # one epoch of whole batches
        assert int(row["steps"]) == steps and cells["steps"] == f"{steps:,}"
    assert f"fewer optimizer steps ({(1437 - 300) // 32:,} at batch 32, " in text
    assert_png(paths["accuracy_vs_batch"])
    assert_png(paths["learning_curves"])


def test_report_defaults_to_the_sweep_dir(trained):
    paths = write_report(trained)
    assert paths["report"] == trained / "report.md" and paths["report"].is_file()


# --- synthetic sweeps (no training) --------------------------------------------------------------


def test_seeds_are_summarised_mean_and_std_per_batch_size(tmp_path):
    sweep = plan_sweep(tiny_base(), {"batch_size": [32, 64], "seed": [0, 1, 2]}, tmp_path,
                       world_size=2)
    bests = {0: 0.9, 1: 0.92, 2: 0.95, 3: 0.8, 4: 0.86}
    for entry in sweep["runs"]:
        index = entry["index"]
        fake_run(entry, "completed" if index in bests else "diverged", best=bests.get(index),
                 seconds=3725.0)
    text = write_report(tmp_path)["report"].read_text()
    summary = table(text, "## Summary over seeds")
    assert [r["batch size"] for r in summary] == ["32", "64"]
    b32 = [bests[i] for i in (0, 1, 2)]
    assert summary[0]["best val top-1"] == (f"{100 * statistics.mean(b32):.2f} ± "
                                            f"{100 * statistics.stdev(b32):.2f}%")
    assert summary[0]["seeds"] == "3/3" and summary[0]["status"] == "3 completed"
    assert summary[1]["seeds"] == "2/3" and summary[1]["status"] == "2 completed, 1 diverged"
    assert summary[0]["per-GPU batch"] == "16" and summary[0]["wall time"] == "1:02:05"
    runs = table(text, "## Per-run results")
    assert [(r["batch size"], r["seed"]) for r in runs] == [
        ("32", "0"), ("32", "1"), ("32", "2"), ("64", "0"), ("64", "1"), ("64", "2")
    ]
    assert runs[4]["best val top-1"] == "86.00%" and runs[5]["status"] == "diverged"


def test_pending_and_corrupt_runs_are_reported_not_dropped(tmp_path):
    sweep = plan_sweep(tiny_base(), {"batch_size": [16, 32, 64, 128]}, tmp_path)
    first = fake_run(sweep["runs"][0], "completed", best=0.9)
    broken = fake_run(sweep["runs"][2], "completed", best=0.8)
    assert broken["status"] == "completed"
    RunDir(sweep["runs"][2]["run_dir"]).results_path.write_text('{"status": "compl')
    RunDir(sweep["runs"][3]["run_dir"]).create()  # started, nothing written yet: running
    write_json(RunDir(sweep["runs"][3]["run_dir"]).config_path, sweep["runs"][3]["config"])
    rows = collect(tmp_path)
    assert [r["status"] for r in rows] == ["completed", "pending", "unreadable", "running"]
    assert rows[0]["best_val_acc"] == first["best_val_acc"]
    assert rows[2]["best_val_acc"] is None and rows[2]["final_val_acc"] is None
    paths = write_report(tmp_path)
    table_rows = table(paths["report"].read_text(), "## Results")
    assert [r["status"] for r in table_rows] == ["completed", "pending", "unreadable", "running"]
    assert [r["best val top-1"] for r in table_rows] == ["90.00%", "—", "—", "—"]
    assert_png(paths["accuracy_vs_batch"])
    assert_png(paths["learning_curves"])


def test_no_completed_runs_still_writes_everything(tmp_path):
    sweep = plan_sweep(tiny_base(), {"batch_size": [32]}, tmp_path)
    fake_run(sweep["runs"][0], "diverged")
    paths = write_report(tmp_path, tmp_path / "out")
    text = paths["report"].read_text()
    assert "No completed runs" in text and table(text, "## Results")[0]["status"] == "diverged"
    with open(paths["csv"], newline="") as handle:
        assert [r["status"] for r in csv.DictReader(handle)] == ["diverged"]
    assert_png(paths["accuracy_vs_batch"])
    assert_png(paths["learning_curves"])


def test_a_training_loss_above_chance_is_reported_unstable(tmp_path):
    import math

    base = tiny_base().updated({"num_classes": 10})
    sweep = plan_sweep(base, {"batch_size": [32, 64, 128, 256]}, tmp_path)
    fake_run(sweep["runs"][0], "completed", best=0.9, losses=[1.2, 0.6, 0.4])
    fake_run(sweep["runs"][1], "completed", best=0.88, losses=[2.2, 2.31, 0.5])  # just above
    fake_run(sweep["runs"][2], "completed", best=0.5, losses=[4.9, 3.0, 2.0])
    fake_run(sweep["runs"][3], "diverged")
    RunDir(sweep["runs"][3]["run_dir"]).append_metrics({"epoch": 1, "train_loss": 7.5})
    rows = collect(tmp_path)
    assert all(r["chance_loss"] == pytest.approx(math.log(10)) for r in rows)
    assert [r["unstable"] for r in rows] == [False, True, True, True]
    assert [(r["max_train_loss"], r["max_train_loss_epoch"]) for r in rows] == [
        (1.2, 1), (2.31, 2), (4.9, 1), (7.5, 1)]
    paths = write_report(tmp_path)
    text = paths["report"].read_text()
    assert [r["status"] for r in table(text, "## Results")] == [
        "completed", "completed (unstable)", "completed (unstable)", "diverged"]
    assert "chance, ln(number of classes) = 2.30" in text
    assert ("Unstable: batch 64, seed 0 (training loss 2.31 at epoch 2); batch 128, seed 0 "
            "(training loss 4.90 at epoch 1).") in text
    assert "Diverged (a non-finite training loss stopped the run): batch 256, seed 0." in text
    with open(paths["csv"], newline="") as handle:
        assert [r["unstable"] for r in csv.DictReader(handle)] == ["False", "True", "True",
                                                                    "True"]
    assert_png(paths["learning_curves"])


def test_a_stable_sweep_says_so(tmp_path):
    sweep = plan_sweep(tiny_base().updated({"num_classes": 10}), {"batch_size": [32]}, tmp_path)
    fake_run(sweep["runs"][0], "completed", best=0.9)
    assert "No run was unstable or diverged." in write_report(tmp_path)["report"].read_text()


def test_a_sweep_over_epochs_or_with_a_stopping_rule_is_no_fixed_budget(tmp_path):
    from lbtkit.report import fixed_epochs

    assert fixed_epochs(plan_sweep(tiny_base(), {"batch_size": [32]}, tmp_path / "a")) == 1
    assert fixed_epochs(plan_sweep(tiny_base(), {"batch_size": [32], "epochs": [1, 2]},
                                   tmp_path / "b")) is None
    assert fixed_epochs(plan_sweep(tiny_base().updated({"stop_train_acc": 0.9}),
                                   {"batch_size": [32]}, tmp_path / "c")) is None
    sweep = plan_sweep(tiny_base(), {"batch_size": [32], "epochs": [1, 2]}, tmp_path / "d")
    fake_run(sweep["runs"][0], "completed", best=0.9)
    assert "fixed epoch budget" not in write_report(tmp_path / "d")["report"].read_text()


def test_the_accuracy_range_shows_a_one_point_drop_beside_a_collapse():
    from lbtkit.report import accuracy_ylim

    low, high = accuracy_ylim([90.4, 90.1, 89.3, 86.2, 42.5])
    assert high - low <= 10.0 and low < 86.2 and high > 90.4  # 42.5 sits on the axis
    assert accuracy_ylim([90.0, 89.0]) == (88.5, 90.5)


def test_results_with_wrong_types_give_empty_numbers(tmp_path):
    sweep = plan_sweep(tiny_base(), {"batch_size": [32]}, tmp_path)
    fake_run(sweep["runs"][0], "completed", best=0.9)
    write_json(RunDir(sweep["runs"][0]["run_dir"]).results_path,
               {"status": "completed", "best_val_acc": "high", "final": [1],
                "train_seconds": None, "world_size": "two"})
    (row,) = collect(tmp_path)
    assert row["status"] == "completed" and row["best_val_acc"] is None
    assert row["final_val_acc"] is None and row["world_size"] == 1
    assert write_report(tmp_path)["report"].is_file()


# --- formatters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value,text", [
    (3e-4, "3e-4"), (6e-4, "6e-4"), (0.0012, "1.2e-3"), (3e-4 * 4, "1.2e-3"),
    (2.4e-3, "2.4e-3"), (4.8e-3, "4.8e-3"), (9.6e-3, "9.6e-3"), (0.1, "0.1"), (0.05, "0.05"),
    (0.025, "0.025"), (0.1414213562, "0.141"), (1.0, "1"), (12.5, "12.5"), (1e6, "1e6"),
    (5e5, "5e5"), (9.999e-3, "0.01"), (9.94e-3, "9.94e-3"), (1e-5, "1e-5"), (0.0, "0"),
])
def test_format_lr(value, text):
    assert format_lr(value) == text


@pytest.mark.parametrize("seconds,text", [
    (0, "0:00:00"), (59.4, "0:00:59"), (59.6, "0:01:00"), (3725, "1:02:05"),
    (90000, "25:00:00"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_series_at_one_batch_size_are_dodged_apart_and_centred():
    from lbtkit.report import dodge_factor

    assert dodge_factor(0, 1) == 1.0
    factors = [dodge_factor(i, 7) for i in range(7)]
    assert factors == sorted(factors) and len(set(factors)) == 7
    assert factors[3] == 1.0 and factors[0] * factors[6] == pytest.approx(1.0)
    assert factors[6] < 2 ** 0.5  # never as far as the next batch size on a log2 axis
