"""What a SLURM job of lbtkit runs, decided in Python (the job scripts only relay signals).

``jobs/*.sh`` call ``lbtkit job plan KIND ARGS...`` once: it reads the SLURM environment
(:class:`SlurmEnv`), the sweep plan (``load_sweep``) or the run flags, and prints bash
assignments the script evaluates: the command to run (``LBT_CMD``, with ``accelerate launch``,
``srun`` and an ``apptainer exec`` prefix as needed), how to relay a signal to it
(``LBT_RELAY``: ``pid``, or ``steps`` for an ``srun`` job step), and the command that judges the
outcome afterwards (``LBT_FINISH``: ``lbtkit job finish``, which reads results.json and prints
``requeue ID`` or ``exit CODE``). Everything here is a pure function of the environment and the
files, unit-tested without SLURM.

Environment read (all optional): ``LBT_LBTKIT`` / ``LBT_ACCELERATE`` (the commands, split on
spaces), ``LBT_EXEC`` (a command prefix, e.g. a pyxis ``srun``), ``LBT_GPUS_PER_NODE``,
``LBT_PORT``, ``LBT_IGNORE_ACCELERATE_CONFIG=1``, ``LBT_TORCH_HOME``, ``LBT_SIGNAL_MARGIN``
(seconds, the ``--signal=B:USR1@N`` of the job: torchrun's grace period), and for containers
``LBT_IMAGE``, ``LBT_RUNTIME`` (apptainer or singularity, found by the script), ``LBT_BIND``,
``LBT_DATA_DIR``, ``LBT_APPTAINER_ARGS``. docs/slurm.md documents them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lbtkit.errors import (
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    STATUS_COMPLETED,
    STATUS_DIVERGED,
    STATUS_INTERRUPTED,
    EnvironmentFault,
    UserError,
)

DEFAULT_SIGNAL_MARGIN = 120  # the scripts' #SBATCH --signal=B:USR1@120
PORT_BASE = 20000  # rendezvous ports: PORT_BASE .. below the ephemeral range
FALLBACK_EPHEMERAL_START = 32768
KINDS = ("sweep", "run", "multinode", "report")


@dataclass(frozen=True)
class SlurmEnv:
    """The SLURM_* variables a job reads, typed (None outside SLURM)."""

    job_id: str | None = None
    array_job_id: str | None = None
    array_task_id: int | None = None
    restart_count: int = 0
    num_nodes: int = 1
    node_id: int = 0
    nodelist: str | None = None
    cpus_per_task: int | None = None
    gpus_on_node: int | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> SlurmEnv:
        def number(name: str) -> int | None:
            value = environ.get(name, "").strip()
            if not value:
                return None
            if not _is_number(value):
                raise UserError(f"{name} must be a number, got {value!r}")
            return int(value)

        return cls(
            job_id=environ.get("SLURM_JOB_ID") or None,
            array_job_id=environ.get("SLURM_ARRAY_JOB_ID") or None,
            array_task_id=number("SLURM_ARRAY_TASK_ID"),
            restart_count=number("SLURM_RESTART_COUNT") or 0,
            num_nodes=number("SLURM_NNODES") or 1,
            node_id=number("SLURM_NODEID") or 0,
            nodelist=environ.get("SLURM_JOB_NODELIST") or None,
            cpus_per_task=number("SLURM_CPUS_PER_TASK"),
            gpus_on_node=number("SLURM_GPUS_ON_NODE"),
        )

    @property
    def requeue_id(self) -> str | None:
        """The id ``scontrol requeue`` must get: for an array task ``ARRAY_TASK``, because
        the last task's own job id equals the array's, which names every task."""
        if self.array_task_id is not None and self.array_job_id:
            return f"{self.array_job_id}_{self.array_task_id}"
        return self.job_id


def _is_number(text: str) -> bool:
    """Digits 0-9 only: str.isdigit also takes '²' and other digits int() refuses."""
    return text.isascii() and text.isdigit()


def gpus_per_node(environ: Mapping[str, str], *, nvidia_smi: Callable[[], int] | None = None
                  ) -> int:
    """GPUs this job may use on this node: ``LBT_GPUS_PER_NODE``, else the count of
    ``CUDA_VISIBLE_DEVICES``, else ``SLURM_GPUS_ON_NODE``, else ``nvidia-smi -L``; 0 if none."""
    forced = environ.get("LBT_GPUS_PER_NODE", "")
    if forced:
        if not _is_number(forced):
            raise UserError(f"LBT_GPUS_PER_NODE must be a number, got {forced!r}")
        return int(forced)
    if "CUDA_VISIBLE_DEVICES" in environ:
        visible = environ["CUDA_VISIBLE_DEVICES"].strip()
        if visible in ("", "-1", "NoDevFiles"):
            return 0
        return len([part for part in visible.split(",") if part.strip()])
    slurm = SlurmEnv.from_environ(environ)
    if slurm.gpus_on_node is not None:
        return slurm.gpus_on_node
    return (nvidia_smi or _nvidia_smi_count)()


def _nvidia_smi_count() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines())


def ephemeral_start(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> int:
    """The first port the kernel hands out to outgoing connections (Linux: 32768)."""
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return FALLBACK_EPHEMERAL_START


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def rendezvous_port(job_id: str | int | None, *, first_ephemeral: int | None = None,
                    is_free: Callable[[int], bool] = port_is_free) -> int:
    """A port for this job's rendezvous: derived from the job id (two jobs on one node get
    different ports), below the ephemeral range (no outgoing connection can hold it), and
    free here (else the next ones are tried, in the job's own order)."""
    top = first_ephemeral or ephemeral_start()
    span = max(top - PORT_BASE, 1)
    seed = int(job_id) if job_id is not None and _is_number(str(job_id)) else os.getpid()
    for offset in range(min(span, 64)):
        port = PORT_BASE + (seed + offset * 997) % span
        if is_free(port):
            return port
    raise UserError(f"no free rendezvous port in {PORT_BASE}..{top - 1} for job {job_id}")


def signal_margin(environ: Mapping[str, str]) -> int:
    """Seconds between SLURM's SIGUSR1 and the time limit (``LBT_SIGNAL_MARGIN``)."""
    value = environ.get("LBT_SIGNAL_MARGIN", "") or str(DEFAULT_SIGNAL_MARGIN)
    if not _is_number(value) or int(value) < 1:
        raise UserError(f"LBT_SIGNAL_MARGIN must be a whole number of seconds, got {value!r}")
    return int(value)


def launcher_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What a torchrun launch needs besides the job's environment: a grace period between the
    SIGTERM it forwards and its SIGKILL that follows the job's signal margin, not torchrun's
    30 s (a slow step plus a checkpoint must fit in it)."""
    return {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(signal_margin(environ))}


# --- arguments of `lbtkit run` ----------------------------------------------------------------


def flag_value(flag: str, args: Sequence[str]) -> str | None:
    """The value of ``FLAG VALUE`` or ``FLAG=VALUE`` among ``args`` (the first one)."""
    for position, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1:]
        if arg == flag and position + 1 < len(args):
            return args[position + 1]
    return None


def run_paths(args: Sequence[str]) -> list[str]:
    """Paths of ``lbtkit run`` flags a container must see besides ``--output``."""
    values = (flag_value(flag, args) for flag in ("--data-dir", "--config", "--init-weights"))
    return [value for value in values if value]


# --- containers ---------------------------------------------------------------------------------


def bind_dir(path: str | Path, cwd: str | Path) -> str | None:
    """The directory to bind so that ``path`` is seen in a container: its parent (a run
    directory need not exist yet), else the nearest existing ancestor; ``path`` itself when
    that is /; None when nothing but / would do."""
    absolute = Path(os.path.normpath(Path(cwd) / path))
    parent = absolute.parent
    while parent != Path("/") and not parent.is_dir():
        parent = parent.parent
    if parent != Path("/"):
        return str(parent)
    if absolute != Path("/") and absolute.exists():
        return str(absolute)
    return None


def container_binds(paths: Iterable[str | Path], bind_spec: str, cwd: str | Path) -> list[str]:
    """``LBT_BIND``'s entries, then the directories of ``paths`` not covered by one of them."""
    binds = [spec for spec in bind_spec.split(",") if spec]
    in_container = "APPTAINER_CONTAINER" in os.environ or "SINGULARITY_CONTAINER" in os.environ
    for spec in [] if in_container else binds:  # (in the image, the script checked them)
        if not os.path.exists(spec.split(":", 1)[0]):
            raise UserError(f"LBT_BIND: {spec.split(':', 1)[0]} does not exist "
                            f"(on {socket.gethostname()})")
    dirs = sorted({d for d in (bind_dir(p, cwd) for p in paths if p) if d})
    for directory in dirs:
        if "," in directory or ":" in directory:
            raise UserError(f"cannot bind {directory} into the container: apptainer bind "
                            f"paths cannot contain ',' or ':'")
        plain = [b.rstrip("/") for b in binds if ":" not in b]
        if not any((directory + "/").startswith(kept + "/") for kept in plain):
            binds.append(directory)
    return binds


def container_prefix(environ: Mapping[str, str], paths: Iterable[str | Path], gpus: int,
                     cwd: str | Path) -> list[str]:
    """``RUNTIME exec [--nv] [--bind ...] [--env TORCH_HOME=...] [args] IMAGE``."""
    runtime = environ.get("LBT_RUNTIME") or "apptainer"
    extra_paths = [environ.get("LBT_DATA_DIR", ""), environ.get("LBT_TORCH_HOME", "")]
    binds = container_binds([*paths, *extra_paths], environ.get("LBT_BIND", ""), cwd)
    prefix = [runtime, "exec", *(["--nv"] if gpus > 0 else [])]
    if binds:
        prefix += ["--bind", ",".join(binds)]
    torch_home = environ.get("LBT_TORCH_HOME")
    if torch_home:
        prefix += ["--env", f"TORCH_HOME={os.path.normpath(Path(cwd) / torch_home)}"]
    return [*prefix, *environ.get("LBT_APPTAINER_ARGS", "").split(), environ["LBT_IMAGE"]]


# --- the job plan ---------------------------------------------------------------------------------


@dataclass
class JobPlan:
    """What a job script runs, and how it relays a signal to it."""

    command: list[str]
    run_dir: str
    finish: list[str]  # `lbtkit job finish` (in the container, if any)
    relay: str = "pid"  # "steps": signal the job's srun steps (scancel), not the process
    env: dict[str, str] = field(default_factory=dict)
    temp_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_shell(self) -> str:
        """Bash assignments for ``eval`` in the job script."""
        def array(values: Sequence[str]) -> str:
            return "(" + " ".join(shlex.quote(v) for v in values) + ")"

        lines = [f"LBT_CMD={array(self.command)}", f"LBT_FINISH={array(self.finish)}",
                 f"LBT_RELAY={self.relay}", f"LBT_RUN_DIR={shlex.quote(self.run_dir)}",
                 f"LBT_TEMP_FILES={array(self.temp_files)}"]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
        return "\n".join(lines) + "\n"


@dataclass
class _Setup:
    """The commands of this job: the prefix, lbtkit, accelerate and its launch options."""

    prefix: list[str]
    lbtkit: list[str]
    accelerate: list[str]
    launch_args: list[str]
    relay: str
    env: dict[str, str]
    temp_files: list[str]
    notes: list[str]


def _setup(environ: Mapping[str, str], paths: Sequence[str | Path], cwd: str | Path,
           gpus: int, *, launches: bool) -> _Setup:
    """``launches``: the job runs accelerate launch (the accelerate config matters)."""
    exec_prefix = environ.get("LBT_EXEC", "").split()
    image = environ.get("LBT_IMAGE")
    if image and exec_prefix:
        raise UserError("LBT_IMAGE and LBT_EXEC are both set: LBT_IMAGE runs the commands in "
                        "the image itself; unset LBT_EXEC")
    notes: list[str] = []
    env: dict[str, str] = {}
    temp_files: list[str] = []
    # --multi_gpu also means N CPU processes over gloo on a node without GPUs (lbtkit then
    # makes a CPU Accelerator). "no" only overrides a default config's precision/dynamo.
    launch_args = ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if launches and environ.get("LBT_IGNORE_ACCELERATE_CONFIG") == "1":
        handle, config = tempfile.mkstemp(prefix="lbtkit-accelerate-", suffix=".yaml",
                                          dir=environ.get("TMPDIR") or None)
        with os.fdopen(handle, "w") as out:
            out.write("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\n")
        launch_args += ["--config_file", config]
        temp_files.append(config)
    elif launches and not image:
        home = environ.get("HF_HOME") or os.path.join(
            environ.get("XDG_CACHE_HOME") or os.path.join(environ.get("HOME", "/tmp"), ".cache"),
            "huggingface")
        default = Path(home) / "accelerate" / "default_config.yaml"
        if default.is_file():
            notes.append(f"note: accelerate launch will read {default} "
                         f"(set LBT_IGNORE_ACCELERATE_CONFIG=1 to ignore it)")
    if image:
        prefix = container_prefix(environ, [*paths, *temp_files], gpus, cwd)
        notes.append(f"container: {image} via {prefix[0]} ({gpus} GPU(s): "
                     f"{'--nv' if gpus else 'no --nv'}); bound: "
                     f"{prefix[prefix.index('--bind') + 1] if '--bind' in prefix else 'nothing'}")
    else:
        prefix = exec_prefix
        if environ.get("LBT_TORCH_HOME"):
            env["TORCH_HOME"] = environ["LBT_TORCH_HOME"]
    relay = "steps" if prefix and os.path.basename(prefix[0]) == "srun" else "pid"
    # In an image, the image's lbtkit and accelerate (a host interpreter path is not there).
    lbtkit = (environ.get("LBT_LBTKIT") or "lbtkit").split()
    accelerate = (environ.get("LBT_ACCELERATE") or "accelerate").split()
    return _Setup(prefix, lbtkit, accelerate, launch_args, relay, env, temp_files, notes)


def _local_command(setup: _Setup, gpus: int, port: int, args: Sequence[str]) -> list[str]:
    """``lbtkit ARGS`` on this node: one process, or accelerate launch over G >= 2 GPUs."""
    if gpus >= 2:
        return [*setup.prefix, *setup.accelerate, "launch", *setup.launch_args,
                "--num_processes", str(gpus), "--num_machines", "1",
                "--main_process_port", str(port), "-m", "lbtkit", *args]
    return [*setup.prefix, *setup.lbtkit, *args]


def _finish(setup: _Setup) -> list[str]:
    """``lbtkit job finish`` where the run's lbtkit is (the script adds KIND -- ARGS)."""
    return [*setup.prefix, *setup.lbtkit, "job", "finish"]


def plan_job(kind: str, args: Sequence[str], environ: Mapping[str, str] | None = None,
             cwd: str | Path | None = None) -> JobPlan:
    """The plan of one job script (``kind``: sweep, run, multinode, report)."""
    environ = os.environ if environ is None else environ
    cwd = Path(cwd or os.getcwd())
    planners = {"sweep": _plan_sweep, "run": _plan_run, "multinode": _plan_multinode,
                "report": _plan_report}
    if kind not in planners:
        raise UserError(f"unknown job kind {kind!r}: one of {', '.join(KINDS)}")
    return planners[kind](list(args), environ, cwd)


def _port(environ: Mapping[str, str], slurm: SlurmEnv) -> int:
    forced = environ.get("LBT_PORT", "")
    if forced:
        if not _is_number(forced) or not 1 <= int(forced) <= 65535:
            raise UserError(f"LBT_PORT must be a port number in 1..65535, got {forced!r}")
        return int(forced)
    return rendezvous_port(slurm.job_id)


def _describe(slurm: SlurmEnv, gpus: int) -> str:
    return (f"job {slurm.job_id or 'none'} (restart {slurm.restart_count}) on "
            f"{socket.gethostname()}, {gpus} GPU(s)")


def _plan_sweep(args: list[str], environ: Mapping[str, str], cwd: Path) -> JobPlan:
    from lbtkit.sweep import load_sweep

    if len(args) != 1:
        raise UserError("usage: sbatch --array=0-<N-1>[%K] [sbatch flags] jobs/sweep.sh "
                        "SWEEP_DIR   or: lbtkit sweep submit SWEEP_DIR")
    if not (cwd / args[0] / "sweep.json").is_file():
        raise UserError(f"no sweep plan at {args[0]}/sweep.json "
                        f"(make one with: lbtkit sweep plan ... --output {args[0]})")
    sweep = load_sweep(cwd / args[0])
    root = Path(sweep["sweep_dir"])
    runs = sweep["runs"]
    slurm = SlurmEnv.from_environ(environ)
    if slurm.array_task_id is None:
        raise UserError(
            f"jobs/sweep.sh runs one sweep entry per SLURM array task, and "
            f"SLURM_ARRAY_TASK_ID is not set. Submit all {len(runs)} entries with "
            f"`lbtkit sweep submit {root}` or `sbatch --array=0-{len(runs) - 1} "
            f"jobs/sweep.sh {root}`")
    index = slurm.array_task_id
    if index >= len(runs):
        raise UserError(f"array index {index} is out of range: {root} has {len(runs)} "
                        f"entries (submit with --array=0-{len(runs) - 1})")
    run_dir = root / runs[index]["run_dir"]
    data_dirs = sorted({str(r["config"]["data_dir"]) for r in runs
                        if r.get("config", {}).get("data_dir")})
    gpus = gpus_per_node(environ)
    setup = _setup(environ, [str(root), str(run_dir), *data_dirs], cwd, gpus,
                   launches=gpus >= 2)
    processes = max(gpus, 1)
    notes = [f"sweep {root} entry {index} of {len(runs)} -> {run_dir}",
             f"array {slurm.array_job_id or slurm.job_id}_{index}; {_describe(slurm, gpus)}",
             *setup.notes]
    planned = sweep.get("world_size")
    if planned != processes:
        notes.append(f"note: the plan was checked for {planned} process(es), this task runs "
                     f"{processes}: same global batch, per-device batch and accumulation "
                     f"differ (plan with --num-processes {processes} to match)")
    task = ["sweep", "run-task", str(root), "--index", str(index)]
    command = _local_command(setup, gpus, _port(environ, slurm) if gpus >= 2 else 0, task)
    env = {**setup.env, **(launcher_environment(environ) if gpus >= 2 else {})}
    return JobPlan(command, str(run_dir), _finish(setup), setup.relay,
                   env, setup.temp_files, notes)


def _output(args: list[str], usage: str) -> str:
    run_dir = flag_value("--output", args)
    if not run_dir:
        raise UserError(f"usage: {usage} --output RUN_DIR [lbtkit run flags...] "
                        f"(--output is required: the job resumes from it)")
    return run_dir


def _plan_run(args: list[str], environ: Mapping[str, str], cwd: Path) -> JobPlan:
    run_dir = _output(args, "sbatch [sbatch flags] jobs/run.sh")
    slurm = SlurmEnv.from_environ(environ)
    gpus = gpus_per_node(environ)
    setup = _setup(environ, [run_dir, *run_paths(args)], cwd, gpus, launches=gpus >= 2)
    command = _local_command(setup, gpus, _port(environ, slurm) if gpus >= 2 else 0,
                             ["run", *args])
    env = {**setup.env, **(launcher_environment(environ) if gpus >= 2 else {})}
    notes = [f"run -> {run_dir}; {_describe(slurm, gpus)}", *setup.notes]
    return JobPlan(command, run_dir, _finish(setup), setup.relay, env,
                   setup.temp_files, notes)


# Each node's srun task: the launch command (up to "--"), its own --machine_rank (expanded on
# the node, in bash before any container starts: in the batch shell every node would be rank
# 0 and the launch would hang), then the rest.
NODE_SCRIPT = ('n=1; for arg in "$@"; do [ "$arg" = -- ] && break; n=$((n + 1)); done; '
               'exec "${@:1:n-1}" --machine_rank "$SLURM_NODEID" "${@:n+1}"')


def node_hosts(nodelist: str) -> list[str]:
    """``scontrol show hostnames NODELIST``."""
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                         text=True, timeout=60)
    hosts = out.stdout.split()
    if out.returncode != 0 or not hosts:
        raise UserError(f"scontrol show hostnames {nodelist} failed: {out.stderr.strip()}")
    return hosts


