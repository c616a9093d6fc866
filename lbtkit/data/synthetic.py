"""``synthetic``: learnable seeded images for smoke tests and benchmarks, the same in every run
and on every rank."""

from __future__ import annotations

import dataclasses

import torch

from lbtkit.data.types import DatasetInfo, ImageData
from lbtkit.errors import ConfigError

# Synthetic: fixed generator seed, so every run (and every rank) sees the same data.
SYNTHETIC_SEED = 20240
SYNTHETIC_NUM_TRAIN = 2048
SYNTHETIC_NUM_VAL = 512

SYNTHETIC_INFO = DatasetInfo(
    name="synthetic",
    num_classes=10,
    channels=3,
    image_size=32,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    crop_padding=4,
    flip=True,
)

_SYNTHETIC_MAX_CLASSES = SYNTHETIC_NUM_VAL  # so every class can appear in both splits
_SYNTHETIC_NOISE = 64.0  # per-pixel Gaussian noise std, in uint8 units


def load_synthetic(
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
