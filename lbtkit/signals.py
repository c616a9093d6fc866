"""Turn SIGTERM / SIGUSR1 / SIGINT into a request to stop at the next step boundary.

SLURM sends SIGTERM at cancellation and (with ``--signal=USR1@margin``) SIGUSR1 before the
time limit; torchrun's agent forwards SIGTERM to its workers. The loop finishes the step it is
in, writes a checkpoint and exits with ``EXIT_INTERRUPTED`` so the batch script can requeue.
A second SIGINT falls back to the default (KeyboardInterrupt), for a user who means it.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

HANDLED = ("SIGTERM", "SIGUSR1", "SIGINT")


class GracefulStop:
    """Context manager; ``.requested`` becomes the signal's name once one arrives."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested == "SIGINT" and name == "SIGINT":
            raise KeyboardInterrupt
        self.requested = self.requested or name

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for name in HANDLED:
                signum = getattr(signal, name, None)
                if signum is not None:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
