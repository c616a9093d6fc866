"""Running a job's commands in an Apptainer/Singularity image (``LBT_IMAGE``): which host
directories to bind so that every path the run reads and writes is seen inside, and the
``RUNTIME exec ...`` prefix."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path

from lbtkit.errors import UserError


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