def _plan_multinode(args: list[str], environ: Mapping[str, str], cwd: Path,
                    hosts: Callable[[str], list[str]] = node_hosts) -> JobPlan:
    run_dir = _output(args, "sbatch -N NODES [sbatch flags] jobs/multinode.sh")
    slurm = SlurmEnv.from_environ(environ)
    if not slurm.job_id:
        raise UserError("jobs/multinode.sh runs under SLURM: submit it with "
                        "sbatch -N NODES jobs/multinode.sh --output RUN_DIR ...")
    gpus = gpus_per_node(environ)
    setup = _setup(environ, [run_dir, *run_paths(args)], cwd, gpus, launches=True)
    if setup.relay == "steps":
        raise UserError("LBT_EXEC starts with srun, and jobs/multinode.sh runs srun itself "
                        "(one task per node): a step inside a step would not start. For a "
                        "container use LBT_IMAGE (Apptainer); for pyxis add --container-* "
                        "flags to LBT_SRUN_ARGS")
    nodes, per_node = slurm.num_nodes, max(gpus, 1)
    first = hosts(slurm.nodelist or "")[0]
    port = _port(environ, slurm)
    launch = [*setup.prefix, *setup.accelerate, "launch", *setup.launch_args,
              "--num_machines", str(nodes), "--num_processes", str(nodes * per_node)]
    # A static rendezvous (torchrun --master_addr/--master_port/--node_rank), hosted by node
    # rank 0 on the job's own port. Not c10d: for one machine accelerate sets no c10d endpoint
    # (torchrun falls back to localhost:29400, shared by every job on the node), and with
    # several, any agent whose host matches the endpoint may open the store first, which
    # fails accelerate's port check on rank 0 when two "nodes" share a machine.
    if nodes > 1:
        launch += ["--main_process_ip", first, "--main_process_port", str(port),
                   "--same_network"]
    else:
        launch += ["--main_process_port", str(port)]
    srun = ["srun", "--kill-on-bad-exit=1", f"--nodes={nodes}", f"--ntasks={nodes}",
            "--ntasks-per-node=1"]
    if slurm.cpus_per_task:  # since SLURM 22.05 srun does not inherit it from sbatch
        srun.append(f"--cpus-per-task={slurm.cpus_per_task}")
    srun += environ.get("LBT_SRUN_ARGS", "").split()
    command = [*srun, "bash", "-c", NODE_SCRIPT, "lbtkit-node", *launch, "--",
               "-m", "lbtkit", "run", *args]
    notes = [f"run -> {run_dir}; job {slurm.job_id} (restart {slurm.restart_count}): {nodes} "
             f"node(s) x {per_node} process(es), rendezvous at {first}:{port}", *setup.notes]
    return JobPlan(command, run_dir, _finish(setup), "steps",
                   {**setup.env, **launcher_environment(environ)}, setup.temp_files, notes)


