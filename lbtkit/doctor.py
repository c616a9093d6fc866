"""``lbtkit doctor``: everything a user should know before burning GPU hours.

Each check is cheap and load-free (no dataset is read, no model is built): versions, visible
GPUs, a stray Accelerate default config, the SLURM allocation, whether the data set and the
pretrained weights are where the config says, and whether the output directory is writable.
A missing required item is a ``fail`` naming the command that fetches it; ``run_doctor``
returns nonzero when any check failed.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import sys
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lbtkit.cpu import CpuPolicy, UsableCpus, cpu_policy
from lbtkit.errors import EXIT_ENVIRONMENT, EXIT_OK, ConfigError

Status = Literal["ok", "warn", "fail"]

# What the SLURM row shows, in order: (label, variables tried in order).
_SLURM_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("job", ("SLURM_JOB_ID",)),
    ("name", ("SLURM_JOB_NAME",)),
    ("array task", ("SLURM_ARRAY_TASK_ID",)),
    ("partition", ("SLURM_JOB_PARTITION",)),
    ("nodes", ("SLURM_JOB_NUM_NODES", "SLURM_NNODES")),
    ("nodelist", ("SLURM_JOB_NODELIST", "SLURM_NODELIST")),
    ("node", ("SLURMD_NODENAME",)),
    ("tasks", ("SLURM_NTASKS",)),
    ("cpus/task", ("SLURM_CPUS_PER_TASK",)),
    ("gpus", ("SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "SLURM_GPUS_PER_NODE", "SLURM_GPUS")),
    ("restarts", ("SLURM_RESTART_COUNT",)),
)


@dataclass(frozen=True)
class Check:
    """One line of the report. ``fix`` says what to do about a warn or a fail."""

    name: str
    status: Status
    detail: str
    fix: str | None = None


def collect_checks(
    *,
    data_dir: str | Path,
    dataset: str,
    pretrained: str,
    output_dir: str | Path,
    require_gpu: bool = False,
    threads: int | None = None,
) -> list[Check]:
    """Run every check; nothing here raises for a missing or broken item, it reports it.
    ``threads`` is the run's ``threads`` setting (None: derived)."""
    checks = _version_checks(require_gpu)
    checks.append(_gpu_check(require_gpu))
    checks.append(_container_check())
    checks.append(_slurm_check())
    checks.append(cpu_check(threads=threads))
    checks.extend(_accelerate_config_checks())
    checks.append(_dataset_check(dataset, Path(data_dir)))
    checks.append(_weights_check(pretrained))
    checks.append(_output_dir_check(Path(output_dir)))
    return checks


def doctor_settings(
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, str]:
    """``data_dir``, ``dataset``, ``pretrained`` and ``output_dir`` exactly as ``lbtkit run``
    with the same preset, config file and flags would use them. A config that does not validate
    (say, a missing weights file) still yields its values, so the checks can report the problem;
    an unknown preset or an unreadable config file raises ConfigError."""
    from lbtkit.config import RunConfig, build_config, file_values, preset_values

    try:
        config = build_config(preset=preset, config_file=config_file, overrides=overrides)
    except ConfigError:
        config = RunConfig()
        if preset:
            config = config.updated(preset_values(preset), source=f"preset {preset!r}")
        if config_file:
            config = config.updated(file_values(config_file), source=str(config_file))
        config = config.updated(overrides or {}, source="command line")
    return {
        "data_dir": config.data_dir,
        "dataset": config.dataset,
        "pretrained": config.pretrained,
        "output_dir": config.output_dir or "runs",
        "threads": config.threads,
    }


