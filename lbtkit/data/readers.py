"""Dataset registry and on-disk readers.

Every dataset is returned whole as uint8 ``(N, C, H, W)`` images plus int64 labels, for both
splits, so the training loop can move it to the device once and never touch a DataLoader.

Formats are read by our own code: CIFAR pickles through a restricted unpickler (a tampered file
cannot run code), MNIST and Fashion-MNIST IDX files (gzipped or not) with a validated header,
sizes and label range. ``download=True`` fetches the files into ``data_dir`` (torchvision's
downloader for CIFAR and MNIST, ``lbtkit.data.download`` with the published checksums for
Fashion-MNIST); the result is always read back by these readers.

Where each data set's files are is public (``dataset_files``, ``idx_search_dirs``), so that
``lbtkit doctor`` and ``lbtkit fetch`` look exactly where the readers do. The types are in
``lbtkit.data.types``, the IDX data sets' files and mirrors in ``lbtkit.data.idx``, image
folders in ``lbtkit.data.imagefolder``.
"""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import importlib.util
import logging
import math
import pickle
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lbtkit.data.idx import IDX_FILES, IDX_LAYOUTS, idx_search_dirs
from lbtkit.data.types import DatasetInfo, ImageData
from lbtkit.errors import ConfigError, DataNotFoundError

logger = logging.getLogger(__name__)


# Digits: a fixed held-out split that no run seed can change. RandomState is used (not
# default_rng) because its stream is frozen across numpy versions, so the split, and the
# statistics below, stay valid forever.
DIGITS_SPLIT_SEED = 0
DIGITS_NUM_VAL = 360  # last 360 of the permutation; the other 1437 samples are train

# Synthetic: fixed generator seed, so every run (and every rank) sees the same data.
SYNTHETIC_SEED = 20240
SYNTHETIC_NUM_TRAIN = 2048
SYNTHETIC_NUM_VAL = 512

DATASETS: dict[str, DatasetInfo] = {
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
    "digits": DatasetInfo(
        name="digits",
        num_classes=10,
        channels=1,
        image_size=8,
        # Computed once from the 1437-sample train split (uint8 / 255, all pixels pooled,
        # population std, i.e. ddof=0); tests/test_data.py recomputes and checks them.
        mean=(0.305443,),
        std=(0.375699,),
        crop_padding=1,
        flip=False,
    ),
    "synthetic": DatasetInfo(
        name="synthetic",
        num_classes=10,
        channels=3,
        image_size=32,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        crop_padding=4,
        flip=True,
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    """Registry entry for ``name``; unknown names raise ConfigError listing the known ones."""
    from lbtkit.data.imagefolder import image_folder_info, is_image_folder

    if is_image_folder(name):
        return image_folder_info(name)
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(DATASETS))
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {known}, or "
                          f"imagefolder:PATH") from None



# The held-out validation draw: a fixed seed, not the run's, so every run of a study (every
# batch size, learning rate and seed) validates on the same images and trains on the rest.
HOLD_OUT_SEED = 0


