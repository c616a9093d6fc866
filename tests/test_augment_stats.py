"""The augmentation as the training loop applies it, read back from the pixels alone.

tests/test_data.py checks ``augment`` against a per-sample reference given the same draws,
and the draws' statistics. Here nothing is taken from the draws: every pixel carries its own
source coordinates and sample index, so each output tells which window was cut, whether it
was mirrored and which sample it is. That checks the (dy, dx) convention end to end, that
labels stay with their images, and that the statistics of what was actually applied to the
images (fraction flipped, spread of offsets) are the requested ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lbtkit.data import augment, draw_epoch, iter_batches

N, SIZE, BATCH = 4096, 32, 512


def coded_images(n: int, size: int) -> torch.Tensor:
    """(n, 4, size, size) uint8: row index, column index, sample index low and high byte."""
    rows = torch.arange(size, dtype=torch.uint8)[:, None].expand(size, size)
    cols = torch.arange(size, dtype=torch.uint8)[None, :].expand(size, size)
    index = torch.arange(n)
    images = torch.empty(n, 4, size, size, dtype=torch.uint8)
    images[:, 0], images[:, 1] = rows, cols
    images[:, 2] = (index % 256).to(torch.uint8)[:, None, None]
    images[:, 3] = (index // 256).to(torch.uint8)[:, None, None]
    return images


def expected_window(
    image: np.ndarray, dy: int, dx: int, flip: bool, padding: int, mode: str
) -> np.ndarray:
    """The window cut from the image padded by numpy (an oracle independent of torch)."""
    pad_mode = "constant" if mode == "zeros" else "reflect"
    padded = np.pad(image, ((0, 0), (padding, padding), (padding, padding)), mode=pad_mode)
    window = padded[:, dy:dy + SIZE, dx:dx + SIZE]
    return window[:, :, ::-1] if flip else window


@pytest.mark.parametrize(
    "padding, flip, mode", [(4, True, "reflect"), (4, True, "zeros"), (2, False, "reflect")]
)
def test_applied_augmentation_read_from_pixels(padding: int, flip: bool, mode: str) -> None:
    images = coded_images(N, SIZE)
    labels = torch.arange(N) % 10
    draw = draw_epoch(N, seed=7, epoch=3, padding=padding, flip=flip)
    decoded_shift, decoded_flip, seen = [], [], []
    for batch in iter_batches(N - N % BATCH, BATCH):  # the loop's full batches
        idx = draw.order[batch]
        x = augment(images[idx], draw.shifts[idx], draw.flips[idx], padding=padding,
                    padding_mode=mode).numpy().astype(np.int64)
        y = labels[idx]
        # Row p and column p of the output are never padding (offsets are in [0, 2p]), so
        # there the source coordinates are exact: row p holds source row dy, and column p
        # (or SIZE-1-p when mirrored) holds source column dx.
        centre = x[:, :, padding, padding + 1]
        sample = centre[:, 2] + 256 * centre[:, 3]
        mirrored = x[:, 1, padding, padding + 1] < x[:, 1, padding, padding]
        dx_col = np.where(mirrored, SIZE - 1 - padding, padding)
        dy = x[:, 0, padding, padding]
        dx = x[np.arange(len(x)), 1, padding, dx_col]
        # Labels travel with their images: the label is the decoded sample's own.
        assert torch.equal(y, labels[torch.from_numpy(sample)])
        assert torch.equal(torch.from_numpy(sample), idx)
        for k in range(len(x)):
            want = expected_window(images[sample[k]].numpy(), dy[k], dx[k], mirrored[k],
                                   padding, mode)
            assert np.array_equal(x[k], want), f"sample {sample[k]} is not a true window"
        decoded_shift.append(np.stack([dy, dx], axis=1))
        decoded_flip.append(mirrored)
        seen.append(sample)

    shifts = np.concatenate(decoded_shift)
    flips = np.concatenate(decoded_flip)
    seen = np.concatenate(seen)
    assert len(np.unique(seen)) == len(seen)  # each sample at most once per epoch
    # What the pixels show is what was drawn for that dataset index...
    assert np.array_equal(shifts, draw.shifts[seen].numpy())
    assert np.array_equal(flips, draw.flips[seen].numpy())
    # ...and its statistics are the requested ones.
    if flip:
        assert abs(flips.mean() - 0.5) < 0.05
    else:
        assert not flips.any()
    span = 2 * padding + 1  # offsets uniform on 0..2p, each axis
    uniform_std = np.sqrt((span**2 - 1) / 12)
    for axis in range(2):
        counts = np.bincount(shifts[:, axis], minlength=span)
        assert len(counts) == span and counts.min() > 0
        assert np.all(np.abs(counts - len(shifts) / span) < 0.2 * len(shifts) / span), counts
        assert abs(shifts[:, axis].mean() - padding) < 0.1 * padding
        assert abs(shifts[:, axis].std() - uniform_std) < 0.05 * uniform_std
    # The two axes are drawn independently.
    assert abs(np.corrcoef(shifts[:, 0], shifts[:, 1])[0, 1]) < 0.1
