"""Hand a grid over weight space to ``accelerate launch`` workers as one file.

``lbtkit interpolate|landscape --num-processes N`` writes ``OUTPUT/launch-spec.json`` (which
analysis, its spec, the runs it reads, where it writes) and launches the hidden command
``lbtkit analysis-worker OUTPUT/launch-spec.json`` on N processes; each reads the spec back
and takes its share of the grid. The workers therefore run exactly the validated spec the user
asked for, with no command line rebuilt flag by flag.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lbtkit.errors import ConfigError
from lbtkit.landscape.interpolate import run_interpolation
from lbtkit.landscape.plane import run_landscape
from lbtkit.rundir import read_json, write_json
from lbtkit.specs import InterpolationSpec, PlaneSpec

JOB_FILE = "launch-spec.json"
# analysis -> (its spec, its runner: runner(spec, *runs, output_dir) -> paths or None)
ANALYSES: dict[str, tuple[type, Callable[..., dict[str, Path] | None]]] = {
    "interpolation": (InterpolationSpec, run_interpolation),
    "landscape": (PlaneSpec, run_landscape),
}


def write_job(
    analysis: str,
    spec: InterpolationSpec | PlaneSpec,
    runs: Sequence[str | Path | None],
    output_dir: str | Path,
) -> Path:
    """Write ``output_dir/launch-spec.json`` for ``run_job``; its path. ``runs``: the run
    directories the analysis reads, in the runner's order (None for a missing optional one)."""
    spec_type, _ = _analysis(analysis)
    if not isinstance(spec, spec_type):
        raise TypeError(f"{analysis} needs a {spec_type.__name__}, got {type(spec).__name__}")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    path = output / JOB_FILE
    write_json(path, {
        "analysis": analysis,
        "spec": spec.to_dict(),
        "runs": [None if run is None else str(Path(run).resolve()) for run in runs],
        "output": str(output.resolve()),
    })
    return path


def run_job(path: str | Path, *, progress: bool = True) -> dict[str, Path] | None:
    """Run the analysis a ``write_job`` file describes, in this process (one of the launched
    workers); its output paths on the main process, None on the others."""
    job = read_json(Path(path))
    if not isinstance(job, dict) or not {"analysis", "spec", "runs", "output"} <= set(job):
        raise ConfigError(f"{path} is not an analysis launch file (written by write_job)")
    spec_type, runner = _analysis(job["analysis"])
    spec = spec_type.from_dict(job["spec"], source=str(path))
    return runner(spec, *job["runs"], job["output"], progress=progress)


def launch_job(
    analysis: str,
    spec: InterpolationSpec | PlaneSpec,
    runs: Sequence[str | Path | None],
    output_dir: str | Path,
    num_processes: int,
) -> int:
    """Run the analysis on ``num_processes`` local processes (``accelerate launch``); the exit
    code."""
    from lbtkit import launch

    job = write_job(analysis, spec, runs, output_dir)
    command = launch.lbtkit_launch_command(["analysis-worker", str(job)], num_processes,
                                           launch.free_port())
    return launch.run_launched(command, Path(output_dir))


def _analysis(name: str) -> tuple[type, Callable[..., Any]]:
    if name not in ANALYSES:
        raise ConfigError(f"unknown analysis {name!r}; known: {', '.join(ANALYSES)}")
    return ANALYSES[name]
