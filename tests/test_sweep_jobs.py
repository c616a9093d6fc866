"""``lbtkit sweep run --jobs N``: entries at once in child processes (lbtkit.sweep.run_entries on
lbtkit.local_pool), with the results and the faults of one at a time."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lbtkit.config import RunConfig, preset_values
from lbtkit.errors import ConfigError
from lbtkit.local_pool import Task
from lbtkit.rundir import RunDir
from lbtkit.sweep import load_sweep, plan_sweep, run_all, run_entries

from helpers import assert_user_error, cli_env, scaled_timeout


def plan_smoke(root: Path, *, epochs: int = 1, batch_sizes=(32, 64), seeds=(0,)) -> Path:
    base = RunConfig().updated(preset_values("smoke")).updated({"epochs": epochs})
    plan_sweep(base, {"batch_size": list(batch_sizes), "seed": list(seeds)}, root)
    return root


def weights_digest(sweep_dir: Path) -> dict[str, str]:
    return {entry["config"]["name"]: hashlib.sha256(
        (Path(entry["run_dir"]) / "model.safetensors").read_bytes()).hexdigest()
        for entry in load_sweep(sweep_dir)["runs"]}


def test_two_jobs_train_the_same_bits_as_one_at_a_time(tmp_path):
    """At the same torch thread count (1 here): a run's numbers depend on its thread count.
    Three entries on two slots: the third runs in a worker process that ran another before."""
    one_at_a_time = plan_smoke(tmp_path / "sequential", batch_sizes=(32, 64, 128))
    at_once = plan_smoke(tmp_path / "jobs", batch_sizes=(32, 64, 128))
    done = {0: "completed", 1: "completed", 2: "completed"}
    assert run_all(one_at_a_time, progress=False, threads=1) == done
    assert run_all(at_once, progress=False, jobs=2, threads=1) == done
    assert weights_digest(at_once) == weights_digest(one_at_a_time)
    log = (at_once / "logs" / "b32-s0.log").read_text()
    assert "--threads 1" in log and "epoch 1/1" in log  # the child's own lines


def test_a_mistake_stops_the_sweep_before_any_entry_starts(cli, tmp_path):
    sweep = tmp_path / "sweep"
    base = RunConfig().updated({"model": "c1", "dataset": "cifar10", "epochs": 1,
                                "data_dir": str(tmp_path / "no-data")})
    plan_sweep(base, {"batch_size": [32, 64]}, sweep)
    result = cli("sweep", "run", sweep, "--jobs", "2")
    assert_user_error(result, "dataset 'cifar10' not found")
    assert not (sweep / "logs").exists()
    assert not any((sweep / "runs" / name / "config.json").exists() for name in ("b32-s0",
                                                                                  "b64-s0"))


def test_bad_jobs_and_indices_are_named(cli, tmp_path):
    sweep = plan_smoke(tmp_path / "sweep")
    assert_user_error(cli("sweep", "run", sweep, "--jobs", "0"), "--jobs")
    with pytest.raises(ConfigError, match="out of range"):
        run_entries(sweep, [0, 5], jobs=2)
    with pytest.raises(ConfigError, match="twice"):
        run_entries(sweep, [1, 1], jobs=2)


def test_a_child_that_dies_without_results_is_recorded_failed(tmp_path, monkeypatch):
    """As one at a time records an exception: failed in results.json, the others go on;
    a child stopped while starting (exit 75, nothing written) is interrupted."""
    import lbtkit.sweep as sweep_module

    sweep = plan_smoke(tmp_path / "sweep", batch_sizes=(32, 64, 128))
    scripts = {0: "echo 'error: the disk went away' >&2; exit 1", 1: "exit 0",
               2: "exit 75"}

    def fake_task(plan, entry, threads, processes):
        return Task(key=entry["index"], command=["sh", "-c", scripts[entry["index"]]],
                    log=tmp_path / f"{entry['index']}.log", env={"OMP_NUM_THREADS": "1"})

    monkeypatch.setattr(sweep_module, "_entry_task", fake_task)
    statuses = run_entries(sweep, jobs=2)
    assert statuses == {0: "failed", 1: "failed", 2: "interrupted"}
    runs = [RunDir(entry["run_dir"]) for entry in load_sweep(sweep)["runs"]]
    failure = runs[0].read_results()
    assert failure["status"] == "failed"
    assert failure["error"] == "exit 1: error: the disk went away"
    assert runs[1].read_results()["error"].startswith("exit 0")  # success without results
    assert runs[2].read_results() is None


def test_on_four_gpus_each_two_process_entry_is_launched_on_a_pair_of_its_own(
        tmp_path, monkeypatch):
    """No GPU here: the device count is faked; the commands are checked, not run."""
    import torch

    import lbtkit.sweep as sweep_module

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slots, processes = sweep_module._slots(world_size=2, jobs=4)
    assert slots == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
    assert processes == 2
    sweep = load_sweep(plan_smoke(tmp_path / "sweep"))
    task = sweep_module._entry_task(sweep, sweep["runs"][1], threads=8, processes=2)
    assert task.launches
    assert task.command[1:3] == ["-m", "accelerate.commands.launch"]
    assert task.command[task.command.index("--num_processes") + 1] == "2"
    tail = task.command[task.command.index("lbtkit") + 1:]
    assert tail == ["sweep", "run-task", sweep["sweep_dir"], "--index", "1", "--threads", "4"]
    assert task.env["OMP_NUM_THREADS"] == "4"  # 8 threads over its 2 processes
    assert "TORCH_ELASTIC_SHUTDOWN_TIMEOUT" in task.env


def test_on_the_cpu_an_entry_is_one_process_with_its_threads(tmp_path, monkeypatch):
    import torch

    import lbtkit.sweep as sweep_module

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert sweep_module._slots(world_size=2, jobs=3) == ([{}, {}, {}], 1)
    sweep = load_sweep(plan_smoke(tmp_path / "sweep"))
    task = sweep_module._entry_task(sweep, sweep["runs"][0], threads=2, processes=1)
    assert not task.launches
    assert task.command[1:] == ["-m", "lbtkit", "sweep", "run-task", sweep["sweep_dir"],
                                "--index", "0", "--threads", "2"]
    assert task.log == Path(sweep["sweep_dir"]) / "logs" / "b32-s0.log"


@pytest.mark.slow
def test_sigterm_stops_every_running_entry_at_a_checkpoint_and_the_rerun_completes(tmp_path):
    # Two seeds of one batch size: as fast as each other, neither finishes first.
    sweep = plan_smoke(tmp_path / "sweep", epochs=6, batch_sizes=(128,), seeds=(0, 1))
    entries = [RunDir(entry["run_dir"]) for entry in load_sweep(sweep)["runs"]]
    command = [sys.executable, "-m", "lbtkit", "sweep", "run", str(sweep), "--jobs", "2"]
    parent = subprocess.Popen(command, env=cli_env(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + scaled_timeout(240)
        while not all(run.read_metrics() for run in entries):  # both are training
            assert parent.poll() is None, parent.communicate()[0]
            assert time.monotonic() < deadline, "the entries never logged an epoch together"
            time.sleep(0.05)
        parent.send_signal(signal.SIGTERM)
        out, _ = parent.communicate(timeout=scaled_timeout(120))
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 75, out
    for run in entries:
        results = run.read_results()
        assert results["status"] == "interrupted", (run.root, out)
        assert results["epochs_completed"] < 6
        assert any(run.checkpoints.iterdir())

    rerun = subprocess.run(command, env=cli_env(tmp_path), capture_output=True, text=True,
                           timeout=scaled_timeout(300))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    for run in entries:
        assert run.read_results()["status"] == "completed"
        epochs = [row["epoch"] for row in run.read_metrics()]
        assert epochs == list(range(1, 7))  # resumed: each epoch once
    assert json.loads((entries[0].root / "results.json").read_text())["epochs_completed"] == 6


# --- study fashion --jobs: the seeds and the sweep's entries in children -------


def test_the_fashion_studys_children_run_the_parents_spec_seeds_and_entries(
        cli, tmp_path, monkeypatch):
    """What the parent asks for (the spec as JSON, the seed or entry, the threads) is what the
    children's commands run: the children are captured, then each command is run in this
    process with its work faked."""
    import lbtkit.cpu
    import lbtkit.local_pool as local_pool
    import lbtkit.studies.fashion as fashion
    import lbtkit.sweep
    from lbtkit.local_pool import PoolResult

    spec = fashion.QUICK.updated(seeds=(3, 5, 7), threads=1)
    captured = []

    def capture(tasks, slots, **callbacks):
        captured.extend(tasks)
        assert len(slots) == 2
        return PoolResult({task.key: 0 for task in tasks})

    monkeypatch.setattr(local_pool, "run_tasks", capture)
    work = tmp_path / "work"
    clock = fashion.StudyClock(tmp_path / "timings.json", {})
    assert fashion._runs_at_once(spec, work, clock, jobs=2, data_dir="/data")
    assert [task.key for task in captured] == [
        "keskar seed 3", "keskar seed 5", "keskar seed 7", "sweep b2048-s0", "sweep b8192-s0",
        "noise scale at init", "noise scale"]
    assert [task.after for task in captured[-2:]] == [("sweep b2048-s0",)] * 2

    ran, threads = [], []
    monkeypatch.setattr(fashion, "keskar_seed", lambda *args, **kwargs: (
        ran.append((args, kwargs)) or {"status": "completed"}))
    monkeypatch.setattr(lbtkit.sweep, "run_task", lambda *args, **kwargs: (
        ran.append((args, kwargs)) or 0))
    monkeypatch.setattr(fashion, "sweep_noise_scale", lambda *args, **kwargs: (
        ran.append((args, kwargs))))
    monkeypatch.setattr(lbtkit.cpu, "set_cpu_threads", threads.append)
    for task in captured:
        assert task.command[1:3] == ["-m", "lbtkit"]
        cli(*task.command[3:], check=0)
    assert ran == [((spec, seed, work), {"data_dir": "/data"}) for seed in (3, 5, 7)] + [
        ((work / "sweep", index), {"progress": True, "threads": 1}) for index in (0, 1)] + [
        ((spec, work / "sweep"), {"initial": initial}) for initial in (True, False)]
    assert threads == [1] * 5  # the spec's, in the seeds' and the noise scale's children
    assert "runs, 2 at once" in json.loads((tmp_path / "timings.json").read_text())
    # The entries are the sweep the study runs after: its plan, so it finds them done.
    assert load_sweep(work / "sweep")["grid"] == {"batch_size": [2048, 8192]}
