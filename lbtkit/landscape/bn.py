"""BatchNorm statistics for points that were never trained: re-estimation and batch statistics.

An interpolated or extrapolated parameter vector has no running statistics of its own; mixing
the endpoints' statistics is not the statistics of the mixed network (and extrapolating them can
make a variance negative). The two remedies here are re-estimating them from training data, and
normalising with the evaluated batch's own statistics (what Keskar's PyTorch script did).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lbtkit.evaluate import InputSpec


def batchnorm_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def even_batches(num_samples: int, max_batch_size: int) -> Iterator[slice]:
    """Consecutive slices of near-equal size (differing by at most one), none above the maximum.

    Batch statistics and a per-batch cumulative average weight each batch equally, so a short
    last batch (possibly of one sample, on which BatchNorm cannot even compute a variance)
    would be over-weighted; near-equal batches avoid that.
    """
    if max_batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {max_batch_size}")
    count = -(-num_samples // max_batch_size)
    for i in range(count):
        yield slice(num_samples * i // count, num_samples * (i + 1) // count)


def negative_variances(model: nn.Module) -> int:
    """Number of BatchNorm running-variance entries below zero (each one makes outputs NaN)."""
    total = 0
    for module in batchnorm_modules(model):
        if module.running_var is not None:
            total += int((module.running_var < 0).sum())
    return total


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, images: torch.Tensor, inputs: InputSpec, *, batch_size: int
) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them on ``images``.

    The estimate is the cumulative average over near-equal batches (momentum None), so it does
    not depend on an arbitrary decay. Only the BatchNorm layers run in training mode: dropout
    stays off, so the statistics are those of the activations the evaluation will see, and the
    result is deterministic. The model is left in eval mode.
    """
    modules = batchnorm_modules(model)
    if not modules:
        return
    momenta = [m.momentum for m in modules]
    model.eval()
    try:
        for module in modules:
            module.reset_running_stats()
            module.momentum = None
            module.train()
        for sel in even_batches(images.shape[0], batch_size):
            model(inputs(images[sel]))
    finally:
        for module, momentum in zip(modules, momenta, strict=True):
            module.momentum = momentum
        model.eval()


@contextlib.contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Inside: BatchNorm normalises with each batch's own statistics and leaves its running
    statistics untouched; everything else (dropout) is in eval mode."""
    modules = batchnorm_modules(model)
    tracking = [m.track_running_stats for m in modules]
    model.eval()
    try:
        for module in modules:
            # training without tracking: batch statistics, and no buffer is read or written
            module.track_running_stats = False
            module.train()
        yield
    finally:
        for module, track in zip(modules, tracking, strict=True):
            module.track_running_stats = track
        model.eval()


@torch.no_grad()
def evaluate_batch_stats(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    inputs: InputSpec,
    *,
    batch_size: int,
) -> torch.Tensor:
    """Like ``lbtkit.evaluate.evaluate_sums``, but BatchNorm uses each batch's statistics.

    Batches are near-equal slices of at most ``batch_size`` samples in dataset order, so the
    result depends on the batch size, which callers must state. Returns (loss sum, correct,
    count) as float64.
    """
    totals = torch.zeros(3, dtype=torch.float64, device=labels.device)
    with batch_statistics(model):
        for sel in even_batches(labels.shape[0], batch_size):
            logits = model(inputs(images[sel])).float()
            target = labels[sel]
            totals[0] += F.cross_entropy(logits, target, reduction="sum").double()
            totals[1] += (logits.argmax(dim=1) == target).sum()
            totals[2] += target.shape[0]
    return totals
