"""Experiment tracking through Accelerate's trackers, read back with TensorBoard's own reader."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lbtkit.config import TRACKER_EXTRAS, parse_trackers
from lbtkit.errors import ConfigError, UserError
from lbtkit.tracking import (
    check_installed,
    hyperparameters,
    landscape_rows,
    log_scalars,
    tracking_dir,
)

from helpers import (
    assert_user_error,
    invoke_cli,
    run_cli,
    scaled_timeout,
    train_sb_lb,
    train_smoke,
)

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
    result = invoke_cli("run", "--preset", "smoke", "--log-with", "tensorbored",
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
    invoke_cli("sweep", "plan", "--preset", "smoke", "--epochs", "1", "--batch-sizes", "32,64",
               "--log-with", "tensorboard", "--output", sweep, tmp_path=tmp_path, check=0)
    invoke_cli("sweep", "run", sweep, "--no-progress", tmp_path=tmp_path, check=0)
    tracking = sweep / "runs" / "tracking"
    assert sorted(p.name for p in tracking.iterdir()) == ["b32-s0", "b64-s0"]
    for name in ("b32-s0", "b64-s0"):
        assert_events_match_metrics(read_events(tracking / name), metrics(sweep / "runs" / name))
    report = invoke_cli("report", sweep, tmp_path=tmp_path, check=0).stdout
    assert f"tensorboard --logdir {tracking}" in report


# --- the analysis commands ------------------------------------------------------------------


def invoke(*args) -> str:
    """A command in this process that must succeed; its stdout."""
    return invoke_cli(*args, check=0).stdout


def stored_hyperparameters(run_tracking_dir: Path) -> str:
    """Every hparams.yml Accelerate's TensorBoard tracker stored for a tracker run, as text."""
    return "".join(path.read_text() for path in run_tracking_dir.glob("*/hparams.yml"))


def test_noise_scale_lands_beside_the_runs_training_curves(tmp_path):
    run_dir = tmp_path / "runs" / "smoke"
    results = train_smoke(run_dir, log_with="tensorboard", epochs=2, checkpoint_every=1)
    invoke("noise-scale", run_dir, "--batches", "16,256", "--log-with", "tensorboard")
    stored = json.loads((run_dir / "noise_scale.json").read_text())
    folder = tmp_path / "runs" / "tracking" / "smoke"  # the run's own tracker run
    events = read_events(folder)
    assert_events_match_metrics(events, metrics(run_dir))  # training's events still there
    step = results["global_step"]
    expected = {
        "noise_scale/b_simple": stored["b_simple"],
        "noise_scale/grad_sq": stored["grad_sq"],
        "noise_scale/trace_sigma": stored["trace_sigma"],
        "noise_scale/b_simple_std_error": stored["b_simple_std_error"],
        "noise_scale/E_G_B_sq/B=16": stored["batches"]["small"]["mean"],
        "noise_scale/E_G_B_sq/B=256": stored["batches"]["big"]["mean"],
    }
    assert stored["b_simple"] is not None  # else the test would check a missing tag
    for tag, value in expected.items():
        assert events[tag] == [(step, pytest.approx(value, rel=1e-6))], tag
    assert "noise_scale/batch_sizes" in stored_hyperparameters(folder)
    # At a checkpoint's weights (--weights): at that checkpoint's step, on the same curve.
    (checkpoint,) = (run_dir / "checkpoints").iterdir()
    invoke("noise-scale", run_dir, "--batches", "16,256", "--log-with", "tensorboard",
           "--weights", checkpoint / "model.safetensors")
    earlier = json.loads((run_dir / f"noise_scale-{checkpoint.name}.json").read_text())
    checkpoint_step = json.loads((checkpoint / "state.json").read_text())["state"]["global_step"]
    assert 0 < checkpoint_step < step
    assert sorted(read_events(folder)["noise_scale/b_simple"]) == [
        (checkpoint_step, pytest.approx(earlier["b_simple"], rel=1e-6)),
        (step, pytest.approx(stored["b_simple"], rel=1e-6))]
    # Weights that are not a checkpoint's have no step on the curves: refused before measuring.
    elsewhere = tmp_path / "copy.safetensors"
    elsewhere.write_bytes((run_dir / "model.safetensors").read_bytes())
    assert_user_error(invoke_cli("noise-scale", run_dir, "--log-with", "tensorboard",
                                 "--weights", elsewhere, tmp_path=tmp_path),
                      "--log-with with --weights needs a checkpoint's weights")


