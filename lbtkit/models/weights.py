"""Reading pretrained weights for any model: a weights file or a downloaded state dict, weights
only (a file can never run code when loaded), each failure one ConfigError line. The one reader
of ``--pretrained`` for lbtkit's MobileNetV2 and for torchvision:ARCH."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping

import safetensors.torch
import torch

from lbtkit.errors import ConfigError


def read_weights_file(path: str) -> object:
    """What a .safetensors or .pth file holds, read weights only (never code); a missing
    or unreadable file is one ConfigError line."""
    resolved = os.path.expanduser(path)
    if not os.path.isfile(resolved):
        raise ConfigError(
            f"pretrained weights file not found (or not a file): {path!r} "
            "(pretrained must be 'none', 'imagenet' or a path to a .safetensors/.pth file)"
        )
    try:
        if resolved.lower().endswith(".safetensors"):
            return safetensors.torch.load_file(resolved, device="cpu")
        # weights_only: a weights file must never be able to run code when loaded.
        return torch.load(resolved, map_location="cpu", weights_only=True)
    # The weights-only unpickler can fail on a corrupt file with almost any exception type
    # (KeyError, IndexError, ...); all of them mean "this file is not readable weights".
    except Exception as exc:
        raise ConfigError(
            f"cannot read pretrained weights file {path!r}: {describe_error(exc)}"
        ) from exc


def as_state_dict(obj: object, source: str) -> dict[str, torch.Tensor]:
    """``obj`` as a state dict (also under a "state_dict" or "model" key); else ConfigError."""
    # Training checkpoints usually nest the weights next to optimizer state, epoch, etc.
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ConfigError(
            f"{source} does not hold a state dict (a mapping of parameter names to tensors, "
            "optionally under a 'state_dict' or 'model' key)"
        )
    return dict(obj)


def describe_error(exc: Exception) -> str:
    """One line for an error message (the CLI prints user errors as a single line)."""
    if isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower():
        # torch's own text suggests weights_only=False, which lbtkit deliberately never does.
        return "it holds pickled objects other than tensors, and lbtkit never unpickles code"
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
