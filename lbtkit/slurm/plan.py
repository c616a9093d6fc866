"""What a SLURM job of lbtkit runs, decided in Python (the job scripts only relay signals).

``jobs/*.sh`` call ``lbtkit job plan KIND ARGS...`` once: it reads the SLURM environment
(:class:`SlurmEnv`), the sweep plan (``load_sweep``) or the run flags, and prints bash
assignments the script evaluates: the command to run (``LBT_CMD``, with ``accelerate launch``,
``srun`` and an ``apptainer exec`` prefix as needed), how to relay a signal to it
(``LBT_RELAY``: ``pid``, or ``steps`` for an ``srun`` job step), and the command that judges the
outcome afterwards (``LBT_FINISH``: ``lbtkit job finish``, ``lbtkit.slurm.requeue``).
Everything here is a pure function of the environment and the files, unit-tested without
SLURM.

Environment read (all optional): ``LBT_LBTKIT`` / ``LBT_ACCELERATE`` (the commands, split on
spaces), ``LBT_EXEC`` (a command prefix, e.g. a pyxis ``srun``), ``LBT_GPUS_PER_NODE``,
``LBT_PORT``, ``LBT_IGNORE_ACCELERATE_CONFIG=1``, ``LBT_TORCH_HOME``, ``LBT_SIGNAL_MARGIN``
(seconds, the ``--signal=B:USR1@N`` of the job: torchrun's grace period), and for containers
``LBT_IMAGE``, ``LBT_RUNTIME`` (apptainer or singularity, found by the script), ``LBT_BIND``,
``LBT_DATA_DIR``, ``LBT_APPTAINER_ARGS``. docs/slurm.md documents them.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lbtkit.errors import UserError
from lbtkit.launch import launcher_environment
from lbtkit.slurm.container import container_prefix
from lbtkit.slurm.env import SlurmEnv, gpus_per_node, is_number

PORT_BASE = 20000  # rendezvous ports: PORT_BASE .. below the ephemeral range
FALLBACK_EPHEMERAL_START = 32768
KINDS = ("sweep", "run", "multinode", "report")


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
    seed = int(job_id) if job_id is not None and is_number(str(job_id)) else os.getpid()
    for offset in range(min(span, 64)):
        port = PORT_BASE + (seed + offset * 997) % span
        if is_free(port):
            return port
    raise UserError(f"no free rendezvous port in {PORT_BASE}..{top - 1} for job {job_id}")


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
        if not is_number(forced) or not 1 <= int(forced) <= 65535:
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


def output_dir(args: list[str], usage: str) -> str:
    run_dir = flag_value("--output", args)
    if not run_dir:
        raise UserError(f"usage: {usage} --output RUN_DIR [lbtkit run flags...] "
                        f"(--output is required: the job resumes from it)")
    return run_dir


def _plan_run(args: list[str], environ: Mapping[str, str], cwd: Path) -> JobPlan:
    run_dir = output_dir(args, "sbatch [sbatch flags] jobs/run.sh")
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
    run_dir = output_dir(args, "sbatch -N NODES [sbatch flags] jobs/multinode.sh")
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
