"""Real 2-process DDP over gloo on the CPU, through both ways of launching."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from helpers import cli_env, run_cli

pytestmark = pytest.mark.slow

ARGS = ["--preset", "smoke", "--model", "c1", "--batch-size", "64", "--epochs", "3",
        "--no-progress"]


def _results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ddp")
    run_dir = tmp_path / "run"
    result = run_cli("run", *ARGS, "--num-processes", "2", "--output", run_dir,
                     tmp_path=tmp_path, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir


def test_num_processes_2_trains_with_the_global_batch(ddp_reference):
    results = _results(ddp_reference)
    assert results["status"] == "completed"
    assert (results["world_size"], results["per_device_batch_size"]) == (2, 32)
    # 1437 training digits / global batch 64 = 22 optimizer steps per epoch, on any world size.
    assert results["steps_per_epoch"] == 22 and results["global_step"] == 66
    assert results["final"]["val_acc"] > 0.8
    rows = [json.loads(line) for line in (ddp_reference / "metrics.jsonl").open()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # written once, by the main process only
    # The workers took the user's OMP_NUM_THREADS=1 (run_cli's), recorded by the CLI, not
    # accelerate launch's own OMP_NUM_THREADS; a pinned count does not follow the load.
    policy = results["cpu"]
    assert (policy["threads"], policy["threads_from"], policy["local_processes"]) \
        == (1, "OMP_NUM_THREADS", 2)
    assert policy["adaptive"] is False and "thread_changes" not in policy


def test_plain_accelerate_launch_works_too(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
         "2", "--main_process_port", "29517", "-m", "lbtkit", "run", *ARGS, "--epochs", "1",
         "--output", str(run_dir)],
        capture_output=True, text=True, timeout=400, env=cli_env(tmp_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    results = _results(run_dir)
    assert results["status"] == "completed" and results["world_size"] == 2


def test_ddp_sigterm_then_resume_matches_uninterrupted(ddp_reference, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lbtkit", "run", *ARGS, "--num-processes", "2",
         "--output", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env(tmp_path),
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and metrics.read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out
    assert _results(run_dir)["status"] == "interrupted"

    result = run_cli("run", *ARGS, "--num-processes", "2", "--output", run_dir,
                     tmp_path=tmp_path, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    a = load_file(str(ddp_reference / "model.safetensors"))
    b = load_file(str(run_dir / "model.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_targets_under_two_processes_evaluate_and_stop_together(tmp_path):
    """A run with targets on 2 processes: every process evaluates at the same steps (the
    evaluations are collective), one evals.jsonl, and all stop together at the step that met
    the last target, as the one-process run of the same config does."""
    from lbtkit.config import build_config
    from lbtkit.targets import eval_steps
    from lbtkit.train import run

    flags = {"targets": "train_loss<=1.2,val_error<=0.3", "val_split": 300, "epochs": 6,
             "train_eval_samples": 512, "scheduler": "constant", "warmup_steps": 3}
    result = run_cli("run", "--preset", "smoke", "--batch-size", "64", "--no-progress",
                     *[f"--{k.replace('_', '-')}={v}" for k, v in flags.items()],
                     "--num-processes", "2", "--output", tmp_path / "two",
                     tmp_path=tmp_path, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    two = _results(tmp_path / "two")
    one = run(build_config(preset="smoke", overrides={**flags, "batch_size": 64,
                                                      "output_dir": str(tmp_path / "one")}),
              progress=False)
    assert two["world_size"] == 2 and two["status"] == "completed"
    met = two["steps_to_targets"]
    assert None not in met.values() and two["global_step"] == max(met.values())
    # Written once, by the main process, at the planned steps up to the stop.
    plan = eval_steps(1.1, 6 * two["steps_per_epoch"])
    steps = [json.loads(line)["step"] for line in (tmp_path / "two" / "evals.jsonl").open()]
    assert steps == plan[:len(steps)]
    # Sums over processes round differently, so a target may be met an evaluation or two
    # apart from the one-process run.
    ones = [json.loads(line)["step"] for line in (tmp_path / "one" / "evals.jsonl").open()]
    assert ones == plan[:len(ones)]
    for name, step in one["steps_to_targets"].items():
        assert abs(steps.index(met[name]) - ones.index(step)) <= 2, (name, met, one)
