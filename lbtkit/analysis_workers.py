"""Hand an analysis to ``accelerate launch`` workers as one file.

``lbtkit interpolate|landscape|sharpness|noise-scale --num-processes N`` writes a launch file
(which analysis, its spec, the runs it reads, where it writes) and launches the hidden command
``lbtkit analysis-worker FILE`` on N processes; each reads the spec back and takes its share
(of the grid, of the sample's batches, of the random batches). The workers therefore run
exactly the validated spec the user asked for, with no command line rebuilt flag by flag.

The launch file is ``OUTPUT/launch-spec.json`` for the analyses that write a directory
(interpolation, landscape) and ``OUTPUT`` with the suffix ``.launch.json`` for those that
write one JSON file (sharpness, noise scale).

(These are accelerate's worker processes; SLURM jobs and their scripts are ``lbtkit.slurm``.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lbtkit.errors import ConfigError
from lbtkit.fileio import read_json, write_json
from lbtkit.specs import InterpolationSpec, NoiseScaleSpec, PlaneSpec, SharpnessSpec, Spec

JOB_FILE = "launch-spec.json"


@dataclass(frozen=True)
class Analysis:
    """An analysis a launch file can name: its spec type, whether it writes one file (else a
    directory), and ``run(spec, runs, output, progress)`` -> the output paths the main
    worker prints (None on the others, and for a one-file analysis, whose launching command
    shows the file itself: ``lbtkit sharpness`` prints JSON, so its workers print nothing)."""

    spec_type: type[Spec]
    writes_file: bool
    run: Callable[..., dict[str, Path] | None]  # (spec, runs, output, progress[, weights=])


def _interpolation(spec, runs, output, progress):
    from lbtkit.landscape.interpolate import run_interpolation

    return run_interpolation(spec, *runs, output, progress=progress)


def _landscape(spec, runs, output, progress):
    from lbtkit.landscape.plane import run_landscape

    return run_landscape(spec, *runs, output, progress=progress)


def _sharpness(spec, runs, output, progress):
    from lbtkit.landscape.sharpness import run_sharpness

    run_sharpness(spec, runs[0], output=output, progress=progress)
    return None


def _noise_scale(spec, runs, output, progress, weights=None):
    from lbtkit.noise_scale import run_noise_scale

    run_noise_scale(spec, runs[0], output=output, weights=weights)
    return None


ANALYSES: dict[str, Analysis] = {
    "interpolation": Analysis(InterpolationSpec, False, _interpolation),
    "landscape": Analysis(PlaneSpec, False, _landscape),
    "sharpness": Analysis(SharpnessSpec, True, _sharpness),
    "noise-scale": Analysis(NoiseScaleSpec, True, _noise_scale),
}


def job_path(analysis: str, output: str | Path) -> Path:
    """Where the launch file of ``analysis`` writing to ``output`` goes."""
    output = Path(output)
    return output.with_name(output.name + ".launch.json") if _analysis(analysis).writes_file \
        else output / JOB_FILE


def write_job(
    analysis: str,
    spec: Spec,
    runs: Sequence[str | Path | None],
    output: str | Path,
    *,
    weights: str | Path | None = None,
) -> Path:
    """Write the launch file for ``run_job``; its path. ``runs``: the run directories the
    analysis reads, in the runner's order (None for a missing optional one); ``output``: the
    directory or file it writes; ``weights``: other weights of the run to measure at (only
    the noise scale takes them)."""
    kind = _analysis(analysis)
    if not isinstance(spec, kind.spec_type):
        raise TypeError(f"{analysis} needs a {kind.spec_type.__name__}, "
                        f"got {type(spec).__name__}")
    if weights is not None and analysis != "noise-scale":
        raise TypeError(f"{analysis} does not take other weights")
    path = job_path(analysis, output)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {
        "analysis": analysis,
        "spec": spec.to_dict(),
        "runs": [None if run is None else str(Path(run).resolve()) for run in runs],
        "output": str(Path(output).resolve()),
        **({} if weights is None else {"weights": str(Path(weights).resolve())}),
    })
    return path


def run_job(path: str | Path, *, progress: bool = True) -> dict[str, Path] | None:
    """Run the analysis a ``write_job`` file describes, in this process (one of the launched
    workers); its output paths on the main process, None on the others."""
    job = read_json(Path(path))
    if not isinstance(job, dict) or not {"analysis", "spec", "runs", "output"} <= set(job):
        raise ConfigError(f"{path} is not an analysis launch file (written by write_job)")
    kind = _analysis(job["analysis"])
    spec = kind.spec_type.from_dict(job["spec"], source=str(path))
    weights = {"weights": job["weights"]} if job.get("weights") else {}
    return kind.run(spec, job["runs"], job["output"], progress, **weights)


def launch_job(
    analysis: str,
    spec: Spec,
    runs: Sequence[str | Path | None],
    output: str | Path,
    num_processes: int,
    *,
    weights: str | Path | None = None,
) -> int:
    """Run the analysis on ``num_processes`` local processes (``accelerate launch``); the exit
    code."""
    from lbtkit import launch

    job = write_job(analysis, spec, runs, output, weights=weights)
    command = launch.lbtkit_launch_command(["analysis-worker", str(job)], num_processes,
                                           launch.free_port())
    return launch.run_launched(command, job.parent)


def _analysis(name: str) -> Analysis:
    if name not in ANALYSES:
        raise ConfigError(f"unknown analysis {name!r}; known: {', '.join(ANALYSES)}")
    return ANALYSES[name]