def run_doctor(
    *,
    data_dir: str | Path,
    dataset: str,
    pretrained: str,
    output_dir: str | Path,
    require_gpu: bool = False,
    threads: int | None = None,
    console: Console | None = None,
) -> int:
    """Print the checks (a table on a terminal, plain lines otherwise); 1 if any failed."""
    checks = collect_checks(
        data_dir=data_dir,
        dataset=dataset,
        pretrained=pretrained,
        output_dir=output_dir,
        require_gpu=require_gpu,
        threads=threads,
    )
    console = console or Console(highlight=False)
    if console.is_terminal:
        _print_table(checks, console)
    else:
        _print_plain(checks, console)
    failed = [c for c in checks if c.status == "fail"]
    warned = [c for c in checks if c.status == "warn"]
    ok = len(checks) - len(failed) - len(warned)
    summary = f"doctor: {ok} ok, {len(warned)} warnings, {len(failed)} failed"
    if failed:
        summary += " (" + ", ".join(c.name for c in failed) + "): fix these before submitting"
    console.print(summary, markup=False, highlight=False, soft_wrap=True)
    return EXIT_ENVIRONMENT if failed else EXIT_OK


# --- printing --------------------------------------------------------------------------------

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def _print_table(checks: list[Check], console: Console) -> None:
    table = Table("check", "status", "detail", show_lines=False)
    for c in checks:
        detail = escape(c.detail)
        if c.fix:
            detail += f"\n[dim]fix:[/dim] {escape(c.fix)}"
        table.add_row(c.name, f"[{_STYLE[c.status]}]{c.status}[/]", detail)
    console.print(table)


def _print_plain(checks: list[Check], console: Console) -> None:
    # SLURM .out files and pipes: one grep-able line per check, the fix indented below it.
    width = max(len(c.name) for c in checks)
    for c in checks:
        console.print(
            f"{c.status:<4}  {c.name:<{width}}  {c.detail}", markup=False, highlight=False,
            soft_wrap=True,
        )
        if c.fix:
            console.print(
                f"{'':<4}  {'':<{width}}  fix: {c.fix}", markup=False, highlight=False,
                soft_wrap=True,
            )


# --- versions and devices --------------------------------------------------------------------


def _version_checks(require_gpu: bool) -> list[Check]:
    import torch

    from lbtkit.version import __version__

    checks = [
        Check("lbtkit", "ok", __version__),
        Check("python", "ok", f"{platform.python_version()} ({sys.executable})"),
        Check("torch", "ok", torch.__version__),
    ]
    try:
        import torchvision

        checks.append(Check("torchvision", "ok", torchvision.__version__))
    except Exception as exc:  # a broken torchvision install fails in many ways
        checks.append(Check("torchvision", "fail", f"cannot import: {_one_line(exc)}",
                            "install a torchvision build that matches torch"))
    cuda = torch.version.cuda
    if cuda:
        checks.append(Check("CUDA runtime", "ok", f"{cuda} (torch built for it)"))
        cudnn = _quiet(torch.backends.cudnn.version)
        checks.append(Check("cuDNN", "ok" if cudnn else "warn",
                            _cudnn_text(cudnn) if cudnn else "not available"))
        nccl = _quiet(torch.cuda.nccl.version)
        nccl_text = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl or "")
        checks.append(Check("NCCL", "ok" if nccl else "warn", nccl_text or "not available",
                            None if nccl else "multi-GPU DDP needs a torch build with NCCL"))
    else:
        checks.append(Check(
            "CUDA runtime", "fail" if require_gpu else "warn",
            f"none: this torch ({torch.__version__}) is a CPU-only build",
            "install a CUDA build of torch (or use the lbtkit container image)",
        ))
    try:
        import accelerate

        checks.append(Check("accelerate", "ok", accelerate.__version__))
    except Exception as exc:
        checks.append(Check("accelerate", "fail", f"cannot import: {_one_line(exc)}",
                            "pip install 'accelerate>=1.0'"))
    return checks


def _cudnn_text(version: int) -> str:
    # 90400 -> 9.4.0 (cuDNN >= 9 encodes major*10000 + minor*100 + patch; 8.x used *1000).
    if version >= 90000:
        return f"{version // 10000}.{version % 10000 // 100}.{version % 100}"
    return f"{version // 1000}.{version % 1000 // 100}.{version % 100}"


