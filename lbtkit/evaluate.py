"""From stored uint8 images to model inputs, and evaluation of a model on a split.

Shared by the training loop and by the tools that evaluate finished runs, so a run's reported
validation numbers and a later re-evaluation go through exactly the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lbtkit.data import DatasetInfo, iter_batches, normalize


@dataclass(frozen=True)
class InputSpec:
    """How stored images become model inputs."""

    info: DatasetInfo
    image_size: int
    channels_last: bool = False

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize(images, self.info.mean, self.info.std, channels_last=self.channels_last)
        if self.image_size != images.shape[-1]:
            # Pretrained ImageNet models want larger inputs than CIFAR's 32 pixels.
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        return x


@torch.inference_mode()
def evaluate_sums(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    inputs: InputSpec,
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """Sum of cross-entropy, number correct and number of samples on this process's shard.

    The split is cut into ``world_size`` contiguous shards; summing the returned vectors
    over processes gives the exact totals. Returned as a float64 tensor on the data's device,
    so callers reduce across processes once, with no host synchronisation per batch.
    """
    n = labels.shape[0]
    start, stop = n * rank // world_size, n * (rank + 1) // world_size
    totals = torch.zeros(3, dtype=torch.float64, device=labels.device)
    was_training = model.training
    model.eval()
    try:
        for batch in iter_batches(stop - start, batch_size):
            sel = slice(start + batch.start, start + batch.stop)
            logits = model(inputs(images[sel])).float()
            target = labels[sel]
            totals[0] += F.cross_entropy(logits, target, reduction="sum").double()
            totals[1] += (logits.argmax(dim=1) == target).sum()
            totals[2] += target.shape[0]
    finally:
        model.train(was_training)
    return totals


def mean_loss_and_accuracy(totals: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy as a fraction) from summed totals."""
    loss_sum, correct, count = totals.tolist()
    if count == 0:
        return float("nan"), float("nan")
    return loss_sum / count, correct / count