def _plan_report(args: list[str], environ: Mapping[str, str], cwd: Path) -> JobPlan:
    if not args:
        raise UserError("usage: sbatch --dependency=afterany:<array job id> jobs/report.sh "
                        "SWEEP_DIR [report flags]")
    if not (cwd / args[0] / "sweep.json").is_file():
        raise UserError(f"no sweep plan at {args[0]}/sweep.json")
    slurm = SlurmEnv.from_environ(environ)
    output = flag_value("--output", args[1:])
    setup = _setup(environ, [args[0], *([output] if output else [])], cwd, 0, launches=False)
    command = [*setup.prefix, *setup.lbtkit]  # the script adds `sweep status`, `report`
    notes = [f"report of {args[0]}; job {slurm.job_id or 'none'} on {socket.gethostname()}",
             *setup.notes]
    return JobPlan(command, args[0], [], setup.relay, setup.env, setup.temp_files, notes)


# --- after the run ----------------------------------------------------------------------------


def fresh_status(run_dir: str | Path, since: float) -> str | None:
    """The status in RUN_DIR/results.json if it was written at or after ``since``."""
    from lbtkit.rundir import RunDir

    run = RunDir(Path(run_dir))
    try:
        if run.results_path.stat().st_mtime < since:
            return None
        results = run.read_results()
    except (OSError, ValueError, UserError):
        return None
    status = results.get("status") if isinstance(results, dict) else None
    return status if isinstance(status, str) else None


