"""Whole studies in one command: ``lbtkit study keskar``, ``study fashion``, ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lbtkit.cli.common import (
    app,
    check_at_least_one,
    check_num_processes,
    user_errors,
    with_config_flags,
)
from lbtkit.config import RunConfig, build_config
from lbtkit.specs import DEFAULT_ALPHAS, InterpolationSpec, KeskarStudySpec, SharpnessSpec

study_app = typer.Typer(help="Whole studies in one command.", no_args_is_help=True)
app.add_typer(study_app, name="study")

# The options the whole-study commands share.
StudyOutput = Annotated[Path, typer.Option("--output", help="where index.md and the artefacts go")]
DataDir = Annotated[str, typer.Option("--data-dir", help="where to look for fashion-mnist first "
                                      "(then /usr/share/datasets/fashion-mnist)")]
ShowProgress = Annotated[bool, typer.Option(help="show progress")]


@study_app.command("keskar")
@user_errors
@with_config_flags(exclude=("output_dir", "name", "batch_size"))
def study_keskar(
    output: Annotated[Path, typer.Option("--output", help="the study directory")],
    preset: Annotated[Optional[str], typer.Option(help="e.g. keskar-c1")] = None,  # noqa: UP045
    config: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--config", help="TOML file with base settings"),
    ] = None,
    sb: Annotated[int, typer.Option("--sb", help="small batch size")] = 256,
    lb: Annotated[int, typer.Option("--lb", help="large batch size")] = 5000,
    alphas: Annotated[str, typer.Option(help="interpolation grid")] = DEFAULT_ALPHAS,
    bn: Annotated[str, typer.Option(help="BatchNorm handling (see interpolate)")] = "recalibrate",
    eps: Annotated[str, typer.Option(help="comma list of sharpness box sizes")] = "1e-3,5e-4",
    subspace: Annotated[str, typer.Option(help="full | random:P")] = "full",
    iters: Annotated[int, typer.Option(help="L-BFGS-B iterations")] = 10,
    hessian_k: Annotated[int, typer.Option(help="top Hessian eigenvalues (0: skip)")] = 1,
    trace: Annotated[bool, typer.Option(help="Hutchinson trace")] = True,
    samples: Annotated[int, typer.Option(help="training samples in the loss")] = 4096,
    progress: Annotated[bool, typer.Option(help="show progress")] = True,
    num_processes: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--num-processes", help="run each training, the interpolation and "
                     "each sharpness on N processes (accelerate launch, DDP)"),
    ] = None,
    *,
    config_flags: dict,
) -> None:
    """Train SB and LB from one initialisation, interpolate, measure sharpness, report.

    \b
    Example:
        lbtkit study keskar --preset keskar-c1 --sb 256 --lb 5000 --output c1
    """
    from lbtkit.errors import exit_code
    from lbtkit.studies.keskar import keskar_study

    base = build_config(preset=preset, config_file=config, overrides=config_flags, resolve=False)
    spec = KeskarStudySpec(
        sb=sb, lb=lb,
        interpolation=InterpolationSpec.from_dict(
            {"alphas": alphas, "bn": bn, "eval_batch_size": base.eval_batch_size},
            source="the command line"),
        sharpness=SharpnessSpec.from_dict(
            {"eps": eps, "subspaces": subspace, "iters": iters, "hessian": hessian_k != 0,
             "top_k": hessian_k or 1, "trace": trace, "samples": samples,
             "batch_size": base.eval_batch_size, "seed": base.seed},
            source="the command line"),
    )
    check_num_processes(num_processes)
    summary = keskar_study(base, spec, output, progress=progress,
                           num_processes=num_processes or 1)
    print(f"report: {output / 'report.md'}")
    raise typer.Exit(exit_code(summary["status"]))


@study_app.command("fashion")
@user_errors
def study_fashion(
    output: StudyOutput,
    quick: Annotated[
        bool, typer.Option("--quick", help="2 seeds, 1-2 epochs, small measurements: minutes")
    ] = False,
    seeds: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--seeds", help="seeds 0..N-1 for the Keskar part (default: 3; 2 with "
                     "--quick); each seed adds about 10 minutes")
    ] = None,
    data_dir: DataDir = RunConfig.data_dir,
    progress: ShowProgress = True,
    jobs: Annotated[int, typer.Option(
        "--jobs", "-j", help="seeds, and sweep entries, at once: each in a process of its own "
        "(logs in OUTPUT/work/); the same numbers")] = 1,
) -> None:
    """Keskar's F1 protocol over seeds and the batch-size sweep on Fashion-MNIST -> index.md.

    \b
    Example:
        lbtkit study fashion --output docs/fashion --jobs 2   # make study
        lbtkit study fashion --output /tmp/fashion --quick
    """
    from lbtkit.errors import exit_code
    from lbtkit.studies.fashion import FULL, QUICK, run_fashion_study

    check_at_least_one("--jobs", jobs)
    spec = QUICK if quick else FULL
    if seeds is not None:
        spec = spec.updated(seeds=tuple(range(seeds)))
    summary = run_fashion_study(output, spec, data_dir=data_dir, progress=progress, jobs=jobs)
    if summary["status"] == "completed":
        print(f"index: {summary['index']}")
    raise typer.Exit(exit_code(summary["status"]))


@study_app.command("critical-batch")
@user_errors
def study_critical_batch(
    output: StudyOutput,
    quick: Annotated[
        bool, typer.Option("--quick", help="3 batch sizes, easy targets, short runs: minutes")
    ] = False,
    jobs: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--jobs", help="runs at once on this machine, one thread each (default: "
                     "2 where 2 or more CPUs are usable, else 1)")
    ] = None,
    remedies: Annotated[
        bool, typer.Option(help="also tune LARS and LAMB at the largest batch sizes")
    ] = True,
    data_dir: DataDir = RunConfig.data_dir,
    progress: ShowProgress = True,
) -> None:
    """Steps to target per batch size, tuned lr, B_crit fit, noise-scale prediction.

    \b
    Example:
        lbtkit study critical-batch --output docs/critical-batch   # make study
        lbtkit study critical-batch --output /tmp/cb --quick
    """
    from lbtkit.studies.critical_batch import FULL, QUICK, default_jobs, run_critical_batch_study
    from lbtkit.train import exit_code

    spec = QUICK if quick else FULL
    spec = spec.updated(jobs=jobs if jobs is not None else default_jobs(),
                        remedies=spec.remedies if remedies else ())
    summary = run_critical_batch_study(output, spec, data_dir=data_dir, progress=progress)
    if summary["status"] == "completed":
        print(f"index: {summary['index']}")
    raise typer.Exit(exit_code(summary["status"]))


@study_app.command("fashion-seed", hidden=True)
@user_errors
def study_fashion_seed(
    work: Annotated[Path, typer.Argument(help="the study's work directory")],
    seed: Annotated[int, typer.Option("--seed", help="the seed to run")],
    spec: Annotated[str, typer.Option("--spec", help="the study spec, as JSON")],
    data_dir: Annotated[str, typer.Option("--data-dir")] = RunConfig.data_dir,
    threads: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--threads", help="torch threads"),
    ] = None,
) -> None:
    """One seed of the Keskar part of `study fashion` (what each of its --jobs children runs)."""
    import json

    from lbtkit.specs import FashionStudySpec
    from lbtkit.studies.fashion import keskar_seed
    from lbtkit.train import exit_code, set_cpu_threads

    check_at_least_one("--threads", threads)
    study_spec = FashionStudySpec.from_dict(json.loads(spec), source="--spec")
    set_cpu_threads(threads)
    summary = keskar_seed(study_spec, seed, work, data_dir=data_dir)
    raise typer.Exit(exit_code(summary["status"]))


@app.command()
@user_errors
def demo(
    output: Annotated[Path, typer.Option("--output", help="where index.md and the artefacts go")],
    quick: Annotated[
        bool, typer.Option("--quick", help="2 batch sizes, 1 epoch, tiny measurements: seconds")
    ] = False,
    progress: Annotated[bool, typer.Option(help="show progress")] = True,
) -> None:
    """The whole study offline on the bundled digits: sweep, report, Keskar study, index.md.

    \b
    Example:
        lbtkit demo --output docs/demo
        lbtkit demo --output /tmp/demo --quick
    """
    from lbtkit.errors import exit_code
    from lbtkit.preflight import check_output_dir
    from lbtkit.studies.demo import FULL, QUICK, run_demo

    check_output_dir(output)
    summary = run_demo(output, QUICK if quick else FULL, progress=progress)
    raise typer.Exit(exit_code(summary["status"]))