def _gpu_check(require_gpu: bool) -> Check:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA initialization: no driver" and the like
        count = torch.cuda.device_count() if torch.version.cuda else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    suffix = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
    if count:
        gpus = []
        for i in range(count):
            props = torch.cuda.get_device_properties(i)
            gpus.append(f"{i}: {props.name} {props.total_memory / 2**30:.1f} GiB")
        return Check("GPUs", "ok", f"{count} visible{suffix}: " + "; ".join(gpus))
    allocated = _slurm_gpus()
    if allocated:
        return Check(
            "GPUs", "fail",
            f"SLURM allocated GPUs ({allocated}) but torch sees none{suffix}",
            "in a container pass --nv (apptainer) or --gpus all (docker); check that torch "
            "is a CUDA build and the node's driver is loaded (nvidia-smi)",
        )
    if require_gpu:
        return Check("GPUs", "fail", f"none visible{suffix}",
                     "run on a GPU node (e.g. srun --gres=gpu:1 ...) or drop --require-gpu")
    return Check("GPUs", "warn", f"none: runs on CPU{suffix}",
                 "fine for smoke tests; request GPUs for real runs")


def _slurm_gpus() -> str:
    for var in ("SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        value = os.environ.get(var, "").strip()
        if value and value != "0":
            return f"{var}={value}"
    return ""


def _container() -> str | None:
    """'apptainer: IMAGE', 'docker', or None on the host."""
    image = os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER")
    if image:
        return f"apptainer: {image}"
    if Path("/.dockerenv").exists():
        return "docker"
    return None


def _in_lbtkit_image() -> bool:
    """True inside the lbtkit Docker/Apptainer image (the Dockerfile writes this file)."""
    return Path("/opt/lbtkit/base-torch.txt").is_file()


def _container_check() -> Check:
    return Check("container", "ok", _container() or "none (host environment)")


def _slurm_check() -> Check:
    if "SLURM_JOB_ID" not in os.environ:
        return Check("SLURM", "ok", "not inside a SLURM job")
    parts = []
    for label, names in _SLURM_FIELDS:
        value = next((os.environ[n] for n in names if os.environ.get(n)), None)
        if value is None:
            continue
        if label == "array task" and os.environ.get("SLURM_ARRAY_JOB_ID"):
            value = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{value}"
        parts.append(f"{label} {value}")
    return Check("SLURM", "ok", ", ".join(parts))


# --- CPUs ------------------------------------------------------------------------------------


def cpu_check(*, threads: int | None = None, environ: Mapping[str, str] = os.environ,
              load: float | None = None, online_cpus: int | None = None,
              usable: UsableCpus | None = None) -> Check:
    """Warn when the CPUs are oversubscribed: the run's threads times its local processes above
    the usable CPUs, or a 1-minute load average above the machine's online CPUs (load counts
    runnable threads on all of them, so it is compared with all of them, not with the share
    this process may use). The arguments after ``threads`` override what is read (tests)."""
    policy = cpu_policy(threads, environ, usable=usable)
    load = os.getloadavg()[0] if load is None else load
    online = online_cpus or os.cpu_count() or 1
    wait = ", ".join(f"{k}={v}" for k, v in policy.wait.items()) or "none set"
    detail = (f"{policy.threads} thread(s) x {policy.local_processes} process(es) on "
              f"{policy.usable_cpus} usable CPU(s) ({policy.usable_from}); threads from "
              f"{policy.threads_from}; load average {load:.1f} on {online} CPU(s); "
              f"OpenMP wait: {wait} ({policy.wait_from})")
    if policy.threads * policy.local_processes > policy.usable_cpus:
        return Check("CPUs", "warn", "oversubscribed: " + detail,
                     f"use at most {policy.usable_cpus // policy.local_processes} thread(s) per "
                     "process (--threads, or unset OMP_NUM_THREADS to let lbtkit choose)")
    if load > online:
        return Check("CPUs", "warn", "busy machine: " + detail, _busy_machine_advice(policy))
    return Check("CPUs", "ok", detail)


def _busy_machine_advice(policy: CpuPolicy) -> str:
    if policy.adaptive:
        return ("other processes compete for the CPUs and runs will be slower; lbtkit leaves "
                "the CPUs they keep busy to them (its thread count follows their load)")
    if policy.threads == 1:
        return "other processes compete for the CPUs and runs will be slower"
    return (f"{policy.threads} threads pinned by the {policy.threads_from} do not follow the "
            "load: with OpenMP's spinning threads a busy machine can make each step ~10x "
            "slower; let lbtkit choose (no --threads, no OMP_NUM_THREADS) or pin 1 thread")


# --- Accelerate ------------------------------------------------------------------------------


def accelerate_default_config_paths() -> list[Path]:
    """Where ``accelerate launch`` looks for its default config, computed now (accelerate's own
    module constant is frozen at import time): ``$HF_HOME/accelerate`` or
    ``${XDG_CACHE_HOME:-~/.cache}/huggingface/accelerate``."""
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface"
    )
    folder = Path(os.path.expanduser(hf_home)) / "accelerate"
    return [folder / "default_config.yaml", folder / "default_config.json"]


