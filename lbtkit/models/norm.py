"""BatchNorm variants for large batches: ghost batches (Hoffer et al. 2017) and global
statistics across processes (SyncBatchNorm).

``convert_batchnorm`` swaps the BatchNorm layers of a built model in place of the originals.
The replacements are subclasses of the torch classes with the same parameters and buffers,
so state dicts, checkpoints and ``lbtkit.load_run`` see an ordinary model; the variants only
change how statistics are taken in training mode. Evaluation uses the running statistics,
exactly like plain BatchNorm.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lbtkit.errors import ConfigError

__all__ = [
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GlobalBatchNorm",
    "convert_batchnorm",
    "frozen_running_stats",
]


class _GhostMixin:
    """Training-mode statistics over consecutive groups of ``ghost_batch_size`` samples.

    Each group updates the running statistics in turn, as Hoffer et al.'s Algorithm 1 does:
    with groups of the whole batch this is plain BatchNorm, bit for bit.
    """

    ghost_batch_size: int

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or input.shape[0] <= self.ghost_batch_size:
            return super().forward(input)  # type: ignore[misc]
        if input.shape[0] % self.ghost_batch_size:
            raise ValueError(
                f"batch of {input.shape[0]} samples is not a multiple of ghost_batch_size "
                f"{self.ghost_batch_size}"
            )
        plain = super().forward  # type: ignore[misc]  # (zero-argument super fails in a comprehension)
        return torch.cat([plain(chunk) for chunk in input.split(self.ghost_batch_size)])


class GhostBatchNorm1d(_GhostMixin, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with statistics over ghost batches in training."""


class GhostBatchNorm2d(_GhostMixin, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with statistics over ghost batches in training."""


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the batches of all processes.

    ``torch.nn.SyncBatchNorm`` does this with CUDA kernels and refuses CPU tensors; this is
    the same computation with one autograd-aware all-reduce of (sum, sum of squares, count)
    per layer, so it runs over gloo on the CPU too. On CUDA ``convert_batchnorm`` uses
    torch's own class instead.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        self._check_input_dim(input)
        distributed = dist.is_available() and dist.is_initialized() \
            and dist.get_world_size() > 1
        if not (self.training and distributed):
            return super().forward(input)
        # torch.distributed.nn.functional.all_reduce (the older autograd-aware one) is
        # deprecated; the functional collectives register autograd for all_reduce.
        from torch.distributed import _functional_collectives as funcol

        dims = [d for d in range(input.dim()) if d != 1]
        values = input.float()
        # torch.full fills on the device; torch.tensor would copy from the host every step.
        count = torch.full((1,), values.numel() / values.shape[1], device=input.device)
        local = torch.cat((values.sum(dims), (values * values).sum(dims), count))
        # The gradient flows back through the sums to every rank.
        total = funcol.wait_tensor(funcol.all_reduce(local, "sum", dist.group.WORLD))
        channels = input.shape[1]
        n = total[-1]
        mean = total[:channels] / n
        var = (total[channels:2 * channels] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None \
                    else 1.0 / float(self.num_batches_tracked)
                unbiased = var * n / (n - 1).clamp_min(1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        shape = [1, channels] + [1] * (input.dim() - 2)
        out = (values - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def convert_batchnorm(
    model: nn.Module, *, ghost_batch_size: int | None = None, sync: bool = False
) -> nn.Module:
    """Replace the model's BatchNorm layers for ghost batches or cross-process statistics.

    Returns ``model`` itself (modified) when it has nothing to convert. The two options
    exclude each other: ghost batches are deliberately smaller than one process's batch,
    synchronised statistics deliberately larger.
    """
    if ghost_batch_size is not None and sync:
        raise ConfigError("ghost_batch_size and sync_bn exclude each other; choose one")
    if ghost_batch_size is not None:
        if ghost_batch_size < 1:
            raise ConfigError(f"ghost_batch_size must be a positive number, got "
                              f"{ghost_batch_size}")
        return _replace(model, lambda bn: _ghost_class(bn), ghost_batch_size=ghost_batch_size)
    if sync:
        if any(p.is_cuda for p in model.parameters()) or torch.cuda.is_available():
            return nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return _replace(model, lambda bn: GlobalBatchNorm)
    return model


@contextlib.contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[None]:
    """Leave the BatchNorm running statistics untouched by the forward passes inside.

    SAM's second pass sees perturbed weights; its batch statistics must not count as a
    second observation of the data (momentum 0 keeps the old running values).
    """
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None
              else None) for m in layers]
    for layer in layers:
        layer.momentum = 0.0
    try:
        yield
    finally:
        for layer, (momentum, tracked) in zip(layers, saved, strict=True):
            layer.momentum = momentum
            if tracked is not None:
                layer.num_batches_tracked.copy_(tracked)


def _ghost_class(bn: _BatchNorm) -> type[_BatchNorm]:
    if isinstance(bn, nn.BatchNorm2d):
        return GhostBatchNorm2d
    if isinstance(bn, nn.BatchNorm1d):
        return GhostBatchNorm1d
    raise ConfigError(f"ghost batch normalisation supports BatchNorm1d/2d, not "
                      f"{type(bn).__name__}")


def _replace(model: nn.Module, pick, **attributes) -> nn.Module:
    """Swap every BatchNorm module for ``pick(module)``, keeping its parameters and buffers."""
    if isinstance(model, _BatchNorm):
        state = model.state_dict()
        new = pick(model)(model.num_features, eps=model.eps, momentum=model.momentum,
                          affine=model.affine, track_running_stats=model.track_running_stats)
        if state:  # on the old layer's device (a layer without state has nothing to move)
            new = new.to(next(iter(state.values())).device)
        new.load_state_dict(state)
        new.train(model.training)
        for key, value in attributes.items():
            setattr(new, key, value)
        return new
    for name, child in model.named_children():
        replaced = _replace(child, pick, **attributes)
        if replaced is not child:
            setattr(model, name, replaced)
    return model
