"""What the file readers share: the errors that name a missing or damaged file, the label-range
check, and numpy arrays turned into an ``ImageData``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lbtkit.data.idx import IDX_LAYOUTS
from lbtkit.data.types import DatasetInfo, ImageData
from lbtkit.errors import DataNotFoundError


def missing_error(name: str, path: Path, root: Path) -> DataNotFoundError:
    return DataNotFoundError(
        f"dataset {name!r} not found: looked for {path}; "
        f"rerun with --download on a machine with internet (it fetches into {root})"
    )


def corrupt_error(path: Path, problem: str) -> DataNotFoundError:
    return DataNotFoundError(f"cannot read {path}: {problem}; {_fresh_copy_hint(path)}")


def _fresh_copy_hint(path: Path) -> str:
    for layout in IDX_LAYOUTS.values():
        if layout.package and any(path.parent == folder for folder in layout.system_folders):
            return f"reinstall it (apt-get install --reinstall {layout.package})"
    return "delete it and rerun with --download to fetch a fresh copy"


def check_label_range(labels: np.ndarray, num_classes: int, path: Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise corrupt_error(
            path, f"labels outside 0..{num_classes - 1} (found {labels.min()}..{labels.max()})"
        )


def image_data(
    info: DatasetInfo,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    *,
    files: Sequence[Path] = (),
) -> ImageData:
    def tensor(a: np.ndarray, dtype: Any) -> torch.Tensor:
        # torch.from_numpy needs a writable array; np.frombuffer views are read-only, so those
        # (and only those) get copied.
        return torch.from_numpy(np.require(a, dtype=dtype, requirements=["C", "W"]))

    return ImageData(
        info,
        tensor(train_x, np.uint8),
        tensor(train_y, np.int64),
        tensor(val_x, np.uint8),
        tensor(val_y, np.int64),
        files=tuple(files),
    )
