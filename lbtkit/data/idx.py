"""The IDX data sets (MNIST, Fashion-MNIST): their four files, the folders they may be in, and
the mirrors they are published on. The reader is ``lbtkit.data.idx_reader``, the downloader
``lbtkit.data.download``; both look here, so ``lbtkit doctor`` and ``lbtkit fetch`` look where
the reader does."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

IDX_FILES = (  # the four files of an IDX data set, in the order dataset_files lists them
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class IdxRemote:
    """The published archives: ``mirror + NAME.gz`` for each of ``IDX_FILES``, tried in order,
    each checked against its md5 (as published) and, when known, its sha256."""

    mirrors: tuple[str, ...]
    md5: dict[str, str]
    sha256: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class IdxLayout:
    """Where an IDX data set's four files may be: folders under ``--data-dir`` first (the first
    is where ``lbtkit fetch`` writes), then system folders that a distribution package fills.
    Each file may be gzipped (``NAME.gz``)."""

    folders: tuple[str, ...]
    system_folders: tuple[Path, ...] = ()
    package: str | None = None  # the Debian package that fills system_folders
    remote: IdxRemote | None = None  # None: torchvision's downloader fetches it


IDX_LAYOUTS: dict[str, IdxLayout] = {
    # torchvision's layout, which `--download` (torchvision's MNIST downloader) writes.
    "mnist": IdxLayout(folders=("MNIST/raw",)),
    # `apt-get install dataset-fashion-mnist` puts the four .gz files in /usr/share/datasets;
    # FashionMNIST/raw is torchvision's layout, for data fetched by torchvision elsewhere.
    "fashion-mnist": IdxLayout(
        folders=("fashion-mnist", "FashionMNIST/raw"),
        system_folders=(Path("/usr/share/datasets/fashion-mnist"),),
        package="dataset-fashion-mnist",
        # The mirrors and md5s that zalandoresearch/fashion-mnist's README publishes (and
        # torchvision's FashionMNIST lists). Debian's .gz files are not byte-identical to these
        # (other md5s); their content is checked by the reader like any other file.
        remote=IdxRemote(
            mirrors=(
                "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            ),
            md5={
                "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
                "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
                "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
            },
        ),
    ),
}


def idx_search_dirs(name: str, data_dir: str | Path) -> list[Path]:
    """The folders searched, in order, for IDX data set ``name`` (the first is fetch's)."""
    layout = IDX_LAYOUTS[name]
    root = Path(data_dir).expanduser().absolute()
    return [root / folder for folder in layout.folders] + list(layout.system_folders)
