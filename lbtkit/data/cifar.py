"""CIFAR-10 and CIFAR-100: their python-pickle batches, read through a restricted unpickler
(a tampered file cannot run code), with the shapes and label range checked."""

from __future__ import annotations

import codecs
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lbtkit.data.reading import check_label_range, corrupt_error, image_data, missing_error
from lbtkit.data.types import DatasetInfo, ImageData

CIFAR_DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        name="cifar10",
        num_classes=10,
        channels=3,
        image_size=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        crop_padding=4,
        flip=True,
    ),
    "cifar100": DatasetInfo(
        name="cifar100",
        num_classes=100,
        channels=3,
        image_size=32,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        crop_padding=4,
        flip=True,
    ),
}


@dataclass(frozen=True)
class CifarLayout:
    dirname: str
    train_files: tuple[str, ...]
    val_files: tuple[str, ...]
    label_key: str
    torchvision_class: str


CIFAR_LAYOUTS: dict[str, CifarLayout] = {
    "cifar10": CifarLayout(
        dirname="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        val_files=("test_batch",),
        label_key="labels",
        torchvision_class="CIFAR10",
    ),
    "cifar100": CifarLayout(
        dirname="cifar-100-python",
        train_files=("train",),
        val_files=("test",),
        label_key="fine_labels",
        torchvision_class="CIFAR100",
    ),
}


class _ForbiddenGlobalError(pickle.UnpicklingError):
    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1").
    # Only that exact use is allowed, not arbitrary codecs.
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(
            f"unexpected _codecs.encode({type(text).__name__}, {encoding!r})"
        )
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2 (numpy.core still exists there but warns when touched)
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    # Both module spellings resolve to the same functions: the originals were pickled by
    # numpy 1.x (numpy.core), files re-saved by numpy 2 say numpy._core. _frombuffer is what
    # protocol >= 5 uses for contiguous arrays; it only reinterprets a buffer.
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals needed to rebuild numpy arrays; anything else is refused."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _ForbiddenGlobalError(module, name) from None


def _unpickle(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            # latin1 is how py2-pickled numpy arrays (the original CIFAR files) must be read.
            return _RestrictedUnpickler(f, encoding="latin1").load()
    except _ForbiddenGlobalError as exc:
        raise corrupt_error(
            path,
            f"it references the global {exc.qualname}, which a dataset batch "
            "never contains (refused; the file may have been tampered with)",
        ) from None
    except Exception as exc:  # a malformed stream can fail in many ways; all mean "corrupt"
        raise corrupt_error(path, f"not a valid pickle ({type(exc).__name__}: {exc})") from exc


def _field(batch: dict[Any, Any], key: str, path: Path) -> Any:
    # Python-2 originals read with latin1 have str keys; Python-3 files have bytes keys.
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise corrupt_error(path, f"missing the {key!r} entry")


def _read_cifar_batch(
    path: Path, label_key: str, info: DatasetInfo
) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    if not isinstance(batch, dict):
        raise corrupt_error(path, f"expected a dict, found {type(batch).__name__}")
    data = _field(batch, "data", path)
    size, channels = info.image_size, info.channels
    row = channels * size * size
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == row
    ):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise corrupt_error(
            path, f"'data' should be a uint8 array of shape (N, {row}), found {got}"
        )
    try:
        labels = np.asarray(_field(batch, label_key, path), dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise corrupt_error(path, f"{label_key!r} is not a list of integers") from exc
    if labels.shape != (data.shape[0],):
        raise corrupt_error(
            path,
            f"{label_key!r} has shape {labels.shape}, expected ({data.shape[0]},) to match 'data'",
        )
    check_label_range(labels, info.num_classes, path)
    # Rows are the R, G, B planes of size x size, one after another: exactly NCHW.
    return data.reshape(-1, channels, size, size), labels


def cifar_files(name: str, root: Path) -> list[Path]:
    """The batch files of CIFAR data set ``name`` under ``root``, train then test."""
    layout = CIFAR_LAYOUTS[name]
    return [root / layout.dirname / f for f in (*layout.train_files, *layout.val_files)]


def load_cifar(info: DatasetInfo, root: Path) -> ImageData:
    layout = CIFAR_LAYOUTS[info.name]
    folder = root / layout.dirname
    if not folder.is_dir():
        raise missing_error(info.name, folder, root)
    splits, read = [], []
    for files in (layout.train_files, layout.val_files):
        images, labels = [], []
        for filename in files:
            path = folder / filename
            if not path.is_file():
                raise missing_error(info.name, path, root)
            x, y = _read_cifar_batch(path, layout.label_key, info)
            read.append(path)
            images.append(x)
            labels.append(y)
        splits.append((np.concatenate(images), np.concatenate(labels)))
    (train_x, train_y), (val_x, val_y) = splits
    return image_data(info, train_x, train_y, val_x, val_y, files=read)
