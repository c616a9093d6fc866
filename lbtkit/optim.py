"""Layer-wise adaptive optimizers for large batches: LARS and LAMB.

Both rescale each parameter tensor's step by a trust ratio built from that tensor's own
norms, so that every layer moves by a controlled fraction of its weight norm whatever the
scale of its gradient. That is what lets the global learning rate grow with the batch size
without the layers with small weights diverging first.

Everything that depends on tensor values stays on the device: norms, trust ratios and the
step counter are tensors and the zero-norm cases go through ``torch.where``, so a step
never waits for the GPU (no ``.item()``, no Python branch on a value).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = ["LAMB", "LARS"]

Params = Iterable[torch.Tensor] | Iterable[dict[str, Any]]


def _check_hparams(group: dict[str, Any]) -> None:
    """Raise ValueError naming the first bad hyper-parameter of a (merged) param group.

    Run for every group, not only the constructor's defaults: a per-group override is as
    likely to be wrong, and a bad value only shows up as NaN weights many steps later.
    """

    def finite(name: str) -> float:
        value = group[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
        return float(value)

    if finite("lr") < 0:
        raise ValueError(f"lr must be >= 0, got {group['lr']!r}")
    if finite("weight_decay") < 0:
        raise ValueError(f"weight_decay must be >= 0, got {group['weight_decay']!r}")
    if "momentum" in group and not 0 <= finite("momentum") < 1:
        raise ValueError(f"momentum must be in [0, 1), got {group['momentum']!r}")
    if "trust_coefficient" in group and finite("trust_coefficient") <= 0:
        raise ValueError(f"trust_coefficient must be > 0, got {group['trust_coefficient']!r}")
    if "betas" in group:
        betas = group["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        for i, beta in enumerate(betas):
            if (isinstance(beta, bool) or not isinstance(beta, (int, float))
                    or not 0 <= beta < 1):
                raise ValueError(f"betas[{i}] must be in [0, 1), got {beta!r}")
    # eps = 0 would turn every coordinate whose gradient has always been 0 into 0/0 = NaN.
    if "eps" in group and finite("eps") <= 0:
        raise ValueError(f"eps must be > 0, got {group['eps']!r}")
    if not isinstance(group["exclude_1d"], bool):
        raise ValueError(f"exclude_1d must be True or False, got {group['exclude_1d']!r}")


def _norm(t: torch.Tensor) -> torch.Tensor:
    # At least float32 accumulation: a bf16/fp16 sum of squares over a large layer is too
    # coarse for a ratio of norms (float64 stays float64).
    return torch.linalg.vector_norm(t, dtype=torch.promote_types(t.dtype, torch.float32))


def _dense_grad(p: torch.Tensor, name: str) -> torch.Tensor:
    if p.grad.is_sparse:
        raise RuntimeError(f"{name} does not support sparse gradients")
    return p.grad


class _LayerwiseOptimizer(Optimizer):
    """Shared plumbing: per-group validation and the closure protocol."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _check_hparams({**self.defaults, **param_group})
        super().add_param_group(param_group)

    def _run_closure(self, closure: Callable[[], float] | None) -> float | None:
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()


