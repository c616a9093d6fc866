"""Sharpness of a solution: Keskar's metric, top Hessian eigenvalues, the Hessian trace.

The measures are pure functions of a loss ``f`` on a flat parameter vector, so they are tested on
quadratics whose answers are known in closed form. ``f`` is either one callable ``x -> scalar``,
a sequence of them whose sum is ``f`` (a large sample differentiated one chunk at a time), or a
``SplitLoss``: this process's share of the terms and the all-reduce that sums every share
(several processes, each holding part of the sample). ``run_sharpness`` builds that ``f`` for a
trained run: the mean training cross-entropy over a stated, seeded sample, dropout off, with
BatchNorm under each convention the spec names: its running statistics (PyTorch's eval mode),
or each batch's own statistics (Keras' ``BatchNormalization(mode=2)``, the convention of
Keskar et al.'s code). The two are different functions of the weights: with batch statistics
every layer's pre-activations are re-centred and re-scaled by the batch itself, so a
perturbation that shifts or scales them is partly normalised away, and f is flatter in those
directions; with running statistics the normalisation is frozen and the whole perturbation
reaches the next layer.

With a ``SplitLoss`` every process runs the same maximiser and Lanczos steps on the same reduced
values (an all-reduce gives every process the same sum), so they stay in step; only the loss
and its derivatives are split. Results match one process's up to the rounding of the sum.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lbtkit.data import iter_batches, load_dataset
from lbtkit.distributed import process_rank, shard
from lbtkit.errors import ConfigError
from lbtkit.evaluate import InputSpec
from lbtkit.fileio import write_json
from lbtkit.landscape.bn import batch_statistics, even_batches
from lbtkit.landscape.lbfgsb import minimize_in_box
from lbtkit.progress import TrainingProgress
from lbtkit.run_model import load_run
from lbtkit.rundir import RunDir, versions
from lbtkit.specs import SHARPNESS_BN, SharpnessSpec, parse_subspace

__all__ = ["SplitLoss", "gradient_norm", "hessian_top_eigenvalues", "hutchinson_trace",
           "keskar_sharpness", "network_loss", "random_subspace", "run_sharpness",
           "sharpness_settings"]

Term = Callable[[torch.Tensor], torch.Tensor]


def _no_reduce(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@dataclass(frozen=True)
class SplitLoss:
    """f = the sum of ``terms`` over all processes: this process's terms, and ``reduce``,
    which sums a tensor over the processes (an all-reduce; the identity for one process)."""

    terms: Sequence[Term]
    reduce: Callable[[torch.Tensor], torch.Tensor] = field(default=_no_reduce)


LossFn = Term | Sequence[Term] | SplitLoss

# Row blocks for A^T A and A^T x: float64 accuracy without a float64 copy of all of A.
_GRAM_BLOCK_ROWS = 1 << 16


# --- the loss and its derivatives ---------------------------------------------------------


def _terms(loss_fn: LossFn) -> SplitLoss:
    if isinstance(loss_fn, SplitLoss):
        return loss_fn
    return SplitLoss(list(loss_fn) if isinstance(loss_fn, Sequence) else [loss_fn])


def _sum(loss: SplitLoss, values: list[float], x: torch.Tensor) -> float:
    local = torch.tensor(math.fsum(values), dtype=torch.float64, device=x.device)
    return float(loss.reduce(local))


def _value(loss: SplitLoss, x: torch.Tensor) -> float:
    with torch.no_grad():
        return _sum(loss, [float(term(x)) for term in loss.terms], x)


def _value_and_grad(loss: SplitLoss, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    x = x.detach().requires_grad_(True)
    values, grad = [], torch.zeros_like(x)
    for term in loss.terms:
        value = term(x)
        (g,) = torch.autograd.grad(value, x)
        grad += g
        values.append(float(value.detach()))
    return _sum(loss, values, x), loss.reduce(grad)


def _hvp(loss: SplitLoss, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Hessian-vector product H(x) v by double backward, one term at a time."""
    x = x.detach().requires_grad_(True)
    out = torch.zeros_like(x)
    for term in loss.terms:
        (g,) = torch.autograd.grad(term(x), x, create_graph=True)
        (hv,) = torch.autograd.grad(g, x, grad_outputs=v)
        out += hv
    return loss.reduce(out)


