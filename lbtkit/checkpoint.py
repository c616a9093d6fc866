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

import contextlib
import dataclasses
import json
import math
import os
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lbtkit.errors import CheckpointError, WriteFailed

PREFIX = "step-"
TMP_PREFIX = ".tmp-"
# Without these the loop cannot know where it stands; the other LoopState fields have
# defaults that checkpoints written before they existed rely on.
_REQUIRED_STATE = ("epoch", "step_in_epoch", "global_step")


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
        _save_rng(tmp / f"rng-rank{rank}.safetensors", previous=latest_checkpoint(folder))
    barrier()
    if rank == 0 and not final.exists():
        _write_checkpoint_files(tmp, state, model=model, optimizer=optimizer,
                                world_size=world_size, previous=latest_checkpoint(folder))
        os.replace(tmp, final)
        _fsync(folder)
        for old in folder.iterdir():
            if old != final and (old.name.startswith(PREFIX) or old.name.startswith(TMP_PREFIX)):
                shutil.rmtree(old, ignore_errors=True)
    elif rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    return final


def _write_checkpoint_files(tmp: Path, state: LoopState, *, model: torch.nn.Module,
                            optimizer: torch.optim.Optimizer, world_size: int,
                            previous: Path | None) -> None:
    """Rank 0's share of a checkpoint, into ``tmp``. A failed write (a full disk) removes
    ``tmp`` and names the file and the older checkpoint that is still complete."""
    current = tmp / "model.safetensors"
    try:
        save_weights(model, current)
        current = tmp / "optimizer.pt"
        torch.save(optimizer.state_dict(), current)
        current = tmp / "state.json"
        meta = {"world_size": world_size, "state": state.to_dict()}
        current.write_text(json.dumps(meta, indent=2))
        _fsync_dir_files(tmp)
    except (OSError, RuntimeError, WriteFailed) as exc:  # torch.save: RuntimeError on ENOSPC
        shutil.rmtree(tmp, ignore_errors=True)
        reason = exc.reason if isinstance(exc, WriteFailed) else _first_line(exc)
        raise WriteFailed(current, reason, _kept_note(previous)) from None


def _kept_note(previous: Path | None) -> str:
    if previous is None:
        return "; no complete checkpoint yet"
    return (f"; the last complete checkpoint {previous} is still there: free space and rerun "
            f"the same command to resume")


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
    state = _read_state(path / "state.json")
    weights = read_weights(path / "model.safetensors")
    optim_state = _read_optimizer_state(path / "optimizer.pt")
    try:
        model.load_state_dict(weights)
        optimizer.load_state_dict(optim_state)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit this model: {_first_line(exc)}") from None
    rng_file = path / f"rng-rank{rank}.safetensors"
    if rng_file.exists():
        _load_rng(rng_file)
    return state


def checkpoint_step(weights: str | Path) -> int | None:
    """The optimizer step of a checkpoint's ``model.safetensors`` (from its state.json);
    None for weights that are not a checkpoint's."""
    weights = Path(weights)
    state = weights.parent / "state.json"
    if weights.name != "model.safetensors" or not state.is_file():
        return None
    return _read_state(state).global_step


def _read_state(path: Path) -> LoopState:
    """The loop state of ``state.json``, refusing one that is valid JSON but incomplete."""
    from lbtkit.fileio import read_json

    try:
        meta = read_json(path, kind=dict)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; delete its checkpoint directory to resume from an "
                              f"earlier one") from None
    values = meta.get("state")
    if not isinstance(values, dict):
        raise CheckpointError(f"{path} has no 'state' table: not a checkpoint lbtkit wrote")
    known = {f.name for f in dataclasses.fields(LoopState)}
    problem = next((f"unknown key {k!r}" for k in values if k not in known), None)
    problem = problem or next((f"no {k!r}" for k in _REQUIRED_STATE if k not in values), None)
    problem = problem or next(
        (f"{k!r} is {values[k]!r}, not a count" for k in _REQUIRED_STATE
         if isinstance(values[k], bool) or not isinstance(values[k], int) or values[k] < 0),
        None,
    )
    problem = problem or next((f"{k!r} is {v!r:.40}, not {_STATE_KINDS[k][1]}"
                               for k, v in values.items() if not _STATE_KINDS[k][0](v)), None)
    if problem:
        raise CheckpointError(f"{path} is incomplete or damaged ({problem}); delete its "
                              f"checkpoint directory to resume from an earlier one")
    return LoopState(**values)


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and \
        math.isfinite(value)


