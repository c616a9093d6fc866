"""The gradient noise scale of McCandlish et al. (2018), "An Empirical Model of Large-Batch
Training": B_simple = tr(Sigma) / |G|^2, the batch size at which the gradient noise is as large
as the gradient itself (roughly where larger batches stop paying off).

What is estimated. The training set is N samples with per-sample gradients g_1..g_N. G is
their mean, the full-data gradient of the N training samples (not the gradient of the
distribution they were drawn from), and Sigma their covariance with divisor N, i.e. the
covariance of the gradient of ONE uniformly drawn training sample. |G|^2, tr(Sigma) and
B_simple refer to these N samples at the weights measured.

The paper (its appendix A.1) takes G_B, the mean gradient of B samples drawn independently (with
replacement), for which E|G_B|^2 = |G|^2 + tr(Sigma) / B. lbtkit's batches are B DISTINCT
samples, as in training (a slice of a permutation), and then the finite-population correction
applies: E|G_B|^2 = |G|^2 + tr(Sigma) * c(B) with

    c(B) = (1/B - 1/N) * N / (N - 1)        (c(B) -> 1/B as N -> infinity; c(N) = 0)

Measuring |G_B|^2 at a small and a big batch and solving the two expectations gives the
unbiased estimators

    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (c(B_small) - c(B_big))
    |G|^2     ~ (c(B_small) |G_big|^2 - c(B_big) |G_small|^2) / (c(B_small) - c(B_big))

which are the paper's with 1/B replaced by c(B). Without it (the paper's formulas applied to
distinct-sample batches), the expectations are tr(Sigma) * N/(N-1) and |G|^2 - tr(Sigma)/(N-1):
B_simple comes out too high by the factor (N/(N-1)) / (1 - B_simple/(N-1)), about
1 + B_simple/N, however many batches are averaged (so no standard error covers it).

Why correct rather than draw with replacement (which would make the paper's formulas exact):
batches with repeated samples are not what training sees (nor are BatchNorm statistics over
them), and the monitor below cannot choose its batches at all, they are training's own. The
correction is exact for both and costs nothing.

Two ways to get the two norms:

- ``measure_noise_scale``: at a trained model (``lbtkit noise-scale RUN``), averaging |G_B|^2
  over random batches of each size.
- ``NoiseScaleMonitor``: during multi-process training at almost no cost. Each process's own
  gradient (its per-process batch, ``per_device * accum`` samples) is the small batch and the
  all-reduced average (the global batch) is the big one. A DDP communication hook reads the
  local gradient just before DDP averages it. Both are slices of the epoch's permutation of
  the N training samples, i.e. distinct samples: the same correction applies (``population``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lbtkit.distributed import process_rank, shard
from lbtkit.errors import CheckpointError, ConfigError
from lbtkit.specs import NoiseScaleSpec

NOISE_SCALE_FILE = "noise_scale.json"
# Keys of the metrics.jsonl rows (None when the run does not log the noise scale).
ROW_KEYS = ("noise_scale", "noise_grad_sq", "noise_trace_sigma")

LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


# --- the estimators ------------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseScaleEstimate:
    """Estimates of |G|^2, tr(Sigma) and their ratio B_simple.

    ``b_simple`` is None when either estimate is not positive (or not finite). Each is a
    difference of two noisy measurements: |G|^2 <= 0 means the true gradient is too small to
    resolve against the noise at these batch sizes (B_simple is beyond what they can measure),
    and tr(Sigma) <= 0 means the noise is below resolution. A ratio there would be a negative or
    infinite "batch size", which a plot or a moving average would silently take at face value;
    None says "not measurable" and stays valid JSON. The two raw estimates are kept as they are
    so that smoothing or pooling them later stays unbiased.
    """

    grad_sq: float
    trace_sigma: float
    b_simple: float | None

    @classmethod
    def from_values(cls, grad_sq: float, trace_sigma: float) -> NoiseScaleEstimate:
        measurable = (math.isfinite(grad_sq) and math.isfinite(trace_sigma)
                      and grad_sq > 0 and trace_sigma > 0)
        return cls(float(grad_sq), float(trace_sigma),
                   trace_sigma / grad_sq if measurable else None)

    def to_dict(self) -> dict[str, float | None]:
        return dataclasses.asdict(self)


def check_batch_sizes(b_small: int, b_big: int) -> None:
    """ConfigError unless 0 < b_small < b_big (both whole numbers)."""
    for name, value in (("b_small", b_small), ("b_big", b_big)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive whole number, got {value!r}")
    if b_small >= b_big:
        raise ConfigError(
            f"the small batch must be smaller than the big one, got b_small {b_small} and "
            f"b_big {b_big}"
        )


def check_population(population: int | None, b_big: int) -> None:
    """ConfigError unless ``population`` is None or a whole number of at least 2 and b_big."""
    if population is None:
        return
    if isinstance(population, bool) or not isinstance(population, int) or population < 2:
        raise ConfigError(f"population must be a whole number >= 2, got {population!r}")
    if b_big > population:
        raise ConfigError(
            f"batch size {b_big} is larger than the population of {population} samples"
        )


def noise_factor(batch_size: int, population: int | None) -> float:
    """c(B): E|G_B|^2 = |G|^2 + tr(Sigma) * c(B) for a batch of ``batch_size`` distinct
    samples of ``population`` (the finite-population correction); 1/B for None (independent
    draws, or an unbounded population)."""
    if population is None:
        return 1.0 / batch_size
    return (1.0 / batch_size - 1.0 / population) * population / (population - 1)


def _unbiased(b_small: int, small: Any, b_big: int, big: Any,
              population: int | None) -> tuple[Any, Any]:
    """(|G|^2, tr(Sigma)) from mean squared gradient norms; works on floats and tensors alike."""
    c_small, c_big = noise_factor(b_small, population), noise_factor(b_big, population)
    grad_sq = (c_small * big - c_big * small) / (c_small - c_big)
    trace_sigma = (small - big) / (c_small - c_big)
    return grad_sq, trace_sigma


def estimate_noise_scale(
    b_small: int, grad_sq_small: float, b_big: int, grad_sq_big: float,
    *, population: int | None = None,
) -> NoiseScaleEstimate:
    """Unbiased estimates from E|G_B|^2 measured at two batch sizes: batches of distinct
    samples of a training set of ``population`` samples, or, for None, the paper's independent
    draws (see the module docstring)."""
    check_batch_sizes(b_small, b_big)
    check_population(population, b_big)
    for name, value in (("grad_sq_small", grad_sq_small), ("grad_sq_big", grad_sq_big)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ConfigError(f"{name} must be a finite squared norm >= 0, got {value!r}")
    return NoiseScaleEstimate.from_values(
        *_unbiased(b_small, float(grad_sq_small), b_big, float(grad_sq_big), population)
    )


# --- measuring at a fixed model ------------------------------------------------------------


@dataclass(frozen=True)
class GradientSq:
    """The mean of |G_B|^2 over ``draws`` random batches of ``batch_size``, and its standard
    error (sample std / sqrt(draws); None for one draw)."""

    batch_size: int
    draws: int
    mean: float
    std_error: float | None


@dataclass(frozen=True)
class NoiseScaleMeasurement:
    """Both measured norms, the estimate, and the estimate's standard errors (propagated from
    the two independent means through the linear estimators). ``population`` is the number of
    samples the batches were drawn from (the estimates refer to their full-data gradient)."""

    small: GradientSq
    big: GradientSq
    estimate: NoiseScaleEstimate
    grad_sq_std_error: float | None
    trace_sigma_std_error: float | None
    b_simple_std_error: float | None = None
    population: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def batch_gradient_sq(model: torch.nn.Module, data: torch.Tensor, targets: torch.Tensor,
                      idx: torch.Tensor, *, loss_fn: LossFn, chunk_size: int) -> float:
    """|grad of the mean loss over ``data[idx]``|^2, in float64.

    ``loss_fn(model, data[sel], targets[sel])`` returns the mean loss of a chunk. The batch runs
    in chunks of at most ``chunk_size`` samples (memory; and with BatchNorm, the group of
    samples the statistics are taken over), each chunk's loss weighted by its share of the
    batch. Gradients go through ``torch.autograd.grad``: ``.grad`` of the parameters is left
    alone. The model is used in whatever mode it is in.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    size = idx.shape[0]
    for start in range(0, size, chunk_size):
        sel = idx[start:start + chunk_size]
        loss = loss_fn(model, data[sel], targets[sel]) * (sel.shape[0] / size)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for acc, g in zip(total, grads, strict=True):
            if g is not None:
                acc += g.double()
    return sum(float(t.square().sum()) for t in total)


