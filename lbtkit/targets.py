"""Steps to a target: goals a run must reach, when it is evaluated, and when it met them.

The critical-batch measurement (Shallue et al. 2019, McCandlish et al. 2018) counts the
optimizer steps a run needs to reach a goal: a training loss, measured in eval mode on a fixed
training subset (McCandlish et al.), or a validation error (Shallue et al.). A run with
``targets`` is evaluated at optimizer steps spaced geometrically (``eval_steps``), records the
first evaluated step at which each target holds (``first_steps``), and stops once all hold.

Spacing the evaluations by a factor ``growth`` places each step to within that factor: the
recorded step over-counts the true crossing by less than ``growth - 1`` (10% at 1.1). The bias
is the same relative amount at every batch size, so it scales S_min and E_min alike and cancels
in B_crit = E_min / S_min.

Pure functions; the training loop (``lbtkit.train``) calls them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from lbtkit.errors import ConfigError

# What a target may read from an evaluation row, and how to read it.
METRICS = {
    "train_loss": "train_eval_loss",  # eval mode, on the fixed training subset
    "train_error": "train_eval_error",
    "val_loss": "val_loss",
    "val_error": "val_error",
}
_TARGET = re.compile(r"^\s*(?P<metric>[a-z_]+)\s*<=\s*(?P<value>\S+)\s*$")


@dataclass(frozen=True, order=True)
class Target:
    """``metric <= value``, e.g. ``train_loss<=0.3`` or ``val_error<=0.12``."""

    metric: str
    value: float

    @property
    def name(self) -> str:
        return f"{self.metric}<={self.value:g}"

    @property
    def column(self) -> str:
        """The evaluation row's key this target reads."""
        return METRICS[self.metric]

    def met(self, row: dict[str, Any]) -> bool:
        value = row.get(self.column)
        return value is not None and math.isfinite(value) and value <= self.value


def parse_targets(text: str) -> tuple[Target, ...]:
    """``"train_loss<=0.3,val_error<=0.12"`` -> targets (sorted, without repeats); "" -> ()."""
    targets = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        match = _TARGET.match(item)
        if match is None:
            raise ConfigError(f"target {item!r}: expected METRIC<=VALUE, e.g. train_loss<=0.3")
        metric = match["metric"]
        if metric not in METRICS:
            raise ConfigError(f"target {item!r}: unknown metric {metric!r}; known: "
                              f"{', '.join(METRICS)}")
        try:
            value = float(match["value"])
        except ValueError:
            raise ConfigError(f"target {item!r}: {match['value']!r} is not a number") from None
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"target {item!r}: the value must be a positive number")
        targets.add(Target(metric, value))
    return tuple(sorted(targets))


def format_targets(targets: Iterable[Target]) -> str:
    return ",".join(t.name for t in targets)


def eval_steps(growth: float, last_step: int) -> list[int]:
    """The optimizer steps (1-based counts of steps taken) at which to evaluate: 1, 2, ...
    each at least one more than the last and at least ``growth`` times it, up to
    ``last_step``, which is always included."""
    if not (math.isfinite(growth) and growth > 1):
        raise ConfigError(f"eval_growth must be a finite number > 1, got {growth}")
    steps, step = [], 1
    while step < last_step:
        steps.append(step)
        step = max(step + 1, math.ceil(step * growth - 1e-9))
    if last_step >= 1:
        steps.append(last_step)
    return steps


def first_steps(rows: Sequence[dict[str, Any]], targets: Iterable[Target]
                ) -> dict[str, int | None]:
    """For each target's name, the first evaluated step (``row["step"]``) meeting it, or None.

    Rows are taken in step order; a row repeated for a step (a resumed run) counts once.
    """
    ordered = sorted(rows, key=lambda r: r["step"])
    return {t.name: next((r["step"] for r in ordered if t.met(r)), None) for t in targets}


def all_met(rows: Sequence[dict[str, Any]], targets: Sequence[Target]) -> bool:
    return bool(targets) and all(v is not None for v in first_steps(rows, targets).values())
