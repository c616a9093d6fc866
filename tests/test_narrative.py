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