def draw_batches(n: int, batch_sizes: Sequence[int], draws: int,
                 generator: torch.Generator) -> list[torch.Tensor]:
    """``draws`` batches of each size in ``batch_sizes``, in that order: each batch
    ``batch_size`` distinct indices of ``range(n)`` (no replacement within a batch; the
    batches are independent draws)."""
    for size in batch_sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"batch size must be a positive whole number, got {size!r}")
        if size > n:
            raise ConfigError(f"batch size {size} is larger than the data ({n} samples)")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ConfigError(f"draws must be a positive whole number, got {draws!r}")
    return [torch.randperm(n, generator=generator)[:size]
            for size in batch_sizes for _ in range(draws)]


def draw_seed(seed: int, draw: int) -> int:
    """The torch seed (dropout masks) of batch number ``draw``: one per batch, so a batch's
    gradient does not depend on which process computes it, or after which other batch."""
    return int(np.random.SeedSequence((seed, draw)).generate_state(1)[0])


def gradient_sq(values: Sequence[float], batch_size: int) -> GradientSq:
    """The mean of the squared norms ``values`` and its standard error."""
    mean = statistics.fmean(values)
    # statistics.stdev fails on NaN/inf (AttributeError in 3.11): no error bar for them
    spread = len(values) > 1 and all(math.isfinite(v) for v in values)
    error = statistics.stdev(values) / math.sqrt(len(values)) if spread else None
    return GradientSq(batch_size, len(values), mean, error)