def _accelerate_config_checks() -> list[Check]:
    found = [p for p in accelerate_default_config_paths() if p.is_file()]
    checks = []
    if found:
        checks.append(Check(
            "accelerate config", "warn",
            f"a default config is in effect: {found[0]} (accelerate launch merges it into "
            "every launch: process count, machine rank, mixed precision, ...)",
            f"move it aside (mv {shlex.quote(str(found[0]))} {shlex.quote(str(found[0]))}.off) "
            "or point HF_HOME at a directory without one; the lbtkit images set HF_HOME",
        ))
    else:
        checks.append(Check("accelerate config", "ok",
                            f"no default config ({accelerate_default_config_paths()[0].parent})"))
    env = sorted(k for k in os.environ if k.startswith("ACCELERATE_"))
    if env:
        checks.append(Check(
            "accelerate env", "warn", "set: " + ", ".join(f"{k}={os.environ[k]}" for k in env),
            "unset them unless you mean them: they override launch flags",
        ))
    return checks


# --- data and weights ------------------------------------------------------------------------


def _dataset_check(dataset: str, data_dir: Path) -> Check:
    from lbtkit.data.idx import IDX_LAYOUTS
    from lbtkit.data.registry import dataset_files

    label = f"dataset {dataset}"
    try:
        files = dataset_files(dataset, data_dir)
    except ConfigError as exc:
        return Check(label, "fail", str(exc))
    if files is None:
        source = "bundled with scikit-learn" if dataset == "digits" else "generated, no files"
        return Check(label, "ok", source)
    root = data_dir.expanduser().absolute()
    missing = [f for f in files if not f.is_file()]
    layout = IDX_LAYOUTS.get(dataset)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        fix = f"on a machine with internet (a login node): {fetch_command(dataset, root)}"
        if layout is not None and layout.package:
            fix = f"apt-get install {layout.package}, or {fix}"
        if _in_lbtkit_image():
            fix += " (the path as this container sees it: fetch on the host, then bind it in)"
        return Check(label, "fail", f"not found in {root}: missing {missing[0]}{more}", fix)
    folders = sorted({f.parent for f in files})
    where = ", ".join(map(str, folders))
    total = sum(f.stat().st_size for f in files)
    sizes = ", ".join(f"{f.name} {_size_text(f.stat().st_size)}" for f in files) \
        if len(files) <= 4 else f"{len(files)} files"
    detail = f"found in {where}: {sizes}; {_size_text(total)} in all"
    if layout is not None and any(f.parent in layout.system_folders for f in files):
        # Found only through the system folder: nodes without the package will not find it.
        return Check(label, "ok", f"{detail} (the {layout.package} package; not in {root})")
    return Check(label, "ok", detail)


