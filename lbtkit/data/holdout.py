"""A validation split carved from the training images, so the data set's own test split stays
untouched until the end (``--val-split``)."""

from __future__ import annotations

import torch

from lbtkit.data.types import ImageData
from lbtkit.errors import ConfigError

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