def measure_noise_scale(
    model: torch.nn.Module,
    data: torch.Tensor,
    targets: torch.Tensor,
    *,
    batch_sizes: tuple[int, int],
    draws: int,
    loss_fn: LossFn,
    seed: int = 0,
    chunk_size: int | None = None,
    accelerator: Any = None,
) -> NoiseScaleMeasurement:
    """Measure E|G_B|^2 over ``draws`` batches at each of two batch sizes and estimate the
    noise scale of the ``len(targets)`` samples given (batches are distinct samples of them:
    the finite-population estimators).

    The model runs in train mode, as in training: dropout is active and BatchNorm normalises
    with batch statistics, so the noise measured is the noise the optimizer saw. Its BatchNorm
    running buffers (and every other buffer) are restored afterwards and its mode too, so the
    model is unchanged. ``chunk_size`` (default: the small batch) is the largest forward pass;
    it is the same for both batch sizes so that BatchNorm groups, and hence the per-sample
    gradient distribution, are the same in both measurements, as the estimators assume.
    ``seed`` fixes the batches and the dropout masks (the global RNG is left as it was).
    With an ``accelerator`` of several processes each takes every world-th batch and all
    return the same measurement, equal to one process's: every process draws every batch's
    indices from the one seeded sequence, and each batch has its own dropout seed.
    """
    b_small, b_big = batch_sizes
    check_batch_sizes(b_small, b_big)
    chunk = b_small if chunk_size is None else chunk_size
    if chunk < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    n = targets.shape[0]
    batches = draw_batches(n, (b_small, b_big), draws, torch.Generator().manual_seed(seed))
    rank, world = process_rank(accelerator)
    values = _measure_batches(model, data, targets, batches, shard(range(len(batches)), rank,
                                                                   world),
                              loss_fn=loss_fn, chunk_size=chunk, seed=seed)
    if world > 1:
        from accelerate.utils import gather_object

        values = dict(gather_object(list(values.items())))
    small = gradient_sq([values[i] for i in range(draws)], b_small)
    big = gradient_sq([values[i] for i in range(draws, 2 * draws)], b_big)
    return _measurement(small, big, n)