# Requeues in a row that found the run's last checkpoint where the previous attempt left it:
# after this many, the job stops requeueing (a time limit that leaves no time to train, a run
# that dies on start) instead of coming back until someone cancels it.
MAX_IDLE_RESTARTS = 3
REQUEUE_FILE = ".requeues.json"  # in the run directory: the step and idle count so far


def outcome(*, status: str | None, exit_status: int, signals: Sequence[str],
            diverged_exit: int, slurm: SlurmEnv, run_dir: str,
            checkpoint: str | None = None, idle_restarts: int = 0
            ) -> tuple[str, str, list[str]]:
    """What the job does after its run: ``("requeue", ID, notes)`` or ``("exit", CODE,
    notes)``. The run's fresh results.json decides over the exit code: under accelerate
    launch every worker exit code arrives as 1, and a signal that came as a run completed
    may end it with 75. A run the job told to stop (``signals``) that ended without an
    outcome (killed while starting: 143) was interrupted too. ``checkpoint``: the run's
    latest, if any; ``idle_restarts``: attempts in a row that made no progress."""
    told_to_stop = bool(signals) and exit_status != EXIT_OK
    if status == STATUS_INTERRUPTED or (status is None and (
            exit_status == EXIT_INTERRUPTED or told_to_stop)):
        return _interrupted(exit_status, signals, slurm, run_dir, checkpoint, idle_restarts)
    if status is None and exit_status == EXIT_DIVERGED:
        status = STATUS_DIVERGED
    if status == STATUS_DIVERGED:
        return "exit", str(diverged_exit), [
            f"run diverged (non-finite loss), recorded in {run_dir}/results.json"]
    if status == STATUS_COMPLETED:
        notes = [f"run completed: {run_dir}"]
        if exit_status != 0:
            notes.insert(0, f"note: the run completed; its command exited {exit_status} "
                            f"after that (a launcher's code, or a signal as it finished)")
        return "exit", str(EXIT_OK), notes
    if exit_status != 0:
        detail = f", status {status}" if status else ""
        return "exit", str(exit_status), [
            f"run failed (exit {exit_status}{detail}); see the log above"]
    return "exit", str(exit_status), []


