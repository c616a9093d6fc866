"""Progress display: a Rich bar on a terminal, plain periodic lines otherwise (SLURM .out).

Rich prints only the final state of a bar when stdout is not a terminal, so a batch log
would show nothing for hours; there we log one line every ``log_every`` steps instead.

Text goes through ``logging`` (INFO, logger ``lbtkit.progress``) and the bar is drawn only
when that logger would show INFO: the CLI turns it on; a library caller who configured no
logging sees neither.
"""

from __future__ import annotations

import logging
import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

logger = logging.getLogger(__name__)


class TrainingProgress:
    """Progress of a loop over ``total_steps`` items (optimizer steps, grid points, ...)."""

    def __init__(
        self, *, total_steps: int, done_steps: int, log_every: int, enabled: bool = True,
        interactive: bool | None = None, description: str = "training", unit: str = "step",
    ) -> None:
        self.enabled = enabled and logger.isEnabledFor(logging.INFO)
        self.unit = unit
        self.log_every = log_every
        self.total_steps = total_steps
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self._bar: Progress | None = None
        self._task = None
        self._done = done_steps
        self._last_print = time.monotonic()
        if self.enabled and self.interactive:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(highlight=False),
            )
            self._task = self._bar.add_task(
                description, total=total_steps, completed=done_steps, info=""
            )
            self._bar.start()

    def step(self, global_step: int, describe) -> None:
        """Called after every item (``global_step`` done so far); ``describe()`` is only
        called when shown."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=global_step)
            now = time.monotonic()
            if now - self._last_print > 1.0:  # text needs a host sync: refresh it sparingly
                self._bar.update(self._task, info=describe())
                self._last_print = now
        elif global_step % self.log_every == 0:
            logger.info("%s %d/%d %s", self.unit, global_step, self.total_steps, describe())

    def message(self, text: str) -> None:
        if self.enabled:
            logger.info("%s", text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