def _measure_batches(model: torch.nn.Module, data: torch.Tensor, targets: torch.Tensor,
                     batches: list[torch.Tensor], mine: Sequence[int], *, loss_fn: LossFn,
                     chunk_size: int, seed: int) -> dict[int, float]:
    """{batch number: squared gradient norm} for the batches numbered ``mine``, in train
    mode, the model's buffers, mode and the global RNG restored afterwards."""
    buffers = list(model.buffers())
    saved = [b.detach().clone() for b in buffers]
    was_training = model.training
    devices = [targets.device] if targets.device.type == "cuda" else []
    model.train()
    values: dict[int, float] = {}
    try:
        with torch.random.fork_rng(devices=devices):
            for i in mine:
                torch.manual_seed(draw_seed(seed, i))
                values[i] = batch_gradient_sq(model, data, targets,
                                              batches[i].to(targets.device), loss_fn=loss_fn,
                                              chunk_size=chunk_size)
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved, strict=True):
                buffer.copy_(value)
        model.train(was_training)
    return values


def _measurement(small: GradientSq, big: GradientSq, n: int) -> NoiseScaleMeasurement:
    """The estimate from the two measured means, with standard errors propagated."""
    b_small, b_big = small.batch_size, big.batch_size
    estimate = estimate_noise_scale(b_small, small.mean, b_big, big.mean, population=n)
    grad_error = trace_error = ratio_error = None
    if small.std_error is not None and big.std_error is not None:
        c_small, c_big = noise_factor(b_small, n), noise_factor(b_big, n)
        grad_error = math.hypot(c_small * big.std_error, c_big * small.std_error) / (
            c_small - c_big)
        trace_error = math.hypot(small.std_error, big.std_error) / (c_small - c_big)
        ratio_error = b_simple_std_error(b_small, small.std_error, b_big, big.std_error,
                                         estimate, population=n)
    return NoiseScaleMeasurement(small, big, estimate, grad_error, trace_error, ratio_error,
                                 population=n)


def b_simple_std_error(b_small: int, small_error: float, b_big: int, big_error: float,
                       estimate: NoiseScaleEstimate, *,
                       population: int | None = None) -> float | None:
    """First-order (delta-method) standard error of B_simple = T/G from the standard errors
    of the two independent means; None when B_simple is not measurable.

    With c_s = c(B_small), c_b = c(B_big) (``noise_factor``) and k = c_s - c_b, the estimators
    are T = (s - b)/k and G = (c_s b - c_b s)/k in the mean norms s, b, so
    dB/ds = (G + T c_b) / (k G^2) and dB/db = -(G + T c_s) / (k G^2).
    """
    if estimate.b_simple is None:
        return None
    g, t = estimate.grad_sq, estimate.trace_sigma
    c_small, c_big = noise_factor(b_small, population), noise_factor(b_big, population)
    k = c_small - c_big
    d_small = (g + t * c_big) / (k * g * g)
    d_big = -(g + t * c_small) / (k * g * g)
    return math.hypot(d_small * small_error, d_big * big_error)


def default_output(run_dir: str | Path, weights: str | Path | None = None) -> Path:
    """RUN/noise_scale.json for the final weights (named or not); RUN/noise_scale-LABEL.json
    for others, so that measurements at several points of training sit side by side (LABEL:
    a checkpoint's folder name, e.g. step-000000440, else the weights file's stem)."""
    run = Path(run_dir)
    if weights is None or Path(weights).resolve() == (run / "model.safetensors").resolve():
        return run / NOISE_SCALE_FILE
    weights = Path(weights)
    label = weights.parent.name if weights.name == "model.safetensors" else weights.stem
    return run / f"noise_scale-{label}.json"


def run_noise_scale(
    spec: NoiseScaleSpec, run_dir: str | Path, *, output: str | Path | None = None,
    accelerator: Any = None, weights: str | Path | None = None,
) -> dict[str, Any] | None:
    """Measure the noise scale of a finished run's final weights on its un-augmented training
    images (cross-entropy, as trained) as ``spec`` says; write it, with the spec (under "spec")
    and everything else that determines the numbers, to ``output`` (default
    RUN/noise_scale.json) and return that dict. ``weights``: a weights file of the run's model
    to measure at instead (e.g. its initial weights: the noise scale grows during training).

    Under ``accelerate launch`` with several processes (``lbtkit noise-scale
    --num-processes N``; an Accelerator is made when none is given) the batches are shared
    out and the numbers are those of one process; the main process writes and returns the
    dict, the others return None.
    """
    from lbtkit.distributed import worker_accelerator
    from lbtkit.fileio import write_json

    with worker_accelerator(accelerator) as acc:
        result = _noise_scale_of_run(spec, run_dir, acc, weights)
        if acc is not None and not acc.is_main_process:
            return None
    path = Path(output) if output is not None else default_output(run_dir, weights)
    write_json(path, result)
    result["path"] = str(path)
    return result


