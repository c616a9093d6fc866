"""Datasets as whole uint8 tensors on the device, and the batched augmentation around them."""

from lbtkit.data.device import EpochDraw, augment, draw_epoch, iter_batches, normalize
from lbtkit.data.provenance import data_files
from lbtkit.data.readers import DATASETS, dataset_files, dataset_info, hold_out, load_dataset
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