class LARS(_LayerwiseOptimizer):
    r"""LARS: SGD with momentum and a layer-wise trust ratio (You, Gitman, Ginsburg 2017,
    arXiv:1708.03888, Algorithm 1).

    For each parameter tensor ``w`` with gradient ``g``, with ``lr`` the group's current
    (scheduled) global learning rate, ``wd`` the weight decay, ``eta`` the trust
    coefficient and ``m`` the momentum::

        local_lr = eta * |w| / (|g| + wd * |w|)      # 1.0 when |w| == 0 or |g| == 0
        v <- m * v + lr * local_lr * (g + wd * w)    # v starts at 0
        w <- w - v

    Norms are L2 norms over the whole tensor. As in the paper, the global learning rate and
    the trust ratio sit *inside* the momentum buffer: ``v`` is the step itself, so a change
    of ``lr`` by the schedule acts on new gradients only (torch's SGD instead multiplies the
    whole buffer by the current ``lr``).

    Zero norms: with ``|w| == 0`` (a zero-initialised layer) the ratio is 0 and the tensor
    would never move; with ``|g| == 0`` it is ``eta / wd`` or 0/0. As in NVIDIA's LARC and
    timm the ratio is 1.0 in both cases, i.e. a plain ``lr * (g + wd * w)`` step. Beware
    that LARS's global ``lr`` is typically much larger than an SGD one (``eta`` scales it
    down), so that unscaled step of a zero-initialised >=2-D layer can be large.

    ``exclude_1d`` (default True): tensors with fewer than 2 dimensions -- biases,
    BatchNorm/LayerNorm scales and shifts -- get neither the trust ratio nor weight decay,
    only ``v <- m * v + lr * g; w <- w - v``. This is common large-batch practice (the
    MLPerf ResNet-50 LARS reference, "no bias decay" of Jia et al. 2018): such tensors hold
    few values, their norm is not a meaningful scale (a bias starts at 0, a BN scale at 1),
    and decaying them only fights the normalisation. Set it per param group to override.

    Args:
        params: parameters or param-group dicts (groups may override any option below).
        lr: global learning rate (the training loop overwrites ``group["lr"]`` each step).
        momentum: momentum ``m`` in [0, 1); 0 keeps no buffer.
        weight_decay: L2 coefficient ``wd`` >= 0, added to the gradient before the ratio.
        trust_coefficient: ``eta`` > 0.
        exclude_1d: plain SGD with momentum for tensors with ``ndim < 2``.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        exclude_1d: bool = True,
    ) -> None:
        defaults = {
            "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient, "exclude_1d": exclude_1d,
        }
        _check_hparams(defaults)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One LARS step; ``closure`` re-evaluates the model and returns the loss."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            wd, eta = group["weight_decay"], group["trust_coefficient"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = _dense_grad(p, "LARS")
                if group["exclude_1d"] and p.ndim < 2:
                    update = g * lr
                else:
                    w_norm, g_norm = _norm(p), _norm(g)
                    # Where the condition is false the ratio may be inf or 0/0 = NaN;
                    # torch.where drops it without a host round-trip.
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        eta * w_norm / (g_norm + wd * w_norm),
                        1.0,
                    )
                    update = (g.add(p, alpha=wd) if wd != 0 else g) * (trust * lr)
                if momentum != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        # Buffer starts at zero, so the first v is the update itself.
                        state["momentum_buffer"] = update
                    else:
                        update = state["momentum_buffer"].mul_(momentum).add_(update)
                p.sub_(update)
        return loss


class LAMB(_LayerwiseOptimizer):
    r"""LAMB: Adam with a layer-wise trust ratio (You et al. 2019, arXiv:1904.00962,
    Algorithm 2, with phi = identity).

    For each parameter tensor ``w`` with gradient ``g``, step count ``t`` (per tensor,
    starting at 1), group learning rate ``lr`` and weight decay ``wd``::

        m <- b1 * m + (1 - b1) * g
        v <- b2 * v + (1 - b2) * g^2
        m_hat = m / (1 - b1^t);  v_hat = v / (1 - b2^t)
        r = m_hat / (sqrt(v_hat) + eps) + wd * w      # decoupled decay, as in AdamW
        trust = |w| / |r|                             # 1.0 when |w| == 0 or |r| == 0
        w <- w - lr * trust * r

    The trust ratio makes the step's norm ``lr * |w|``: each layer moves by the same
    relative amount. Zero norms: a zero tensor (zero-initialised layer) or a zero update
    would give a ratio of 0 or 0/0 and never move; the ratio is 1.0 then, as in the
    reference implementations.

    ``exclude_1d`` (default True): tensors with fewer than 2 dimensions (biases,
    normalisation scales and shifts) take the plain Adam step ``lr * m_hat / (sqrt(v_hat) +
    eps)`` with trust 1 and no weight decay, the usual practice for BERT-style LAMB
    training: their norm is not a meaningful scale for the step and decaying them only
    fights the normalisation. Set it per param group to override.

    The step count lives in ``state["step"]`` as a float32 tensor on the parameter's device,
    so the bias corrections are computed there without a host sync.

    Args:
        params: parameters or param-group dicts (groups may override any option below).
        lr: learning rate (the training loop overwrites ``group["lr"]`` each step).
        betas: ``(b1, b2)``, each in [0, 1).
        eps: > 0, added to ``sqrt(v_hat)``.
        weight_decay: ``wd`` >= 0, added to the Adam direction before the trust ratio.
        exclude_1d: trust 1 and no weight decay for tensors with ``ndim < 2``.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        exclude_1d: bool = True,
    ) -> None:
        defaults = {
            "lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
            "exclude_1d": exclude_1d,
        }
        _check_hparams(defaults)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One LAMB step; ``closure`` re-evaluates the model and returns the loss."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            eps, wd = group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = _dense_grad(p, "LAMB")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
                elif state["step"].device != p.device:
                    # Optimizer.load_state_dict leaves "step" where the checkpoint was
                    # mapped (the CPU); one copy back keeps the bias corrections on device.
                    state["step"] = state["step"].to(p.device)
                step, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                step.add_(1)
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                # In float32 1 - 0.999 is off by 5e-5 relative; float64 params get float64
                # corrections (others float32, as torch's capturable Adam; MPS has no f64).
                t = step.to(torch.promote_types(p.dtype, torch.float32))
                bias1 = 1 - torch.pow(beta1, t)
                bias2 = 1 - torch.pow(beta2, t)
                r = (m / bias1) / ((v / bias2).sqrt_().add_(eps))
                if not (group["exclude_1d"] and p.ndim < 2):
                    if wd != 0:
                        r.add_(p, alpha=wd)
                    w_norm, r_norm = _norm(p), _norm(r)
                    trust = torch.where((w_norm > 0) & (r_norm > 0), w_norm / r_norm, 1.0)
                    r.mul_(trust)
                p.add_(r, alpha=-lr)
        return loss