def _interrupted(exit_status: int, signals: Sequence[str], slurm: SlurmEnv, run_dir: str,
                 checkpoint: str | None, idle_restarts: int) -> tuple[str, str, list[str]]:
    where = (f"with a checkpoint in {checkpoint}" if checkpoint else
             f"before its first checkpoint (it starts {run_dir} from the beginning)")
    if "USR1" not in signals and "TERM" in signals:
        return "exit", str(EXIT_INTERRUPTED), [
            f"stopped by SIGTERM (scancel, or preemption that SLURM requeues itself) {where}; "
            f"not requeueing; resubmit the same job to resume"]
    notes = [f"run interrupted {where} (exit {exit_status})"]
    if not slurm.requeue_id:
        return "exit", str(EXIT_INTERRUPTED), [
            *notes, "not under SLURM: rerun the same command to resume"]
    if idle_restarts >= MAX_IDLE_RESTARTS:
        return "exit", str(EXIT_INTERRUPTED), [*notes, (
            f"not requeueing: the last {idle_restarts} attempts made no progress (restart "
            f"{slurm.restart_count}); a time limit (-t) must leave training time beyond the "
            f"signal margin (LBT_SIGNAL_MARGIN, --signal=B:USR1@N); fix it and resubmit the "
            f"same job to resume")]
    return "requeue", slurm.requeue_id, notes