def _size_text(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"


def fetch_command(what: str, data_dir: str | Path | None = None) -> str:
    """The command that downloads ``what`` into the place the checks look."""
    if data_dir is None:
        return f"lbtkit fetch {what}"
    return f"lbtkit fetch {what} --data-dir {shlex.quote(str(data_dir))}"


def imagenet_weights_path() -> Path:
    """Where ``--pretrained imagenet`` finds the MobileNetV2 weights (lbtkit.models.mobilenet
    owns the answer: the torch hub cache, ``$TORCH_HOME/hub/checkpoints``)."""
    from lbtkit.models.mobilenet import imagenet_weights_path as weights_path

    return Path(weights_path())


def weights_hash_ok(path: Path) -> bool:
    """torch.hub's check: the sha256 of the file starts with the hash in its name."""
    from torch.hub import HASH_REGEX

    match = HASH_REGEX.search(path.name)
    if not match:
        return True  # nothing to compare against
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest().startswith(match.group(1))


def _weights_check(pretrained: str) -> Check:
    if pretrained == "none":
        return Check("weights", "ok", "not used (pretrained = none)")
    if pretrained != "imagenet":
        path = Path(pretrained).expanduser()
        if path.is_file():
            return Check("weights", "ok", f"file {path} ({path.stat().st_size / 2**20:.1f} MiB)")
        return Check("weights", "fail", f"pretrained weights file not found: {path}",
                     "pass an existing .pth/.safetensors file, or --pretrained imagenet|none")
    try:
        path = imagenet_weights_path()
    except Exception as exc:  # torchvision missing or broken: reported above as well
        return Check("weights", "fail", f"cannot locate the ImageNet weights: {_one_line(exc)}",
                     "install a torchvision build that matches torch")
    torch_home = os.environ.get("TORCH_HOME")
    where = f"TORCH_HOME={torch_home}" if torch_home else "TORCH_HOME unset: ~/.cache/torch"
    if not path.is_file():
        command = fetch_command("weights")
        if torch_home:
            command = f"TORCH_HOME={shlex.quote(torch_home)} {command}"
        fix = f"on a machine with internet, into the cache the jobs read: {command}"
        if _in_lbtkit_image():
            fix = ("build the image with BAKE_WEIGHTS=1, or on a machine with internet fetch "
                   "them into a shared directory (TORCH_HOME=DIR lbtkit fetch weights) and run "
                   "the container with TORCH_HOME=DIR and DIR bound in")
        return Check(
            "weights", "fail", f"ImageNet MobileNetV2 weights not in the torch hub cache: {path}",
            fix,
        )
    if not weights_hash_ok(path):
        return Check("weights", "fail", f"{path} is corrupt (its sha256 does not match its name)",
                     f"delete it, then {fetch_command('weights')}")
    return Check("weights", "ok", f"ImageNet MobileNetV2 in {path} ({where})")


# --- output ----------------------------------------------------------------------------------


def _output_dir_check(output_dir: Path) -> Check:
    target = output_dir.expanduser().absolute()
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return Check("output dir", "fail", f"{target}: {probe} is not a directory",
                     "choose another --output")
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".lbtkit-doctor-"):
            pass
    except OSError as exc:
        return Check("output dir", "fail", f"{target}: cannot write in {probe} ({exc.strerror})",
                     "choose a writable --output (e.g. on the shared scratch file system)")
    free = shutil.disk_usage(probe).free / 2**30
    state = "writable" if probe == target else f"will be created (in writable {probe})"
    return Check("output dir", "ok", f"{target} {state}, {free:.1f} GiB free")


# --- helpers ---------------------------------------------------------------------------------


def _quiet(fn):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    except Exception:
        return None


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