# What each LoopState field may hold in state.json (the counts are checked above).
_STATE_KINDS = {
    **{name: (lambda v: True, "") for name in _REQUIRED_STATE},
    **{name: (_is_number, "a finite number") for name in (
        "train_seconds", "epoch_loss_sum", "epoch_correct", "epoch_step_seconds")},
    "best_val_acc": (lambda v: v is None or _is_number(v), "a finite number or null"),
    "scaler": (lambda v: v is None or isinstance(v, dict), "a table or null"),
    "noise_scale": (lambda v: v is None or isinstance(v, dict), "a table or null"),
}


def _read_optimizer_state(path: Path) -> dict[str, Any]:
    """``torch.load`` restricted to tensors and plain data; a refusal is one line naming the
    file and the reason (never an invitation to lift the restriction)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        wanted = re.search(r"GLOBAL (\S+)", str(exc))
        reason = (f"it asks to import {wanted.group(1)}, and an optimizer state holds only "
                  f"tensors and numbers: loading it could run code" if wanted
                  else "it is not a readable optimizer state (damaged)")
        raise CheckpointError(f"refused {path}: {reason}; delete its checkpoint directory "
                              f"to resume from an earlier one") from None
    except Exception as exc:  # zip and I/O errors surface as several types
        raise CheckpointError(f"cannot read {path}: {_first_line(exc)}") from None
    if not (isinstance(state, dict) and isinstance(state.get("state"), dict)
            and isinstance(state.get("param_groups"), list)
            and all(isinstance(group, dict) for group in state["param_groups"])):
        what = "a table" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise CheckpointError(f"{path} holds {what}, not an optimizer state (its 'state' and "
                              f"'param_groups'); delete its checkpoint directory to resume from "
                              f"an earlier one")
    return state


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def save_snapshot(folder: Path, state: LoopState, model: torch.nn.Module) -> Path:
    """The model's weights at ``state``'s step, for analysis (not for resuming: no optimizer,
    no RNG), as ``folder/step-N/model.safetensors`` beside a checkpoint-style state.json, so
    ``checkpoint_step`` and ``lbtkit noise-scale --weights`` read its step. Written under a
    temporary name and renamed: a kill leaves no half snapshot."""
    final = folder / checkpoint_name(state.global_step)
    tmp = folder / f"{TMP_PREFIX}{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(model, tmp / "model.safetensors")
    (tmp / "state.json").write_text(json.dumps({"world_size": 1, "state": state.to_dict()}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """Write a model's full state (parameters and buffers) as safetensors, atomically."""
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _save_tensors(weights, path)


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors' save_file via a temporary name, with the umask's mode (save_file itself
    makes 0600 files), failures as WriteFailed naming ``path``."""
    from lbtkit.fileio import file_mode

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, str(tmp))
        with contextlib.suppress(OSError):  # a file system without modes keeps save_file's
            os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except Exception as exc:  # safetensors reports a full disk as its own error type
        tmp.unlink(missing_ok=True)
        raise WriteFailed(path, _first_line(exc)) from None


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing or damaged file is one CheckpointError
    line. Every weight file lbtkit reads (run weights, init.safetensors) goes through here."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"weights file not found: {path}") from None
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"cannot read weights {path}: {_first_line(exc)}; it is "
                              f"damaged or not a safetensors file") from None


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load a full state written by ``save_weights`` (strict: every key must match)."""
    weights = read_weights(path)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(
            f"weights {path} do not fit this model: {_first_line(exc)}") from None


def _save_rng(path: Path, *, previous: Path | None) -> None:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    try:
        _save_tensors(states, path)
    except WriteFailed as exc:
        raise exc.noting(_kept_note(previous)) from None


def _load_rng(path: Path) -> None:
    """Restore this process's RNG; a state of the wrong kind (dtype, size) is one line."""
    states = read_weights(path)
    if "cpu" not in states:
        raise CheckpointError(f"{path} holds no 'cpu' RNG state")
    current = torch.get_rng_state()
    found = states["cpu"]
    if found.dtype != current.dtype or found.shape != current.shape:
        raise CheckpointError(
            f"{path}: the 'cpu' RNG state is {found.dtype} of shape {tuple(found.shape)}, not "
            f"{current.dtype} of shape {tuple(current.shape)}; it is damaged: delete its "
            f"checkpoint directory to resume from an earlier one")
    try:
        torch.set_rng_state(found)
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state(states["cuda"])
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a usable RNG state ({_first_line(exc)}); delete "
                              f"its checkpoint directory to resume from an earlier one") from None


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
