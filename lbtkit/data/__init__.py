"""Datasets as whole uint8 tensors on the device, and the batched augmentation around them.

The types are in ``types``, the names and their readers in ``registry``, one module per on-disk
format (``cifar``, ``idx_reader`` on top of ``idx``, ``digits``, ``imagefolder``) and one for
generated data (``synthetic``); ``device`` is the on-device batch path."""

from lbtkit.data.device import EpochDraw, augment, draw_epoch, iter_batches, normalize
from lbtkit.data.holdout import hold_out
from lbtkit.data.provenance import data_files
from lbtkit.data.registry import DATASETS, dataset_files, dataset_info, load_dataset
from lbtkit.data.types import DatasetInfo, ImageData

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "EpochDraw",
    "ImageData",
    "augment",
    "data_files",
    "dataset_files",
    "dataset_info",
    "draw_epoch",
    "hold_out",
    "iter_batches",
    "load_dataset",
    "normalize",
]