def hold_out(data: ImageData, count: int) -> ImageData:
    """``data`` with ``count`` training images (a fixed seeded draw) as the validation split,
    the rest as the training split, and the old validation split as the test split."""
    n = data.train_labels.shape[0]
    if not 0 < count < n:
        raise ConfigError(f"val_split must be between 1 and {n - 1} (the {data.info.name} "
                          f"training set has {n} images), got {count}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(HOLD_OUT_SEED))
    val, train = order[:count].sort().values, order[count:].sort().values
    return ImageData(
        info=data.info,
        train_images=data.train_images[train], train_labels=data.train_labels[train],
        val_images=data.train_images[val], val_labels=data.train_labels[val],
        files=data.files, test_images=data.val_images, test_labels=data.val_labels,
    )


def load_dataset(
    name: str,
    data_dir: str | Path,
    *,
    download: bool = False,
    image_size: int | None = None,
    num_classes: int | None = None,
) -> ImageData:
    """Load both splits of dataset ``name`` on the CPU.

    For ``synthetic``, ``image_size`` and ``num_classes`` choose the generated data. For real
    datasets the images are always stored at their native size and ``image_size`` is ignored
    (it is the model's input size; resizing happens when batches become model inputs), while
    ``num_classes``, if given, must equal the dataset's. ``data_dir`` and ``download`` are
    ignored for ``digits`` and ``synthetic``.
    """
    from lbtkit.data.imagefolder import is_image_folder, load_image_folder

    info = dataset_info(name)
    if name == "synthetic":
        return _load_synthetic(info, image_size=image_size, num_classes=num_classes)
    if num_classes is not None and num_classes != info.num_classes:
        raise ConfigError(
            f"num_classes={num_classes!r} does not match dataset {name!r}, which has "
            f"{info.num_classes} classes (only 'synthetic' takes a class count)"
        )
    if name == "digits":
        return _load_digits(info)
    if is_image_folder(name):
        return load_image_folder(info, image_size)
    root = Path(data_dir).expanduser().absolute()
    if download:
        _download(name, root)
    if name in _CIFAR:
        return _load_cifar(info, root)
    return _load_idx(info, root)


# --------------------------------------------------------------------------------------------
# Errors shared by the readers


def _missing(name: str, path: Path, root: Path) -> DataNotFoundError:
    return DataNotFoundError(
        f"dataset {name!r} not found: looked for {path}; "
        f"rerun with --download on a machine with internet (it fetches into {root})"
    )


def _corrupt(path: Path, problem: str) -> DataNotFoundError:
    return DataNotFoundError(f"cannot read {path}: {problem}; {_fresh_copy_hint(path)}")


def _fresh_copy_hint(path: Path) -> str:
    for layout in IDX_LAYOUTS.values():
        if layout.package and any(path.parent == folder for folder in layout.system_folders):
            return f"reinstall it (apt-get install --reinstall {layout.package})"
    return "delete it and rerun with --download to fetch a fresh copy"


def _download(name: str, root: Path) -> None:
    if name in IDX_LAYOUTS and IDX_LAYOUTS[name].remote is not None:
        from lbtkit.data.download import download_idx

        download_idx(name, root)
        return
    # torchvision verifies the archive's md5 before it unpickles anything itself, and we then
    # read the extracted files with our own readers.
    try:
        import torchvision.datasets as tvd
    except ImportError as exc:
        raise ConfigError(
            f"--download for {name!r} needs torchvision, which is not installed"
        ) from exc
    try:
        if name == "mnist":
            tvd.MNIST(root=str(root), download=True)
        else:
            cls = getattr(tvd, _CIFAR[name].torchvision_class)
            cls(root=str(root), train=True, download=True)
            cls(root=str(root), train=False, download=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; bad checksums RuntimeError
        raise DataNotFoundError(f"downloading dataset {name!r} into {root} failed: {exc}") from exc


# --------------------------------------------------------------------------------------------
# CIFAR: python-pickle batches


@dataclass(frozen=True)
class _CifarLayout:
    dirname: str
    train_files: tuple[str, ...]
    val_files: tuple[str, ...]
    label_key: str
    torchvision_class: str


_CIFAR: dict[str, _CifarLayout] = {
    "cifar10": _CifarLayout(
        dirname="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        val_files=("test_batch",),
        label_key="labels",
        torchvision_class="CIFAR10",
    ),
    "cifar100": _CifarLayout(
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
        raise _corrupt(
            path,
            f"it references the global {exc.qualname}, which a dataset batch "
            "never contains (refused; the file may have been tampered with)",
        ) from None
    except Exception as exc:  # a malformed stream can fail in many ways; all mean "corrupt"
        raise _corrupt(path, f"not a valid pickle ({type(exc).__name__}: {exc})") from exc


def _field(batch: dict[Any, Any], key: str, path: Path) -> Any:
    # Python-2 originals read with latin1 have str keys; Python-3 files have bytes keys.
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise _corrupt(path, f"missing the {key!r} entry")


def _read_cifar_batch(
    path: Path, label_key: str, info: DatasetInfo
) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    if not isinstance(batch, dict):
        raise _corrupt(path, f"expected a dict, found {type(batch).__name__}")
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
        raise _corrupt(path, f"'data' should be a uint8 array of shape (N, {row}), found {got}")
    try:
        labels = np.asarray(_field(batch, label_key, path), dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise _corrupt(path, f"{label_key!r} is not a list of integers") from exc
    if labels.shape != (data.shape[0],):
        raise _corrupt(
            path,
            f"{label_key!r} has shape {labels.shape}, expected ({data.shape[0]},) to match 'data'",
        )
    _check_label_range(labels, info.num_classes, path)
    # Rows are the R, G, B planes of size x size, one after another: exactly NCHW.
    return data.reshape(-1, channels, size, size), labels


def _check_label_range(labels: np.ndarray, num_classes: int, path: Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise _corrupt(
            path, f"labels outside 0..{num_classes - 1} (found {labels.min()}..{labels.max()})"
        )


def _load_cifar(info: DatasetInfo, root: Path) -> ImageData:
    layout = _CIFAR[info.name]
    folder = root / layout.dirname
    if not folder.is_dir():
        raise _missing(info.name, folder, root)
    splits, read = [], []
    for files in (layout.train_files, layout.val_files):
        images, labels = [], []
        for filename in files:
            path = folder / filename
            if not path.is_file():
                raise _missing(info.name, path, root)
            x, y = _read_cifar_batch(path, layout.label_key, info)
            read.append(path)
            images.append(x)
            labels.append(y)
        splits.append((np.concatenate(images), np.concatenate(labels)))
    (train_x, train_y), (val_x, val_y) = splits
    return _image_data(info, train_x, train_y, val_x, val_y, files=read)


# --------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST: IDX files

_IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dims
_IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dim

def _idx_file(folder: Path, basename: str) -> Path | None:
    for candidate in (folder / basename, folder / f"{basename}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _idx_files(name: str, data_dir: str | Path) -> list[Path] | None:
    """The four files in the first searched folder that holds all of them, else None."""
    for folder in idx_search_dirs(name, data_dir):
        found = [_idx_file(folder, basename) for basename in IDX_FILES]
        if all(found):
            return found  # type: ignore[return-value]
    return None


def dataset_files(name: str, data_dir: str | Path) -> list[Path] | None:
    """The files ``load_dataset(name, data_dir)`` reads: where they are, or, when they are not
    all there, where ``lbtkit fetch`` puts them. None for the data sets that need no files
    (digits ships with scikit-learn, synthetic is generated). Unknown names raise ConfigError."""
    dataset_info(name)
    root = Path(data_dir).expanduser().absolute()
    if name in _CIFAR:
        layout = _CIFAR[name]
        return [root / layout.dirname / f for f in (*layout.train_files, *layout.val_files)]
    if name in IDX_LAYOUTS:
        found = _idx_files(name, root)
        if found is not None:
            return found
        target = idx_search_dirs(name, root)[0]
        suffix = ".gz" if IDX_LAYOUTS[name].remote else ""  # fetch keeps the archives as is
        return [target / f"{basename}{suffix}" for basename in IDX_FILES]
    return None


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
        raise _corrupt(path, f"{type(exc).__name__}: {problem}") from exc
    if len(blob) < 4:
        raise _corrupt(path, f"only {len(blob)} bytes, too short for an IDX header")
    found = int.from_bytes(blob[:4], "big")
    if found != magic:
        raise _corrupt(path, f"bad IDX magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(blob) < header:
        raise _corrupt(path, f"truncated IDX header ({len(blob)} bytes)")
    dims = tuple(int.from_bytes(blob[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if dims[1:] != item_shape:
        raise _corrupt(path, f"IDX dims {dims}, expected (N, {', '.join(map(str, item_shape))})")
    expected = math.prod(dims)
    if len(blob) - header != expected:
        raise _corrupt(
            path,
            f"size mismatch: header dims {dims} need {expected} data bytes, "
            f"file has {len(blob) - header}",
        )
    return np.frombuffer(blob, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx(info: DatasetInfo, root: Path) -> ImageData:
    files = _idx_files(info.name, root)
    if files is None:
        raise _missing_idx(info.name, root)
    _log_fallback(info.name, root, files[0].parent)
    splits = []
    for image_path, label_path in (files[:2], files[2:]):
        images = _read_idx(image_path, _IDX_IMAGES_MAGIC, (info.image_size, info.image_size))
        labels = _read_idx(label_path, _IDX_LABELS_MAGIC, ()).astype(np.int64)
        if labels.shape[0] != images.shape[0]:
            raise _corrupt(
                label_path,
                f"{labels.shape[0]} labels but {image_path} has {images.shape[0]} images",
            )
        _check_label_range(labels, info.num_classes, label_path)
        splits.append((images[:, None], labels))
    (train_x, train_y), (val_x, val_y) = splits
    return _image_data(info, train_x, train_y, val_x, val_y, files=files)


def _log_fallback(name: str, root: Path, folder: Path) -> None:
    """One line when the files came from a system copy rather than from under --data-dir."""
    if folder in IDX_LAYOUTS[name].system_folders:
        searched = " or ".join(str(d) for d in idx_search_dirs(name, root) if d != folder)
        logger.info("%s: not in %s; reading the system copy in %s", name, searched, folder)


def package_data_folders() -> list[Path]:
    """Folders that an installed package owns (a distribution's data set, scikit-learn's
    digits), where lbtkit writes no file of its own."""
    folders = [folder for layout in IDX_LAYOUTS.values() for folder in layout.system_folders]
    return folders + [csv.parent for csv in _digits_csv_candidates()]


# --------------------------------------------------------------------------------------------
# digits: scikit-learn's bundled 8x8 handwritten digits


def digits_split() -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of the fixed digits split; the same on every call and every run."""
    perm = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(1797)
    return perm[:-DIGITS_NUM_VAL], perm[-DIGITS_NUM_VAL:]


def _load_digits(info: DatasetInfo) -> ImageData:
    data, target, source = _digits_arrays()
    # Pixel values are integers 0..16; map to the full uint8 range.
    images = np.rint(data * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 8, 8)
    labels = target.astype(np.int64)
    train_idx, val_idx = digits_split()
    return _image_data(info, images[train_idx], labels[train_idx], images[val_idx],
                       labels[val_idx], files=[source])


def _digits_arrays() -> tuple[np.ndarray, np.ndarray, Path]:
    """scikit-learn's digits as ``load_digits`` returns them: (1797, 64) values 0..16, labels,
    and the file they came from.

    Read from the CSV that scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``: 64
    pixels and the label per row) without importing sklearn, which costs about a second per
    process (every smoke run and most tests); ``load_digits`` is the fallback if it moved.
    """
    for csv in _digits_csv_candidates():
        if csv.is_file():
            table = np.loadtxt(csv, delimiter=",")
            return table[:, :-1], table[:, -1].astype(np.int64), csv
    import sklearn.datasets
    from sklearn.datasets import load_digits

    bunch = load_digits()
    csv = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    return bunch.data, bunch.target, csv


def _digits_csv_candidates() -> list[Path]:
    spec = importlib.util.find_spec("sklearn")  # locates the package without running it
    locations = (spec.submodule_search_locations or []) if spec else []
    return [Path(location) / "datasets" / "data" / "digits.csv.gz" for location in locations]


# --------------------------------------------------------------------------------------------
# synthetic: learnable seeded images for smoke tests

_SYNTHETIC_MAX_CLASSES = SYNTHETIC_NUM_VAL  # so every class can appear in both splits
_SYNTHETIC_NOISE = 64.0  # per-pixel Gaussian noise std, in uint8 units


def _load_synthetic(
    info: DatasetInfo, *, image_size: int | None, num_classes: int | None
) -> ImageData:
    size = info.image_size if image_size is None else image_size
    classes = info.num_classes if num_classes is None else num_classes
    if not isinstance(size, int) or size <= info.crop_padding:
        raise ConfigError(
            f"image_size={size!r} is invalid for 'synthetic': it must be an "
            f"integer larger than the crop padding {info.crop_padding}"
        )
    if not isinstance(classes, int) or not 2 <= classes <= _SYNTHETIC_MAX_CLASSES:
        raise ConfigError(
            f"num_classes={classes!r} is invalid for 'synthetic': it must be an "
            f"integer in 2..{_SYNTHETIC_MAX_CLASSES}"
        )
    info = dataclasses.replace(info, image_size=size, num_classes=classes)
    gen = torch.Generator().manual_seed(SYNTHETIC_SEED)
    # Templates are smooth (a 4x4 random pattern upsampled) so they survive the random crop
    # and flip: a translated template still looks like its class, which keeps the task
    # learnable with the standard augmentation on.
    coarse = torch.rand(classes, info.channels, 4, 4, generator=gen)
    templates = torch.nn.functional.interpolate(
        coarse, size=(size, size), mode="bilinear", align_corners=False
    )
    templates = 40.0 + 175.0 * templates  # keep headroom so the noise is rarely clipped
    train = _synthetic_split(templates, SYNTHETIC_NUM_TRAIN, gen)
    val = _synthetic_split(templates, SYNTHETIC_NUM_VAL, gen)
    return ImageData(info, *train, *val)


def _synthetic_split(
    templates: torch.Tensor, n: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    classes = templates.shape[0]
    labels = (torch.arange(n) % classes)[torch.randperm(n, generator=gen)]  # balanced
    images = torch.empty((n, *templates.shape[1:]), dtype=torch.uint8)
    chunk = 256  # bounds float memory for large image_size
    for start in range(0, n, chunk):
        y = labels[start : start + chunk]
        noise = torch.randn((len(y), *templates.shape[1:]), generator=gen)
        x = templates[y] + _SYNTHETIC_NOISE * noise
        images[start : start + chunk] = x.round_().clamp_(0, 255).to(torch.uint8)
    return images, labels


# --------------------------------------------------------------------------------------------


def _image_data(
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