def finish_job(kind: str, args: Sequence[str], *, exit_status: int, signals: Sequence[str],
               since: float, environ: Mapping[str, str] | None = None,
               cwd: str | Path | None = None) -> tuple[str, str, list[str]]:
    """``outcome`` for a job script's run (the run directory found as ``plan_job`` does)."""
    environ = os.environ if environ is None else environ
    cwd = Path(cwd or os.getcwd())
    slurm = SlurmEnv.from_environ(environ)
    if kind == "sweep":
        run_dir = _sweep_entry_dir(list(args), slurm, cwd)
        diverged_exit = EXIT_OK  # a diverged entry is a result of the sweep, not a crash
    elif kind in ("run", "multinode"):
        run_dir = _output(list(args), f"jobs/{kind}.sh")
        diverged_exit = EXIT_DIVERGED
    else:
        raise UserError(f"unknown job kind {kind!r} to finish: one of sweep, run, multinode")
    status = fresh_status(cwd / run_dir, since)
    checkpoint = _latest_checkpoint(cwd / run_dir)
    idle = 0
    if slurm.requeue_id and status in (None, STATUS_INTERRUPTED):
        idle = count_idle_restart(cwd / run_dir, checkpoint)
    return outcome(status=status, exit_status=exit_status, signals=signals,
                   diverged_exit=diverged_exit, slurm=slurm, run_dir=run_dir,
                   checkpoint=checkpoint and str(Path(run_dir) / "checkpoints" /
                                                 Path(checkpoint).name),
                   idle_restarts=idle)


