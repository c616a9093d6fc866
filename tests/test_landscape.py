"""Interpolation between two trained runs: exact endpoints, BatchNorm modes, files, processes."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import signal
import subprocess
import sys

import pytest

from lbtkit.data import load_dataset
from lbtkit.distributed import shard
from lbtkit.errors import ConfigError
from lbtkit.evaluate import InputSpec, evaluate_sums, mean_loss_and_accuracy
from lbtkit.landscape import (
    interpolate_runs,
    recalibrate_bn,
    run_interpolation,
    steepest_midpoints,
)
from lbtkit.run_model import load_run
from lbtkit.specs import InterpolationSpec, parse_alphas

from helpers import cli_env, train_sb_lb, train_smoke

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An SB (batch 32) and an LB (batch 512) solution of F1 on digits, one epoch each."""
    return train_sb_lb(tmp_path_factory.mktemp("runs"))


# --- pure helpers ----------------------------------------------------------------------------


def test_parse_alphas():
    grid = parse_alphas("-1:2:25")
    assert len(grid) == 25 and grid[0] == -1.0 and grid[-1] == 2.0
    assert grid[8] == 0.0 and grid[16] == 1.0 and grid[1] == -0.875
    assert parse_alphas("0,0.5, 1") == [0.0, 0.5, 1.0]
    assert parse_alphas("0.25:0.25:1") == [0.25]
    assert parse_alphas("0:1:3") == [0.0, 0.5, 1.0]
    for bad in ("", "a:b:3", "1:2", "0:1:0", "0:1:2.5", "0,x", "nan", "0:inf:3"):
        with pytest.raises(ConfigError, match="alphas"):
            parse_alphas(bad)


def test_shard_covers_every_alpha_once():
    alphas = parse_alphas("-1:2:7")
    parts = [shard(alphas, rank, 3) for rank in range(3)]
    assert sorted(a for part in parts for a in part) == alphas
    assert parts[0] == [alphas[0], alphas[3], alphas[6]]
    assert shard(alphas, 0, 1) == alphas
    with pytest.raises(ValueError):
        shard(alphas, 3, 3)


def test_steepest_midpoints_halve_the_largest_log_loss_jumps():
    # log-scale jumps: 0->0.5 ln 2, 0.5->1 ln 50 (the cliff), 1->1.5 ln 1.2
    points = [(1.0, 5.0), (0.0, 0.05), (0.5, 0.1), (1.5, 6.0), (2.0, float("nan"))]
    assert steepest_midpoints(points, 1) == [0.75]
    assert steepest_midpoints(points, 2) == [0.75, 0.25]
    assert steepest_midpoints(points, 9) == [0.75, 0.25, 1.25]  # the NaN pair is skipped
    assert steepest_midpoints([(0.0, 1.0)], 1) == []


def test_refinement_adds_points_where_the_training_loss_changes_fastest(runs):
    sb, lb, _ = runs
    spec = InterpolationSpec(alphas=[0.0, 1.0, 2.0], splits="train", bn="recalibrate",
                             refine=3)
    rows = interpolate_runs(spec, sb, lb, progress=False)
    alphas = [r["alpha"] for r in rows]
    assert len(alphas) == 6 and alphas == sorted(alphas) and {0.0, 1.0, 2.0} <= set(alphas)
    # each added alpha was the steepest midpoint of the points evaluated before it
    seen = [(r["alpha"], r["loss"]) for r in rows if r["alpha"] in (0.0, 1.0, 2.0)]
    for _ in range(3):
        (middle,) = steepest_midpoints(seen, 1)
        assert middle in alphas
        seen.append(next((r["alpha"], r["loss"]) for r in rows if r["alpha"] == middle))
    with pytest.raises(ConfigError, match="refine needs at least two alphas"):
        InterpolationSpec(alphas=[0.5], refine=2)


# --- endpoints and BatchNorm modes -----------------------------------------------------------


def test_endpoints_reproduce_each_runs_own_evaluation(runs):
    sb, lb, results = runs
    spec = InterpolationSpec(alphas=[0.0, 1.0], splits=["test"], bn="interpolate")
    rows = interpolate_runs(spec, sb, lb)
    assert [(r["alpha"], r["split"]) for r in rows] == [(0.0, "test"), (1.0, "test")]
    for row, label in zip(rows, ("sb", "lb"), strict=True):
        final = results[label]["final"]
        assert row["accuracy"] == final["val_acc"]
        assert row["loss"] == pytest.approx(final["val_loss"], rel=1e-6)
        assert row["negative_variances"] == 0


def test_recalibrated_endpoint_equals_the_recalibrated_run(runs):
    sb, lb, _ = runs
    spec = InterpolationSpec(alphas=[0.0], splits=["train"], bn="recalibrate", bn_samples=500,
                             eval_batch_size=256)
    rows = interpolate_runs(spec, sb, lb)
    model, config = load_run(sb)
    data = load_dataset(config.dataset, config.data_dir)
    inputs = InputSpec(data.info, config.image_size)
    recalibrate_bn(model, data.train_images[:500], inputs, batch_size=256)
    loss, accuracy = mean_loss_and_accuracy(
        evaluate_sums(model, data.train_images, data.train_labels, inputs, batch_size=256))
    assert (rows[0]["loss"], rows[0]["accuracy"]) == (loss, accuracy)


