"""How many CPU threads a training process uses, and whether the count follows the load.

Two decisions, made from what the process may actually use rather than the machine's core count:

- **Threads** (:func:`cpu_policy`, applied by :func:`set_cpu_threads`): the ``threads`` setting,
  else the user's ``OMP_NUM_THREADS``, else the usable CPUs shared by the processes launched on
  this machine (but not more than a program using lbtkit as a library set torch to). Usable
  CPUs are the fewest of: the CPUs this process may run on (``sched_getaffinity``), the cgroup's
  CPU quota (``cpu.max``, or ``cpu.cfs_quota_us`` in cgroup v1) and ``SLURM_CPUS_PER_TASK``.
- **Following the load** (:mod:`lbtkit.contention`): a count lbtkit derived is a ceiling; during
  training the run leaves the CPUs that other processes keep busy to them
  (:attr:`CpuPolicy.adaptive`); an analysis run from the CLI does so once, as it starts
  (:func:`threads_for_the_load`). OpenMP keeps its default wait (libgomp spins at barriers): with
  one thread per free CPU nothing waits on a descheduled sibling, and the idle case keeps its
  speed. Capping the spin instead (``GOMP_SPINCOUNT=3000``, lbtkit's policy before) left an idle
  F1 epoch on the 2-core Intel Xeon here 0.63x as fast (``bench/contention.py``). A user's
  own ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME`` is passed on and recorded.

Launched workers (``accelerate launch``, torchrun) inherit the environment. The launchers set
``OMP_NUM_THREADS`` in every worker themselves (accelerate to 1), so inside a worker only a value
the user gave the ``lbtkit`` command counts (it records it in :data:`USER_THREADS_VAR`);
``--threads`` is the way to set threads for a bare ``accelerate launch -m lbtkit run``.

Nothing here imports torch at module level.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lbtkit.contention import FIRST_WINDOW_SECONDS, measure_others, threads_for

log = logging.getLogger(__name__)

# The user's OMP_NUM_THREADS, passed to launched workers whose launcher overwrites it.
USER_THREADS_VAR = "LBTKIT_USER_OMP_NUM_THREADS"
_WAIT_REPORTED = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


# --- usable CPUs -----------------------------------------------------------------------------


def affinity_cpus() -> int:
    """CPUs this process may run on (its affinity mask), else the machine's count."""
    return len(affinity_set())


def affinity_set() -> frozenset[int]:
    """The numbers of the CPUs this process may run on (all of them where that is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    return frozenset(range(os.cpu_count() or 1))


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The CPU quota (CPUs' worth of time per period) of this process's cgroup and its
    ancestors, the tightest one; None when there is none (or no cgroup file system)."""
    quotas = [q for d in _cgroup_cpu_dirs(root, proc_cgroup) if (q := _quota_in(d)) is not None]
    return min(quotas) if quotas else None


def _cgroup_cpu_dirs(root: Path, proc_cgroup: Path) -> list[Path]:
    """The cgroup directories whose CPU limits apply to this process, own first, then parents.

    cgroup v2: ``0::/PATH`` under ``root``; v1: the ``cpu`` controller's line under
    ``root/cpu`` (or ``root/cpu,cpuacct``). In a container the listed path may not exist in the
    container's view; its mount root is then the container's own cgroup."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    dirs: list[Path] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            mounts = [root]
        elif "cpu" in controllers.split(","):
            mounts = [root / name for name in ("cpu", controllers) if (root / name).is_dir()]
        else:
            continue
        for mount in mounts[:1]:
            own = mount / path.lstrip("/")
            dirs += [own, *(p for p in own.parents if p.is_relative_to(mount))]
    return dirs


def _quota_in(directory: Path) -> float | None:
    """The quota in one cgroup directory: ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD") in v2,
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in v1 (-1: none)."""
    try:
        if (directory / "cpu.max").is_file():
            quota, _, period = (directory / "cpu.max").read_text().strip().partition(" ")
        else:
            quota = (directory / "cpu.cfs_quota_us").read_text().strip()
            period = (directory / "cpu.cfs_period_us").read_text().strip()
    except OSError:
        return None
    if quota in ("max", "-1"):
        return None
    try:
        value = int(quota) / int(period or 100000)
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


def _positive_int(text: str | None) -> int | None:
    return int(text) if text and text.strip().isdigit() and int(text) > 0 else None


@dataclass(frozen=True)
class UsableCpus:
    """The CPUs a process may use, and which limit decided it (``affinity``, ``cgroup quota``,
    ``SLURM_CPUS_PER_TASK``)."""

    count: int
    source: str


def usable_cpus(environ: Mapping[str, str] = os.environ, *, affinity: int | None = None,
                quota: float | None = None, read_cgroup: bool = True) -> UsableCpus:
    """The tightest of affinity, cgroup quota (rounded down, at least 1: threads beyond the
    quota get throttled) and ``SLURM_CPUS_PER_TASK``. ``affinity``/``quota`` override what is
    read from this process (for tests); ``read_cgroup=False`` skips the cgroup files."""
    limits = [("affinity", affinity if affinity is not None else affinity_cpus())]
    if quota is None and read_cgroup:
        quota = cgroup_cpu_quota()
    if quota is not None:
        limits.append(("cgroup quota", max(1, math.floor(quota))))
    slurm = _positive_int(environ.get("SLURM_CPUS_PER_TASK"))
    if slurm is not None:
        limits.append(("SLURM_CPUS_PER_TASK", slurm))
    source, count = min(limits, key=lambda item: item[1])
    return UsableCpus(count, source)


# --- the policy ------------------------------------------------------------------------------


def in_launched_worker(environ: Mapping[str, str] = os.environ) -> bool:
    """True inside a process started by accelerate launch / torchrun."""
    return "LOCAL_RANK" in environ and "WORLD_SIZE" in environ


def local_processes(environ: Mapping[str, str] = os.environ) -> int:
    """Processes of this run on this machine (``LOCAL_WORLD_SIZE``, set by the launchers)."""
    return _positive_int(environ.get("LOCAL_WORLD_SIZE")) or 1


def user_threads(environ: Mapping[str, str] = os.environ) -> int | None:
    """The thread count the user asked for with ``OMP_NUM_THREADS``, or None. Inside a launched
    worker the variable is the launcher's; only the value the lbtkit CLI recorded counts."""
    if in_launched_worker(environ):
        return _positive_int(environ.get(USER_THREADS_VAR))
    return _positive_int(environ.get("OMP_NUM_THREADS"))


