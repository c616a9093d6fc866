"""scikit-learn's bundled 8x8 handwritten digits, read from the CSV it ships (without importing
scikit-learn), with a fixed held-out split."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from lbtkit.data.reading import image_data
from lbtkit.data.types import DatasetInfo, ImageData

# Digits: a fixed held-out split that no run seed can change. RandomState is used (not
# default_rng) because its stream is frozen across numpy versions, so the split, and the
# statistics below, stay valid forever.
DIGITS_SPLIT_SEED = 0
DIGITS_NUM_VAL = 360  # last 360 of the permutation; the other 1437 samples are train

DIGITS_INFO = DatasetInfo(
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
)


def digits_split() -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of the fixed digits split; the same on every call and every run."""
    perm = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(1797)
    return perm[:-DIGITS_NUM_VAL], perm[-DIGITS_NUM_VAL:]


def load_digits(info: DatasetInfo) -> ImageData:
    data, target, source = _digits_arrays()
    # Pixel values are integers 0..16; map to the full uint8 range.
    images = np.rint(data * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 8, 8)
    labels = target.astype(np.int64)
    train_idx, val_idx = digits_split()
    return image_data(info, images[train_idx], labels[train_idx], images[val_idx],
                      labels[val_idx], files=[source])


def _digits_arrays() -> tuple[np.ndarray, np.ndarray, Path]:
    """scikit-learn's digits as ``load_digits`` returns them: (1797, 64) values 0..16, labels,
    and the file they came from.

    Read from the CSV that scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``: 64
    pixels and the label per row) without importing sklearn, which costs about a second per
    process (every smoke run and most tests); ``load_digits`` is the fallback if it moved.
    """
    for csv in digits_csv_candidates():
        if csv.is_file():
            table = np.loadtxt(csv, delimiter=",")
            return table[:, :-1], table[:, -1].astype(np.int64), csv
    import sklearn.datasets

    bunch = sklearn.datasets.load_digits()
    csv = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    return bunch.data, bunch.target, csv


def digits_csv_candidates() -> list[Path]:
    spec = importlib.util.find_spec("sklearn")  # locates the package without running it
    locations = (spec.submodule_search_locations or []) if spec else []
    return [Path(location) / "datasets" / "data" / "digits.csv.gz" for location in locations]
