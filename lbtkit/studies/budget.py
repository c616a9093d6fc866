"""How long a Fashion-MNIST study should take: the budget arithmetic, as code.

Every cost is in seconds of one CPU thread, measured for F1 on Fashion-MNIST on the project's
2-core development machine (``bench/fashion_epochs.py``, results in
``bench/results/fashion_epochs*.json``: CPU seconds per training epoch of 60,000 images,
one thread, seed 0):

    batch 32: 29.6 s   batch 256: 6.9 s   batch 6000: 5.6 s   batch 8192: 5.6 s

A training epoch is modelled as a per-image cost plus a per-optimizer-step cost, fitted to the
batch-32 and batch-256 figures (0.0138 s per step), with the large-batch figure as the floor of
the per-image part (5.6 s), which over-estimates batch 256 by about 25%:

    epoch(b) = 5.6 + 0.0138 * 60000 / b

Evaluating the 60,000 training images took 1.7-2.2 s on an idle machine, i.e. about 3.5e-5 s
per image forward (the eval-mode stopping rule pays it after every epoch); a gradient (forward
and backward, no optimizer) is costed at 8e-5 s per image and a Hessian-vector product at
three gradients. Sharpness, measured on an F1 solution with 4,096 images: 10 L-BFGS-B
iterations in the full space took 12 evaluations; the L-BFGS-B step itself costs 0.31 s per
iteration at 1.46M variables (``bench/lbfgsb_box.py``). Every measure is taken under both
BatchNorm conventions, each with the full-batch gradient norm (60,000 images). The study runs
in one process with one torch thread (two threads were measured 3-7 times SLOWER per epoch
than one while other processes held the cores: OpenMP threads spin-wait), so these CPU
seconds are wall seconds on a machine with one free core.

``FULL`` (5 seeds), expected (``estimate(FULL, epochs=EXPECTED_EPOCHS)``, SB 39 and LB 32
epochs to 99% eval-mode training accuracy, as measured at seed 0):

    per seed: SB 39 x (8.8 train + 2.1 train-set eval + 0.35 test + 0.2 checkpoint) + 5
              LB 32 x (5.7 + 2.1 + 0.35 + 0.2) + 5                                 ~ 726 s
              interpolation: (25 + 8 refined) alphas x 80,000 images x 3.5e-5       ~  92 s
              sharpness, 2 sides x 2 conventions x (4 boxes x 10 iterations
                + 20 Lanczos steps + a full-batch gradient)                         ~ 247 s
              together                                                             ~ 1,066 s
    5 seeds                                                                        ~ 5,329 s
    sweep: 9 runs of 10 epochs, sum of (epoch(b) + 0.55) x 10 + 5                  ~ 1,114 s
    noise scale, initial and final weights                                         ~  78 s
    total                                                                          ~ 6,528 s

i.e. about 109 minutes of one core: the study no longer fits the hour in one process. The
Keskar seeds are independent, so two processes (the seeds split over the 2 cores, the sweep
likewise) would bring it to about 55 minutes; that is the whole-machine work, not done here.
The cap (100 epochs, ``estimate(FULL)``: 12,881 s) is a safety net at 2.5 times the measured
epochs, not a plan. EXPECTED_EPOCHS was measured by ``bench/fashion_epochs.py --target 0.99``
at seed 0 (``bench/results/fashion_epochs_to99_b256.json``, ``..._b6000.json``): batch 256
reached 99.13% at epoch 39, batch 6000 99.29% at epoch 32 (eval-mode accuracy is noisy under
Adam's constant lr: batch 256 was at 97-98.6% from epoch 19 to 38). Other seeds will differ
by a few epochs. ``tests/test_fashion_study.py`` checks these sums and that
``estimate(QUICK)`` stays small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from lbtkit.specs import FashionStudySpec, parse_subspace

TRAIN_IMAGES = 60_000
TEST_IMAGES = 10_000
PARAMETERS = 1_462_538  # F1 for 28x28 images, 10 classes

IMAGE_FLOOR_S = 5.6  # per epoch, the per-image part (batch 6000/8192 measured)
STEP_S = 0.0138  # per optimizer step, fitted to batch 32 vs 256
FORWARD_S = 3.5e-5  # per image, evaluation
GRADIENT_S = 8e-5  # per image, forward + backward
HVP_GRADIENTS = 3  # a Hessian-vector product costs about three gradients
LBFGS_EVALUATIONS = 1.2  # evaluations per L-BFGS-B iteration (12 in 10 iterations, measured)
# per variable and iteration: the L-BFGS-B step itself, lbtkit.landscape.lbfgsb at 1.46M
# variables: 0.94 s per 3-iteration call (bench/lbfgsb_box.py, bench/results/lbfgsb_box.json;
# scipy's minimize took 7.24 s)
LBFGS_STEP_S = 2.2e-7
SUBSPACE_EVAL_S = 2e-9  # per parameter x dimension: A @ y and A.T @ g per evaluation
PINV_S = 4e-11  # per parameter x dimension^2: A^T A in float64, once per box
RUN_OVERHEAD_S = 5.0  # load the data, build the model, write the final files
CHECKPOINT_S = 0.2  # per epoch
# (SB, LB) epochs to 99% eval-mode training accuracy, measured at seed 0 (above).
EXPECTED_EPOCHS = (39, 32)


def epoch_seconds(batch_size: int) -> float:
    """One training epoch of F1 on the 60,000 images at ``batch_size``, one thread."""
    return IMAGE_FLOOR_S + STEP_S * (TRAIN_IMAGES // batch_size)


def run_seconds(batch_size: int, epochs: int, *, eval_train: bool = False) -> float:
    """A run of ``epochs`` epochs, each followed by the validation pass and a checkpoint, and
    with ``eval_train`` (an eval-mode stopping rule) a pass over the training set."""
    per_epoch = epoch_seconds(batch_size) + TEST_IMAGES * FORWARD_S + CHECKPOINT_S
    if eval_train:
        per_epoch += TRAIN_IMAGES * FORWARD_S
    return RUN_OVERHEAD_S + epochs * per_epoch


def interpolation_seconds(spec: FashionStudySpec) -> float:
    interp = spec.interpolation
    bn = TRAIN_IMAGES if interp.bn_samples is None else min(interp.bn_samples, TRAIN_IMAGES)
    evaluated = (TRAIN_IMAGES if "train" in interp.splits else 0) + \
        (TEST_IMAGES if "test" in interp.splits else 0)
    return (len(interp.alphas) + interp.refine) * (bn + evaluated) * FORWARD_S


def sharpness_seconds(spec: FashionStudySpec) -> float:
    """One solution's sharpness measures and Lanczos steps, and its full-batch gradient, under
    each BatchNorm convention."""
    s = spec.sharpness
    samples = min(s.samples, TRAIN_IMAGES)
    evaluations = s.iters * LBFGS_EVALUATIONS
    total = 0.0
    for space in s.subspaces:
        p = parse_subspace(space)
        variables = PARAMETERS if p is None else p
        per_eval = samples * GRADIENT_S + (0.0 if p is None else 2 * PARAMETERS * p *
                                           SUBSPACE_EVAL_S)
        pinv = 0.0 if p is None else PARAMETERS * p * p * PINV_S
        total += len(s.eps) * (evaluations * per_eval + s.iters * variables * LBFGS_STEP_S
                               + pinv)
    if s.hessian:
        total += s.hessian_iters * HVP_GRADIENTS * samples * GRADIENT_S
    gradient = TRAIN_IMAGES if s.gradient_samples is None else min(s.gradient_samples,
                                                                     TRAIN_IMAGES)
    total += gradient * GRADIENT_S  # the gradient norm at the solution
    return len(s.bn) * total


def noise_seconds(spec: FashionStudySpec) -> float:
    n = spec.noise_scale
    small, big = n.batch_sizes
    chunk = n.chunk_size or small
    chunks = n.draws * (math.ceil(small / chunk) + math.ceil(big / chunk))
    return RUN_OVERHEAD_S + n.draws * (small + big) * GRADIENT_S + chunks * STEP_S


def estimate(spec: FashionStudySpec, *, epochs: tuple[int, int] | None = None
             ) -> dict[str, float]:
    """Seconds per step of the study (the names ``StudyClock`` uses), one thread.

    ``epochs``: the (SB, LB) epochs each seed is expected to train; default the cap (the
    worst case)."""
    sb_epochs, lb_epochs = epochs or (spec.epochs_cap, spec.epochs_cap)
    eval_train = spec.stop_train_acc is not None and spec.stop_train_acc_mode == "eval"
    per_seed = (run_seconds(spec.sb, sb_epochs, eval_train=eval_train)
                + run_seconds(spec.lb, lb_epochs, eval_train=eval_train)
                + interpolation_seconds(spec) + 2 * sharpness_seconds(spec))
    steps = {f"keskar seed {seed}": per_seed for seed in spec.seeds}
    steps["sweep"] = sum(run_seconds(b, spec.sweep_epochs) for b in spec.sweep_batch_sizes)
    steps["noise scale"] = 2 * noise_seconds(spec)  # at the initial and the final weights
    steps["sweep report"] = 5.0
    steps["index"] = 1.0
    return steps


def expected(spec: FashionStudySpec) -> dict[str, float]:
    """The ETA's estimate: each side trains the epochs measured to the stopping rule
    (``EXPECTED_EPOCHS``, within the cap), not the cap, which is the worst case."""
    if spec.stop_train_acc is None:
        return estimate(spec)
    return estimate(spec, epochs=(min(spec.epochs_cap, EXPECTED_EPOCHS[0]),
                                  min(spec.epochs_cap, EXPECTED_EPOCHS[1])))


# --- the critical-batch study ----------------------------------------------------------------
# Costs of one thread on the development machine (F1 on Fashion-MNIST, measured with
# `lbtkit run --model f1 --dataset fashion-mnist --epochs 1 --threads 1` at batch 16 and 1024:
# 20.2 s and 5.1 s per epoch): 8.2e-5 s per training image plus 4.4 ms per optimizer step; an
# evaluation of the 4,096-image training subset and the 5,000 held-out images ~0.3 s.
IMAGE_SECONDS = 8.2e-5
STEP_SECONDS = 4.4e-3
TARGET_EVAL_SECONDS = 0.3
# Examples to the hardest target, modelled as E(B) = E_GUESS * (1 + B / B_GUESS) (McCandlish
# et al.'s form; only the ETA uses it). E_GUESS: round 0 of docs/critical-batch, every SGD,
# LARS and LAMB run's examples to its last target over (1 + B / 1000), averaged: 17,000-48,000,
# about 30,000 (the tuned rates' own E_min is lower: 20,000 at train_loss <= 0.4).
E_GUESS, B_GUESS = 30_000, 1_000


def critical_batch_estimate(spec, batch_sizes: Sequence[int]) -> dict[str, float]:
    """Wall seconds of the critical-batch study's steps, for its ETA: round 0's runs (one per
    point, ``batch_sizes`` giving each point's batch size; every seed, each until the modelled
    examples or the cap), divided over ``spec.jobs``; an extension round costing a quarter of
    that; the noise scale at each target."""
    from lbtkit.targets import eval_steps

    train_images = TRAIN_IMAGES - spec.val_split
    seconds = 0.0
    for batch in batch_sizes:
        cap = spec.epochs_for(batch, train_images) * (train_images // batch)
        steps = min(cap, math.ceil(E_GUESS * (1 + batch / B_GUESS) / batch))
        evals = sum(1 for s in eval_steps(spec.eval_growth, cap) if s <= steps)
        seconds += len(spec.seeds) * (steps * (batch * IMAGE_SECONDS + STEP_SECONDS)
                                      + evals * TARGET_EVAL_SECONDS + 3.0)
    tuning = seconds * (1.25 if spec.extension_rounds else 1.0) / spec.jobs
    sizes = spec.noise_scale.batch_sizes
    noise = len(spec.targets) * spec.noise_scale.draws * (
        sum(sizes) * 8e-5 + (sizes[1] // sizes[0] + 1) * STEP_SECONDS * 3)
    return {"tuning": tuning, "noise scale": noise, "report": 10.0}
