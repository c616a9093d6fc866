"""Start ``lbtkit run`` on N processes through ``accelerate launch`` and relay signals to it.

``lbtkit run --num-processes N`` is a convenience over typing the launcher command; both end
in the same code path (``lbtkit.train.run`` in every worker). The launcher's side only: what a
launched worker knows of its siblings (rank, world size, its share) is ``lbtkit.distributed``.
torchrun's grace period between its SIGTERM and SIGKILL follows the job's signal margin
(``launcher_environment``), here and in SLURM jobs (``lbtkit.slurm.plan``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from lbtkit.config import RunConfig
from lbtkit.errors import EXIT_INTERRUPTED, EXIT_SIGNAL_BASE, UserError
from lbtkit.fileio import write_json
from lbtkit.rundir import RunDir
from lbtkit.signals import stop_when_parent_dies

logger = logging.getLogger(__name__)

DEFAULT_SIGNAL_MARGIN = 120  # the job scripts' #SBATCH --signal=B:USR1@120


def signal_margin(environ: Mapping[str, str]) -> int:
    """Seconds between SLURM's SIGUSR1 and the time limit (``LBT_SIGNAL_MARGIN``)."""
    value = environ.get("LBT_SIGNAL_MARGIN", "") or str(DEFAULT_SIGNAL_MARGIN)
    if not (value.isascii() and value.isdigit()) or int(value) < 1:  # not '²', which int refuses
        raise UserError(f"LBT_SIGNAL_MARGIN must be a whole number of seconds, got {value!r}")
    return int(value)


def launcher_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What a torchrun launch needs besides the job's environment: a grace period between the
    SIGTERM it forwards and its SIGKILL that follows the job's signal margin, not torchrun's
    30 s (a slow step plus a checkpoint must fit in it)."""
    return {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(signal_margin(environ))}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lbtkit_launch_command(lbtkit_args: list[str], num_processes: int, port: int) -> list[str]:
    """``accelerate launch`` running ``lbtkit <lbtkit_args>`` on ``num_processes`` processes."""
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
        "--main_process_port", str(port),
        # lbtkit passes mixed precision to its Accelerator from the config (an explicit value
        # wins over the launcher's); naming the defaults only silences accelerate's warning.
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "lbtkit", *lbtkit_args,
    ]


def launch_command(config_file: Path, run_dir: Path, num_processes: int, port: int,
                   *, progress: bool = True) -> list[str]:
    """The accelerate launch command running this config on ``num_processes`` processes."""
    args = ["run", "--config", str(config_file), "--output", str(run_dir)]
    if not progress:
        args.append("--no-progress")
    return lbtkit_launch_command(args, num_processes, port)


def launch_run(config: RunConfig, num_processes: int, *, progress: bool = True) -> int:
    """Train ``config`` (resolved) on ``num_processes`` local processes; return the exit code."""
    from lbtkit.train import check_same_run

    run_dir = Path(config.output_dir)
    check_same_run(RunDir(run_dir), config)  # fail here, not N times in the workers
    run_dir.mkdir(parents=True, exist_ok=True)
    launch_config = run_dir / "launch-config.json"
    write_json(launch_config, config.to_dict())
    command = launch_command(launch_config, run_dir, num_processes, free_port(), progress=progress)
    return run_launched(command, run_dir)


def run_launched(command: list[str], run_dir: Path) -> int:
    """Run the launcher; forward SIGTERM/SIGUSR1/SIGINT to it as SIGTERM (which torchrun
    relays to its workers, unlike SIGUSR1); return the exit code the run's status implies.

    The workers run in sessions of their own: a launcher that dies (killed on its own, or by a
    signal before torchrun handles them) would leave them training. This process becomes
    their subreaper (Linux), so orphaned workers become its children: it sends them SIGTERM
    and waits for them (they checkpoint and stop) before it returns. The launcher gets SIGTERM
    when this process dies (a kill -9 of lbtkit), and the workers when the launcher dies.

    A run told to stop that ends without writing its results (the signal came while the
    processes were starting, before any handler was in: they died of it) exits 75, like a run
    stopped at a step: a rerun resumes from the last checkpoint, if there is one."""
    from lbtkit.errors import exit_code
    from lbtkit.launch_output import LaunchStderr, exit_code_of

    results_file = RunDir(run_dir).results_path
    before = results_file.stat().st_mtime_ns if results_file.exists() else None
    subreaper = become_subreaper()
    env = {**launcher_environment(os.environ), **os.environ}
    child: subprocess.Popen | None = None
    stderr: LaunchStderr | None = None
    stops: list[str] = []

    def relay(signum, frame) -> None:
        stops.append(signal.Signals(signum).name)
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
        for pid in child_pids(exclude=None if child is None else child.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    # Before the launcher starts: a signal in between must reach it, not end this process.
    previous = {s: signal.signal(s, relay) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        # stderr through LaunchStderr: lbtkit's lines, not torch-elastic's report of them
        child = subprocess.Popen(command, env=env, stderr=subprocess.PIPE,
                                 preexec_fn=_stop_with_parent(os.getpid()))
        stderr = LaunchStderr(child.stderr, run_dir)
        if stops:
            child.send_signal(signal.SIGTERM)
        returncode = child.wait()
        if subreaper:
            stop_orphans(int(env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    results = RunDir(run_dir).read_results()
    fresh = results_file.exists() and results_file.stat().st_mtime_ns != before
    stopped = bool(stops) and returncode != 0
    stderr.finish(explained_elsewhere=returncode == 0 or bool(results and fresh) or stopped)
    if results and fresh:
        return exit_code(results.get("status", ""))
    if stopped:
        logger.info("stopped by %s while the processes were starting or finishing (no "
                    "outcome recorded); rerun the same command", stops[0])
        return EXIT_INTERRUPTED
    if returncode != 0 and stderr.failed_exit:  # the launcher exits 1 whatever they did
        return exit_code_of(stderr.failed_exit)
    return returncode if returncode >= 0 else EXIT_SIGNAL_BASE - returncode  # killed: 128+N


def _stop_with_parent(parent: int):
    """A ``preexec_fn``: the child gets SIGTERM when ``parent`` dies (Linux; else nothing)."""
    def preexec() -> None:
        stop_when_parent_dies()
        if os.getppid() != parent:  # it died before the request was in
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def become_subreaper() -> bool:
    """Adopt orphaned descendants (``prctl(PR_SET_CHILD_SUBREAPER)``); False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def child_pids(exclude: int | None = None) -> list[int]:
    """This process's live children (adopted orphans included), from /proc."""
    pids: list[int] = []
    for task in Path("/proc/self/task").glob("*/children"):
        with contextlib.suppress(OSError):
            pids += [int(pid) for pid in task.read_text().split()]
    return [pid for pid in pids if pid != exclude]


def stop_orphans(grace: float) -> list[int]:
    """SIGTERM the workers a dead launcher left to us, wait up to ``grace`` s (they
    checkpoint), then SIGKILL; reap them. Returns their pids."""
    import time

    orphans = child_pids()
    for pid in orphans:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    waiting = set(orphans)
    while waiting:
        for pid in list(waiting):
            with contextlib.suppress(ChildProcessError):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if not done:
                    continue
            waiting.discard(pid)
        if waiting and time.monotonic() > deadline:
            for pid in waiting:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.1)
    return orphans
