"""Helpers the tests share (import them: ``from helpers import run_cli``): run the real CLI in a
subprocess, as a user would, or in this process where no process boundary is under test
(invoke_cli); train small runs; wait limits; processes. conftest.py keeps only pytest's hooks
and fixtures."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import traceback
from pathlib import Path

import pytest


def scaled_timeout(seconds: float) -> float:
    """A wait limit scaled by LBTKIT_TIMEOUT_FACTOR (default 1): a loaded CI machine raises
    the factor instead of every test guessing its own margin."""
    factor = float(os.environ.get("LBTKIT_TIMEOUT_FACTOR", "1"))
    if not factor > 0:
        raise ValueError(f"LBTKIT_TIMEOUT_FACTOR must be a positive number, not {factor!r}")
    return seconds * factor


def install_wheel_venv(tmp_path: Path, env: dict[str, str]) -> Path:
    """Build lbtkit's wheel from a copy of the tracked files and install it into a fresh
    venv under ``tmp_path``; return the venv. The venv sees this venv's packages through a
    .pth file (no torch reinstall) and the wheel goes in with --no-deps, so the lbtkit it
    imports is the wheel's, with no checkout anywhere near."""
    root = Path(__file__).resolve().parent.parent
    source = tmp_path / "source"
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.split()
    for name in tracked:
        if (root / name).is_file() and not (root / name).is_symlink():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(source)], check=True, capture_output=True,
                   timeout=scaled_timeout(300))
    (wheel,) = wheels.glob("lbtkit-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=scaled_timeout(120))
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    shared = sysconfig.get_paths()["purelib"]
    (Path(site.stdout.strip()) / "shared-venv.pth").write_text(shared + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", str(wheel)], check=True, env=env, capture_output=True,
                   timeout=scaled_timeout(300))
    return venv


def markdown_table(text: str, first_header: str) -> list[dict[str, str]]:
    """The markdown table whose header row starts with ``| first_header |``, as dicts."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")),
                             strict=True)))
    return rows


REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_FILES = [f"{p}-{k}" for p in ("train", "t10k")
                 for k in ("images-idx3-ubyte", "labels-idx1-ubyte")]


def require_real_fashion_mnist() -> None:
    """Skip without the Debian package, except in CI (CI=true) or with LBTKIT_REQUIRE_DATA=1,
    where a missing package fails: CI installs it (tests/install-data.sh)."""
    if all((REAL_FASHION / f"{name}.gz").is_file() for name in FASHION_FILES):
        return
    reason = f"Fashion-MNIST is not installed in {REAL_FASHION} (apt-get install " \
             "dataset-fashion-mnist, or bash tests/install-data.sh)"
    if os.environ.get("CI") == "true" or os.environ.get("LBTKIT_REQUIRE_DATA") == "1":
        pytest.fail(f"CI/LBTKIT_REQUIRE_DATA: {reason}")
    pytest.skip(reason)


def cli_env(tmp_path: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GLOO_SOCKET_IFNAME="lo",
        MASTER_ADDR="127.0.0.1",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    if tmp_path is not None:
        # No stray Accelerate default config from the developer's home can leak in.
        env["HF_HOME"] = str(tmp_path / "hf_home")
    return env


def run_cli(*args: str, tmp_path: Path | None = None, timeout: float = 300,
            check: int | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "lbtkit", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=cli_env(tmp_path),
    )
    if check is not None and result.returncode != check:
        raise AssertionError(
            f"exit {result.returncode} != {check}\nstdout:\n{result.stdout}\n"
            f"stderr:\n{result.stderr}"
        )
    return result


def invoke_cli(*args: str, tmp_path: Path | None = None, check: int | None = None,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI in this process, as ``python -m lbtkit`` runs it (its logging set-up, exit
    code, stdout, stderr, run_cli's environment), for checks with no process boundary under
    test: a fresh interpreter (run_cli) pays 3-8 s of imports (torch) before the first line.
    An exception that escapes the CLI lands in ``stderr`` as the traceback a user would see."""
    from typer.testing import CliRunner

    from lbtkit.cli import app, configure_logging

    _refuse_a_launch_here(list(map(str, args)))
    logger = logging.getLogger("lbtkit")
    saved = logger.handlers[:], logger.level, logger.propagate
    env = {k: v for k, v in {**cli_env(tmp_path), **(env or {})}.items()
           if os.environ.get(k) != v}
    try:
        configure_logging()
        result = CliRunner().invoke(app, list(map(str, args)), env=env)  # restored after
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    done = subprocess.CompletedProcess(["lbtkit", *map(str, args)], result.exit_code,
                                       result.stdout, stderr)
    if check is not None and done.returncode != check:
        raise AssertionError(f"exit {done.returncode} != {check}\nstdout:\n{done.stdout}\n"
                             f"stderr:\n{done.stderr}")
    return done


def _refuse_a_launch_here(args: list[str]) -> None:
    """A launch of several processes belongs in run_cli: in this process the launcher would
    make the test worker the workers' subreaper and signal its other children when done."""
    launching = args[:1] != ["sweep"] and "--dry-run" not in args  # a sweep plan only plans
    for flag, value in itertools.pairwise(args):
        if launching and flag == "--num-processes" and value.isdigit() and int(value) > 1:
            raise AssertionError(f"{' '.join(args)}: launches processes, use run_cli")


def assert_user_error(result: subprocess.CompletedProcess, needle: str) -> None:
    """A user mistake: exit 2, one line on stderr naming the bad value, no traceback."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert needle in lines[0], lines[0]


def train_smoke(run_dir: Path, **values) -> dict:
    """A one-epoch F1-on-digits run (the smoke preset) in ``run_dir``; its results."""
    from lbtkit.config import RunConfig, preset_values
    from lbtkit.train import run

    config = RunConfig().updated(preset_values("smoke")).updated(
        {"epochs": 1, "output_dir": str(run_dir), **values})
    return run(config, progress=False)


def train_sb_lb(root: Path) -> tuple[Path, Path, dict]:
    """A small-batch (32) and a large-batch (512) smoke run under ``root``: the two
    solutions the weight-space tools (interpolation, planes) are tested on."""
    results = {label: train_smoke(root / label, batch_size=size)
               for label, size in (("sb", 32), ("lb", 512))}
    return root / "sb", root / "lb", results


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
