"""Killing only the launcher of a multi-process run stops the run (lbtkit.launch).

The workers of ``accelerate launch`` run in sessions of their own; a launcher killed on its own
(``kill -9``) used to leave them training. ``lbtkit run --num-processes 2`` adopts them
(subreaper), stops them with SIGTERM (they checkpoint) and exits 75.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import alive, cli_env, scaled_timeout

pytestmark = pytest.mark.slow


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in task.read_text().split()]
    return found


def test_killing_only_the_launcher_stops_the_workers(tmp_path):
    run_dir = tmp_path / "run"
    parent = subprocess.Popen(
        [sys.executable, "-m", "lbtkit", "run", "--preset", "smoke", "--model", "c1",
         "--epochs", "40", "--num-processes", "2", "--output", str(run_dir), "--no-progress"],
        env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + scaled_timeout(300)
        while not (run_dir / "metrics.jsonl").exists():
            assert parent.poll() is None, parent.communicate()[0]
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.5)
        (launcher,) = children(parent.pid)
        workers = children(launcher)
        assert len(workers) == 2, workers
        os.kill(launcher, signal.SIGKILL)  # the launcher only
        out, _ = parent.communicate(timeout=scaled_timeout(180))
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 75, out
    assert not [pid for pid in workers if alive(pid)], out
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "interrupted", out
    assert any((run_dir / "checkpoints").iterdir())
