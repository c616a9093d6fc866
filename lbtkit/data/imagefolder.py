"""Your own images: ``--dataset imagefolder:PATH`` in torchvision's ImageFolder layout.

    PATH/train/CLASS_A/*.png|jpg|jpeg
    PATH/train/CLASS_B/...
    PATH/val/CLASS_A/...        (or PATH/test/...)

Classes are the sorted folder names of ``train`` (label i = i-th name), and ``val`` must have
the same ones. Like every lbtkit data set it is held whole as uint8 tensors, so it is for data
that fits in memory: each image is decoded once per run, converted to RGB, its shorter side
resized to ``image_size`` (default 64) and centre-cropped to a square. Normalisation uses the
ImageNet channel statistics (the usual choice for natural images and pretrained models);
training augmentation is a random crop with image_size/8 padding and a horizontal flip.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import warnings
from pathlib import Path

import torch

from lbtkit.data.types import DatasetInfo, ImageData
from lbtkit.errors import ConfigError, DataNotFoundError

PREFIX = "imagefolder:"
DEFAULT_IMAGE_SIZE = 64
EXTENSIONS = (".png", ".jpg", ".jpeg")
VAL_FOLDERS = ("val", "test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def is_image_folder(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def folder_root(name: str) -> Path:
    root = Path(name[len(PREFIX):]).expanduser()
    if not name[len(PREFIX):]:
        raise ConfigError(f"dataset {name!r} names no folder: use imagefolder:PATH")
    return root


def class_names(split_dir: Path) -> list[str]:
    """The sorted class folders of one split; ConfigError naming the folder if none."""
    if not split_dir.is_dir():
        raise ConfigError(f"image folder split not found: {split_dir}")
    names = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if len(names) < 2:
        raise ConfigError(f"{split_dir} must hold one folder per class (2 or more); "
                          f"found {names or 'none'}")
    return names


def val_dir(root: Path) -> Path:
    for name in VAL_FOLDERS:
        if (root / name).is_dir():
            return root / name
    raise ConfigError(f"image folder {root} has no validation split "
                      f"({' or '.join(VAL_FOLDERS)} next to train)")


def image_folder_info(name: str) -> DatasetInfo:
    """The DatasetInfo of ``imagefolder:PATH`` (reads folder names only, no images)."""
    root = folder_root(name)
    classes = class_names(root / "train")
    val_classes = class_names(val_dir(root))
    if val_classes != classes:
        raise ConfigError(
            f"{val_dir(root)} has classes {val_classes}, but {root / 'train'} has {classes}"
        )
    return DatasetInfo(
        name=name, num_classes=len(classes), channels=3, image_size=DEFAULT_IMAGE_SIZE,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_padding=DEFAULT_IMAGE_SIZE // 8, flip=True,
    )


def load_image_folder(info: DatasetInfo, image_size: int | None) -> ImageData:
    """Decode both splits at ``image_size`` (default 64) into uint8 tensors."""
    size = image_size or DEFAULT_IMAGE_SIZE
    root = folder_root(info.name)
    classes = class_names(root / "train")
    train_x, train_y = _read_split(root / "train", classes, size)
    val_x, val_y = _read_split(val_dir(root), classes, size)
    sized = dataclasses.replace(info, image_size=size, crop_padding=size // 8)
    return ImageData(sized, train_x, train_y, val_x, val_y,
                     files=(root / "train", val_dir(root)))


def _read_split(split_dir: Path, classes: list[str], size: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (split_dir / name).iterdir()
                       if p.suffix.lower() in EXTENSIONS)
        images += [_read_image(path, size) for path in files]
        labels += [label] * len(files)
    if not images:
        raise DataNotFoundError(f"no {'/'.join(EXTENSIONS)} images under {split_dir}")
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def _read_image(path: Path, size: int) -> torch.Tensor:
    # Pillow (already required by matplotlib): torchvision's own decoders are deprecated.
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the open forever
            raise DataNotFoundError(f"cannot decode image {path}: not a regular file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                image = opened.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:  # a header claiming more pixels than
        # Pillow's limit (89 million): refused before decoding, not warned about
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataNotFoundError(f"cannot decode image {path}: {first}") from None
    scale = size / min(image.size)  # shorter side -> size, then the centre square
    width, height = (max(size, round(side * scale)) for side in image.size)
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    left, top = (width - size) // 2, (height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()
