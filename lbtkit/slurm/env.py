"""The SLURM environment of a job, read and typed: the SLURM_* variables (``SlurmEnv``) and the
GPUs this job may use on this node. Reading only; what to do with it is ``lbtkit.slurm.plan``
and ``lbtkit.slurm.requeue``."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from lbtkit.errors import UserError


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
            if not is_number(value):
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


def is_number(text: str) -> bool:
    """Digits 0-9 only: str.isdigit also takes '²' and other digits int() refuses."""
    return text.isascii() and text.isdigit()


def gpus_per_node(environ: Mapping[str, str], *, nvidia_smi: Callable[[], int] | None = None
                  ) -> int:
    """GPUs this job may use on this node: ``LBT_GPUS_PER_NODE``, else the count of
    ``CUDA_VISIBLE_DEVICES``, else ``SLURM_GPUS_ON_NODE``, else ``nvidia-smi -L``; 0 if none."""
    forced = environ.get("LBT_GPUS_PER_NODE", "")
    if forced:
        if not is_number(forced):
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
