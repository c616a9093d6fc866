"""The sweep report's markdown, byte for byte.

docs/fashion/sweep is rebuilt from its committed results.csv (and the noise scale its report
lists) and must come out identical, report.md and results.csv. The synthetic sweeps below
cover the report's other branches (seeds, variants, damaged and unfinished runs, the lr rules,
the epoch budget, the noise scale); their expected reports in tests/golden/sweep_report were
written by the f-string code that the template replaced, so the template says the same.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lbtkit.config import RunConfig, build_config, preset_values
from lbtkit.fileio import write_json
from lbtkit.report import write_report
from lbtkit.rundir import RunDir
from lbtkit.sweep import load_sweep, plan_sweep

GOLDEN = Path(__file__).parent / "golden" / "sweep_report"
FASHION_SWEEP = Path(__file__).resolve().parent.parent / "docs" / "fashion" / "sweep"


def write_run(entry: dict[str, Any], status: str | None, *, best: float | None = None,
              epochs: int | None = None, losses: list[float] | None = None, steps: int = 10,
              noise: dict[str, float] | None = None, **results: Any) -> None:
    """A run directory as training leaves it (``status`` None: started, no results yet):
    one metrics row per epoch (``losses``, else 2/epoch), results.json with ``results`` over
    the usual fields, and ``noise`` as its noise_scale.json."""
    run = RunDir(entry["run_dir"])
    run.create()
    write_json(run.config_path, entry["config"])
    epochs = entry["config"]["epochs"] if epochs is None else epochs
    losses = losses or [2.0 / epoch for epoch in range(1, epochs + 1)]
    for epoch, loss in enumerate(losses, start=1):
        run.append_metrics({"epoch": epoch, "step": steps * epoch, "train_loss": loss,
                            **({} if best is None else {"val_acc": best - 0.01 * (epochs - epoch)}),
                            "elapsed_s": 10.0 * epoch})
    if noise is not None:
        write_json(run.root / "noise_scale.json", noise)
    if status is None:
        return
    write_json(run.results_path, {
        "status": status, **entry["batch_plan"], "epochs_completed": len(losses),
        "best_val_acc": best, "final": None if best is None else {
            "val_acc": best - 0.002, "train_loss": losses[-1]},
        "train_seconds": 61.0 * len(losses), "images_per_second": 1234.5 if best else None,
        **results})


def smoke(**overrides: Any) -> RunConfig:
    return RunConfig().updated(preset_values("smoke")).updated({"epochs": 2, **overrides})


# --- the synthetic sweeps: each builds its sweep under ``root`` and returns its directory -----


def seeds_on_two_processes(root: Path) -> Path:
    """Seeds summarised; validation on the test split; failed and diverged seeds; B_simple
    from noise_scale.json files (one with a resolved standard error) and a logged value."""
    sweep = plan_sweep(smoke(num_classes=10, max_per_device_batch=16),
                       {"batch_size": [32, 64], "seed": [0, 1, 2]}, root, world_size=2)
    runs = sweep["runs"]
    write_run(runs[0], "completed", best=0.91, noise={"b_simple": 812.4,
                                                      "b_simple_std_error": 101.0})
    write_run(runs[1], "completed", best=0.93, losses=[2.5, 0.4])
    write_run(runs[2], "completed", best=0.95, noise={"b_simple": 1500.0})
    write_run(runs[3], "completed", best=0.85, steps=5)
    write_run(runs[4], "diverged", epochs=1, losses=[float("nan")])
    write_run(runs[5], "failed", epochs=1)
    RunDir(runs[3]["run_dir"]).append_metrics({"epoch": 3, "noise_scale": 6.25})
    return root


def unfinished_runs(root: Path) -> Path:
    """One epoch (the singular), one completed run (no step range in the budget sentence),
    and pending, unreadable and running entries."""
    sweep = plan_sweep(smoke(epochs=1), {"batch_size": [16, 32, 64, 128]}, root)
    runs = sweep["runs"]
    write_run(runs[0], "completed", best=0.9)
    write_run(runs[2], "completed", best=0.8)
    RunDir(runs[2]["run_dir"]).results_path.write_text('{"status": "compl')
    write_run(runs[3], None, best=0.7)
    return root


def nothing_completed(root: Path) -> Path:
    """No completed run; runs of two numbers of classes, so no one chance level."""
    sweep = plan_sweep(smoke(), {"batch_size": [32, 64]}, root)
    plan = json.loads((root / "sweep.json").read_text())
    plan["runs"][1]["config"]["num_classes"] = 100
    write_json(root / "sweep.json", plan)
    write_run(sweep["runs"][0], "diverged", epochs=1, losses=[float("inf")])
    write_run(load_sweep(root)["runs"][1], "diverged", epochs=2)
    return root


def variants_mixed_validation(root: Path) -> Path:
    """Remedy variants; some runs hold out validation, others use the test split; sqrt lr
    scaling; one small B_simple; unstable and diverged variants."""
    variants = {"plain": {}, "ghost": {"ghost_batch_size": 16}}
    sweep = plan_sweep(smoke(lr_scaling="sqrt", num_classes=10),
                       {"batch_size": [32, 64], "val_split": [0, 100]}, root,
                       variants=variants)
    for entry, acc in zip(sweep["runs"], [0.9, 0.91, 0.88, 0.87, 0.8, 0.79, 0.5, None],
                          strict=True):
        if acc is None:
            write_run(entry, "diverged", epochs=1, losses=[9.0])
        else:
            write_run(entry, "completed", best=acc, test_acc=acc - 0.01, test_loss=0.4,
                      losses=[3.0, 1.0] if acc == 0.5 else None, steps=entry["index"] + 3)
    write_run_noise(sweep["runs"][1], {"b_simple": 3.14159})
    return root


def write_run_noise(entry: dict[str, Any], noise: dict[str, float]) -> None:
    write_json(RunDir(entry["run_dir"]).root / "noise_scale.json", noise)


def epochs_swept_fixed_lr(root: Path) -> Path:
    """Epochs swept (no fixed budget); one fixed lr for every batch size."""
    sweep = plan_sweep(smoke(lr=0.05, num_classes=10), {"batch_size": [32, 64],
                                                         "epochs": [1, 3]}, root)
    for entry in sweep["runs"]:
        write_run(entry, "completed", best=0.8 + 0.01 * entry["index"])
    return root


def lr_rules_swept(root: Path) -> Path:
    """The lr rule and base lr swept; held-out validation of two sizes; a step range in the
    budget sentence; unstable and diverged runs; only unresolved noise scales."""
    sweep = plan_sweep(smoke(num_classes=10), {
        "batch_size": [32, 256], "lr_scaling": ["linear", "none"], "base_lr": [0.05, 0.1],
        "val_split": [100, 200]}, root)
    for entry in sweep["runs"]:
        index, batch = entry["index"], entry["config"]["batch_size"]
        if index == 5:
            write_run(entry, "diverged", epochs=1, losses=[float("nan")])
            continue
        write_run(entry, "completed", best=0.7 + 0.01 * index, test_acc=0.69, test_loss=0.9,
                  steps=4096 // batch * 3, losses=[2.4, 1.1] if index == 9 else None)
    write_run_noise(sweep["runs"][0], {"b_simple": 99183.0, "b_simple_std_error": 922797.0})
    write_run_noise(sweep["runs"][3], {"b_simple": -5.0})
    return root


def lr_swept(root: Path) -> Path:
    """The lr itself swept, on one seed with test-split validation."""
    sweep = plan_sweep(smoke(num_classes=10), {"batch_size": [64], "lr": [0.1, 0.2]}, root)
    write_run(sweep["runs"][0], "completed", best=0.77)
    write_run(sweep["runs"][1], "interrupted", best=0.7, epochs=1)
    return root


CASES: dict[str, Callable[[Path], Path]] = {
    case.__name__: case for case in (
        seeds_on_two_processes, unfinished_runs, nothing_completed, variants_mixed_validation,
        epochs_swept_fixed_lr, lr_rules_swept, lr_swept)
}


@pytest.fixture
def no_figures(monkeypatch):
    """The figures are test_report.py's; drawing them would triple these tests' time."""
    import lbtkit.report

    monkeypatch.setattr(lbtkit.report, "_plot_accuracy", lambda *args, **kwargs: None)
    monkeypatch.setattr(lbtkit.report, "_plot_curves", lambda *args, **kwargs: None)


@pytest.mark.parametrize("name", list(CASES))
def test_the_report_says_what_the_old_code_said(name, tmp_path, no_figures):
    sweep_dir = CASES[name](tmp_path / name.replace("_", "-"))
    expected = (GOLDEN / f"{name}.md").read_text()
    assert write_report(sweep_dir)["report"].read_text() == expected


# --- docs/fashion/sweep, rebuilt from what is committed -------------------------------------


def fashion_sweep(root: Path) -> Path:
    """The sweep docs/fashion/sweep reports on, its run files written from its results.csv:
    the plan the fashion study makes, and the noise scale the report lists."""
    from lbtkit.studies.fashion import SWEEP_PRESET
    from lbtkit.studies.fashion_presets import EVAL_BATCH

    with open(FASHION_SWEEP / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    base = build_config(preset=SWEEP_PRESET, resolve=False, overrides={
        "epochs": 10, "warmup_epochs": 2.0, "seed": 0, "eval_batch_size": EVAL_BATCH})
    sweep_dir = root / "work" / "sweep"
    plan_sweep(base, {"batch_size": [int(row["batch_size"]) for row in rows]}, sweep_dir)
    for entry, row in zip(load_sweep(sweep_dir)["runs"], rows, strict=True):
        write_fashion_run(entry, row)
    write_run_noise(load_sweep(sweep_dir)["runs"][0],
                    {"b_simple": 14121.0, "b_simple_std_error": 14478.0})
    return sweep_dir


def write_fashion_run(entry: dict[str, Any], row: dict[str, str]) -> None:
    run = RunDir(entry["run_dir"])
    run.create()
    write_json(run.config_path, entry["config"])
    run.append_metrics({"epoch": int(row["max_train_loss_epoch"]), "step": int(row["steps"]),
                        "train_loss": float(row["max_train_loss"])})
    numbers = {key: float(row[key]) for key in (
        "best_val_acc", "test_acc", "test_loss", "train_seconds", "images_per_second")}
    write_json(run.results_path, {
        "status": row["status"], **{key: int(row[key]) for key in (
            "world_size", "per_device_batch_size", "grad_accum_steps", "epochs_completed")},
        "final": {"val_acc": float(row["final_val_acc"]),
                  "train_loss": float(row["final_train_loss"])}, **numbers})


def test_docs_fashion_sweep_report_renders_byte_identical(tmp_path, no_figures):
    paths = write_report(fashion_sweep(tmp_path), tmp_path / "sweep")
    assert paths["report"].read_bytes() == (FASHION_SWEEP / "report.md").read_bytes()
    assert paths["csv"].read_bytes() == (FASHION_SWEEP / "results.csv").read_bytes()
