"""The wheel is the kit: installed into a fresh venv with no checkout, it runs what a new user
runs first (the SLURM side, `sweep submit` from the wheel, is in test_slurm.py)."""

from __future__ import annotations

import json
import subprocess

import pytest

from helpers import cli_env, install_wheel_venv, scaled_timeout

pytestmark = pytest.mark.slow


def test_the_wheel_alone_runs_doctor_a_smoke_run_and_the_quick_demo(tmp_path):
    env = {k: v for k, v in cli_env(tmp_path).items() if k != "PYTHONPATH"}
    venv = install_wheel_venv(tmp_path, env)
    work = tmp_path / "work"  # no checkout here, nor above
    work.mkdir()

    def lbtkit(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([str(venv / "bin" / "lbtkit"), *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=scaled_timeout(600))
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done

    imported = subprocess.run([str(venv / "bin" / "python"), "-c",
                               "import lbtkit; print(lbtkit.__file__)"], cwd=work, env=env,
                              capture_output=True, text=True, check=True).stdout
    assert imported.startswith(str(venv)), imported
    assert "keskar-f1-fashion" in lbtkit("presets").stdout  # package data: the presets
    lbtkit("doctor")
    lbtkit("run", "--preset", "smoke", "--epochs", "1", "--no-progress", "--output", "smoke")
    assert json.loads((work / "smoke" / "results.json").read_text())["status"] == "completed"
    lbtkit("demo", "--quick", "--no-progress", "--output", "demo")
    assert "batch" in (work / "demo" / "index.md").read_text()
