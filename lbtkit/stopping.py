"""When a run has trained enough: the explicit stopping rule, checked once per epoch.

Keskar et al. compare solutions that both fit their training set; a fixed epoch budget can
leave the large-batch side under-trained, which is a different effect from the one studied.
A run with a rule stops at the end of the first epoch that meets it (``epochs`` stays the
upper bound), and ``results.json`` records which rule fired, when, and how far it got.

The rule reads the per-epoch metrics rows (``metrics.jsonl``), so a resumed run decides
exactly as an uninterrupted one would. The accuracy target reads either the epoch's running
training accuracy (``train_acc``: train mode, averaged over batches while the weights moved)
or, in mode "eval", the whole training set evaluated at the epoch's end in eval mode
(``train_eval_acc``): the fit of the weights the run ends with, as a report evaluates them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lbtkit.errors import ConfigError

TRAIN_ACC_MODES = ("running", "eval")
# The metrics row's column each mode reads.
TRAIN_ACC_COLUMN = {"running": "train_acc", "eval": "train_eval_acc"}


@dataclass(frozen=True)
class StopRule:
    """Stop once the epoch's training accuracy reaches ``train_acc``, or once the training
    loss has not improved by more than ``plateau_delta`` (relative to its best so far) for
    ``plateau_epochs`` epochs in a row. Either may be None (off). ``train_acc_mode``: which
    training accuracy the target reads (``TRAIN_ACC_COLUMN``)."""

    train_acc: float | None = None
    plateau_epochs: int | None = None
    plateau_delta: float = 1e-3
    train_acc_mode: str = "running"

    def __post_init__(self) -> None:
        if self.train_acc is not None and not (
                math.isfinite(self.train_acc) and 0 < self.train_acc <= 1):
            raise ConfigError(f"stop_train_acc must be in (0, 1], got {self.train_acc}")
        if self.plateau_epochs is not None and (
                isinstance(self.plateau_epochs, bool) or self.plateau_epochs < 1):
            raise ConfigError(f"stop_plateau_epochs must be >= 1, got {self.plateau_epochs}")
        if not (math.isfinite(self.plateau_delta) and 0 <= self.plateau_delta < 1):
            raise ConfigError(f"stop_plateau_delta must be in [0, 1), got {self.plateau_delta}")
        if self.train_acc_mode not in TRAIN_ACC_MODES:
            raise ConfigError(f"stop_train_acc_mode must be one of {', '.join(TRAIN_ACC_MODES)}"
                              f", got {self.train_acc_mode!r}")

    @property
    def active(self) -> bool:
        return self.train_acc is not None or self.plateau_epochs is not None

    @property
    def evaluates_training_set(self) -> bool:
        """The training loop must evaluate the whole training set at each epoch's end."""
        return self.train_acc is not None and self.train_acc_mode == "eval"

    def reason(self, rows: Sequence[dict[str, Any]]) -> str | None:
        """Why training should stop after the last of ``rows`` (None: go on)."""
        if not rows:
            return None
        last = rows[-1]
        column = TRAIN_ACC_COLUMN[self.train_acc_mode]
        if self.train_acc is not None and last[column] >= self.train_acc:
            return (f"{column} {last[column]:.4f} >= {self.train_acc:g} "
                    f"at epoch {last['epoch']}")
        if self.plateau_epochs is not None and plateau_length(rows, self.plateau_delta) \
                >= self.plateau_epochs:
            return (f"train_loss has not improved by more than {self.plateau_delta:g} "
                    f"(relative) for {self.plateau_epochs} epochs, at epoch {last['epoch']}")
        return None


def plateau_length(rows: Sequence[dict[str, Any]], delta: float) -> int:
    """Epochs since the training loss last improved on its best by more than ``delta``
    (relative); 0 when the last epoch improved."""
    best = math.inf
    since = 0
    for row in rows:
        loss = row["train_loss"]
        if loss < best * (1 - delta) or best == math.inf:
            best, since = loss, 0
        else:
            since += 1
    return since
