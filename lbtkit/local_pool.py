"""Run several commands at once on one machine, and stop them together.

The local counterpart of a SLURM job array, for ``lbtkit sweep run --jobs N`` and the studies:
each task is a command (usually ``python -m lbtkit ...``) run in a child process, at most one
per *slot* at a time. An ``lbtkit`` command (``lbtkit_task``) runs in its slot's worker process
(``lbtkit.pool_worker``), which takes the slot's tasks one after another until one fails, so
torch is imported once per slot; a task may wait for others (``Task.after``). A slot is a set
of environment variables: the GPUs it owns (``CUDA_VISIBLE_DEVICES``), for instance; the CPUs
are shared out by giving every child ``threads_per_job`` torch threads (``OMP_NUM_THREADS`` and
the task's own flags).

Stopping behaves as for one run: SIGTERM, SIGINT or SIGUSR1 to this process is relayed to every
running child as SIGTERM (each checkpoints and exits 75) and no further task starts. A child
also gets SIGTERM when this process dies without relaying (``kill -9``: Linux's parent-death
signal), and the launchers of multi-process tasks are adopted as in ``lbtkit.launch``, so no
child is left training. Which tasks ran and how they ended is the caller's to judge from the
exit codes (``run_tasks`` returns them).

Nothing here knows about sweeps: ``lbtkit.sweep.run_entries`` builds the tasks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from lbtkit.launch import become_subreaper, child_pids, launcher_environment, stop_orphans

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2  # how often the pool looks for finished children
_RELAYED = ("SIGTERM", "SIGINT", "SIGUSR1")
_PR_SET_PDEATHSIG = 1
_LBTKIT = (sys.executable, "-m", "lbtkit")


@dataclass(frozen=True)
class Task:
    """One command to run: ``key`` names it in the result, ``env`` is added to this process's
    environment (and the slot's), ``log`` receives its stdout and stderr (appended)."""

    key: Hashable
    command: Sequence[str]
    log: Path
    env: Mapping[str, str] = field(default_factory=dict)
    launches: bool = False  # starts processes of its own (accelerate launch): adopt them
    # ``python -m lbtkit ARGS`` that may run in its slot's worker process, after other such
    # tasks (``lbtkit.pool_worker``): the imports are paid once per slot, not once per task.
    in_worker: bool = False
    after: tuple[Hashable, ...] = ()  # keys of tasks that must end with 0 before this starts


def lbtkit_task(key: Hashable, args: Sequence[str | int | Path], log: Path,
                env: Mapping[str, str] | None = None, after: Sequence[Hashable] = ()) -> Task:
    """A task that runs ``lbtkit ARGS`` (in its slot's worker process)."""
    return Task(key=key, command=[*_LBTKIT, *map(str, args)], log=log, env=dict(env or {}),
                in_worker=True, after=tuple(after))


@dataclass
class PoolResult:
    """Exit codes of the tasks that ran (in the order they finished), and the signal that
    stopped the pool (None when every task got its turn)."""

    returncodes: dict[Hashable, int]
    stopped_by: str | None = None


# --- sharing the machine out (pure) ------------------------------------------------------------


def threads_per_job(cpus: int, jobs: int) -> int:
    """torch threads for each of ``jobs`` concurrent children on ``cpus`` CPUs (at least 1;
    ``cpus``: ``lbtkit.cpu.usable_cpus``, the affinity, cgroup quota or SLURM's limit)."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    return max(1, cpus // jobs)


def visible_gpus(device_count: int, environ: Mapping[str, str]) -> list[str]:
    """The ids of the GPUs this process sees, as ``CUDA_VISIBLE_DEVICES`` names them for a
    child: the parent's own list when it has one (ids or UUIDs), else 0..count-1."""
    if device_count <= 0:
        return []
    listed = [part.strip() for part in environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
              if part.strip()]
    if listed:
        return listed[:device_count]
    return [str(index) for index in range(device_count)]


def gpu_slots(gpus: Sequence[str], jobs: int, world_size: int) -> list[str] | None:
    """``CUDA_VISIBLE_DEVICES`` of each concurrent slot: disjoint blocks of ``world_size``
    GPUs, as many as fit and at most ``jobs``. None when there are no GPUs, or fewer than
    one entry needs (the entries then run as they would one at a time)."""
    if jobs < 1 or world_size < 1:
        raise ValueError(f"jobs and world_size must be >= 1, got {jobs} and {world_size}")
    if not gpus or world_size > len(gpus):
        return None
    fit = min(jobs, len(gpus) // world_size)
    return [",".join(gpus[slot * world_size:(slot + 1) * world_size]) for slot in range(fit)]


# --- running -----------------------------------------------------------------------------------


def run_tasks(
    tasks: Iterable[Task],
    slots: Sequence[Mapping[str, str]],
    *,
    on_start: Callable[[Task, int], None] | None = None,
    on_finish: Callable[[Task, int], bool | None] | None = None,
) -> PoolResult:
    """Run ``tasks`` in order, one per slot at a time (``len(slots)`` at once); wait for all.
    A task with ``after`` waits for those tasks (the first ready task in order starts next)
    and is dropped, never started, when one of them does not end with 0.

    ``on_start(task, pid)`` is called as a task starts; ``on_finish(task, returncode)`` as it
    ends, and returning True stops the pool as a signal would (the running tasks get SIGTERM,
    no more start). A task killed by signal N has returncode -N. Tasks that never started are
    missing from the result. Call it from the main thread: signals are caught there, and
    the parent-death signal of a child is tied to the thread that started it.
    """
    if not slots:
        raise ValueError("run_tasks needs at least one slot")
    tasks = list(tasks)
    keys = {task.key for task in tasks}
    for task in tasks:
        if not set(task.after) <= keys:
            raise ValueError(f"task {task.key!r} waits for tasks not in the pool: "
                             f"{sorted(map(repr, set(task.after) - keys))}")
    pool = _Pool(tasks, list(slots), on_start, on_finish)
    with pool.relaying_signals():
        try:
            pool.run()
        finally:
            pool.stop_and_wait()  # after a bug in a callback too: no child keeps training
    return PoolResult(pool.returncodes, pool.stopped_by)


@dataclass
class _Running:
    task: Task
    slot: int
    process: subprocess.Popen
    signalled: bool = False
    worker: _Worker | None = None  # the task runs in this worker (its process is ``process``)


class _Worker:
    """``python -m lbtkit.pool_worker``: one slot's process for ``in_worker`` tasks, one
    task at a time (a JSON line in, its exit code out). It ends itself after a task that did
    not exit 0; at the end of the pool its input is closed and it ends with 0."""

    def __init__(self, env: Mapping[str, str], first_log: Path) -> None:
        with first_log.open("a") as errors:  # what it prints before its first task starts
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lbtkit.pool_worker"], env=env, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=errors,
                preexec_fn=_terminate_with_parent(os.getpid()))
        os.set_blocking(self.process.stdout.fileno(), False)
        self._unread = b""

    def send(self, task: Task) -> None:
        request = {"args": list(map(str, task.command[len(_LBTKIT):])), "log": str(task.log),
                   "env": dict(task.env)}
        with contextlib.suppress(BrokenPipeError):  # it just died: exit_code() says how
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()

    def exit_code(self) -> int | None:
        """The running task's exit code once it ended (the worker's own when the worker
        died first: a signal before the task could answer), else None."""
        with contextlib.suppress(BlockingIOError):
            self._unread += self.process.stdout.read() or b""
        if b"\n" in self._unread:
            line, self._unread = self._unread.split(b"\n", 1)
            return int(line)
        return self.process.poll()

    def close(self) -> None:
        """No more tasks: the worker ends at the end of its input."""
        with contextlib.suppress(BrokenPipeError, OSError):
            self.process.stdin.close()


class _Pool:
    def __init__(self, tasks: list[Task], slots: list[Mapping[str, str]],
                 on_start: Callable[[Task, int], None] | None,
                 on_finish: Callable[[Task, int], bool | None] | None) -> None:
        self.waiting = tasks
        self.free_slots = list(range(len(slots)))
        self.slots = slots
        self.on_start, self.on_finish = on_start, on_finish
        self.running: list[_Running] = []
        self.returncodes: dict[Hashable, int] = {}
        self.stopped_by: str | None = None
        self.adopting = False
        self.workers: dict[int, _Worker] = {}  # slot -> its worker, while it can take tasks
        self.retired: list[subprocess.Popen] = []  # workers that are ending

    @contextlib.contextmanager
    def relaying_signals(self):
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for name in _RELAYED:
                signum = getattr(signal, name)
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop(signal.Signals(signum).name)

    def stop(self, reason: str) -> None:
        """Start nothing more; SIGTERM every running child once (it checkpoints, exits 75)."""
        if self.stopped_by is None:
            self.stopped_by = reason
            log.info("pool: %s; stopping %d running task(s) at their next checkpoint",
                     reason, len(self.running))
        for running in self.running:
            if not running.signalled and running.process.poll() is None:
                running.signalled = True
                with contextlib.suppress(ProcessLookupError):
                    running.process.send_signal(signal.SIGTERM)
        if self.adopting:  # launchers' workers whose launcher already died
            known = {running.process.pid for running in self.running}
            known |= {worker.process.pid for worker in self.workers.values()}
            for pid in child_pids():
                if pid not in known:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)

    def run(self) -> None:
        while self.running or (self.waiting and self.stopped_by is None):
            while self.free_slots and self.stopped_by is None and \
                    (task := self._next_ready()) is not None:
                self._start(task, self.free_slots.pop(0))
            if not self.running and self.waiting and self.stopped_by is None:
                # every one waits for a task that was dropped
                log.info("pool: %s not started: tasks they need did not run",
                         ", ".join(str(task.key) for task in self.waiting))
                self.waiting.clear()
            self._reap()
            if self.running:
                time.sleep(POLL_SECONDS)

    def _next_ready(self) -> Task | None:
        """The first waiting task whose ``after`` all ended with 0 (taken off the list);
        those waiting for a task that ended otherwise are dropped on the way."""
        for task in list(self.waiting):
            ended = [self.returncodes[key] for key in task.after if key in self.returncodes]
            if any(code != 0 for code in ended):
                self.waiting.remove(task)
                log.info("pool: %s not started: a task it needs did not succeed", task.key)
            elif len(ended) == len(task.after):
                self.waiting.remove(task)
                return task
        return None

    def _start(self, task: Task, slot: int) -> None:
        if task.launches and not self.adopting:
            self.adopting = become_subreaper()
        task.log.parent.mkdir(parents=True, exist_ok=True)
        with task.log.open("a") as out:
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            out.write(f"--- {stamp} {' '.join(map(str, task.command))}\n")
        slot_env = {**os.environ, **self.slots[slot]}
        if task.in_worker:
            # the worker's own environment is the slot's; each task adds its env for its run
            # only (pool_worker restores it), so nothing of one task's env leaks to the next
            worker = self._worker(slot, slot_env, task.log)
            worker.send(task)
            running = _Running(task, slot, worker.process, worker=worker)
        else:
            with task.log.open("a") as out:
                process = subprocess.Popen(
                    list(map(str, task.command)), env={**slot_env, **task.env},
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    preexec_fn=_terminate_with_parent(os.getpid()))
            running = _Running(task, slot, process)
        self.running.append(running)
        if self.stopped_by is not None:  # a signal came while it started
            self.stop(self.stopped_by)
        if self.on_start is not None:
            self.on_start(task, running.process.pid)

    def _reap(self) -> None:
        for running in list(self.running):
            returncode = (running.process.poll() if running.worker is None
                          else running.worker.exit_code())
            if returncode is None:
                continue
            self.running.remove(running)
            if running.worker is not None and returncode != 0:
                self._retire(running.slot)  # it ends itself: the slot's next task, a new one
            self.free_slots.append(running.slot)
            self.free_slots.sort()
            self.returncodes[running.task.key] = returncode
            if self.on_finish is not None and self.on_finish(running.task, returncode):
                self.stop("a task was interrupted")

    def _worker(self, slot: int, env: Mapping[str, str], log: Path) -> _Worker:
        """The slot's worker, started now when it has none (or its last one died idle)."""
        if slot in self.workers and self.workers[slot].process.poll() is not None:
            self._retire(slot)
        if slot not in self.workers:
            self.workers[slot] = _Worker(env, log)
        return self.workers[slot]

    def _retire(self, slot: int) -> None:
        worker = self.workers.pop(slot)
        worker.close()
        self.retired.append(worker.process)

    def stop_and_wait(self) -> None:
        if self.running:
            self.stop(self.stopped_by or "the pool is stopping")
        while self.running:
            self._reap()
            if self.running:
                time.sleep(POLL_SECONDS)
        for slot in list(self.workers):
            self._retire(slot)
        for process in self.retired:
            process.wait()  # an idle worker ends at once; a stopped one after its checkpoint
        if self.adopting:
            stop_orphans(float(launcher_environment(os.environ)[
                "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]))


def _terminate_with_parent(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn``: the child gets SIGTERM (checkpoint, exit 75) when its parent dies,
    even by SIGKILL, which the parent cannot relay (Linux ``PR_SET_PDEATHSIG``). None where
    prctl is missing (not Linux): there a SIGKILLed parent leaves its children running."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not after the fork
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec
