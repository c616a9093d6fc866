"""The two types every data module shares: a data set's static description (``DatasetInfo``,
the registry's entries) and a loaded data set (``ImageData``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset and its standard train-time augmentation."""

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units
    std: tuple[float, ...]
    crop_padding: int
    flip: bool


@dataclass
class ImageData:
    """One dataset, both splits, as uint8 ``(N, C, H, W)`` images and int64 labels, and the
    files (or folders) it was read from (``files``; empty for generated data)."""

    info: DatasetInfo
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    files: tuple[Path, ...] = ()
    # Set by ``hold_out``: the dataset's own test split, once validation is carved from train.
    test_images: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        # Shape checks only (no .item()), so this stays free of device syncs.
        splits = ("train", "val") if self.test_images is None else ("train", "val", "test")
        for split in splits:
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or images.ndim != 4:
                raise ValueError(
                    f"{split}_images must be uint8 (N, C, H, W), got {images.dtype} "
                    f"{tuple(images.shape)}"
                )
            if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
                raise ValueError(
                    f"{split}_labels must be int64 ({images.shape[0]},), got "
                    f"{labels.dtype} {tuple(labels.shape)}"
                )

    def to(self, device: torch.device | str) -> ImageData:
        """A copy with all four tensors on ``device`` (contiguous, ready for indexing)."""
        def move(images: torch.Tensor | None) -> torch.Tensor | None:
            return None if images is None else images.to(device).contiguous()

        return ImageData(
            info=self.info,
            train_images=move(self.train_images),
            train_labels=self.train_labels.to(device),
            val_images=move(self.val_images),
            val_labels=self.val_labels.to(device),
            files=self.files,
            test_images=move(self.test_images),
            test_labels=move(self.test_labels),
        )