def test_sharpness_logs_at_the_runs_final_step_into_a_given_tracking_dir(tmp_path):
    run_dir = tmp_path / "run"
    results = train_smoke(run_dir, batch_size=256)
    invoke("sharpness", run_dir, "--eps", "1e-3", "--iters", "1", "--hessian",
           "--hessian-iters", "2", "--trace", "--trace-samples", "2", "--samples", "64",
           "--log-with", "tensorboard", "--tracking-dir", tmp_path / "tb")
    stored = json.loads((run_dir / "sharpness.json").read_text())
    events = read_events(tmp_path / "tb" / "run")
    step = results["global_step"]
    expected = {
        "sharpness/phi full eps=0.001": stored["sharpness"][0]["phi"],
        "sharpness/train_loss": stored["train_loss"],
        "hessian/top_1": stored["hessian"]["top_eigenvalues"][0],
        "hessian/trace": stored["trace"]["mean"],
    }
    for tag, value in expected.items():
        assert events[tag] == [(step, pytest.approx(value, rel=1e-6, abs=1e-12))], tag
    assert "sharpness/eps" in stored_hyperparameters(tmp_path / "tb" / "run")


def test_interpolation_and_landscape_log_one_step_per_grid_point(tmp_path):
    sb, lb, _ = train_sb_lb(tmp_path / "runs")
    output = tmp_path / "out" / "interp"
    invoke("interpolate", sb, lb, "--alphas", "-0.5:1:4", "--bn-samples", "256",
           "--output", output, "--log-with", "tensorboard")
    with open(output / "interpolation.csv") as handle:
        rows = list(csv.DictReader(handle))
    alphas = [-0.5, 0.0, 0.5, 1.0]
    events = read_events(tmp_path / "out" / "tracking" / "interp")
    assert events["interpolation/alpha"] == [(i, a) for i, a in enumerate(alphas)]
    for row in rows:
        step = alphas.index(float(row["alpha"]))
        for key, column in (("loss", "loss"), ("acc", "accuracy")):
            tag = f"interpolation/{row['split']}_{key}"
            assert (step, pytest.approx(float(row[column]), rel=1e-6)) in events[tag], tag
    assert all(len(events[f"interpolation/{s}_loss"]) == 4 for s in ("train", "test"))

    invoke("landscape", sb, "--grid", "-0.5:0.5:2", "--splits", "test", "--bn", "batch-stats",
           "--log-with", "tensorboard")  # default output: RUN/landscape
    points = json.loads((sb / "landscape" / "landscape.json").read_text())["rows"]
    events = read_events(sb / "tracking" / "landscape")
    assert [value for _, value in events["landscape/x"]] == [-0.5, -0.5, 0.5, 0.5]
    assert [value for _, value in events["landscape/y"]] == [-0.5, 0.5, -0.5, 0.5]
    assert events["landscape/test_loss"] == [
        (i, pytest.approx(p["loss"], rel=1e-6)) for i, p in enumerate(points)]


def test_landscape_steps_are_grid_indices_x_major():
    document = {"x": [1.0, -1.0], "y": [0.0, 2.0], "rows": [
        {"x": -1.0, "y": 2.0, "split": "test", "loss": 4.0, "accuracy": 0.1},
        {"x": 1.0, "y": 0.0, "split": "test", "loss": None, "accuracy": None},
    ]}
    assert landscape_rows(document) == [
        (0, {"landscape/x": 1.0, "landscape/y": 0.0, "landscape/test_loss": None,
             "landscape/test_acc": None}),
        (3, {"landscape/x": -1.0, "landscape/y": 2.0, "landscape/test_loss": 4.0,
             "landscape/test_acc": 0.1}),
    ]


def test_only_rank_zero_writes(tmp_path, monkeypatch):
    arguments = {"output_dir": tmp_path / "out", "configured_dir": None, "project": "p",
                 "config": {"a": 1}, "rows": [(0, {"x": 1.0, "missing": None})]}
    monkeypatch.setenv("RANK", "1")
    log_scalars(["tensorboard"], **arguments)
    assert not (tmp_path / "tracking").exists()
    monkeypatch.setenv("RANK", "0")
    log_scalars(["tensorboard"], **arguments)
    assert read_events(tmp_path / "tracking" / "out") == {"x": [(0, 1.0)]}


def test_missing_tracker_fails_before_measuring(tmp_path):
    from accelerate.utils import imports

    missing = [name for name in TRACKER_EXTRAS if not getattr(imports, f"is_{name}_available")()]
    if not missing:
        pytest.skip("every tracker is installed")
    # The run does not exist: the tracker must be refused first, in one line.
    result = invoke_cli("noise-scale", tmp_path / "no-run", "--log-with", missing[0],
                        tmp_path=tmp_path)
    assert_user_error(result, f"pip install 'lbtkit[{TRACKER_EXTRAS[missing[0]]}]'")


