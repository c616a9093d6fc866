"""Sharpness-aware minimisation (Foret et al. 2020, "Sharpness-Aware Minimization for
Efficiently Improving Generalization"), as two in-place moves around the base optimizer.

One SAM step with radius rho:

1. gradient g at w (the training loop's first pass);
2. ``ascend``: w <- w + e with e = rho * g / |g| (|g| over all parameters together);
3. gradient at w + e (the second pass);
4. ``descend``: w <- w - e, then the base optimizer steps with the second gradient.

Under DDP the first pass runs without the all-reduce, so each process perturbs along its own
gradient: Foret et al.'s m-sharpness with m the per-process batch, as in their multi-device
experiments, and one all-reduce per step as without SAM. The direction is normalised, so a
loss scale (fp16) cancels out of e.
"""

from __future__ import annotations

import torch

__all__ = ["Perturbation", "ascend", "descend"]

Perturbation = tuple[list[torch.Tensor], list[torch.Tensor]]


@torch.no_grad()
def ascend(parameters: list[torch.Tensor], rho: float) -> Perturbation:
    """Add e = rho * g / |g| to every parameter that has a gradient; return (params, e).

    All on the device: the norm stays a tensor, so there is no host sync. A zero gradient
    gives e = 0 (the tiny constant in the denominator only guards the division), and so does
    a non-finite one (an fp16 overflow the loss scaler is about to skip): a NaN perturbation
    would survive ``descend`` (w + NaN - NaN) and ruin the weights.
    """
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return [], []
    grads = [p.grad for p in params]
    norm = torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(g.float()) for g in grads]))
    scale = torch.where(torch.isfinite(norm), rho / (norm + 1e-12), torch.zeros_like(norm))
    perturbation = [torch.nan_to_num(g.float() * scale, nan=0.0, posinf=0.0, neginf=0.0)
                    .to(g.dtype) for g in grads]
    torch._foreach_add_(params, perturbation)
    return params, perturbation


@torch.no_grad()
def descend(perturbation: Perturbation) -> None:
    """Undo ``ascend``: subtract the stored e from the same parameters."""
    params, offsets = perturbation
    if params:
        torch._foreach_sub_(params, offsets)
