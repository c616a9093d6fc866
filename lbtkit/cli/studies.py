"""Whole studies in one command: ``lbtkit study keskar``, ``study fashion``, ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lbtkit.cli.common import app, check_at_least_one, check_num_processes, user_errors
from lbtkit.cli.flags import with_config_flags, with_spec_flags
from lbtkit.cli.options import (
    config_option,
    data_dir_option,
    jobs_option,
    num_processes_option,
    output_option,
    preset_option,
    progress_option,
    quick_option,
    threads_option,
)
from lbtkit.config import RunConfig, build_config
from lbtkit.errors import UserError
from lbtkit.specs import KeskarStudySpec

study_app = typer.Typer(help="Whole studies in one command.", no_args_is_help=True)
app.add_typer(study_app, name="study")

# The options the whole-study commands share.
StudyOutput = output_option("where index.md and the artefacts go")
StudyDataDir = data_dir_option("where to look for fashion-mnist first (then "
                               "/usr/share/datasets/fashion-mnist)")


@study_app.command("keskar")
@user_errors
@with_config_flags(exclude=("output_dir", "name", "batch_size"))
@with_spec_flags(
    KeskarStudySpec(),
    fields=("sb", "lb", "interpolation.alphas", "interpolation.bn", "sharpness.eps",
            "sharpness.subspaces", "sharpness.iters", "hessian_k", "sharpness.trace",
            "sharpness.samples"),
    help={"interpolation.alphas": "interpolation grid",
          "interpolation.bn": "BatchNorm handling (see interpolate)",
          "sharpness.eps": "comma list of sharpness box sizes",
          "sharpness.subspaces": "full | random:P", "sharpness.trace": "Hutchinson trace"},
)
def study_keskar(
    output: output_option("the study directory"),
    preset: preset_option("e.g. keskar-c1") = None,
    config: config_option("TOML file with base settings") = None,
    *,
    spec_flags: dict,
    hessian_k: Annotated[int, typer.Option(help="top Hessian eigenvalues (0: skip)")] = 1,
    progress: progress_option() = True,
    num_processes: num_processes_option("run each training, the interpolation and each "
                                        "sharpness on N processes (accelerate launch, DDP)"
                                        ) = None,
    jobs: jobs_option("steps at once, in N worker processes: SB and LB train together, then "
                      "the interpolation and both sharpness measurements (logs in "
                      "OUTPUT/logs); the same numbers as one at a time at the same --threads"
                      ) = None,
    config_flags: dict,
) -> None:
    """Train SB and LB from one initialisation, interpolate, measure sharpness, report.

    \b
    Example:
        lbtkit study keskar --preset keskar-c1 --sb 256 --lb 5000 --output c1
        lbtkit study keskar --preset keskar-c1 --output c1 --jobs 2 --threads 1
    """
    from lbtkit.errors import exit_code
    from lbtkit.studies.keskar import keskar_study

    base = build_config(preset=preset, config_file=config, overrides=config_flags, resolve=False)
    # The measurements evaluate in the base config's batches, with its seed.
    spec = KeskarStudySpec.from_dict({
        **spec_flags,
        "interpolation": {**spec_flags["interpolation"],
                          "eval_batch_size": base.eval_batch_size},
        "sharpness": {**spec_flags["sharpness"], "hessian": hessian_k != 0,
                      "top_k": hessian_k or 1, "batch_size": base.eval_batch_size,
                      "seed": base.seed},
    }, source="the command line")
    check_num_processes(num_processes)
    check_at_least_one("--jobs", jobs)
    if (jobs or 1) > 1 and (num_processes or 1) > 1:
        raise UserError(f"--jobs {jobs} runs each step in one process; it cannot "
                        f"be combined with --num-processes {num_processes}")
    summary = keskar_study(base, spec, output, progress=progress,
                           num_processes=num_processes or 1, jobs=jobs or 1)
    print(f"report: {output / 'report.md'}")
    raise typer.Exit(exit_code(summary["status"]))


@study_app.command("fashion")
@user_errors
def study_fashion(
    output: StudyOutput,
    quick: quick_option("2 seeds, 1-2 epochs, small measurements: minutes") = False,
    seeds: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--seeds", help="seeds 0..N-1 for the Keskar part (default: 5; 2 with "
                     "--quick); each seed adds about 12 minutes of one core")
    ] = None,
    data_dir: StudyDataDir = RunConfig.data_dir,
    progress: progress_option() = True,
    jobs: jobs_option("seeds, and sweep entries, at once: N worker processes, each running "
                      "its share one after another (logs in OUTPUT/work/); the same numbers"
                      ) = 1,
) -> None:
    """Keskar's F1 protocol over seeds and the batch-size sweep on Fashion-MNIST -> index.md.

    \b
    Example:
        lbtkit study fashion --output docs/fashion --jobs 2   # make study
        lbtkit study fashion --output /tmp/fashion --quick
    """
    from lbtkit.errors import exit_code
    from lbtkit.studies.fashion import run_fashion_study
    from lbtkit.studies.fashion_presets import FULL, QUICK

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
    quick: quick_option("3 batch sizes, easy targets, short runs: minutes") = False,
    jobs: jobs_option("runs at once on this machine, one thread each (default: 2 where 2 or "
                      "more CPUs are usable, else 1)") = None,
    remedies: Annotated[
        bool, typer.Option(help="also tune LARS and LAMB at the largest batch sizes")
    ] = True,
    data_dir: StudyDataDir = RunConfig.data_dir,
    progress: progress_option() = True,
) -> None:
    """Steps to target per batch size, tuned lr, B_crit fit, noise-scale prediction.

    \b
    Example:
        lbtkit study critical-batch --output docs/critical-batch   # make study
        lbtkit study critical-batch --output /tmp/cb --quick
    """
    from lbtkit.errors import exit_code
    from lbtkit.studies.critical_batch import FULL, QUICK, default_jobs, run_critical_batch_study

    check_at_least_one("--jobs", jobs)
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
    data_dir: StudyDataDir = RunConfig.data_dir,
    threads: threads_option("torch threads") = None,
) -> None:
    """One seed of the Keskar part of `study fashion` (what each of its --jobs children runs)."""
    from lbtkit.cpu import set_cpu_threads
    from lbtkit.errors import exit_code
    from lbtkit.studies.fashion import keskar_seed

    check_at_least_one("--threads", threads)
    study_spec = _fashion_spec(spec)
    set_cpu_threads(threads)
    summary = keskar_seed(study_spec, seed, work, data_dir=data_dir)
    raise typer.Exit(exit_code(summary["status"]))


@study_app.command("fashion-noise", hidden=True)
@user_errors
def study_fashion_noise(
    work: Annotated[Path, typer.Argument(help="the study's work directory")],
    spec: Annotated[str, typer.Option("--spec", help="the study spec, as JSON")],
    initial: Annotated[bool, typer.Option("--initial", help="at the initial weights")] = False,
    threads: threads_option("torch threads") = None,
) -> None:
    """The noise scale of `study fashion`'s smallest-batch sweep run (a --jobs child)."""
    from lbtkit.cpu import set_cpu_threads
    from lbtkit.studies.fashion import sweep_noise_scale

    check_at_least_one("--threads", threads)
    study_spec = _fashion_spec(spec)
    set_cpu_threads(threads)
    sweep_noise_scale(study_spec, work / "sweep", initial=initial)


def _fashion_spec(text: str):
    """The ``--spec`` JSON of a ``study fashion --jobs`` child, as a FashionStudySpec."""
    import json

    from lbtkit.specs import FashionStudySpec

    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--spec is not JSON ({exc}): {text[:80]!r}") from None
    return FashionStudySpec.from_dict(values, source="--spec")


@app.command()
@user_errors
def demo(
    output: StudyOutput,
    quick: quick_option("2 batch sizes, 1 epoch, tiny measurements: seconds") = False,
    progress: progress_option() = True,
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