@pytest.mark.slow
def test_interpolation_over_two_processes_is_logged_once(tmp_path):
    sb, lb, _ = train_sb_lb(tmp_path / "runs")
    output = tmp_path / "out" / "interp"
    run_cli("interpolate", sb, lb, "--alphas", "0:1:3", "--bn-samples", "256",
            "--num-processes", "2", "--output", output, "--log-with", "tensorboard",
            tmp_path=tmp_path, timeout=scaled_timeout(400), check=0)
    assert json.loads((output / "interpolation.json").read_text())["processes"] == 2
    folder = tmp_path / "out" / "tracking" / "interp"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1, list(folder.iterdir())
    with open(output / "interpolation.csv") as handle:
        test_loss = [float(r["loss"]) for r in csv.DictReader(handle) if r["split"] == "test"]
    assert read_events(folder)["interpolation/test_loss"] == [
        (i, pytest.approx(loss, rel=1e-6)) for i, loss in enumerate(test_loss)]


# --- W&B and MLflow: one tracker run per run directory, across resumes and analyses ----------


def _started(trackers, mlflow_id: str) -> None:
    """What starting them does, without the packages: W&B opens the run with the id it was
    given, MLflow with the id its server chooses."""
    from types import SimpleNamespace

    for tracker in trackers:
        if tracker.name == "wandb":
            tracker.run = SimpleNamespace(id=tracker.init_kwargs["id"])
        elif tracker.name == "mlflow":
            tracker.active_run = SimpleNamespace(info=SimpleNamespace(
                run_id=tracker.run_id or mlflow_id))


def test_a_resumed_run_and_its_analyses_continue_its_wandb_and_mlflow_runs(tmp_path, monkeypatch):
    import lbtkit.tracking as tracking

    monkeypatch.setattr(tracking, "check_installed", lambda names: None)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    run_dir = tmp_path / "runs" / "b32"
    run_dir.mkdir(parents=True)

    def trackers(output_dir=run_dir):
        return {t.name: t for t in tracking.make_trackers(
            ["wandb", "mlflow", "tensorboard"], output_dir=output_dir, configured_dir=None,
            project="study")}

    first = trackers()
    assert first["wandb"].init_kwargs["name"] == "b32"
    assert first["wandb"].init_kwargs["resume"] == "allow" and first["mlflow"].run_id is None
    _started(first.values(), mlflow_id="m-1")
    tracking.record_tracker_runs(first.values(), run_dir)
    recorded = json.loads((run_dir / tracking.TRACKER_RUNS_FILE).read_text())
    assert recorded == {"wandb": first["wandb"].init_kwargs["id"], "mlflow": "m-1"}
    # The requeued run, or `lbtkit noise-scale RUN --log-with wandb`, opens them again.
    again = trackers()
    assert again["wandb"].init_kwargs["id"] == recorded["wandb"]
    assert again["mlflow"].run_id == "m-1"
    _started(again.values(), mlflow_id="m-2")
    tracking.record_tracker_runs(again.values(), run_dir)
    assert json.loads((run_dir / tracking.TRACKER_RUNS_FILE).read_text()) == recorded
    # Another run directory is another tracker run.
    other = trackers(tmp_path / "runs" / "b64")
    assert other["wandb"].init_kwargs["id"] != recorded["wandb"]
    assert other["mlflow"].run_id is None


def test_training_records_the_tracker_runs_it_started(tmp_path, monkeypatch):
    """The loop's Tracking.start records what its Accelerator's trackers opened (TensorBoard
    alone has no id: nothing is written)."""
    from types import SimpleNamespace

    import lbtkit.tracking as tracking

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    wandb_like = SimpleNamespace(name="wandb", run=SimpleNamespace(id="w-7"))
    accelerator = SimpleNamespace(is_main_process=True, trackers=[wandb_like],
                                  init_trackers=lambda project, config: None)
    tracking.Tracking(accelerator, enabled=True, output_dir=run_dir).start({}, "p")
    assert tracking.tracker_runs(run_dir) == {"wandb": "w-7"}
    results = train_smoke(tmp_path / "tb", log_with="tensorboard")
    assert results["status"] == "completed"
    assert not (tmp_path / "tb" / tracking.TRACKER_RUNS_FILE).exists()
