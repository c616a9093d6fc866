"""What every long study does around its runs: time its steps (``StudyClock``: the time since
it started and an estimate of the time left, the wall time of each step summed over resumed
invocations), describe the machine it ran on, and keep its scratch out of git.

Used by ``lbtkit study fashion`` and ``lbtkit study critical-batch``.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from lbtkit.fileio import atomic_write_text, read_json, write_json

# Progress lines keep the logger name they have always had (log filters and tests use it).
log = logging.getLogger("lbtkit.studies.fashion")


def describe_machine(threads: int | None, jobs: int = 1) -> dict[str, Any]:
    """The CPU, its cores, the cores this process may use, torch's threads, the processes
    run at once (``jobs``), the load."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch_threads = threads if threads is not None else torch.get_num_threads()
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    text = (f"{model}, {os.cpu_count()} cores ({usable} usable), torch {torch.__version__} "
            f"with {torch_threads} thread{'s' if torch_threads != 1 else ''}, "
            + (f"{jobs} processes at once" if jobs > 1 else "one process"))
    return {"cpu": model, "cores": os.cpu_count(), "usable_cores": usable,
            "torch_threads": torch_threads, "processes": jobs, "torch": torch.__version__,
            "python": platform.python_version(), "load_average_at_start": load, "text": text}


def ignore_in_git(output: Path, entry: str) -> None:
    """Add ``entry`` (a .gitignore line) to ``output/.gitignore``: run directories are scratch."""
    ignore = output / ".gitignore"
    if not ignore.exists() or entry not in ignore.read_text():
        atomic_write_text(ignore, entry)


CHILDREN = "child processes"  # the key of record_child's times in the timings file


class StudyClock:
    """Step timing and progress lines: the time since this invocation started, and an
    estimate of the time left (``lbtkit.studies.budget``'s estimates of the steps not yet
    run, scaled by how this machine has kept to the estimates so far). Each step's wall time
    is added to ``path`` (JSON), so a resumed study reports the total over invocations."""

    def __init__(self, path: Path, estimates: dict[str, float], name: str = "fashion", *,
                 jobs: int = 1) -> None:
        self.path, self.name, self.jobs = path, name, jobs
        self.start = time.monotonic()
        self.estimates = estimates
        self.stored: dict[str, float] = read_json(path, kind=dict) if path.exists() else {}
        self.done: dict[str, float] = {}  # step -> seconds, in this invocation

    def step(self, name: str):
        return _Step(self, name)

    def record(self, name: str, seconds: float) -> None:
        self.done[name] = seconds
        self.stored[name] = self.stored.get(name, 0.0) + seconds
        write_json(self.path, self.stored)

    def record_child(self, name: str, seconds: float) -> None:
        """A child process's wall time (``--jobs``): inside a step already counted, so kept
        apart from the steps and the total."""
        children = self.stored.setdefault(CHILDREN, {})
        children[name] = children.get(name, 0.0) + seconds
        write_json(self.path, self.stored)

    def totals(self) -> dict[str, float]:
        """Each step's wall seconds summed over invocations, and their "total"."""
        steps = {k: v for k, v in self.stored.items() if k not in ("total", CHILDREN)}
        return {**steps, "total": sum(steps.values())}

    def children(self) -> dict[str, float]:
        """Each child process's wall seconds summed over invocations (``record_child``)."""
        return dict(self.stored.get(CHILDREN, {}))

    def remaining(self) -> float:
        """Seconds left by the estimates, scaled by actual/estimated over the steps this
        invocation really computed (a step skipped as up to date takes a small fraction of
        its estimate and says nothing about speed), over ``jobs`` steps running at once."""
        computed = {k: v for k, v in self.done.items()
                    if k in self.estimates and v >= 0.25 * self.estimates[k]}
        pace = (sum(computed.values()) / sum(self.estimates[k] for k in computed)
                if computed else 1.0)
        left = [k for k in self.estimates if k not in self.done]
        return pace * sum(self.estimates[k] for k in left) / max(1, min(self.jobs, len(left)))

    def log(self, text: str, *, upcoming: str | None = None) -> None:
        """A progress line; with ``upcoming`` (the step about to start) the time left."""
        elapsed = _minutes(time.monotonic() - self.start)
        eta = f"; about {_minutes(self.remaining())} left" if upcoming else ""
        log.info("%s [%s] %s%s", self.name, elapsed, text, eta)


class _Step:
    def __init__(self, clock: StudyClock, name: str) -> None:
        self.clock, self.name = clock, name

    def __enter__(self) -> None:
        self.begin = time.monotonic()

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.clock.record(self.name, time.monotonic() - self.begin)


def _minutes(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"