def gradient_norm(loss_fn: LossFn, x0: torch.Tensor) -> float:
    """The Euclidean norm of the gradient of f at ``x0`` (all terms, all processes): how far
    ``x0`` is from a stationary point of f."""
    _, grad = _value_and_grad(_terms(loss_fn), x0.detach())
    return float(grad.double().norm())


# --- Keskar's metric ----------------------------------------------------------------------


def random_subspace(
    n: int, p: int, *, seed: int, device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Keskar's random n x p matrix A with standard normal entries, reproducible from ``seed``.

    Memory is n * p elements (4 bytes each in float32) on ``device``.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, p, generator=generator, dtype=dtype).to(device)


def pinv_apply(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A^+ x = (A^T A)^{-1} A^T x for a tall A of full column rank, in float64, without any
    n x n matrix."""
    p = A.shape[1]
    gram = torch.zeros(p, p, dtype=torch.float64, device=A.device)
    rhs = torch.zeros(p, dtype=torch.float64, device=A.device)
    for rows in iter_batches(A.shape[0], _GRAM_BLOCK_ROWS):
        block = A[rows].double()
        gram += block.T @ block
        rhs += block.T @ x[rows].double()
    return torch.linalg.solve(gram, rhs)


def keskar_sharpness(
    loss_fn: LossFn,
    x0: torch.Tensor,
    *,
    eps: float,
    A: torch.Tensor | None = None,
    iters: int = 10,
    seed: int = 0,
    tick: Callable[[], None] | None = None,
) -> float:
    """phi = (max_{y in C_eps} f(x0 + A y) - f(x0)) / (1 + f(x0)) * 100 (Keskar et al. 2016, eq. 4).

    C_eps = {y : |y_i| <= eps (|(A^+ x0)_i| + 1)}; A None is the identity (the full space).
    The maximum is sought by scipy's L-BFGS-B (``minimize_in_box``) on -f for ``iters``
    iterations, from a seeded point drawn uniformly in the box (at a stationary x0 the gradient
    at y = 0 would be zero and the search would not move). The largest f met at any evaluated
    point counts, and y = 0 belongs to the box, so phi >= 0. ``tick`` is called after each
    L-BFGS-B iteration.
    """
    if not (math.isfinite(eps) and eps >= 0):
        raise ConfigError(f"eps must be a non-negative number, got {eps}")
    if iters < 1:
        raise ConfigError(f"iters must be >= 1, got {iters}")
    loss = _terms(loss_fn)
    x0 = x0.detach()
    f0 = _value(loss, x0)
    center = x0 if A is None else pinv_apply(A, x0)
    bound = eps * (center.double().abs().cpu().numpy() + 1.0)
    start = np.random.default_rng(seed).uniform(-1.0, 1.0, size=bound.shape) * bound
    best = f0

    def negative_f(y: np.ndarray) -> tuple[float, np.ndarray]:
        nonlocal best
        step = torch.tensor(y, device=x0.device, dtype=x0.dtype)
        value, grad = _value_and_grad(loss, x0 + (step if A is None else A @ step))
        if math.isfinite(value):
            best = max(best, value)
        grad_y = grad if A is None else A.T @ grad
        return -value, -grad_y.double().cpu().numpy()

    # No tolerance stops: f and its changes are tiny at small eps, and the metric is defined
    # by the iteration count.
    minimize_in_box(negative_f, start, -bound, bound, iters=iters, callback=tick)
    return (best - f0) / (1.0 + f0) * 100.0


# --- Hessian spectrum and trace -----------------------------------------------------------


def hessian_top_eigenvalues(
    loss_fn: LossFn, x0: torch.Tensor, *, k: int = 1, iters: int = 20, seed: int = 0,
    tick: Callable[[], None] | None = None,
) -> list[float]:
    """The ``k`` largest eigenvalues of the Hessian of ``f`` at ``x0``, largest first.

    Lanczos with full re-orthogonalisation on Hessian-vector products: ``iters`` products
    (fewer when the Krylov space is exhausted, which can also leave fewer than ``k`` values),
    exact once ``iters`` reaches the dimension.
    The extreme eigenvalues converge much faster than with power iteration, at the memory cost
    of ``iters`` vectors of the parameters' size. ``tick`` is called after each product.
    """
    if k < 1 or iters < k:
        raise ConfigError(f"need 1 <= k <= iters, got k={k}, iters={iters}")
    loss = _terms(loss_fn)
    x0 = x0.detach()
    n = x0.numel()
    steps = min(iters, n)
    basis = torch.empty(steps, n, dtype=x0.dtype, device=x0.device)
    start = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    basis[0] = (start / start.norm()).to(basis)
    diagonal: list[float] = []
    off_diagonal: list[float] = []
    scale = 0.0
    for j in range(steps):
        w = _hvp(loss, x0, basis[j])
        if tick:
            tick()
        diagonal.append(float(w @ basis[j]))
        done = basis[: j + 1]
        for _ in range(2):  # twice is enough (Kahan): keeps the Ritz values free of ghosts
            w -= done.T @ (done @ w)
        beta = float(w.norm())
        scale = max(scale, abs(diagonal[-1]), beta)
        if j + 1 == steps or beta <= 1e-10 * scale:
            break
        off_diagonal.append(beta)
        basis[j + 1] = w / beta
    ritz = np.linalg.eigvalsh(
        np.diag(diagonal) + np.diag(off_diagonal, 1) + np.diag(off_diagonal, -1)
    )
    return sorted(ritz.tolist(), reverse=True)[:k]


def hutchinson_trace(
    loss_fn: LossFn, x0: torch.Tensor, *, samples: int = 100, seed: int = 0,
    tick: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """Hutchinson's estimate of tr(H) = E[z^T H z] with Rademacher z: (mean, standard error);
    ``tick`` is called after each probe."""
    if samples < 2:
        raise ConfigError(f"the trace needs at least 2 samples for an error bar, got {samples}")
    loss = _terms(loss_fn)
    x0 = x0.detach()
    generator = torch.Generator().manual_seed(seed)
    estimates = []
    for _ in range(samples):
        z = (torch.randint(0, 2, (x0.numel(),), generator=generator) * 2 - 1).to(x0)
        estimates.append(float(z @ _hvp(loss, x0, z)))
        if tick:
            tick()
    return statistics.fmean(estimates), statistics.stdev(estimates) / math.sqrt(samples)


# --- a trained network as f(x) ------------------------------------------------------------


def network_loss(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    inputs: InputSpec,
    *,
    batch_size: int = 1024,
    bn: str = "running",
) -> tuple[torch.Tensor, list[Term]]:
    """(x0, terms): the model's parameters as one flat vector, and f(x) = mean cross-entropy
    over the samples as one term per batch, with the model in eval mode.

    ``bn``: "running", BatchNorm normalises with its running statistics; "batch", with each
    batch's own (near-equal batches of at most ``batch_size``, so f depends on the partition,
    which is the samples' order and the batch size: both stated)."""
    model.eval()
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    buffers = dict(model.named_buffers())
    x0 = torch.cat([p.detach().reshape(-1) for _, p in named])
    count = labels.shape[0]

    def unflatten(x: torch.Tensor) -> dict[str, torch.Tensor]:
        out, offset = {}, 0
        for name, p in named:
            out[name] = x[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
        return out

    statistics = batch_statistics if bn == "batch" else _running_statistics

    def term(sel: slice) -> Term:
        def f(x: torch.Tensor) -> torch.Tensor:
            state = {**unflatten(x), **buffers}
            with statistics(model):
                logits = torch.func.functional_call(model, state, (inputs(images[sel]),))
            # at least float32, as in evaluation (a float64 model keeps its precision)
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            return F.cross_entropy(logits, labels[sel], reduction="sum") / count

        return f

    if bn not in SHARPNESS_BN:
        raise ConfigError(f"unknown BatchNorm convention {bn!r}; choose one of: "
                          f"{', '.join(SHARPNESS_BN)}")
    batches = even_batches(count, batch_size) if bn == "batch" else \
        iter_batches(count, batch_size)
    return x0, [term(sel) for sel in batches]


@contextlib.contextmanager
def _running_statistics(model: nn.Module) -> Iterator[None]:
    yield  # the model is in eval mode: BatchNorm reads its running statistics


BN_TEXT = {
    "running": "BatchNorm on the running statistics the run kept (eval mode)",
    "batch": "BatchNorm on each batch's own statistics (Keras BatchNormalization(mode=2), "
             "as in Keskar et al.'s code), near-equal batches of at most batch_size samples",
}


def sharpness_settings(spec: SharpnessSpec) -> dict[str, Any]:
    """The settings of ``spec`` in words, as stored in sharpness.json next to the spec."""
    return {
        "f": "mean training cross-entropy, dropout off, once per BatchNorm convention",
        "bn": {bn: BN_TEXT[bn] for bn in spec.bn},
        "gradient_norm": "Euclidean norm of the gradient of the mean cross-entropy at the "
                         "solution, per BatchNorm convention, over "
                         + ("the whole training set" if spec.gradient_samples is None else
                            f"{spec.gradient_samples} seeded training images"),
        "samples": spec.samples,
        "sample_selection": "seeded random subset of the training set, no augmentation",
        "seed": spec.seed,
        "batch_size": spec.batch_size,
        "eps": list(spec.eps),
        "subspaces": list(spec.subspaces),
        "iters": spec.iters,
        "maximiser": "scipy L-BFGS-B from a seeded uniform point in the box",
        "hessian": {"top_k": spec.top_k, "iters": spec.hessian_iters, "method": "lanczos"}
        if spec.hessian else None,
        "trace": {"samples": spec.trace_samples, "method": "hutchinson, rademacher"}
        if spec.trace else None,
    }


def run_sharpness(
    spec: SharpnessSpec,
    run_dir: str | Path,
    *,
    output: str | Path | None = None,
    device: str | torch.device | None = None,
    accelerator: Any = None,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Measure a finished run's sharpness as ``spec`` says; write and return sharpness.json.

    Written to ``output`` (default ``RUN/sharpness.json``) with the spec (under "spec") and
    its settings in words. Every measure is taken once per BatchNorm convention of
    ``spec.bn``: "sharpness" lists them all (each with its "bn"), "by_bn" holds each
    convention's f at the solution ("train_loss"), full-batch "gradient_norm", "hessian" and
    "trace"; the top-level "train_loss", "gradient_norm", "hessian" and "trace" are the first
    convention's. Under ``accelerate launch`` with several processes (``lbtkit sharpness
    --num-processes N``; an Accelerator is made when none is given) each process
    differentiates its share of the sample's batches (``SplitLoss``); the main process
    writes and returns the dict, the others return None.
    """
    from lbtkit.distributed import worker_accelerator

    with worker_accelerator(accelerator) as acc:
        rank, world = process_rank(acc)
        if acc is not None:
            device = acc.device
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, config = load_run(run_dir, device=device)
        measured: dict[str, Any] = {"sharpness": [], "by_bn": {}}
        for bn in spec.bn:
            x0, loss, count = _run_loss(spec, model, config, device, acc, bn=bn,
                                        samples=spec.samples)
            one = measure_sharpness(spec, loss, x0, progress=progress and rank == 0, bn=bn)
            measured["sharpness"] += one["sharpness"]
            _, full, _ = _run_loss(spec, model, config, device, acc, bn=bn,
                                   samples=spec.gradient_samples)
            measured["by_bn"][bn] = {
                "train_loss": _value(loss, x0),
                "gradient_norm": gradient_norm(full, x0),
                "hessian": one["hessian"], "trace": one["trace"]}
        first = measured["by_bn"][spec.bn[0]]
        results: dict[str, Any] = {
            "run": str(Path(run_dir).resolve()),
            "model": config.model,
            "dataset": config.dataset,
            "parameters": x0.numel(),
            "samples_used": count,
            "processes": world,
            "spec": spec.to_dict(),
            "settings": sharpness_settings(spec),
            **{key: first[key] for key in ("train_loss", "gradient_norm", "hessian", "trace")},
            **measured,
            "versions": versions(),
        }
    if rank != 0:
        return None
    write_json(Path(output) if output else RunDir(run_dir).root / "sharpness.json", results)
    return results


def _run_loss(spec: SharpnessSpec, model: nn.Module, config: Any, device: torch.device,
              accelerator: Any, *, bn: str, samples: int | None
              ) -> tuple[torch.Tensor, SplitLoss, int]:
    """(x0, f, samples): f the mean training cross-entropy over ``samples`` seeded training
    images (None: the whole training set, in its order) with BatchNorm as ``bn`` says, this
    process's share of its batches and the sum over processes."""
    data = load_dataset(config.dataset, config.data_dir, image_size=config.image_size,
                        num_classes=config.num_classes)
    n_train = data.train_labels.shape[0]
    if samples is None:
        chosen = torch.arange(n_train)
    else:
        generator = torch.Generator().manual_seed(spec.seed)
        chosen = torch.randperm(n_train, generator=generator)[:samples].sort().values
    images = data.train_images[chosen].to(device)
    labels = data.train_labels[chosen].to(device)
    inputs = InputSpec(data.info, config.image_size, config.channels_last)
    x0, terms = network_loss(model, images, labels, inputs, batch_size=spec.batch_size, bn=bn)
    if accelerator is None or accelerator.num_processes == 1:
        return x0, SplitLoss(terms), int(labels.shape[0])
    mine = shard(terms, accelerator.process_index, accelerator.num_processes)
    return x0, SplitLoss(mine, lambda t: accelerator.reduce(t, reduction="sum")), \
        int(labels.shape[0])


def measure_sharpness(spec: SharpnessSpec, loss_fn: LossFn, x0: torch.Tensor, *,
                      progress: bool = True, bn: str | None = None) -> dict[str, Any]:
    """{"sharpness": [{subspace, eps, phi, seconds}, ...], "hessian", "trace"} of f at x0;
    "hessian" and "trace" are None unless ``spec`` asks for them. ``bn``: the BatchNorm
    convention f was built with, recorded in each entry (and named in the progress lines)."""
    measured: dict[str, Any] = {"sharpness": [], "hessian": None, "trace": None}
    shown = _MeasureProgress(spec, enabled=progress)
    stage = f"sharpness (bn={bn})" if bn is not None and len(spec.bn) > 1 else "sharpness"
    tagged = {} if bn is None else {"bn": bn}
    for space in spec.subspaces:
        p = parse_subspace(space)
        A = None if p is None else random_subspace(x0.numel(), p, seed=spec.seed,
                                                   device=x0.device)
        for e in spec.eps:
            clock = time.monotonic()
            shown.stage(f"{stage}: {space} space, eps {e:g} ({spec.iters} L-BFGS-B "
                        f"iterations)")
            phi = keskar_sharpness(loss_fn, x0, eps=e, A=A, iters=spec.iters, seed=spec.seed,
                                   tick=shown.tick)
            measured["sharpness"].append({"subspace": space, "eps": e, **tagged, "phi": phi,
                                          "seconds": time.monotonic() - clock})
        del A
    if spec.hessian:
        clock = time.monotonic()
        shown.stage(f"{stage}: top {spec.top_k} Hessian eigenvalues "
                    f"({spec.hessian_iters} Lanczos products)")
        values = hessian_top_eigenvalues(loss_fn, x0, k=spec.top_k, iters=spec.hessian_iters,
                                         seed=spec.seed, tick=shown.tick)
        measured["hessian"] = {"top_eigenvalues": values, "seconds": time.monotonic() - clock}
    if spec.trace:
        clock = time.monotonic()
        shown.stage(f"{stage}: Hessian trace ({spec.trace_samples} Hutchinson probes)")
        mean, stderr = hutchinson_trace(loss_fn, x0, samples=spec.trace_samples,
                                        seed=spec.seed, tick=shown.tick)
        measured["trace"] = {"mean": mean, "stderr": stderr,
                             "seconds": time.monotonic() - clock}
    shown.close()
    return measured


class _MeasureProgress:
    """One progress display over every iteration, product and probe ``spec`` asks for (a
    bar on a terminal, about twenty plain lines in a log), and a line per stage."""

    def __init__(self, spec: SharpnessSpec, *, enabled: bool = True) -> None:
        total = (len(spec.subspaces) * len(spec.eps) * spec.iters
                 + (spec.hessian_iters if spec.hessian else 0)
                 + (spec.trace_samples if spec.trace else 0))
        self.done = 0
        self.display = TrainingProgress(total_steps=total, done_steps=0,
                                        log_every=max(1, total // 20),
                                        description="sharpness", unit="evaluation",
                                        enabled=enabled)

    def stage(self, text: str) -> None:
        self.display.message(text)

    def tick(self) -> None:
        self.done += 1
        self.display.step(self.done, lambda: "")

    def close(self) -> None:
        self.display.close()
