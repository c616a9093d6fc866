"""Resume checkpoints: atomic on disk, and loadable without unpickling anything.

A checkpoint is a directory ``checkpoints/step-000001234/`` holding

    model.safetensors          unwrapped model weights and buffers
    optimizer.pt               optimizer state dict (tensors and numbers only: weights_only load)
    state.json                 where the loop stands (epoch, step, running sums, timers, scaler)
    rng-rank{R}.safetensors    each process's torch RNG state (dropout streams)

It is written under a temporary name and renamed into place as the last act, and older
checkpoints are deleted only after that, so a kill at any instant leaves at least one
complete checkpoint (or none yet). Loading picks the newest complete one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lbtkit.errors import CheckpointError

PREFIX = "step-"
TMP_PREFIX = ".tmp-"


@dataclass
class LoopState:
    """Where the training loop stands; everything besides tensors that resume needs."""

    epoch: int = 0  # 0-based epoch in progress
    step_in_epoch: int = 0  # next batch of that epoch
    global_step: int = 0  # optimizer steps taken
    train_seconds: float = 0.0  # wall time spent in earlier segments of this run
    best_val_acc: float | None = None
    # running sums of the epoch in progress (so a mid-epoch resume reports the same metrics)
    epoch_loss_sum: float = 0.0
    epoch_correct: float = 0.0
    epoch_step_seconds: float = 0.0
    scaler: dict[str, Any] | None = None
    # NoiseScaleMonitor.state_dict() when the run logs the noise scale (its moving averages)
    noise_scale: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def checkpoint_name(global_step: int) -> str:
    return f"{PREFIX}{global_step:09d}"


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint in ``folder`` (temporary ones are ignored)."""
    if not folder.is_dir():
        return None
    done = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX))
    return done[-1] if done else None


def save_checkpoint(
    folder: Path,
    state: LoopState,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rank: int,
    world_size: int,
    barrier,
) -> Path:
    """Collective: every process calls it; rank 0 writes the shared files and renames.

    ``barrier`` is a callable that waits for all processes (``accelerator.wait_for_everyone``).
    """
    final = folder / checkpoint_name(state.global_step)
    tmp = folder / f"{TMP_PREFIX}{final.name}"
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()
    if not final.exists():
        _save_rng(tmp / f"rng-rank{rank}.safetensors")
    barrier()
    if rank == 0 and not final.exists():
        save_weights(model, tmp / "model.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        meta = {"world_size": world_size, "state": state.to_dict()}
        (tmp / "state.json").write_text(json.dumps(meta, indent=2))
        _fsync_dir_files(tmp)
        os.replace(tmp, final)
        _fsync(folder)
        for old in folder.iterdir():
            if old != final and (old.name.startswith(PREFIX) or old.name.startswith(TMP_PREFIX)):
                shutil.rmtree(old, ignore_errors=True)
    elif rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rank: int,
) -> LoopState:
    """Restore model, optimizer and this process's RNG; return the loop state.

    Data order and augmentation do not depend on the number of processes, but dropout
    streams are per process: resuming on another count works, it is just not bit-exact.
    """
    try:
        meta = json.loads((path / "state.json").read_text())
        weights = load_file(str(path / "model.safetensors"))
        optim_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # json, safetensors and torch raise many types for a damaged file
        raise CheckpointError(f"cannot load checkpoint {path}: {exc}") from None
    try:
        model.load_state_dict(weights)
        optimizer.load_state_dict(optim_state)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {exc}") from None
    rng_file = path / f"rng-rank{rank}.safetensors"
    if rng_file.exists():
        _load_rng(rng_file)
    return LoopState(**meta["state"])


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """Write a model's full state (parameters and buffers) as safetensors, atomically."""
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(weights, str(tmp))
    os.replace(tmp, path)


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load a full state written by ``save_weights`` (strict: every key must match)."""
    try:
        weights = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"cannot read weights {path}: {exc}") from None
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"weights {path} do not fit this model: {first}") from None


def _save_rng(path: Path) -> None:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    save_file(states, str(path))


def _load_rng(path: Path) -> None:
    try:
        states = load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"cannot load RNG state {path}: {exc}") from None
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_dir_files(folder: Path) -> None:
    for item in folder.iterdir():
        _fsync(item)
    _fsync(folder)