def test_interpolated_variances_go_negative_but_recalibration_stays_finite(runs, caplog):
    sb, lb, _ = runs
    alphas = parse_alphas("-1:2:7")
    seed_like = interpolate_runs(InterpolationSpec(alphas=alphas, bn="interpolate"), sb, lb)
    broken = [r for r in seed_like if r["negative_variances"] > 0]
    assert broken, "expected negative running variances when extrapolating them"
    assert all(math.isnan(r["loss"]) and math.isnan(r["accuracy"]) for r in broken)
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert warnings and all(r.name == "lbtkit.landscape.interpolate" for r in warnings)
    assert "alpha=" in warnings[0].getMessage() and "--bn recalibrate" in warnings[0].getMessage()
    for bn in ("recalibrate", "batch-stats"):
        rows = interpolate_runs(InterpolationSpec(alphas=alphas, bn=bn), sb, lb)
        assert len(rows) == 2 * len(alphas)
        assert all(math.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 for r in rows), bn


def test_progress_lines_off_a_terminal_and_silence_when_asked(runs, capsys, caplog):
    sb, lb, _ = runs
    spec = InterpolationSpec(alphas=[0.0, 0.5, 1.0], splits="test")
    interpolate_runs(spec, sb, lb)
    # A library caller who configured no logging sees nothing.
    assert capsys.readouterr().out == "" and not caplog.records
    with caplog.at_level(logging.INFO, logger="lbtkit"):
        rows = interpolate_runs(spec, sb, lb)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("alpha ")]
    # Off a terminal: one line per alpha here (every tenth of the grid, at least every one).
    assert [line.split(" ")[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert f"alpha 0.5: test loss {rows[1]['loss']:.4g}" in lines[1]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lbtkit"):
        interpolate_runs(InterpolationSpec(alphas=[0.0, 1.0], splits="test"), sb, lb,
                         progress=False)
    assert not [r for r in caplog.records if r.getMessage().startswith("alpha ")]


def test_runs_of_different_architectures_are_refused(runs, tmp_path):
    sb, _, _ = runs
    other = tmp_path / "c1"
    train_smoke(other, model="c1", batch_size=512)
    with pytest.raises(ConfigError, match=r"model.*'f1'.*'c1'"):
        interpolate_runs(InterpolationSpec(alphas=[0.5]), sb, other)
    with pytest.raises(ConfigError, match="BatchNorm mode 'running'"):
        InterpolationSpec(alphas=[0.5], bn="running")


def test_files_keep_nan_in_csv_and_plot_the_rest(runs, tmp_path):
    sb, lb, _ = runs
    spec = InterpolationSpec(alphas=[-1.0, 0.0, 1.0, 2.0], bn="interpolate")
    paths = run_interpolation(spec, sb, lb, tmp_path / "out")
    with paths["csv"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["alpha", "split", "loss", "accuracy", "negative_variances"]
    assert len(rows) == 8 and any(r["loss"] == "nan" for r in rows)
    assert paths["png"].read_bytes()[:8] == PNG_MAGIC
    meta = json.loads(paths["json"].read_text())  # strict JSON: NaN became null
    assert meta["bn"] == "interpolate" and meta["alphas"] == [-1.0, 0.0, 1.0, 2.0]
    assert InterpolationSpec.from_dict(meta["spec"]) == spec  # the file says how it was made
    assert meta["sb_run"] == str(sb.resolve()) and meta["lb_run"] == str(lb.resolve())
    assert any(r["loss"] is None for r in meta["rows"])


# --- several processes -----------------------------------------------------------------------

GRID = [-1.0, -0.5, 0.0, 1.0, 2.0]


def launch(command: list[str], tmp_path) -> subprocess.CompletedProcess:
    """Run a launcher in its own session, so a hang cannot leave orphaned workers behind."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=cli_env(tmp_path), start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"timed out:\n{out}") from None
    assert proc.returncode == 0, out
    return proc


@pytest.fixture(scope="module")
def ddp_lb(tmp_path_factory):
    """An LB run trained with 2 processes (DDP over gloo)."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    lb = tmp_path / "lb-ddp"
    launch([sys.executable, "-m", "lbtkit", "run", "--preset", "smoke", "--epochs", "1",
            "--batch-size", "512", "--num-processes", "2", "--no-progress", "--output", str(lb)],
           tmp_path)
    assert json.loads((lb / "results.json").read_text())["world_size"] == 2
    return lb


@pytest.mark.slow
def test_runs_trained_with_two_processes_interpolate_like_single_process_runs(runs, ddp_lb):
    sb, lb, _ = runs
    single = interpolate_runs(InterpolationSpec(alphas=GRID, bn="recalibrate"), sb, lb)
    rows = interpolate_runs(InterpolationSpec(alphas=GRID, bn="recalibrate"), sb, ddp_lb)
    assert [(r["alpha"], r["split"]) for r in rows] == [(r["alpha"], r["split"]) for r in single]
    assert all(math.isfinite(r["loss"]) for r in rows)
    final = json.loads((ddp_lb / "results.json").read_text())["final"]
    spec = InterpolationSpec(alphas=[1.0], splits=["test"], bn="interpolate")
    endpoint = interpolate_runs(spec, sb, ddp_lb)[0]
    assert endpoint["accuracy"] == final["val_acc"]


@pytest.mark.slow
def test_run_trained_with_two_processes_reproduces_its_own_val_loss(runs, ddp_lb):
    sb, _, _ = runs
    final = json.loads((ddp_lb / "results.json").read_text())["final"]
    spec = InterpolationSpec(alphas=[1.0], splits=["test"], bn="interpolate")
    endpoint = interpolate_runs(spec, sb, ddp_lb)[0]
    assert endpoint["loss"] == pytest.approx(final["val_loss"], rel=1e-6)
