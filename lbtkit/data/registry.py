"""The data sets by name: each name's description (``DATASETS``) and the reader of its format.

Every dataset is returned whole as uint8 ``(N, C, H, W)`` images plus int64 labels, for both
splits, so the training loop can move it to the device once and never touch a DataLoader.

Formats are read by our own code, one module each: CIFAR pickles (``lbtkit.data.cifar``),
MNIST and Fashion-MNIST IDX files (``lbtkit.data.idx_reader``), scikit-learn's digits
(``lbtkit.data.digits``), generated images (``lbtkit.data.synthetic``) and image folders
(``lbtkit.data.imagefolder``). ``download=True`` fetches the files into ``data_dir``
(torchvision's downloader for CIFAR and MNIST, ``lbtkit.data.download`` with the published
checksums for Fashion-MNIST); the result is always read back by these readers.

Where each data set's files are is public (``dataset_files``, ``idx_search_dirs``), so that
``lbtkit doctor`` and ``lbtkit fetch`` look exactly where the readers do.
"""

from __future__ import annotations

from pathlib import Path

from lbtkit.data.cifar import CIFAR_DATASETS, CIFAR_LAYOUTS, cifar_files, load_cifar
from lbtkit.data.digits import DIGITS_INFO, digits_csv_candidates, load_digits
from lbtkit.data.download import download_idx
from lbtkit.data.idx import IDX_LAYOUTS
from lbtkit.data.idx_reader import IDX_DATASETS, idx_files, load_idx
from lbtkit.data.imagefolder import image_folder_info, is_image_folder, load_image_folder
from lbtkit.data.synthetic import SYNTHETIC_INFO, load_synthetic
from lbtkit.data.types import DatasetInfo, ImageData
from lbtkit.errors import ConfigError, DataNotFoundError

DATASETS: dict[str, DatasetInfo] = {
    **CIFAR_DATASETS,
    **IDX_DATASETS,
    "digits": DIGITS_INFO,
    "synthetic": SYNTHETIC_INFO,
}


def dataset_info(name: str) -> DatasetInfo:
    """Registry entry for ``name``; unknown names raise ConfigError listing the known ones."""
    if is_image_folder(name):
        return image_folder_info(name)
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(DATASETS))
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {known}, or "
                          f"imagefolder:PATH") from None


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
    info = dataset_info(name)
    if name == "synthetic":
        return load_synthetic(info, image_size=image_size, num_classes=num_classes)
    if num_classes is not None and num_classes != info.num_classes:
        raise ConfigError(
            f"num_classes={num_classes!r} does not match dataset {name!r}, which has "
            f"{info.num_classes} classes (only 'synthetic' takes a class count)"
        )
    if name == "digits":
        return load_digits(info)
    if is_image_folder(name):
        return load_image_folder(info, image_size)
    root = Path(data_dir).expanduser().absolute()
    if download:
        _download(name, root)
    if name in CIFAR_LAYOUTS:
        return load_cifar(info, root)
    return load_idx(info, root)


def dataset_files(name: str, data_dir: str | Path) -> list[Path] | None:
    """The files ``load_dataset(name, data_dir)`` reads: where they are, or, when they are not
    all there, where ``lbtkit fetch`` puts them. None for the data sets that need no files
    (digits ships with scikit-learn, synthetic is generated). Unknown names raise ConfigError."""
    dataset_info(name)
    root = Path(data_dir).expanduser().absolute()
    if name in CIFAR_LAYOUTS:
        return cifar_files(name, root)
    if name in IDX_LAYOUTS:
        return idx_files(name, root)
    return None


def package_data_folders() -> list[Path]:
    """Folders that an installed package owns (a distribution's data set, scikit-learn's
    digits), where lbtkit writes no file of its own."""
    folders = [folder for layout in IDX_LAYOUTS.values() for folder in layout.system_folders]
    return folders + [csv.parent for csv in digits_csv_candidates()]


def _download(name: str, root: Path) -> None:
    if name in IDX_LAYOUTS and IDX_LAYOUTS[name].remote is not None:
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
            cls = getattr(tvd, CIFAR_LAYOUTS[name].torchvision_class)
            cls(root=str(root), train=True, download=True)
            cls(root=str(root), train=False, download=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; bad checksums RuntimeError
        raise DataNotFoundError(f"downloading dataset {name!r} into {root} failed: {exc}") from exc