def _noise_scale_of_run(spec: NoiseScaleSpec, run_dir: str | Path, accelerator: Any,
                        weights: str | Path | None) -> dict[str, Any]:
    from lbtkit.checkpoint import load_weights
    from lbtkit.data import hold_out, load_dataset
    from lbtkit.evaluate import InputSpec
    from lbtkit.run_model import load_run
    from lbtkit.rundir import RunDir, versions

    run = RunDir(run_dir)
    device = (accelerator.device if accelerator is not None
              else torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    # Final weights only: a checkpoint of an unfinished run would need the loop's own restore.
    model, config = load_run(run.root, device=str(device))
    weights = run.model_path if weights is None else Path(weights)
    if weights != run.model_path:
        load_weights(model, weights)
    _require_finite(model, weights)
    b_small, b_big = spec.batch_sizes
    draws, seed = spec.draws, spec.seed
    data = load_dataset(config.dataset, config.data_dir, image_size=config.image_size,
                        num_classes=config.num_classes)
    if config.val_split:  # the run's own training split: validation held out
        data = hold_out(data, config.val_split)
    data = data.to(device)
    n_train = data.train_labels.shape[0]
    if b_big > n_train:
        raise ConfigError(f"batch size {b_big} is larger than the training set "
                          f"({n_train} samples of {config.dataset})")
    inputs = InputSpec(data.info, config.image_size, config.channels_last)

    def cross_entropy(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor):
        return F.cross_entropy(net(inputs(images)).float(), labels)

    chunk = b_small if spec.chunk_size is None else spec.chunk_size
    measured = measure_noise_scale(
        model, data.train_images, data.train_labels, batch_sizes=(b_small, b_big),
        draws=draws, loss_fn=cross_entropy, seed=seed, chunk_size=chunk,
        accelerator=accelerator,
    )
    return {
        "run": str(run.root.resolve()),
        "weights": str(weights) if weights != run.model_path else weights.name,
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "spec": spec.to_dict(),
        **measured.estimate.to_dict(),
        "grad_sq_std_error": measured.grad_sq_std_error,
        "trace_sigma_std_error": measured.trace_sigma_std_error,
        "b_simple_std_error": measured.b_simple_std_error,
        "batches": {"small": dataclasses.asdict(measured.small),
                    "big": dataclasses.asdict(measured.big)},
        "population": n_train,
        "settings": {
            "batch_sizes": [b_small, b_big], "draws": draws, "seed": seed,
            "chunk_size": chunk, "device": device.type,
            "processes": process_rank(accelerator)[1],
            "data": f"{config.dataset} training set without augmentation; each batch is "
                    "distinct samples (no replacement), batches are independent draws",
            "estimator": "finite-population: E|G_B|^2 = |G|^2 + tr(Sigma) (1/B - 1/N) N/(N-1), "
                         "G the mean gradient of the N training samples, Sigma their "
                         "covariance (divisor N)",
            "loss": "mean cross-entropy over the batch (float32 logits)",
            "mode": "train mode (dropout on, BatchNorm batch statistics over each chunk); "
                    "running statistics restored afterwards",
        },
        "versions": versions(),
    }


def _require_finite(model: torch.nn.Module, weights: Path) -> None:
    """Refuse weights holding NaN or inf (a diverged run's): no gradient to measure there."""
    bad = [name for name, tensor in model.state_dict().items()
           if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise ConfigError(f"weights {weights} hold NaN or inf in {len(bad)} tensor(s) (first: "
                          f"{bad[0]}); the noise scale is measured at finite weights only")


# --- logging during multi-process training -------------------------------------------------


# No annotations: DDP compares them with real types, and this module's are strings.
def _record_and_allreduce(monitor, bucket):
    """DDP communication hook: add the LOCAL gradient's squared norm, then average as usual.

    With a hook registered, DDP hands the bucket over undivided (torch's ``allreduce_hook``
    divides by the world size itself), so ``bucket.buffer()`` is this process's gradient: under
    ``no_sync`` accumulation, the sum of the micro-batch gradients of ``loss / accum``, i.e. the
    mean gradient of the per-process batch.

    Squared norms are kept per parameter, in a slot of their own, and summed in parameter order
    in ``step()``: DDP regroups its buckets after the first step, so per-bucket sums would
    round differently in a resumed run than in an uninterrupted one. Each synced backward pass
    overwrites every slot, so a step with two of them (SAM) measures the last one, the one
    whose average is in ``.grad``.
    """
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    params = bucket.parameters()
    key = tuple(id(p) for p in params)
    slots = monitor._bucket_slots.get(key)
    if slots is None:
        slots = torch.tensor([monitor._slot_of[id(p)] for p in params],
                             device=monitor._local_parts.device)
        monitor._bucket_slots[key] = slots
    monitor._local_parts.index_copy_(0, slots, _squared_norms(bucket.gradients()))
    return allreduce_hook(monitor.process_group, bucket)


def _squared_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Each tensor's squared L2 norm, in float64, in one fused kernel per device and dtype
    (``torch._foreach_norm`` is what ``torch.nn.utils.get_total_norm`` uses)."""
    return torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float64)).square()


class NoiseScaleMonitor:
    """Per-step noise-scale estimates during DDP training, smoothed, with no host sync per step.

    Create it on the DDP-wrapped model before the first forward pass (it registers a comm hook:
    DDP allows one, so this cannot be combined with another hook), call ``step()`` after the
    last backward pass of each optimizer step and before ``optimizer.step()`` / ``zero_grad``,
    and ``estimate()`` or ``noise_scale_row()`` (collective) when logging.

    Per step, with b_small = per-process batch and b_big = global batch, the unbiased estimates
    of |G|^2 and tr(Sigma) from this process's |G_small|^2 and the shared |G_big|^2 go into
    exponential moving averages (decay ``decay`` per step, bias-corrected as Adam does) of each
    quantity separately. ``population`` is the training set size N: each step's global batch is
    distinct samples of the epoch's permutation and each process's share a slice of it, so
    both are uniformly drawn distinct samples and the finite-population factor c(B) applies
    (None: the paper's 1/B); B_simple is the ratio of the two averages, as the paper advises (a
    ratio of noisy per-step values would be biased and heavy-tailed). Steps with a non-finite
    norm (an fp16 overflow step that the scaler skips) leave the averages unchanged.

    Where the cross-process reduce happens: nowhere per step. The per-step estimates are linear
    in |G_small|^2, and a moving average is linear, so the average over processes of each
    process's own moving averages equals the moving average of the process-averaged estimates.
    Each process therefore keeps its own averages on its device, and ``estimate()`` all-reduces
    three numbers once per logged epoch. A checkpoint stores every process's averages (one tiny
    all-gather at save time), so a resumed run on the same number of processes logs the same
    values bit for bit.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        b_small: int,
        b_big: int,
        decay: float,
        population: int | None = None,
        state: dict[str, Any] | None = None,
        scaler: Any = None,
    ) -> None:
        import torch.distributed as dist

        check_batch_sizes(b_small, b_big)
        check_population(population, b_big)
        if not 0 <= decay < 1:
            raise ConfigError(f"noise_scale_ema must be in [0, 1), got {decay}")
        ddp = _find_ddp(model)
        self.b_small, self.b_big, self.decay = b_small, b_big, decay
        self.population = population
        self.process_group = ddp.process_group
        self.rank = dist.get_rank(self.process_group)
        self.world_size = dist.get_world_size(self.process_group)
        self._params = [p for p in ddp.parameters() if p.requires_grad]
        device = self._params[0].device
        # The hook's per-parameter squared norms of this process's gradient (see the hook).
        self._slot_of = {id(p): i for i, p in enumerate(self._params)}
        self._bucket_slots: dict[tuple[int, ...], torch.Tensor] = {}
        self._local_parts = torch.zeros(len(self._params), dtype=torch.float64, device=device)
        # [EMA of |G|^2, EMA of tr(Sigma), EMA of 1 (the bias-correction weight, 1 - decay^t)]
        self._ema = torch.zeros(3, dtype=torch.float64, device=device)
        self._scaler = scaler  # fp16: gradients are multiplied by the loss scale until step()
        if state is not None:
            self.load_state_dict(state)
        ddp.register_comm_hook(self, _record_and_allreduce)

    @torch.no_grad()
    def step(self) -> None:
        """Fold this step into the averages; ``.grad`` must hold the averaged gradient."""
        grads = [p.grad for p in self._params if p.grad is not None]
        big = _squared_norms(grads).sum()
        small = self._local_parts.sum()
        scale = getattr(self._scaler, "_scale", None)
        if isinstance(scale, torch.Tensor):  # undo the loss scale, on the device (no sync)
            factor = scale.double().square()
            big, small = big / factor, small / factor
        grad_sq, trace_sigma = _unbiased(self.b_small, small, self.b_big, big, self.population)
        values = torch.stack((grad_sq, trace_sigma, torch.ones_like(grad_sq)))
        updated = self._ema * self.decay + values * (1.0 - self.decay)
        self._ema.copy_(torch.where(torch.isfinite(values).all(), updated, self._ema))

    def estimate(self) -> NoiseScaleEstimate | None:
        """The smoothed estimate over all processes (collective); None before any step."""
        import torch.distributed as dist

        total = self._ema.clone()
        dist.all_reduce(total, group=self.process_group)
        grad_sq, trace_sigma, weight = total.tolist()
        if not weight > 0:
            return None
        # Every process has the same weight: the sums over processes divided by the summed
        # weight are the process-averaged, bias-corrected moving averages.
        return NoiseScaleEstimate.from_values(grad_sq / weight, trace_sigma / weight)

    def state_dict(self) -> dict[str, Any]:
        """Every process's averages (collective: all processes call it, e.g. in a checkpoint)."""
        import torch.distributed as dist

        gathered = [torch.zeros_like(self._ema) for _ in range(self.world_size)]
        dist.all_gather(gathered, self._ema, group=self.process_group)
        return {"b_small": self.b_small, "b_big": self.b_big, "decay": self.decay,
                "population": self.population, "ema_per_rank": [g.tolist() for g in gathered]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore this process's averages. On another number of processes, every process
        takes their mean: the logged values continue, no longer bit for bit."""
        per_rank = ema_rows(state, self._ema.numel())
        if len(per_rank) == self.world_size:
            mine = per_rank[self.rank]
        else:
            mine = [statistics.fmean(column) for column in zip(*per_rank, strict=True)]
        self._ema.copy_(torch.tensor(mine, dtype=torch.float64))


def ema_rows(state: Any, width: int) -> list[list[float]]:
    """The per-process moving averages of a checkpoint's noise-scale state: one row of
    ``width`` finite numbers per process; anything else is a damaged checkpoint (one line)."""
    rows = state.get("ema_per_rank") if isinstance(state, dict) else None

    def finite(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value)

    if not (isinstance(rows, list) and rows and all(
            isinstance(row, list) and len(row) == width and all(map(finite, row))
            for row in rows)):
        raise CheckpointError(f"the checkpoint's noise-scale state is damaged (ema_per_rank "
                              f"{rows!r:.60}); delete its checkpoint directory to resume from "
                              f"an earlier one")
    return rows


def noise_scale_row(monitor: NoiseScaleMonitor | None) -> dict[str, float | None]:
    """``{noise_scale, noise_grad_sq, noise_trace_sigma}`` for an epoch row; all None without
    a monitor (collective with one)."""
    estimate = monitor.estimate() if monitor is not None else None
    if estimate is None:
        return dict.fromkeys(ROW_KEYS)
    return {"noise_scale": estimate.b_simple, "noise_grad_sq": estimate.grad_sq,
            "noise_trace_sigma": estimate.trace_sigma}


def last_logged_noise_scale(rows: Sequence[dict[str, Any]]) -> float | None:
    """The most recent finite ``noise_scale`` of metrics rows (None when there is none)."""
    for row in reversed(rows):
        value = row.get("noise_scale")
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value):
            return float(value)
    return None


def _find_ddp(model: torch.nn.Module):
    """The DistributedDataParallel module in ``model`` (it may sit inside torch.compile)."""
    from torch.nn.parallel import DistributedDataParallel

    for candidate in (model, getattr(model, "_orig_mod", None)):
        if isinstance(candidate, DistributedDataParallel):
            return candidate
    raise ConfigError(
        "log_noise_scale needs a DistributedDataParallel model (2 or more processes); "
        f"got {type(model).__name__}"
    )
