"""Follow other processes' use of our CPUs with torch's thread count, during training.

Why: torch's OpenMP threads (libgomp) spin at every barrier, waiting for their siblings. When
another busy process holds one of the CPUs, the sibling a spinner waits for is descheduled and
every parallel region costs a scheduler time slice: an F1 epoch on Fashion-MNIST was 10x slower
with one competing process on 2 cores. One thread has no sibling to wait for (on the 2-core Intel
Xeon here, ``bench/contention.py``: 2 fixed spinning threads 11,000 img/s alone and 1,000
contended; following the load, 7,900 contended). Shorter spinning was not the answer: it cost
the idle case more than the lost thread does (``GOMP_SPINCOUNT=3000``: 0.63x of the idle speed).

So a run whose thread count lbtkit chose (not pinned by ``--threads`` or ``OMP_NUM_THREADS``)
keeps libgomp's default spin and, every :data:`CHECK_SECONDS`, measures how much of the CPUs it
may run on other processes used (``/proc/stat`` per CPU, minus this process's own CPU time):
CPUs that others keep more than :data:`TOLERANCE` busy are left to them. The first decision
comes at the first step after :data:`FIRST_WINDOW_SECONDS`, from the window since the run
started. An analysis measures once, as it starts (``lbtkit.cpu.threads_for_the_load``).

The thread count changes the numbers: reductions split differently, so a run is bitwise
repeatable only at a fixed thread count. Every change is recorded (step, threads, the others'
load) in results.json; pin the threads for bitwise repeatability on a busy machine.

Nothing here imports torch: the governor is passed the function that sets the threads.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROC_STAT = Path("/proc/stat")
# How often the others' load is measured (wall seconds; a check costs ~0.1 ms).
CHECK_SECONDS = 2.0
# The first decision needs a window this long (the run's setup is longer).
FIRST_WINDOW_SECONDS = 0.2
# A CPU counts as taken when others keep more than this much of it busy: background daemons
# stay below it; a competing busy process (0.6-1.0 of a CPU while we spin) does not.
TOLERANCE = 0.3
# results.json keeps the first changes; a longer record only says how many there were.
MAX_RECORDED_CHANGES = 100


@dataclass(frozen=True)
class CpuSample:
    """Busy clock ticks of some CPUs, this process's own CPU seconds, and when."""

    busy_ticks: int
    own_seconds: float
    wall: float


def read_sample(cpus: Iterable[int], stat: Path = PROC_STAT) -> CpuSample | None:
    """The busy ticks of ``cpus`` (user, nice, system, irq, softirq, steal) from ``stat``, with
    this process's CPU time; None where there is no readable ``/proc/stat`` (not Linux)."""
    wanted = {f"cpu{n}" for n in cpus}
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if name in wanted and len(fields) >= 8:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
            busy += user + nice + system + irq + softirq + steal
    times = os.times()
    return CpuSample(busy, times.user + times.system, time.monotonic())


def others_busy(before: CpuSample, after: CpuSample, ticks_per_second: float) -> float:
    """CPUs' worth of time other processes used between two samples (at least 0)."""
    wall = after.wall - before.wall
    if wall <= 0:
        return 0.0
    total = (after.busy_ticks - before.busy_ticks) / ticks_per_second
    return max(0.0, (total - (after.own_seconds - before.own_seconds)) / wall)


def measure_others(cpus: Iterable[int], seconds: float) -> float | None:
    """CPUs' worth of time other processes use on ``cpus``, measured over ``seconds`` now
    (None without ``/proc/stat``)."""
    before = read_sample(cpus)
    if before is None:
        return None
    time.sleep(seconds)  # a measurement window
    after = read_sample(cpus)
    return None if after is None else others_busy(before, after, os.sysconf("SC_CLK_TCK"))


def threads_for(others: float, *, usable: int, cap: int) -> int:
    """Threads for a process that may use ``usable`` CPUs and wants at most ``cap`` threads,
    when other processes keep ``others`` CPUs busy: the CPUs they leave, at least 1."""
    taken = math.ceil(others - TOLERANCE) if others > TOLERANCE else 0
    return max(1, min(cap, usable - taken))


@dataclass
class ThreadGovernor:
    """Keeps torch's thread count at the CPUs other processes leave free (see the module).

    ``cap``: the threads lbtkit chose for this process (the usable CPUs over the local
    processes); ``cpus``: the numbers of the CPUs it may run on (affinity), ``usable`` of them;
    ``set_threads``: torch.set_num_threads, or a stand-in."""

    cap: int
    usable: int
    cpus: frozenset[int]
    set_threads: Callable[[int], None]
    threads: int = 0
    changes: list[dict[str, Any]] = field(default_factory=list)
    dropped: int = 0
    read: Callable[[Iterable[int]], CpuSample | None] = read_sample
    clock: Callable[[], float] = time.monotonic  # the clock read_sample's wall comes from
    ticks_per_second: float = field(default_factory=lambda: float(os.sysconf("SC_CLK_TCK")))
    _last: CpuSample | None = None

    def __post_init__(self) -> None:
        self.threads = self.threads or self.cap
        self._last = self.read(self.cpus)

    def check(self, step: int) -> None:
        """Measure the others' load if it is time, and follow it (called after every step)."""
        if self._last is None:
            return
        window = CHECK_SECONDS if self.changes or self.dropped else FIRST_WINDOW_SECONDS
        if self.clock() - self._last.wall < window:
            return
        sample = self.read(self.cpus)
        if sample is None:
            self._last = None
            return
        others = others_busy(self._last, sample, self.ticks_per_second)
        self._last = sample
        wanted = threads_for(others, usable=self.usable, cap=self.cap)
        if wanted != self.threads or not (self.changes or self.dropped):
            self._follow(step, wanted, others)

    def _follow(self, step: int, threads: int, others: float) -> None:
        if threads != self.threads:
            log.debug("other processes use %.2f CPUs: %d thread(s) from step %d",
                      others, threads, step)
            self.set_threads(threads)
            self.threads = threads
        change = {"step": step, "threads": threads, "others_busy_cpus": round(others, 2)}
        if len(self.changes) < MAX_RECORDED_CHANGES:
            self.changes.append(change)
        else:
            self.dropped += 1

    def record(self) -> dict[str, Any]:
        """What results.json says of the adaptation: the changes (the first is the start)."""
        return {"thread_changes": self.changes, "thread_changes_not_listed": self.dropped}
