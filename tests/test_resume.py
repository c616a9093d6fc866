"""Kill a real run at any point and re-run the same command: the final weights must equal an
uninterrupted run's exactly (CPU), whether it was stopped by a signal or killed outright."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from helpers import cli_env, invoke_cli

# C1 has dropout, so an exact match also shows the RNG state is restored.
ARGS = ["run", "--preset", "smoke", "--model", "c1", "--batch-size", "32", "--epochs", "5",
        "--log-every", "5", "--no-progress"]

pytestmark = pytest.mark.slow


def _start(run_dir, tmp_path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lbtkit", *ARGS, "--output", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env(tmp_path),
    )


def _wait_for(predicate, proc, timeout=240.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"run ended early:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _epochs_logged(run_dir) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _finish(run_dir, tmp_path) -> dict[str, torch.Tensor]:
    """The same command run to the end, in this process (a resume needs no fresh one)."""
    invoke_cli(*ARGS, "--output", run_dir, tmp_path=tmp_path, check=0)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    assert [r["epoch"] for r in map(json.loads, (run_dir / "metrics.jsonl").open())] == \
        [1, 2, 3, 4, 5]
    return load_file(str(run_dir / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("reference")
    return _finish(tmp_path / "run", tmp_path)


def _assert_identical(a, b) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_checkpoints_mid_epoch_and_resume_is_exact(reference, tmp_path, signum):
    run_dir = tmp_path / "run"
    proc = _start(run_dir, tmp_path)
    _wait_for(lambda: _epochs_logged(run_dir) >= 1, proc)
    time.sleep(0.3)  # land somewhere inside epoch 2 or later
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "interrupted"
    assert not (run_dir / "model.safetensors").exists()
    assert "rerun the same command to resume" in out
    _assert_identical(_finish(run_dir, tmp_path), reference)


def test_sigkill_at_any_moment_then_resume_is_exact(reference, tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(run_dir, tmp_path)
    _wait_for(lambda: _epochs_logged(run_dir) >= 2, proc)
    proc.kill()
    proc.wait()
    _assert_identical(_finish(run_dir, tmp_path), reference)


def test_a_torn_metrics_line_from_a_kill_mid_append_is_repaired_and_resume_is_exact(
        reference, tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(run_dir, tmp_path)
    _wait_for(lambda: _epochs_logged(run_dir) >= 2, proc)
    proc.kill()
    proc.wait()
    with (run_dir / "metrics.jsonl").open("a") as handle:  # what a kill mid-append leaves
        handle.write('{"epoch": 3, "step": 30, "lr": 0.0')
    _assert_identical(_finish(run_dir, tmp_path), reference)  # also checks epochs 1..5
