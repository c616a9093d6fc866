"""The critical batch size from steps to a target: the math, as pure functions.

McCandlish et al. (2018, "An Empirical Model of Large-Batch Training", eq. 2.11) model the
optimizer steps S and training examples E = B*S needed to reach a fixed goal at batch size B as

    (S / S_min - 1) * (E / E_min - 1) = 1,   i.e.   S(B) = S_min + E_min / B,

with S_min the fewest steps (infinite batch) and E_min the fewest examples (batch -> 0). The
critical batch B_crit = E_min / S_min is where both are twice their minimum. Shallue et al.
(2019) measure S(B) the same way, with the learning rate tuned at every B (the best of a grid
whose best point must be interior), and describe three regimes:

    perfect scaling            S ~ E_min / B: doubling B halves the steps
    diminishing returns        in between
    maximal data parallelism   S ~ S_min: a larger batch no longer saves steps

Our thresholds for them are stated in ``REGIME_FACTOR``: perfect scaling while B <= B_crit/4
(E within 25% of E_min), maximal data parallelism once B >= 4 B_crit (S within 25% of S_min).

A record is one run's outcome for one target: ``{"seed", "batch_size", "lr", "steps",
"status"}`` with ``steps`` None when the run did not reach the target (``status`` then says
whether it diverged or ran out of steps).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Regime boundaries as a factor of B_crit (see the module docstring).
REGIME_FACTOR = 4.0
PERFECT, DIMINISHING, MAXIMAL = ("perfect scaling", "diminishing returns",
                                 "maximal data parallelism")
DIVERGED = "diverged"


@dataclass(frozen=True)
class ScalingFit:
    """S(B) = s_min + e_min / B, fitted to measured (B, S)."""

    s_min: float
    e_min: float

    @property
    def b_crit(self) -> float:
        return self.e_min / self.s_min

    def steps(self, batch_size: float) -> float:
        return self.s_min + self.e_min / batch_size

    def to_dict(self) -> dict[str, float]:
        return {"s_min": self.s_min, "e_min": self.e_min, "b_crit": self.b_crit}


def fit_steps(batch_sizes: Sequence[float], steps: Sequence[float]) -> ScalingFit:
    """Least squares in log S (the spread of steps is relative) of S = s_min + e_min / B.

    Needs two or more distinct batch sizes. The start is the linear least-squares solution of
    S = s_min + e_min * (1/B) weighted by 1/S (clipped positive); Gauss-Newton on the two
    log-parameters then minimises sum (log S_i - log S(B_i))^2.
    """
    b = np.asarray(batch_sizes, dtype=float)
    s = np.asarray(steps, dtype=float)
    if b.shape != s.shape or len(set(b.tolist())) < 2:
        raise ValueError("fit_steps needs steps at two or more distinct batch sizes")
    if not (np.all(b > 0) and np.all(s > 0) and np.all(np.isfinite(s))):
        raise ValueError("fit_steps needs positive batch sizes and finite positive steps")
    design = np.stack([np.ones_like(b), 1 / b], axis=1) / s[:, None]
    start, *_ = np.linalg.lstsq(design, np.ones_like(s), rcond=None)
    floor = 1e-3 * s.min()
    params = np.log(np.maximum(start, [floor, floor * b.min()]))
    return ScalingFit(*np.exp(_gauss_newton(params, b, np.log(s))).tolist())


def _gauss_newton(params: np.ndarray, b: np.ndarray, log_s: np.ndarray,
                  iterations: int = 200) -> np.ndarray:
    """Minimise sum (log_s - log(exp(p0) + exp(p1)/b))^2 over p, with step halving."""

    def loss(p: np.ndarray) -> float:
        return float(np.sum((log_s - np.log(np.exp(p[0]) + np.exp(p[1]) / b)) ** 2))

    current = loss(params)
    for _ in range(iterations):
        a, c = np.exp(params[0]), np.exp(params[1]) / b
        model = a + c
        residual = log_s - np.log(model)
        jacobian = np.stack([a / model, c / model], axis=1)
        step, *_ = np.linalg.lstsq(jacobian, residual, rcond=None)
        scale = 1.0
        while scale > 1e-6:
            trial = params + scale * step
            value = loss(trial)
            if value <= current:
                break
            scale /= 2
        else:
            break
        if current - value < 1e-14 * max(current, 1e-300):
            params, current = trial, value
            break
        params, current = trial, value
    return params


def regime(batch_size: float, b_crit: float) -> str:
    """The regime of ``batch_size`` under the fitted B_crit (thresholds: REGIME_FACTOR)."""
    if batch_size <= b_crit / REGIME_FACTOR:
        return PERFECT
    if batch_size >= b_crit * REGIME_FACTOR:
        return MAXIMAL
    return DIMINISHING


# --- the tuned learning rate per batch size ------------------------------------------------


@dataclass(frozen=True)
class Best:
    """The best learning rate at one batch size: the lowest mean steps over the seeds, all of
    which must reach the target; ``edge`` says whether it is at an end of the grid tried."""

    batch_size: int
    lr: float | None  # None: no learning rate reached the target on every seed
    steps: float | None  # mean over the seeds at that lr
    edge: str | None  # "low" | "high" (extend the grid that way) | None (interior)
    lrs: tuple[float, ...]  # the learning rates tried


def best_per_batch(records: Iterable[dict[str, Any]],
                   seeds: Sequence[int] | None = None) -> dict[int, Best]:
    """For each batch size, the best learning rate over ``seeds`` (default: every seed on
    record; a seed may repeat, as in a bootstrap sample) and whether the grid must grow.

    Edges (Shallue et al.: the best must be interior): the fewest steps at the largest lr
    tried -> "high", at the smallest -> "low", also when an inner lr ties it (steps are
    counted at evaluation steps, so neighbours often tie, and a tie at the edge does not show
    that the lr beyond it is worse). Among tied lrs the smallest is the best. When no lr
    reached the target on every seed: "low" if the largest lr diverged (smaller ones may be
    stable), else "high" (all too slow).
    """
    by_batch: dict[int, dict[float, dict[int, dict[str, Any]]]] = {}
    for r in records:
        by_batch.setdefault(int(r["batch_size"]), {}).setdefault(
            float(r["lr"]), {})[int(r["seed"])] = r
    result = {}
    for batch, by_lr in sorted(by_batch.items()):
        lrs = tuple(sorted(by_lr))
        chosen = seeds if seeds is not None else sorted({s for runs in by_lr.values()
                                                        for s in runs})
        means = {lr: _mean_steps(by_lr[lr], chosen) for lr in lrs}
        finite = {lr: m for lr, m in means.items() if m is not None}
        if not finite:
            top = by_lr[lrs[-1]].values()
            edge = "low" if any(r.get("status") == DIVERGED for r in top) else "high"
            result[batch] = Best(batch, None, None, edge, lrs)
            continue
        lr = min(finite, key=lambda k: (finite[k], k))
        edge = ("low" if finite.get(lrs[0]) == finite[lr]
                else "high" if finite.get(lrs[-1]) == finite[lr] else None)
        result[batch] = Best(batch, lr, finite[lr], edge, lrs)
    return result


def _mean_steps(runs: dict[int, dict[str, Any]], seeds: Sequence[int]) -> float | None:
    values = []
    for seed in seeds:
        run = runs.get(seed)
        if run is None or run.get("steps") is None:
            return None
        values.append(float(run["steps"]))
    return sum(values) / len(values) if values else None


def fit_best(best: dict[int, Best]) -> ScalingFit | None:
    """The fit over the batch sizes whose best reached the target (None: fewer than two)."""
    points = [(b.batch_size, b.steps) for b in best.values() if b.steps is not None]
    if len({p[0] for p in points}) < 2:
        return None
    return fit_steps(*zip(*points, strict=True))


def bootstrap_fit(records: Sequence[dict[str, Any]], *, samples: int = 2000, seed: int = 0,
                  level: float = 0.95) -> dict[str, tuple[float, float] | int]:
    """Percentile intervals of b_crit, s_min and e_min over bootstrap samples of the seeds.

    Each sample draws the seeds with replacement (one draw for all batch sizes: a seed is a
    whole replicate of the study), re-chooses the best learning rate per batch size, and
    refits. With k seeds there are only C(2k-1, k) distinct samples (3 for 2 seeds), so the
    interval is coarse for few seeds; it is the spread the seeds show, nothing finer.
    """
    all_seeds = sorted({int(r["seed"]) for r in records})
    rng = random.Random(seed)
    fits = []
    for _ in range(samples):
        drawn = [rng.choice(all_seeds) for _ in all_seeds]
        fit = fit_best(best_per_batch(records, drawn))
        if fit is not None:
            fits.append(fit)
    if not fits:
        return {"samples": 0}
    tail = (1 - level) / 2
    out: dict[str, tuple[float, float] | int] = {"samples": len(fits)}
    for name in ("b_crit", "s_min", "e_min"):
        values = np.array([getattr(f, name) for f in fits])
        out[name] = (float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail)))
    return out


def ratio_interval(value: float, interval: tuple[float, float], other: float,
                   other_se: float | None) -> tuple[float, tuple[float, float]]:
    """``other / value`` and a conservative interval: the extremes of ``other +- 2 se``
    over the extremes of ``interval`` (each side's own uncertainty, combined by bounds)."""
    spread = 2 * (other_se or 0.0)
    low = max(other - spread, 0.0) / interval[1] if interval[1] > 0 else math.nan
    high = (other + spread) / interval[0] if interval[0] > 0 else math.inf
    return other / value, (low, high)
