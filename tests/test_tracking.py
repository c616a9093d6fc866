"""Experiment tracking through Accelerate's trackers, read back with TensorBoard's own reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lbtkit.errors import ConfigError, UserError
from lbtkit.tracking import check_installed, hyperparameters, parse_trackers, tracking_dir

from conftest import assert_user_error, run_cli, train_smoke

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard is a dev extra (pip install -e '.[dev]')",
)


def read_events(run_tracking_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of one tracker run folder: tag -> [(step, value), ...]."""
    files = sorted(run_tracking_dir.glob("events.out.tfevents.*"))
    assert files, f"no event files in {run_tracking_dir}: {list(run_tracking_dir.iterdir())}"
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in files:
        reader = event_accumulator.EventAccumulator(str(path))
        reader.Reload()
        for tag in reader.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in reader.Scalars(tag))
    return scalars


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_events_match_metrics(events: dict, rows: list[dict]) -> None:
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        logged = events[key]
        assert [step for step, _ in logged] == [row["step"] for row in rows], key
        assert [value for _, value in logged] == pytest.approx(
            [row[key] for row in rows], rel=1e-6), key


def test_parse_trackers_refuses_unknown_names():
    assert parse_trackers("") == []
    assert parse_trackers(" tensorboard, wandb,tensorboard") == ["tensorboard", "wandb"]
    with pytest.raises(ConfigError, match="'tensorbored'"):
        parse_trackers("tensorbored")


def test_missing_tracker_package_names_the_extra(monkeypatch):
    from accelerate.utils import imports

    monkeypatch.setattr(imports, "is_wandb_available", lambda: False)
    with pytest.raises(UserError, match=r"lbtkit\[wandb\]"):
        check_installed(["wandb"])
    check_installed(["tensorboard"])  # installed with the dev extra: no error


def test_hyperparameters_are_tracker_scalars():
    assert hyperparameters({"lr": 0.1, "name": None, "compile": False, "grid": [1, 2]}) == {
        "lr": 0.1, "name": "", "compile": False, "grid": "[1, 2]"}


def test_default_tracking_dir_is_shared_by_sibling_runs(tmp_path):
    assert tracking_dir(tmp_path / "runs" / "a") == tracking_dir(tmp_path / "runs" / "b")
    assert tracking_dir(tmp_path / "a", str(tmp_path / "tb")) == tmp_path / "tb"


def test_smoke_run_writes_tensorboard_events_that_match_its_metrics(tmp_path):
    run_dir = tmp_path / "runs" / "smoke"
    results = train_smoke(run_dir, epochs=2, log_with="tensorboard", log_every=5)
    events = read_events(tmp_path / "runs" / "tracking" / "smoke")
    assert_events_match_metrics(events, metrics(run_dir))
    # Per-step values every log_every steps; the summary at the last step.
    assert [step for step, _ in events["step/train_loss"]] == list(
        range(5, results["global_step"] + 1, 5))
    assert events["final/val_acc"] == [(results["global_step"],
                                        pytest.approx(results["final"]["val_acc"]))]
    assert events["final/best_val_acc"][0][1] == pytest.approx(results["best_val_acc"])


def test_unknown_or_missing_tracker_is_one_line(tmp_path):
    result = run_cli("run", "--preset", "smoke", "--log-with", "tensorbored",
                     "--output", tmp_path / "run", tmp_path=tmp_path)
    assert_user_error(result, "tensorbored")


@pytest.mark.slow
def test_two_processes_write_one_event_stream(tmp_path):
    run_dir = tmp_path / "runs" / "ddp"
    result = run_cli("run", "--preset", "smoke", "--epochs", "2", "--batch-size", "64",
                     "--log-with", "tensorboard", "--num-processes", "2", "--no-progress",
                     "--output", run_dir, tmp_path=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    folder = tmp_path / "runs" / "tracking" / "ddp"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1, list(folder.iterdir())
    assert_events_match_metrics(read_events(folder), metrics(run_dir))


@pytest.mark.slow
def test_a_sweep_is_one_tensorboard_directory(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli("sweep", "plan", "--preset", "smoke", "--epochs", "1", "--batch-sizes", "32,64",
            "--log-with", "tensorboard", "--output", sweep, tmp_path=tmp_path, check=0)
    run_cli("sweep", "run", sweep, "--no-progress", tmp_path=tmp_path, timeout=600, check=0)
    tracking = sweep / "runs" / "tracking"
    assert sorted(p.name for p in tracking.iterdir()) == ["b32-s0", "b64-s0"]
    for name in ("b32-s0", "b64-s0"):
        assert_events_match_metrics(read_events(tracking / name), metrics(sweep / "runs" / name))
    report = run_cli("report", sweep, tmp_path=tmp_path, check=0).stdout
    assert f"tensorboard --logdir {tracking}" in report
