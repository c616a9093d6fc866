"""The on-device batch path: epoch permutations, batched augmentation, normalisation.

Typical training step, with ``data`` already moved to the device as uint8::

    draw = draw_epoch(n, seed=seed, epoch=epoch, padding=p, flip=info.flip, device=device)
    for start in range(0, n - batch_size + 1, batch_size):
        idx = draw.order[start:start + batch_size]
        x = augment(data.train_images[idx], draw.shifts[idx], draw.flips[idx], padding=p)
        x = normalize(x, info.mean, info.std, channels_last=True)
        y = data.train_labels[idx]

Nothing here loops over samples in Python and nothing forces a host-device sync.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lbtkit.errors import ConfigError

PADDING_MODES = ("reflect", "zeros")


@dataclass
class EpochDraw:
    """All random choices for one epoch, indexed by dataset index (not batch position)."""

    order: torch.Tensor  # int64 (N,), a permutation of range(N)
    shifts: torch.Tensor  # int64 (N, 2): crop offsets (dy, dx) into the padded image, in [0, 2p]
    flips: torch.Tensor  # bool (N,)


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed for (seed, epoch); folded into [0, 2**63) for torch.Generator."""
    return (seed * 1_000_003 + epoch) % (1 << 63)


def draw_epoch(
    num_samples: int,
    *,
    seed: int,
    epoch: int,
    padding: int,
    flip: bool,
    device: torch.device | str = "cpu",
) -> EpochDraw:
    """Draw the permutation, crop offsets and flips for one epoch.

    Everything comes from a CPU generator seeded by (seed, epoch) alone and is then moved to
    ``device``, so every rank, every device type, any world size and a resumed run all see
    the same epoch. The draws are made in a fixed order and always in full (flips are drawn
    then discarded when ``flip`` is False), so ``order`` does not depend on the augmentation
    settings either.
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if padding < 0:
        raise ConfigError(f"crop padding must be >= 0, got {padding}")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(epoch_seed(seed, epoch))
    order = torch.randperm(num_samples, generator=gen)
    shifts = torch.randint(0, 2 * padding + 1, (num_samples, 2), generator=gen)
    flips = torch.rand(num_samples, generator=gen) < 0.5
    if not flip:
        flips.zero_()
    return EpochDraw(order=order.to(device), shifts=shifts.to(device), flips=flips.to(device))


def _reflect_index(n: int, padding: int, device: torch.device) -> torch.Tensor:
    # Source index for each position of a reflect-padded axis, matching F.pad(mode="reflect")
    # (the edge pixel is not repeated). One reflection suffices because padding < n.
    i = torch.arange(-padding, n + padding, device=device).abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def augment(
    images: torch.Tensor,
    shifts: torch.Tensor,
    flips: torch.Tensor,
    *,
    padding: int,
    padding_mode: str = "reflect",
) -> torch.Tensor:
    """Random-crop (pad, then take an HxW window at ``shifts[b]``) and mirror a batch.

    ``images`` is (B, C, H, W), normally uint8, on any device; ``shifts`` (B, 2) holds offsets
    in [0, 2 * padding] (``padding`` itself means no translation) and ``flips`` (B,) which
    samples to mirror horizontally. Returns a new contiguous tensor of the same shape and
    dtype; pixels are copied exactly. Offsets are not range-checked (that would need a sync).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    if tuple(shifts.shape) != (b, 2) or tuple(flips.shape) != (b,):
        raise ValueError(
            f"shifts must be ({b}, 2) and flips ({b},), got "
            f"{tuple(shifts.shape)} and {tuple(flips.shape)}"
        )
    if padding_mode not in PADDING_MODES:
        raise ConfigError(f"unknown padding_mode {padding_mode!r}; use one of {PADDING_MODES}")
    if padding < 0:
        raise ConfigError(f"crop padding must be >= 0, got {padding}")
    device = images.device
    shifts = shifts.to(device=device, dtype=torch.long)
    flips = flips.to(device=device, dtype=torch.bool)

    forward = torch.arange(w, device=device)
    # Mirroring is folded into the column index, so it costs nothing extra.
    cols = shifts[:, 1:] + torch.where(flips[:, None], forward.flip(0), forward)  # (B, W)
    rows = shifts[:, :1] + torch.arange(h, device=device)  # (B, H)

    if padding_mode == "zeros" or padding == 0:
        # Constant padding is implemented for every dtype on every device.
        source = F.pad(images, (padding,) * 4) if padding else images
    else:
        if padding >= h or padding >= w:
            raise ConfigError(
                f"reflect padding {padding} needs images larger than the padding, got {h}x{w}"
            )
        # Reflect-padding uint8 is not supported by every backend, so instead of padding we
        # map padded coordinates straight back to source pixels; no padded copy is made.
        source = images
        rows = _reflect_index(h, padding, device)[rows]
        cols = _reflect_index(w, padding, device)[cols]

    # One gather over the flattened spatial dims: out[b, c, i, j] = source[b, c, rows[b, i],
    # cols[b, j]].
    width = source.shape[3]
    index = (rows[:, :, None] * width + cols[:, None, :]).reshape(b, 1, h * w)
    out = source.reshape(b, c, -1).gather(2, index.expand(b, c, h * w))
    return out.view(b, c, h, w)


@functools.lru_cache(maxsize=64)
def _affine(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    # Cached per device: building these from Python floats every step would be a blocking
    # host-to-device copy on CUDA.
    mean_t = torch.tensor(mean, dtype=torch.float64)
    std_t = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * std_t)).to(torch.float32).view(1, -1, 1, 1)
    bias = (-mean_t / std_t).to(torch.float32).view(1, -1, 1, 1)
    return scale.to(device), bias.to(device)


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    *,
    channels_last: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 (B, C, H, W) -> ``(x / 255 - mean) / std`` in ``dtype`` as one multiply-add.

    ``mean``/``std`` are per channel in [0, 1] pixel units. With ``channels_last`` the result
    is in channels-last memory format (shape unchanged).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    mean_f = tuple(float(m) for m in torch.as_tensor(mean).reshape(-1).tolist())
    std_f = tuple(float(s) for s in torch.as_tensor(std).reshape(-1).tolist())
    channels = images.shape[1]
    if len(mean_f) != channels or len(std_f) != channels:
        raise ValueError(
            f"mean/std need {channels} values (one per channel), got {len(mean_f)} and {len(std_f)}"
        )
    if min(std_f) <= 0:
        raise ValueError(f"std must be positive, got {std_f}")
    scale, bias = _affine(mean_f, std_f, images.device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    if images.device.type == "cuda":
        # addcmul reads the uint8 input directly and promotes to float32 inside the kernel.
        out = torch.addcmul(bias, images, scale)
    else:
        # On the CPU, addcmul's mixed uint8/float kernel is slow: a conversion and two
        # in-place passes are 2.1x faster for 512 CIFAR images on 2 cores (bench/normalize.py).
        # The two can differ in the last bit of a float32.
        out = images.float().mul_(scale).add_(bias)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out.to(dtype)


def iter_batches(num_samples: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices covering range(num_samples), keeping the last partial batch."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, num_samples, batch_size):
        yield slice(start, min(start + batch_size, num_samples))
