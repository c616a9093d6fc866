"""MNIST and Fashion-MNIST: their IDX files (gzipped or not), read with a validated header,
sizes and label range. Where the files may be, and the mirrors they are published on, is
``lbtkit.data.idx``, which ``lbtkit doctor`` and ``lbtkit fetch`` read too."""

from __future__ import annotations

import gzip
import logging
import math
import zlib
from pathlib import Path

import numpy as np

from lbtkit.data.idx import IDX_FILES, IDX_LAYOUTS, idx_search_dirs
from lbtkit.data.reading import check_label_range, corrupt_error, image_data
from lbtkit.data.types import DatasetInfo, ImageData
from lbtkit.errors import DataNotFoundError

logger = logging.getLogger(__name__)

IDX_DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        num_classes=10,
        channels=1,
        image_size=28,
        mean=(0.1307,),
        std=(0.3081,),
        crop_padding=2,
        flip=False,  # a mirrored digit is a different (or no) digit
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        num_classes=10,
        channels=1,
        image_size=28,
        # Computed from the 60,000 training images (uint8 / 255, all pixels pooled, ddof=0);
        # tests/test_data.py recomputes them from the real files when they are installed.
        mean=(0.286041,),
        std=(0.353024,),
        # No augmentation: this data set is here for Keskar et al.'s F1 protocol, which trains
        # on the raw images (the paper's F1 row is MNIST without augmentation). RunConfig has
        # no augmentation switch; the data set's entry decides, as for every data set.
        crop_padding=0,
        flip=False,
    ),
}

_IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dims
_IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dim


def _idx_file(folder: Path, basename: str) -> Path | None:
    for candidate in (folder / basename, folder / f"{basename}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_idx_files(name: str, data_dir: str | Path) -> list[Path] | None:
    """The four files in the first searched folder that holds all of them, else None."""
    for folder in idx_search_dirs(name, data_dir):
        found = [_idx_file(folder, basename) for basename in IDX_FILES]
        if all(found):
            return found  # type: ignore[return-value]
    return None


def idx_files(name: str, root: Path) -> list[Path]:
    """The four files of IDX data set ``name``: where they are, or, when they are not all
    there, where ``lbtkit fetch`` puts them."""
    found = find_idx_files(name, root)
    if found is not None:
        return found
    target = idx_search_dirs(name, root)[0]
    suffix = ".gz" if IDX_LAYOUTS[name].remote else ""  # fetch keeps the archives as is
    return [target / f"{basename}{suffix}" for basename in IDX_FILES]


def _missing_idx(name: str, root: Path) -> DataNotFoundError:
    layout = IDX_LAYOUTS[name]
    looked = ", ".join(str(d) for d in idx_search_dirs(name, root))
    ways = [f"lbtkit fetch {name} --data-dir {root}", "rerun with --download"]
    if layout.package:
        ways.insert(0, f"apt-get install {layout.package}")
    return DataNotFoundError(
        f"dataset {name!r} not found: looked for {', '.join(IDX_FILES)} (or .gz) in {looked}; "
        f"{', or '.join(ways)} (the last two need internet)"
    )


def _read_idx(path: Path, magic: int, item_shape: tuple[int, ...]) -> np.ndarray:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                blob = f.read()
        else:
            blob = path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        problem = str(exc) or type(exc).__name__
        raise corrupt_error(path, f"{type(exc).__name__}: {problem}") from exc
    if len(blob) < 4:
        raise corrupt_error(path, f"only {len(blob)} bytes, too short for an IDX header")
    found = int.from_bytes(blob[:4], "big")
    if found != magic:
        raise corrupt_error(path, f"bad IDX magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(blob) < header:
        raise corrupt_error(path, f"truncated IDX header ({len(blob)} bytes)")
    dims = tuple(int.from_bytes(blob[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if dims[1:] != item_shape:
        raise corrupt_error(
            path, f"IDX dims {dims}, expected (N, {', '.join(map(str, item_shape))})"
        )
    expected = math.prod(dims)
    if len(blob) - header != expected:
        raise corrupt_error(
            path,
            f"size mismatch: header dims {dims} need {expected} data bytes, "
            f"file has {len(blob) - header}",
        )
    return np.frombuffer(blob, dtype=np.uint8, offset=header).reshape(dims)


def load_idx(info: DatasetInfo, root: Path) -> ImageData:
    files = find_idx_files(info.name, root)
    if files is None:
        raise _missing_idx(info.name, root)
    _log_fallback(info.name, root, files[0].parent)
    splits = []
    for image_path, label_path in (files[:2], files[2:]):
        images = _read_idx(image_path, _IDX_IMAGES_MAGIC, (info.image_size, info.image_size))
        labels = _read_idx(label_path, _IDX_LABELS_MAGIC, ()).astype(np.int64)
        if labels.shape[0] != images.shape[0]:
            raise corrupt_error(
                label_path,
                f"{labels.shape[0]} labels but {image_path} has {images.shape[0]} images",
            )
        check_label_range(labels, info.num_classes, label_path)
        splits.append((images[:, None], labels))
    (train_x, train_y), (val_x, val_y) = splits
    return image_data(info, train_x, train_y, val_x, val_y, files=files)


def _log_fallback(name: str, root: Path, folder: Path) -> None:
    """One line when the files came from a system copy rather than from under --data-dir."""
    if folder in IDX_LAYOUTS[name].system_folders:
        searched = " or ".join(str(d) for d in idx_search_dirs(name, root) if d != folder)
        logger.info("%s: not in %s; reading the system copy in %s", name, searched, folder)
