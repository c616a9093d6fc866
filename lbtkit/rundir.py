"""The run-directory format, and ``load_run``: the public way back to a trained model.

    RUN/config.json        the resolved RunConfig (``--config RUN/config.json`` repeats the run)
    RUN/metrics.jsonl      one JSON line per epoch
    RUN/results.json       status, final and best metrics, batch plan, versions
    RUN/model.safetensors  final weights (written when the run completes)
    RUN/checkpoints/       resume state (see lbtkit.checkpoint)

Every file is written atomically (temporary name, fsync, rename), so a kill at any instant
leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from lbtkit.config import RunConfig
from lbtkit.errors import CheckpointError

STATUS_COMPLETED = "completed"
STATUS_DIVERGED = "diverged"
STATUS_INTERRUPTED = "interrupted"


class RunDir:
    """Paths and readers/writers of one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config_path = self.root / "config.json"
        self.metrics_path = self.root / "metrics.jsonl"
        self.results_path = self.root / "results.json"
        self.model_path = self.root / "model.safetensors"
        self.checkpoints = self.root / "checkpoints"

    def create(self) -> None:
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def read_config(self) -> RunConfig | None:
        if not self.config_path.exists():
            return None
        return RunConfig.from_dict(read_json(self.config_path), source=str(self.config_path))

    def read_results(self) -> dict[str, Any] | None:
        if not self.results_path.exists():
            return None
        return read_json(self.results_path)

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        lines = self.metrics_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def keep_metrics_before(self, epochs_completed: int) -> None:
        """Drop epoch lines a resumed run is about to redo (they came after its checkpoint)."""
        rows = [r for r in self.read_metrics() if r["epoch"] <= epochs_completed]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def versions() -> dict[str, str | None]:
    """What produced a result: interpreter, libraries, and the lbtkit commit when in a checkout."""
    import accelerate
    import torch

    import lbtkit

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
        "lbtkit": lbtkit.__version__,
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def load_run(path: str | Path, *, device: str = "cpu"):  # -> tuple[nn.Module, RunConfig]
    """Return ``(model, config)`` of a completed run, its final weights loaded, in eval mode."""
    from lbtkit.checkpoint import load_weights
    from lbtkit.models import build_model

    run = RunDir(path)
    if not run.root.is_dir():
        raise CheckpointError(f"run directory not found: {run.root}")
    config = run.read_config()
    if config is None:
        raise CheckpointError(f"{run.root} is not a run directory (no config.json)")
    if not run.model_path.exists():
        status = (run.read_results() or {}).get("status", "not finished")
        raise CheckpointError(f"{run.root} has no final weights (run status: {status})")
    from lbtkit.data import dataset_info

    info = dataset_info(config.dataset)
    model = build_model(
        config.model,
        num_classes=config.num_classes or info.num_classes,
        in_channels=info.channels,
        image_size=config.image_size or info.image_size,
        pretrained="none",
    )
    load_weights(model, run.model_path)
    return model.to(device).eval(), config
