"""Sweeps: the plan (grid product, seed-table lrs, refusals), running it, and its status."""

from __future__ import annotations

import json
import os
import re
import shutil
import time

import pytest

from lbtkit.config import RunConfig, preset_values
from lbtkit.errors import ConfigError, UserError
from lbtkit.fileio import write_json
from lbtkit.rundir import RunDir
from lbtkit.sweep import (
    ACTIVE_WINDOW_SECONDS,
    entry_config,
    load_sweep,
    plan_sweep,
    run_all,
    run_all_exit_code,
    run_task,
    sweep_status,
)

# The seed's table: batch size on 4 GPUs -> initial (scaled) learning rate.
SEED_TABLE = {32: 3e-4, 64: 6e-4, 128: 1.2e-3, 256: 2.4e-3, 512: 4.8e-3, 1024: 9.6e-3}
TINY_GRID = {"batch_size": [32, 64], "base_lr": [0.05, 1e6]}  # base_lr 1e6 diverges


def preset_base(name: str, **changes) -> RunConfig:
    """A preset as an unresolved base (lr unset, so each entry scales its own)."""
    return RunConfig().updated(preset_values(name)).updated(changes)


def tiny_base() -> RunConfig:
    # log_every=1: the loop checks for a non-finite loss every step, so divergence is quick.
    return preset_base("smoke", epochs=1, log_every=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny sweep, trained once: b32/b64 x base_lr 0.05 (completes) / 1e6 (diverges)."""
    import torch

    root = tmp_path_factory.mktemp("tiny-sweep")
    plan_sweep(tiny_base(), TINY_GRID, root)
    before = [row["state"] for row in sweep_status(root)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads on a shared 2-core box thrash; tiny ops gain nothing
    try:
        statuses = run_all(root, progress=False)
    finally:
        torch.set_num_threads(threads)
    return root, before, statuses


# --- planning ------------------------------------------------------------------------------


def test_seed_preset_plan_reproduces_seed_table(tmp_path):
    base = preset_base("seed-mobilenetv2-finetune")
    plan = plan_sweep(base, {"batch_size": sorted(SEED_TABLE)}, tmp_path, world_size=4)
    runs = plan["runs"]
    assert [r["index"] for r in runs] == list(range(6))
    assert [r["config"]["batch_size"] for r in runs] == sorted(SEED_TABLE)
    for run in runs:
        batch = run["config"]["batch_size"]
        assert run["config"]["lr"] == pytest.approx(SEED_TABLE[batch], rel=1e-12)
        assert run["batch_plan"] == {"world_size": 4, "grad_accum_steps": 1,
                                     "per_device_batch_size": batch // 4}
        assert run["config"]["name"] == f"b{batch}-s0"
        assert run["run_dir"] == str(tmp_path / "runs" / f"b{batch}-s0")
    on_disk = json.loads((tmp_path / "sweep.json").read_text())
    assert on_disk["version"] == 1 and on_disk["world_size"] == 4
    assert on_disk["grid"] == {"batch_size": sorted(SEED_TABLE)}
    assert on_disk["base"]["lr"] is None and on_disk["base"]["model"] == "mobilenet_v2"


def test_grid_product_order_batch_slowest_seed_fastest(tmp_path):
    grid = {"seed": [0, 1, 2], "batch_size": [64, 32]}
    runs = plan_sweep(tiny_base(), grid, tmp_path)["runs"]
    assert [(r["config"]["batch_size"], r["config"]["seed"]) for r in runs] == [
        (64, 0), (64, 1), (64, 2), (32, 0), (32, 1), (32, 2)
    ]
    assert [r["config"]["name"] for r in runs][:2] == ["b64-s0", "b64-s1"]


def test_other_swept_keys_name_the_runs_and_scale_by_their_rule(tmp_path):
    grid = {"lr_scaling": ["linear", "sqrt"], "batch_size": [256], "model": ["f1", "c1"]}
    runs = plan_sweep(tiny_base(), grid, tmp_path)["runs"]
    names = [r["config"]["name"] for r in runs]
    assert names == ["b256-s0-f1-linear", "b256-s0-f1-sqrt", "b256-s0-c1-linear",
                     "b256-s0-c1-sqrt"]
    lrs = {r["config"]["name"]: r["config"]["lr"] for r in runs}
    assert lrs["b256-s0-f1-linear"] == pytest.approx(0.05 * 4)
    assert lrs["b256-s0-f1-sqrt"] == pytest.approx(0.05 * 2)


@pytest.mark.parametrize("grid,world,needle", [
    ({"batch": [32]}, 1, "'batch'"),
    ({"batch_size": []}, 1, "'batch_size'"),
    ({"batch_size": [32], "seed": []}, 1, "'seed'"),
    ({"batch_size": [32, 32]}, 1, "32"),
    ({"batch_size": [64, 100]}, 8, "100"),
    ({"batch_size": ["big"]}, 1, "'big'"),
    ({"output_dir": ["x"]}, 1, "'output_dir'"),
    ({"batch_size": 64}, 1, "'batch_size'"),
])
def test_bad_grid_is_refused_at_plan_time_naming_the_value(tmp_path, grid, world, needle):
    with pytest.raises(ConfigError, match=needle):
        plan_sweep(tiny_base(), grid, tmp_path, world_size=world)
    assert not (tmp_path / "sweep.json").exists()


def test_replanning_same_is_idempotent_different_is_refused(tmp_path):
    first = plan_sweep(tiny_base(), {"batch_size": [32, 64]}, tmp_path)
    path = tmp_path / "sweep.json"
    text, mtime = path.read_text(), path.stat().st_mtime_ns
    assert plan_sweep(tiny_base(), {"batch_size": [32, 64]}, tmp_path) == first
    assert path.read_text() == text and path.stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match=r"different sweep.*grid"):
        plan_sweep(tiny_base(), {"batch_size": [32, 128]}, tmp_path)
    with pytest.raises(ConfigError, match=r"different sweep.*world_size"):
        plan_sweep(tiny_base(), {"batch_size": [32, 64]}, tmp_path, world_size=2)
    with pytest.raises(ConfigError, match=r"different sweep.*base epochs"):
        plan_sweep(tiny_base().updated({"epochs": 2}), {"batch_size": [32, 64]}, tmp_path)
    assert path.read_text() == text


def test_a_plan_from_before_new_config_fields_is_still_the_same_sweep(tmp_path):
    # An older lbtkit wrote plans without the fields added since (here: sam_rho); re-planning
    # after an upgrade must not refuse the sweep, and its runs must still resume.
    grid = {"batch_size": [32, 64]}
    plan_sweep(tiny_base(), grid, tmp_path)
    path = tmp_path / "sweep.json"
    stored = json.loads(path.read_text())
    del stored["base"]["sam_rho"]
    for entry in stored["runs"]:
        del entry["config"]["sam_rho"]
    path.write_text(json.dumps(stored))
    plan_sweep(tiny_base(), grid, tmp_path)  # no ConfigError
    assert entry_config(load_sweep(tmp_path), 0).sam_rho == 0.0
    with pytest.raises(ConfigError, match="sam_rho"):  # a real difference still is one
        plan_sweep(tiny_base().updated({"sam_rho": 0.1}), grid, tmp_path)


def test_paths_are_stored_relative_and_survive_moving_the_sweep(tmp_path):
    plan_sweep(tiny_base(), {"batch_size": [32, 64]}, tmp_path / "a")
    raw = json.loads((tmp_path / "a" / "sweep.json").read_text())
    assert [r["run_dir"] for r in raw["runs"]] == ["runs/b32-s0", "runs/b64-s0"]
    assert [r["config"]["output_dir"] for r in raw["runs"]] == ["runs/b32-s0", "runs/b64-s0"]
    shutil.move(tmp_path / "a", tmp_path / "b")
    sweep = load_sweep(tmp_path / "b")
    assert sweep["sweep_dir"] == str(tmp_path / "b")
    assert sweep["runs"][1]["run_dir"] == str(tmp_path / "b" / "runs" / "b64-s0")
    config = entry_config(sweep, 1)
    assert config.output_dir == str(tmp_path / "b" / "runs" / "b64-s0")
    assert config.batch_size == 64 and config.lr == pytest.approx(0.05)


@pytest.mark.parametrize("index", [-1, 2, 7])
def test_entry_index_out_of_range_names_index_and_range(tmp_path, index):
    sweep = plan_sweep(tiny_base(), {"batch_size": [32, 64]}, tmp_path)
    with pytest.raises(ConfigError, match=rf"index {index} .*0\.\.1"):
        entry_config(sweep, index)


def test_missing_or_corrupt_sweep_is_a_user_error_naming_the_file(tmp_path):
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "sweep.json"))):
        load_sweep(tmp_path)
    (tmp_path / "sweep.json").write_text('{"version": 1, "runs": [')
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "sweep.json"))):
        load_sweep(tmp_path)
    (tmp_path / "sweep.json").write_text('{"version": 1, "base": {}, "grid": {}, '
                                          '"world_size": 1, "runs": [{"index": 0}]}')
    with pytest.raises(UserError, match="not a valid sweep plan"):
        load_sweep(tmp_path)


# --- running and status ------------------------------------------------------------------------


def test_fresh_plan_is_all_pending(trained):
    _, before, _ = trained
    assert before == ["pending"] * 4


def test_run_all_completes_good_runs_records_diverged_and_goes_on(trained):
    root, _, statuses = trained
    assert statuses == {0: "completed", 1: "diverged", 2: "completed", 3: "diverged"}
    rows = sweep_status(root)
    assert [r["state"] for r in rows] == ["completed", "diverged", "completed", "diverged"]
    assert [(r["batch_size"], r["seed"]) for r in rows] == [(32, 0), (32, 0), (64, 0), (64, 0)]
    for row in rows:
        results = json.loads((root / "runs" / row["name"] / "results.json").read_text())
        assert row["best_val_acc"] == results["best_val_acc"]
        assert row["epochs"] == 1
        assert row["epochs_completed"] == (1 if row["state"] == "completed" else 0)
    assert rows[0]["best_val_acc"] > 0.5


def test_second_run_all_and_run_task_retrain_nothing(trained):
    root, _, _ = trained
    results = sorted(root.glob("runs/*/results.json"))
    assert len(results) == 4
    mtimes = [p.stat().st_mtime_ns for p in results]
    assert run_all(root, progress=False) == {0: "completed", 1: "diverged", 2: "completed",
                                             3: "diverged"}
    assert run_task(root, 2, progress=False) == 0  # completed: returns the stored results
    assert [p.stat().st_mtime_ns for p in results] == mtimes


def _fake_train(behaviour: dict[int, object], calls: list[int]):
    """A stand-in for lbtkit.train.run: per batch size, a status to record or an exception."""

    def run(config, *, progress=True):
        calls.append(config.batch_size)
        outcome = behaviour[config.batch_size]
        if isinstance(outcome, BaseException):
            raise outcome
        results = {"status": outcome, "best_val_acc": 0.5, "epochs_completed": 1}
        RunDir(config.output_dir).create()
        write_json(RunDir(config.output_dir).config_path, config.to_dict())
        write_json(RunDir(config.output_dir).results_path, results)
        return results

    return run


def test_run_all_records_a_crash_as_failed_and_goes_on(tmp_path, monkeypatch):
    sweep = plan_sweep(tiny_base(), {"batch_size": [16, 32, 64]}, tmp_path)
    calls: list[int] = []
    fake = _fake_train({16: "completed", 32: RuntimeError("boom"), 64: "completed"}, calls)
    monkeypatch.setattr("lbtkit.train.run", fake)
    statuses = run_all(tmp_path, progress=False)
    assert statuses == {0: "completed", 1: "failed", 2: "completed"}
    assert calls == [16, 32, 64]
    failed = json.loads((tmp_path / "runs" / "b32-s0" / "results.json").read_text())
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: boom"
    assert "Traceback" in failed["traceback"]
    assert failed["config"]["output_dir"] == sweep["runs"][1]["run_dir"]
    assert [r["state"] for r in sweep_status(tmp_path)] == ["completed", "failed", "completed"]
    assert run_all_exit_code(statuses) == 1
    # A failed entry is retried next time; the completed ones are not.
    calls.clear()
    monkeypatch.setattr("lbtkit.train.run", _fake_train({32: "completed"}, calls))
    assert run_all(tmp_path, progress=False) == {0: "completed", 1: "completed", 2: "completed"}
    assert calls == [32]


def test_run_all_keeps_a_results_file_the_crashing_run_wrote(tmp_path, monkeypatch):
    plan_sweep(tiny_base(), {"batch_size": [32]}, tmp_path)

    def run(config, *, progress=True):
        write_json(RunDir(config.output_dir).results_path, {"status": "diverged"})
        raise RuntimeError("after writing")

    monkeypatch.setattr("lbtkit.train.run", run)
    assert run_all(tmp_path, progress=False) == {0: "failed"}
    stored = json.loads((tmp_path / "runs" / "b32-s0" / "results.json").read_text())
    assert stored == {"status": "diverged"}


@pytest.mark.parametrize("stop", ["interrupted", KeyboardInterrupt()])
def test_an_interruption_stops_the_sweep(tmp_path, monkeypatch, stop):
    plan_sweep(tiny_base(), {"batch_size": [16, 32, 64]}, tmp_path)
    calls: list[int] = []
    monkeypatch.setattr("lbtkit.train.run",
                        _fake_train({16: "completed", 32: stop, 64: "completed"}, calls))
    statuses = run_all(tmp_path, progress=False)
    assert statuses == {0: "completed", 1: "interrupted"}
    assert calls == [16, 32]
    assert run_all_exit_code(statuses) == 75


@pytest.mark.parametrize("status,code", [("completed", 0), ("diverged", 3), ("interrupted", 75)])
def test_run_task_returns_the_exit_code_of_the_status(tmp_path, monkeypatch, status, code):
    plan_sweep(tiny_base(), {"batch_size": [16, 32]}, tmp_path)
    calls: list[int] = []
    monkeypatch.setattr("lbtkit.train.run", _fake_train({32: status}, calls))
    assert run_task(tmp_path, 1, progress=False) == code
    assert calls == [32]
    with pytest.raises(ConfigError, match="index 2"):
        run_task(tmp_path, 2, progress=False)


def test_status_running_stale_and_resumed(tmp_path):
    sweep = plan_sweep(tiny_base(), {"batch_size": [16, 32, 64]}, tmp_path)
    runs = [RunDir(entry["run_dir"]) for entry in sweep["runs"]]
    for run, entry in zip(runs, sweep["runs"], strict=True):
        run.create()
        write_json(run.config_path, entry["config"])
    runs[0].append_metrics({"epoch": 1, "val_acc": 0.4})
    runs[0].append_metrics({"epoch": 2, "val_acc": 0.7})
    with open(runs[0].metrics_path, "a") as handle:
        handle.write('{"epoch": 3, "val_ac')  # torn by a kill mid-append
    old = time.time() - ACTIVE_WINDOW_SECONDS - 60
    for path in (runs[1].config_path, runs[1].checkpoints):
        os.utime(path, (old, old))
    # Entry 2 was interrupted, then resumed: config.json is rewritten after results.json.
    write_json(runs[2].results_path, {"status": "interrupted", "epochs_completed": 3})
    os.utime(runs[2].results_path, (old, old))
    rows = sweep_status(tmp_path)
    assert [r["state"] for r in rows] == ["running", "stale", "running"]
    assert rows[0]["best_val_acc"] == 0.7 and rows[0]["epochs_completed"] == 2
    assert rows[1]["best_val_acc"] is None and rows[1]["epochs_completed"] == 0
    # Without a new attempt the interruption is what the entry shows.
    os.utime(runs[2].results_path, None)
    for path in (runs[2].config_path, runs[2].checkpoints):
        os.utime(path, (old, old))
    assert sweep_status(tmp_path)[2]["state"] == "interrupted"
    assert sweep_status(tmp_path)[2]["epochs_completed"] == 3
