"""Runs with targets: evaluation by step, the first step meeting each target, the stop once all
are met, a held-out validation split with the test split evaluated once, kept weights."""

from __future__ import annotations

import shutil

import pytest
import torch

from lbtkit.checkpoint import checkpoint_step
from lbtkit.config import build_config
from lbtkit.data import hold_out, load_dataset
from lbtkit.errors import ConfigError
from lbtkit.rundir import RunDir
from lbtkit.targets import eval_steps
from lbtkit.train import run

TARGETS = "train_loss<=1.0,val_error<=0.3"


def _config(tmp_path, name="run", **overrides):
    values = {"epochs": 6, "output_dir": str(tmp_path / name), "targets": TARGETS,
              "val_split": 300, "train_eval_samples": 512, "scheduler": "constant",
              "warmup_steps": 3, **overrides}
    return build_config(preset="smoke", overrides=values)


def test_a_run_with_targets_stops_at_the_evaluation_that_meets_the_last(tmp_path):
    config = _config(tmp_path)
    results = run(config, progress=False)
    rows = RunDir(config.output_dir).read_evals()
    met = results["steps_to_targets"]
    assert set(met) == {"train_loss<=1", "val_error<=0.3"} and None not in met.values()
    last = max(met.values())
    # Evaluated exactly at the geometric steps, up to the one that met the last target.
    steps_per_epoch = (1437 - 300) // config.batch_size
    planned = eval_steps(config.eval_growth, config.epochs * steps_per_epoch)
    assert [r["step"] for r in rows] == [s for s in planned if s <= last]
    assert results["global_step"] == last < config.epochs * steps_per_epoch
    assert results["status"] == "completed" and results["stopped_early"]["step"] == last
    for name, step in met.items():
        metric, value = name.split("<=")
        column = {"train_loss": "train_eval_loss", "val_error": "val_error"}[metric]
        hits = [r["step"] for r in rows if r[column] <= float(value)]
        assert hits[0] == step
    # The test split (digits' own held-out 360) is evaluated once, at the end.
    assert 0 < results["test_acc"] <= 1 and results["test_loss"] > 0
    assert results["final"]["val_acc"] == pytest.approx(1 - rows[-1]["val_error"])


def test_hold_out_carves_validation_from_train_and_keeps_the_test_split():
    data = load_dataset("digits", "data")
    split = hold_out(data, 300)
    assert split.train_labels.shape[0] == 1437 - 300 and split.val_labels.shape[0] == 300
    assert torch.equal(split.test_labels, data.val_labels)
    # The same draw every time, and disjoint: together they are the training set.
    again = hold_out(data, 300)
    assert torch.equal(again.val_images, split.val_images)
    joined = torch.cat([split.train_images, split.val_images]).flatten(1)
    assert torch.equal(joined.sort(dim=0).values, data.train_images.flatten(1).sort(dim=0).values)
    with pytest.raises(ConfigError, match="val_split must be between 1 and 1436"):
        hold_out(data, 1437)


def test_resume_drops_evaluations_after_the_checkpoint_and_ends_the_same(tmp_path):
    """A run killed after its last checkpoint resumes from it: the rows it wrote after the
    checkpoint are redone, not duplicated, and the steps to the target are the same."""
    config = _config(tmp_path, "ref", targets="train_loss<=0.3")
    reference = run(config, progress=False)
    checkpoint = RunDir(config.output_dir).checkpoints
    (kept,) = list(checkpoint.iterdir())
    step = checkpoint_step(kept / "model.safetensors")
    assert 0 < step < reference["steps_to_targets"]["train_loss<=0.3"]
    killed = tmp_path / "killed"
    shutil.copytree(config.output_dir, killed)
    for name in ("results.json", "model.safetensors"):
        (killed / name).unlink()
    RunDir(killed).append_evals({"step": step + 1, "train_eval_loss": 0.0})  # a stray row
    again = run(config.updated({"output_dir": str(killed)}), progress=False)
    assert again["steps_to_targets"] == reference["steps_to_targets"]
    def rows(root):  # the wall time differs, the rest is bitwise the same
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in RunDir(root).read_evals()]

    assert rows(killed) == rows(config.output_dir)


def test_keep_target_weights_leaves_a_snapshot_with_its_step_at_each_first_meeting(tmp_path):
    config = _config(tmp_path, keep_target_weights=True)
    results = run(config, progress=False)
    snapshots = RunDir(config.output_dir).snapshots
    steps = sorted(set(results["steps_to_targets"].values()))
    folders = sorted(p.name for p in snapshots.iterdir())
    assert folders == [f"step-{s:09d}" for s in steps]
    for step in steps:
        assert checkpoint_step(snapshots / f"step-{step:09d}" / "model.safetensors") == step


@pytest.mark.parametrize("bad, words", [
    ({"targets": "train_loss<0.3"}, "expected METRIC<=VALUE"),
    ({"eval_growth": 1.0}, "eval_growth must be a finite number in (1, inf)"),
    ({"val_split": -1}, "val_split must be >= 0"),
    ({"warmup_steps": -2}, "warmup_steps must be >= 0"),
    ({"train_eval_samples": 0}, "train_eval_samples must be a positive number"),
])
def test_bad_target_settings_are_refused_naming_the_value(tmp_path, bad, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        _config(tmp_path, **bad)


def test_warmup_steps_override_warmup_epochs(tmp_path):
    config = _config(tmp_path, targets="", warmup_steps=5, warmup_epochs=2.0, epochs=3)
    run(config, progress=False)
    rows = RunDir(config.output_dir).read_metrics()
    assert rows[0]["lr"] == pytest.approx(config.lr)  # warm-up over after 5 of 17 steps