@dataclass(frozen=True)
class CpuPolicy:
    """What a training process uses: ``threads`` (and where that came from), the usable CPUs
    (and the limit that decided them), the processes sharing them, whether the count follows
    other processes' load during training (``adaptive``: lbtkit chose it), and the OpenMP wait
    variables in effect with who set them."""

    threads: int
    threads_from: str
    usable_cpus: int
    usable_from: str
    local_processes: int
    adaptive: bool
    wait: dict[str, str]
    wait_from: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_policy(threads: int | None = None, environ: Mapping[str, str] = os.environ, *,
               usable: UsableCpus | None = None, torch_threads: int | None = None) -> CpuPolicy:
    """The policy for a process with the ``threads`` setting (None: derive it) in ``environ``
    whose torch currently runs ``torch_threads`` (None: ask torch).

    Derived, the count is the usable CPUs over the local processes, and adaptive; outside a
    launched worker never more than torch's current count, so a program that lowered it
    (``set_num_threads``) keeps its choice, fixed (torch's own default is every CPU of the
    affinity mask)."""
    usable = usable or usable_cpus(environ)
    processes = local_processes(environ)
    adaptive = False
    if threads:
        chosen, source = threads, "threads setting"
    elif (asked := user_threads(environ)) is not None:
        chosen, source = asked, "OMP_NUM_THREADS"
    else:
        chosen = max(1, usable.count // processes)
        source = f"usable CPUs / {processes} local process{'es' if processes > 1 else ''}"
        adaptive = True
        if torch_threads is None:
            import torch

            torch_threads = torch.get_num_threads()
        if not in_launched_worker(environ) and torch_threads < chosen:
            chosen, source = torch_threads, "torch.set_num_threads (below the usable CPUs)"
            adaptive = False
    wait, wait_from = wait_policy(environ)
    return CpuPolicy(chosen, source, usable.count, usable.source, processes, adaptive, wait,
                     wait_from)


def wait_policy(environ: Mapping[str, str] = os.environ) -> tuple[dict[str, str], str]:
    """The OpenMP wait variables the user set, and a word on who set them: ``environment``, or
    ``OpenMP default (spins)`` when none is set."""
    wait = {name: environ[name] for name in _WAIT_REPORTED if name in environ}
    return wait, ("environment" if wait else "OpenMP default (spins)")


def set_cpu_threads(threads: int | None, environ: Mapping[str, str] = os.environ) -> CpuPolicy:
    """Set torch's intra-op threads as :func:`cpu_policy` says; return the policy."""
    import torch

    policy = cpu_policy(threads, environ, torch_threads=torch.get_num_threads())
    if policy.threads != torch.get_num_threads():
        torch.set_num_threads(policy.threads)
    return policy


@contextlib.contextmanager
def threads_for_the_load(environ: Mapping[str, str] = os.environ,
                         seconds: float = FIRST_WINDOW_SECONDS) -> Iterator[int]:
    """For one analysis (interpolation, sharpness, ...): when lbtkit chooses the thread count,
    measure other processes' load over ``seconds`` now and leave the CPUs they keep busy to
    them until the block ends (torch's count is restored then). A pinned count is kept as it
    is, with no measurement. Yields the threads in use."""
    import torch

    before = torch.get_num_threads()
    policy = cpu_policy(None, environ, torch_threads=before)
    threads = before
    if policy.adaptive and policy.threads > 1:
        cpus = affinity_set()
        others = measure_others(cpus, seconds)
        threads = policy.threads if others is None else \
            threads_for(others, usable=len(cpus), cap=policy.threads)
        log.debug("other processes use %s CPUs: %d thread(s)", others, threads)
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


# --- the environment, before torch loads ------------------------------------------------------


def record_user_threads(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Record the user's ``OMP_NUM_THREADS`` for launched workers (whose launcher overwrites
    it); return whether it was recorded now. A launched worker records nothing."""
    if in_launched_worker(environ) or "OMP_NUM_THREADS" not in environ \
            or USER_THREADS_VAR in environ:
        return False
    environ[USER_THREADS_VAR] = environ["OMP_NUM_THREADS"]
    return True
