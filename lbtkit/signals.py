"""Turn SIGTERM / SIGUSR1 / SIGINT into a request to stop at the next step boundary.

SLURM sends SIGTERM at cancellation and (with ``--signal=USR1@margin``) SIGUSR1 before the
time limit; torchrun's agent forwards SIGTERM to its workers. The loop finishes the step it is
in, writes a checkpoint and exits with ``EXIT_INTERRUPTED`` so the batch script can requeue.
A second SIGINT falls back to the default (KeyboardInterrupt), for a user who means it.

A request the loop did not act on (it came after the last step boundary's check, while the
run wrote its results) is not dropped: when ``GracefulStop`` ends it is delivered again, to
the handler that was there before. Inside a command that trains several runs (``sweep run``,
the studies) that is the start-up handler below, which ends the command with exit 75 before
the next run starts.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from lbtkit.errors import EXIT_INTERRUPTED

HANDLED = ("SIGTERM", "SIGUSR1", "SIGINT")


class GracefulStop:
    """Context manager; ``.requested`` becomes the signal's name once one arrives."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._acted = False
        self._previous: dict[int, object] = {}

    def acted_on(self) -> None:
        """The loop stopped for the request (checkpointed, status interrupted): it is spent."""
        self._acted = True

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

    def __exit__(self, exc_type: object, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        installed, self._previous = bool(self._previous), {}
        if installed and self.requested and not self._acted and exc_type is None:
            # Deferred, never acted on: deliver it now, as if it had arrived just after.
            signal.raise_signal(getattr(signal, self.requested))


class StopPoll:
    """When the processes of a run agree on whether any of them was told to stop.

    Agreeing costs a collective (one tiny all-reduce), so a multi-process run cannot ask every
    step; asking every ``every_steps`` steps alone is too late when a step is slow: torchrun
    SIGKILLs its workers a grace period after the SIGTERM it forwards, and a step plus the
    checkpoint must fit in it. So the poll is also due once ``every_seconds`` have passed. The
    clocks of the processes differ, so the time is not compared locally (ranks could disagree
    on whether to poll and deadlock): each poll also reduces the seconds since the previous one
    (max over processes), and from that every process computes the same next poll step.
    A single process polls every step (no collective needed).
    """

    def __init__(self, world_size: int = 1, *, every_steps: int = 10,
                 every_seconds: float = 5.0,
                 reduce_max: Callable[[list[float]], list[float]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.world_size = world_size
        self.every_steps = every_steps
        self.every_seconds = every_seconds
        self._reduce_max = reduce_max or (lambda values: values)
        self._clock = clock
        self._last_step: int | None = None
        self._last_time = clock()
        self.next_step = 0  # poll at the first step boundary at or after this one

    @classmethod
    def for_accelerator(cls, accelerator: Any, **kwargs: Any) -> StopPoll:
        """A poll over ``accelerator``'s processes (all-reduce MAX on its device)."""
        def reduce_max(values: list[float]) -> list[float]:
            import torch
            import torch.distributed as dist

            tensor = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
            return tensor.tolist()

        world = accelerator.num_processes
        return cls(world, reduce_max=reduce_max if world > 1 else None, **kwargs)

    def due(self, step: int) -> bool:
        return self.world_size == 1 or step >= self.next_step

    def agreed_stop(self, step: int, requested: bool) -> bool:
        """At a step boundary: True when any process was asked to stop (polled when due)."""
        if not self.due(step):
            return False
        now = self._clock()
        flag, elapsed = self._reduce_max([float(requested), now - self._last_time])
        self.schedule(step, elapsed)
        self._last_time = now
        return flag > 0

    def schedule(self, step: int, elapsed: float) -> None:
        """Set the next poll from the steps and seconds since the last one (same everywhere)."""
        if self._last_step is None or step <= self._last_step:
            interval = 1  # nothing measured yet: poll again at the next boundary
        else:
            per_step = elapsed / (step - self._last_step)
            fits = int(self.every_seconds / per_step) if per_step > 0 else self.every_steps
            interval = max(1, min(self.every_steps, fits))
        self._last_step = step
        self.next_step = step + interval


def exit_interrupted_during_startup() -> None:
    """Until ``GracefulStop`` takes over, make SIGTERM, SIGUSR1 and SIGINT end the process with
    exit 75 and one line: a job killed while importing or loading data has no checkpoint to
    save yet, but a batch script must still tell "interrupted, rerun me" from a crash.

    Called first thing by the command-line entry points. Signals that the parent set to be
    ignored (a background job's SIGINT) stay ignored. ``GracefulStop`` restores this handler
    when it exits, so the same holds while a finished run writes its results.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    # SIGTERM last: once it is caught (SigCgt in /proc/PID/status) all three are.
    for name in ("SIGINT", "SIGUSR1", "SIGTERM"):
        signum = getattr(signal, name, None)
        if signum is not None and signal.getsignal(signum) in (signal.SIG_DFL,
                                                                signal.default_int_handler):
            signal.signal(signum, _exit_interrupted)
    if "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ:
        stop_when_parent_dies()  # a worker of torchrun: its agent gone, checkpoint and stop


def stop_when_parent_dies() -> bool:
    """Ask the kernel for SIGTERM when this process's parent dies
    (``prctl(PR_SET_PDEATHSIG)``); False where unsupported (not Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, signal.SIGTERM, 0, 0, 0) == 0  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False


def _exit_interrupted(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    # os.write, not print: the signal may arrive in the middle of another write to stderr.
    os.write(2, f"interrupted by {name} outside the training loop (starting or finishing: "
                f"nothing to checkpoint); rerun the same command\n".encode())
    raise SystemExit(EXIT_INTERRUPTED)