def _sweep_entry_dir(args: list[str], slurm: SlurmEnv, cwd: Path) -> str:
    from lbtkit.sweep import load_sweep

    if len(args) != 1:
        raise UserError("usage: lbtkit job finish sweep -- SWEEP_DIR (what jobs/sweep.sh runs)")
    sweep = load_sweep(cwd / args[0])
    index = slurm.array_task_id or 0
    if index >= len(sweep["runs"]):
        raise UserError(f"array index {index} is out of range: {args[0]} has "
                        f"{len(sweep['runs'])} entries")
    return sweep["runs"][index]["run_dir"]


def _latest_checkpoint(run_dir: Path) -> str | None:
    from lbtkit.checkpoint import latest_checkpoint

    try:
        found = latest_checkpoint(run_dir / "checkpoints")
    except (OSError, UserError):
        return None
    return str(found) if found is not None else None


def count_idle_restart(run_dir: Path, checkpoint: str | None) -> int:
    """Record this attempt's end in RUN/.requeues.json; how many attempts in a row ended with
    the latest checkpoint where the one before left it (0 when this one made progress)."""
    from lbtkit.fileio import write_json

    path = run_dir / REQUEUE_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {}
    record = record if isinstance(record, dict) else {}
    before, idle = record.get("checkpoint"), record.get("idle")
    idle = idle if isinstance(idle, int) and not isinstance(idle, bool) else 0
    idle = idle + 1 if before == (checkpoint and Path(checkpoint).name) else 0
    with contextlib.suppress(OSError, UserError, EnvironmentFault):  # cannot record: count 0
        write_json(path, {"checkpoint": checkpoint and Path(checkpoint).name, "idle": idle})
    return idle


# --- the scripts as package data --------------------------------------------------------------


def installed_jobs_dir() -> Path:
    """The job scripts shipped inside the package (``lbtkit/jobs``)."""
    return Path(__file__).resolve().parent / "jobs"
