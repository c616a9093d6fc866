"""Learning-rate schedules, defined in optimizer steps (not epochs, not process-steps).

The training loop sets the lr itself from ``lr_at_step(global_step)`` before every optimizer
step, so a resumed run continues the schedule exactly, and the number of processes cannot
change how often it advances (a scheduler passed to ``accelerator.prepare`` would be stepped
once per process).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """lr(step) = peak_lr * warmup(step) * decay(step), for step = 0 .. total_steps-1."""

    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    kind: str = "cosine"  # cosine | step | constant
    step_every: int = 1  # step decay: optimizer steps between decays
    gamma: float = 0.1

    def lr_at_step(self, step: int) -> float:
        return self.peak_lr * lr_multiplier(
            step,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
            kind=self.kind,
            step_every=self.step_every,
            gamma=self.gamma,
        )


def lr_multiplier(
    step: int,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    kind: str = "cosine",
    step_every: int = 1,
    gamma: float = 0.1,
) -> float:
    """Factor applied to the peak lr at optimizer step ``step`` (0-based).

    Warm-up rises linearly to 1 at the last warm-up step: (step + 1) / warmup_steps.
    Cosine then falls from 1 at ``warmup_steps`` towards 0 at ``total_steps`` (as
    CosineAnnealingLR with eta_min = 0 over the post-warm-up steps).
    Step multiplies by ``gamma`` every ``step_every`` steps after warm-up.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    since = step - warmup_steps
    if kind == "cosine":
        span = max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(since, span) / span))
    if kind == "step":
        return gamma ** (since // step_every)
    raise ValueError(f"unknown schedule kind {kind!r}")
