"""The analyses of trained runs: interpolate, landscape, sharpness, noise-scale, their worker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from lbtkit.cli.common import app, check_num_processes, console, user_errors
from lbtkit.cli.flags import with_spec_flags
from lbtkit.cli.options import num_processes_option, output_option
from lbtkit.cpu import threads_for_the_load
from lbtkit.errors import UserError
from lbtkit.fileio import read_json
from lbtkit.specs import DEFAULT_GRID, InterpolationSpec, NoiseScaleSpec, PlaneSpec, SharpnessSpec

# An analysis's settings are its spec's fields: with_spec_flags makes them options, with their
# help and defaults, where the command's ``spec_flags`` parameter stands. A bad value's error
# names its source as this.
CLI = "the command line"
# Experiment trackers for the analysis commands (as `run --log-with`).
LogWithOption = Annotated[
    str, typer.Option("--log-with", help="also log the results to these experiment trackers, "
                      "comma-separated (tensorboard, wandb, mlflow, ...: Accelerate's); each "
                      "needs its extra, e.g. pip install 'lbtkit[tensorboard]'"),
]
GridTrackingDirOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--tracking-dir", help="where local trackers write (default: OUTPUT's "
                 "parent/tracking; the tracker run is named like OUTPUT)"),
]
RunTrackingDirOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--tracking-dir", help="where local trackers write (default: the run's own, "
                 "so the results sit beside its training curves at its final step)"),
]
TrackingProjectOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--tracking-project", help="tracker project / experiment name (W&B, MLflow; "
                 "default: the measured run's, otherwise lbtkit)"),
]


@app.command()
@user_errors
@with_spec_flags(InterpolationSpec())
def interpolate(
    sb_run: Annotated[Path, typer.Argument(help="the small-batch run directory")],
    lb_run: Annotated[Path, typer.Argument(help="the large-batch run directory")],
    output: output_option("where to write"),
    spec_flags: dict,
    num_processes: num_processes_option("split the alpha grid over N processes") = None,
    log_with: LogWithOption = "",
    tracking_dir: GridTrackingDirOption = None,
    tracking_project: TrackingProjectOption = None,
) -> None:
    """Evaluate theta(a) = a*theta_LB + (1-a)*theta_SB over a grid of a (Keskar's plot).

    \b
    Example:
        lbtkit interpolate runs/sb runs/lb --alphas -1:2:25 --output interp
    """
    from lbtkit.landscape import run_interpolation
    from lbtkit.tracking import requested_trackers

    trackers = requested_trackers(log_with)
    spec = InterpolationSpec.from_dict(spec_flags, source=CLI)
    _grid_command("interpolation", spec, [sb_run, lb_run], output, num_processes,
                  lambda: run_interpolation(spec, sb_run, lb_run, output),
                  trackers=trackers, tracking_dir=tracking_dir,
                  tracking_project=tracking_project)


@app.command()
@user_errors
@with_spec_flags(PlaneSpec(), exclude=("x", "y"))  # --grid gives both
def landscape(
    run_dir: Annotated[Path, typer.Argument(help="the run at the centre of the plane")],
    *,
    other: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--other", help="a second run (needed by, and only by, --directions between)"),
    ] = None,
    output: output_option("where to write (default: RUN/landscape, or "
                          "RUN/landscape-to-OTHERNAME with --other)", optional=True) = None,
    grid: Annotated[
        str, typer.Option(help="START:STOP:COUNT (inclusive) for both axes, or X-SPEC,Y-SPEC")
    ] = DEFAULT_GRID,
    spec_flags: dict,
    num_processes: num_processes_option("split the grid points over N processes") = None,
    log_with: LogWithOption = "",
    tracking_dir: GridTrackingDirOption = None,
    tracking_project: TrackingProjectOption = None,
) -> None:
    """Loss and accuracy on a 2-D plane around RUN (Li et al. 2018): landscape.csv/png/json.

    \b
    Example:
        lbtkit landscape runs/sb --grid -1:1:21
        lbtkit landscape runs/sb --other runs/lb --directions between
    """
    from lbtkit.landscape.plane import check_runs, default_output, run_landscape
    from lbtkit.tracking import requested_trackers

    trackers = requested_trackers(log_with)
    spec = PlaneSpec.from_dict({**spec_flags, "grid": grid}, source=CLI)
    spec.check_other(other)
    output = output if output is not None else default_output(run_dir, other)
    if num_processes is not None and num_processes > 1:
        check_runs(run_dir, other)  # one error line here rather than one per worker
    _grid_command("landscape", spec, [run_dir, other], output, num_processes,
                  lambda: run_landscape(spec, run_dir, other, output),
                  trackers=trackers, tracking_dir=tracking_dir,
                  tracking_project=tracking_project)


def _grid_command(analysis: str, spec: Any, runs: list[Path | None], output: Path,
                  num_processes: int | None, run_here, *, trackers: list[str],
                  tracking_dir: str | None, tracking_project: str | None) -> None:
    """The tail of interpolate/landscape: run the grid here (``run_here()``, its paths
    printed) or on N launched processes, then log it to the trackers; exit with the code."""
    from lbtkit.analysis_workers import launch_job
    from lbtkit.tracking import log_grid

    check_num_processes(num_processes)
    if num_processes is not None and num_processes > 1:
        code = launch_job(analysis, spec, runs, output, num_processes)
    else:
        with threads_for_the_load():
            _print_paths(run_here())
        code = 0
    if code == 0:
        log_grid(trackers, output, analysis, configured_dir=tracking_dir,
                 project=tracking_project)
    raise typer.Exit(code)


@app.command("analysis-worker", hidden=True)
@user_errors
def analysis_worker(
    job_file: Annotated[Path, typer.Argument(help="a launch-spec.json written by the launcher")],
) -> None:
    """(internal) One process of an analysis run by --num-processes N."""
    from lbtkit.analysis_workers import run_job

    _print_paths(run_job(job_file))


def _print_paths(paths: dict[str, Path] | None) -> None:
    for kind, path in (paths or {}).items():
        print(f"{kind}: {path}")


@app.command()
@user_errors
@with_spec_flags(SharpnessSpec(), exclude=("gradient_samples",))
def sharpness(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    spec_flags: dict,
    output: output_option("file to write (default RUN/sharpness.json)", optional=True) = None,
    num_processes: num_processes_option("split the sample's batches over N processes (the "
                                        "loss and its derivatives are summed across them)"
                                        ) = None,
    log_with: LogWithOption = "",
    tracking_dir: RunTrackingDirOption = None,
    tracking_project: TrackingProjectOption = None,
) -> None:
    """Keskar's sharpness of a trained solution, and optionally its Hessian spectrum/trace.

    \b
    Example:
        lbtkit sharpness runs/lb --eps 1e-3,5e-4 --subspace full,random:100
    """
    from lbtkit.landscape import run_sharpness
    from lbtkit.tracking import log_run_measurement, requested_trackers

    trackers = requested_trackers(log_with)
    spec = SharpnessSpec.from_dict(spec_flags, source=CLI)
    output = output if output is not None else run_dir / "sharpness.json"
    if _launched("sharpness", spec, run_dir, output, num_processes):
        result = read_json(output)
    else:
        with threads_for_the_load():
            result = run_sharpness(spec, run_dir, output=output)
    print(json.dumps(result, indent=2))
    log_run_measurement(trackers, run_dir, "sharpness", result, configured_dir=tracking_dir,
                        project=tracking_project)


@app.command("noise-scale")
@user_errors
@with_spec_flags(NoiseScaleSpec(), exclude=("chunk_size",))
def noise_scale(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    spec_flags: dict,
    output: output_option("file to write (default RUN/noise_scale.json)", optional=True) = None,
    num_processes: num_processes_option("split the random batches over N processes (the same "
                                        "numbers as one process)") = None,
    weights: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--weights", help="measure at these weights of the run's model instead of "
                     "its final ones, e.g. RUN/checkpoints/step-N/model.safetensors (default "
                     "output RUN/noise_scale-step-N.json)"),
    ] = None,
    log_with: LogWithOption = "",
    tracking_dir: RunTrackingDirOption = None,
    tracking_project: TrackingProjectOption = None,
    renamed_samples: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--samples", hidden=True, help="renamed --draws"),
    ] = None,
) -> None:
    """The gradient noise scale B_simple = tr(Sigma)/|G|^2 at a run's final weights, or at a
    checkpoint's (McCandlish et al. 2018), from gradient norms at two batch sizes.

    \b
    Example:
        lbtkit noise-scale runs/b1024 --batches 32,1024 --draws 32
    """
    from lbtkit.noise_scale import default_output, run_noise_scale
    from lbtkit.tracking import log_run_measurement, requested_trackers

    if renamed_samples is not None:
        raise UserError("noise-scale --samples is now --draws (random batches per batch size; "
                        "--samples counts training images in sharpness)")
    trackers = requested_trackers(log_with)
    spec = NoiseScaleSpec.from_dict(spec_flags, source=CLI)
    step = _measured_step(run_dir, weights, trackers)
    output = output if output is not None else default_output(run_dir, weights)
    if _launched("noise-scale", spec, run_dir, output, num_processes, weights=weights):
        result = read_json(output)
    else:
        with threads_for_the_load():
            result = run_noise_scale(spec, run_dir, output=output, weights=weights)
    at = "" if weights is None else f" at {weights}"
    console.print(_noise_scale_table(result, title=f"gradient noise scale of {run_dir}{at} "
                                                   f"({spec.draws} batches per size)"))
    print(f"written: {output}")
    log_run_measurement(trackers, run_dir, "noise_scale", result, configured_dir=tracking_dir,
                        project=tracking_project, step=step)


def _measured_step(run_dir: Path, weights: Path | None, trackers: list[str]) -> int | None:
    """The optimizer step a --weights measurement is logged at (its checkpoint's); None for
    the final weights (the run's last step). Refused before measuring when a tracker is
    asked for and the weights are not a checkpoint's: nothing would place them on the
    run's curves."""
    from lbtkit.checkpoint import checkpoint_step

    if weights is None or weights.resolve() == (run_dir / "model.safetensors").resolve():
        return None
    if not weights.is_file():
        raise UserError(f"--weights {weights}: " + ("a directory, not a weights file"
                                                    if weights.is_dir() else "no such file"))
    step = checkpoint_step(weights)
    if step is None and trackers:
        raise UserError(f"--log-with with --weights needs a checkpoint's weights "
                        f"(RUN/checkpoints/step-N/model.safetensors: its step places the "
                        f"measurement on the run's curves), not {weights}")
    return step


def _launched(analysis: str, spec: Any, run_dir: Path, output: Path,
              num_processes: int | None, *, weights: Path | None = None) -> bool:
    """With --num-processes N > 1, run ``analysis`` of ``run_dir`` (at ``weights``, if given)
    on N launched processes (exit with their code when it is not 0) and return True; else
    False (run it here)."""
    from lbtkit.analysis_workers import launch_job
    from lbtkit.checkpoint import load_weights
    from lbtkit.run_model import load_run

    check_num_processes(num_processes)
    if num_processes is None or num_processes == 1:
        return False
    model, _ = load_run(run_dir, device="cpu")  # one error line here rather than one per worker
    if weights is not None:
        load_weights(model, weights)
    code = launch_job(analysis, spec, [run_dir], output, num_processes, weights=weights)
    if code != 0:
        raise typer.Exit(code)
    return True


def _noise_scale_table(result: dict[str, Any], *, title: str) -> Table:
    table = Table("quantity", "estimate", "std error", title=title)
    for batch in result["batches"].values():
        table.add_row(f"E|G_B|^2, B = {batch['batch_size']}", f"{batch['mean']:.6g}",
                      f"{batch['std_error']:.2g}")
    table.add_row("|G|^2", f"{result['grad_sq']:.6g}", f"{result['grad_sq_std_error']:.2g}")
    table.add_row("tr(Sigma)", f"{result['trace_sigma']:.6g}",
                  f"{result['trace_sigma_std_error']:.2g}")
    b_simple = result["b_simple"]
    error = result.get("b_simple_std_error")
    table.add_row("B_simple", "not measurable (an estimate <= 0)" if b_simple is None
                  else f"{b_simple:.4g}", "" if error is None else f"{error:.2g}")
    return table
