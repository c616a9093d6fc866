"""``lbtkit study keskar``: Keskar et al. 2016 end to end, in one resumable output directory.

    OUTPUT/init.safetensors   the shared initial weights: both runs start from them
    OUTPUT/sb/  OUTPUT/lb/    the small-batch and large-batch run directories, each with its
                              sharpness.json
    OUTPUT/interpolation/     interpolation.csv, interpolation.png, interpolation.json
    OUTPUT/report.md          the figure, the SB/LB table (the layout of the paper's Tables 2-3)
                              and a comparison computed from the numbers

Every step is also a command of its own (``lbtkit run``, ``interpolate``, ``sharpness``), so a
cluster can run them as separate jobs. What the study measures is one ``KeskarStudySpec``
(``lbtkit.specs``): the two batch sizes and the interpolation and sharpness specs. Re-running
the study resumes: completed runs are not retrained, and an interpolation or sharpness file
newer than both runs' weights, holding the same spec, is kept.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from lbtkit.checkpoint import read_weights, save_weights
from lbtkit.config import RunConfig
from lbtkit.cpu import threads_for_the_load
from lbtkit.data import load_dataset
from lbtkit.errors import (
    EXIT_INTERRUPTED,
    STATUS_COMPLETED,
    STATUS_INTERRUPTED,
    ConfigError,
    EnvironmentFault,
)
from lbtkit.fileio import atomic_write_text, read_json
from lbtkit.landscape import interpolation_meta, run_interpolation, run_sharpness
from lbtkit.run_model import build_model_for
from lbtkit.rundir import RunDir
from lbtkit.specs import KeskarStudySpec
from lbtkit.studies.common import LABELS
from lbtkit.studies.keskar_report import study_report

log = logging.getLogger(__name__)


def keskar_study(
    base: RunConfig, spec: KeskarStudySpec, output: str | Path, *, progress: bool = True,
    num_processes: int = 1, jobs: int = 1,
) -> dict[str, Any]:
    """Train SB (batch ``spec.sb``) and LB (batch ``spec.lb``) from one initialisation,
    interpolate, measure sharpness (both as ``spec`` says), write ``report.md``.

    ``base`` should be unresolved: with ``lr`` unset each run gets ``base_lr`` scaled to its
    own batch by ``lr_scaling`` (the Keskar presets use "none": the same Adam lr for both).
    Returns {"status", ...}: a status other than "completed" is that of the training run that
    stopped the study (diverged, interrupted). ``num_processes`` > 1: each step (the two
    trainings, the interpolation, each sharpness) runs on that many launched processes, as
    ``lbtkit run|interpolate|sharpness --num-processes N`` would; this process only drives.
    ``jobs`` > 1 (one process per step): the steps run that many at once first
    (``steps_at_once``), with the same numbers as one at a time.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "the study drives its steps from one process; for several processes per step "
            "give it num_processes (lbtkit study keskar --num-processes N) instead of "
            "launching it"
        )
    output = Path(output)
    _check_batch_sizes(base, spec.sb, spec.lb)  # before hours of training, as the spec was

    output.mkdir(parents=True, exist_ok=True)
    init = write_initial_weights(base, output / "init.safetensors")
    stem = base.name or f"keskar-{base.model}-{base.dataset}"
    configs = {
        label: base.updated({
            "batch_size": size, "init_weights": str(init), "output_dir": str(output / label),
            "name": f"{stem}-{label}{size}",
        }).resolved()
        for label, size in zip(LABELS, (spec.sb, spec.lb), strict=True)
    }

    if jobs > 1:
        if num_processes > 1:
            raise ConfigError("jobs > 1 runs each step in one process: give jobs "
                              "or num_processes, not both")
        stopped = steps_at_once(spec, configs, output, jobs=jobs)
        if stopped is not None:
            return stopped
    results = {}
    for label, config in configs.items():
        log.info("study: %s run, batch %d, in %s", label.upper(), config.batch_size,
                 config.output_dir)
        results[label] = _train(config, num_processes, progress=progress)
        if results[label].get("status") != STATUS_COMPLETED:
            return {"status": results[label].get("status"), "stopped_at": label,
                    "runs": results}
    with threads_for_the_load():  # training followed the load itself; the analyses, from here
        interpolation = _interpolate(spec, output, progress=progress,
                                     num_processes=num_processes)
        sharpness = {label: _measure(spec, output / label, num_processes) for label in LABELS}

    report = output / "report.md"
    atomic_write_text(report, study_report(configs, results, sharpness,
                                           bn=spec.interpolation.bn))
    log.info("study: wrote %s", report)
    return {"status": STATUS_COMPLETED, "report": report, "init": init, "runs": results,
            "interpolation": interpolation, "sharpness": sharpness}


def steps_at_once(spec: KeskarStudySpec, configs: dict[str, RunConfig], output: Path, *,
                  jobs: int) -> dict[str, Any] | None:
    """The two trainings, then the interpolation and each side's sharpness as soon as the
    runs they read are trained (``_step_tasks``), ``jobs`` child processes at once
    (``lbtkit.local_pool``), each with the base config's threads (else the usable CPUs /
    ``jobs``). The study then finds them done. None, or the study's result when a run was
    interrupted or did not complete (a child that failed otherwise is left to the study,
    which repeats its error in this process)."""
    from lbtkit.cpu import usable_cpus
    from lbtkit.local_pool import run_tasks, threads_per_job

    threads = configs["sb"].threads or threads_per_job(usable_cpus().count, jobs)
    tasks = _step_tasks(spec, configs, output, threads)
    if tasks:
        log.info("study: %s, %d at once (logs in %s)", ", ".join(t.key for t in tasks), jobs,
                 output / "logs")
        result = run_tasks(tasks, [{} for _ in range(jobs)], on_finish=_child_finished)
        if result.stopped_by is not None:
            return {"status": STATUS_INTERRUPTED}
    runs = {label: RunDir(output / label).read_results() or {} for label in LABELS}
    for label in LABELS:
        if runs[label].get("status") not in (None, STATUS_COMPLETED):
            return {"status": runs[label]["status"], "stopped_at": label, "runs": runs}
    return None


def _step_tasks(spec: KeskarStudySpec, configs: dict[str, RunConfig], output: Path,
                threads: int) -> list:
    """The steps not done yet, as pool tasks: ``lbtkit run`` of each side's config, then
    ``lbtkit analysis-worker`` of each measurement once the runs it reads are trained."""
    from lbtkit.analysis_workers import write_job
    from lbtkit.fileio import write_json
    from lbtkit.local_pool import lbtkit_task

    env, logs = {"OMP_NUM_THREADS": str(threads)}, output / "logs"
    tasks = []
    for label, config in configs.items():
        run_dir = Path(config.output_dir)
        if (RunDir(run_dir).read_results() or {}).get("status") == STATUS_COMPLETED:
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "launch-config.json", config.to_dict())
        tasks.append(lbtkit_task(label, [
            "run", "--config", run_dir / "launch-config.json", "--output", run_dir,
            "--threads", threads], logs / f"{label}.log", env))  # progress: plain lines
    training = {task.key for task in tasks}
    for label in LABELS:
        if label in training or not _sharpness_up_to_date(spec, output / label):
            job = write_job("sharpness", spec.sharpness, [output / label],
                            output / label / "sharpness.json")
            tasks.append(lbtkit_task(f"sharpness {label}", ["analysis-worker", job],
                                     logs / f"sharpness-{label}.log", env,
                                     after=[label] if label in training else []))
    if training or not _interpolation_up_to_date(spec, output):
        job = write_job("interpolation", spec.interpolation, [output / "sb", output / "lb"],
                        output / "interpolation")
        tasks.append(lbtkit_task("interpolation", ["analysis-worker", job],
                                 logs / "interpolation.log", env, after=sorted(training)))
    return tasks


def _child_finished(task, code: int) -> bool:
    """A log line; True (stop the others) when the child was interrupted."""
    log.info("study: %s exited %d", task.key, code)
    return code == EXIT_INTERRUPTED


def _train(config: RunConfig, num_processes: int, *, progress: bool) -> dict[str, Any]:
    """Train ``config`` here, or on ``num_processes`` launched processes; its results."""
    if num_processes == 1:
        from lbtkit.train import run

        return run(config, progress=progress)
    from lbtkit.launch import launch_run

    code = launch_run(config, num_processes, progress=progress)
    results = RunDir(config.output_dir).read_results()
    if results is None:
        raise EnvironmentFault(f"the launched {config.output_dir} run exited with {code} "
                               "without writing results.json")
    return results


def _launched(analysis: str, spec: Any, runs: list[Path], output: Path,
              num_processes: int) -> None:
    """Run ``analysis`` on ``num_processes`` launched processes; raise unless they exit 0."""
    from lbtkit.analysis_workers import launch_job

    code = launch_job(analysis, spec, runs, output, num_processes)
    if code != 0:
        raise EnvironmentFault(f"the launched {analysis} of {', '.join(map(str, runs))} "
                               f"exited with {code}")


def _interpolate(spec: KeskarStudySpec, output: Path, *, progress: bool,
                 num_processes: int = 1) -> dict[str, Path]:
    """OUTPUT/interpolation/, unless it is newer than both runs' weights and has this spec."""
    directory = output / "interpolation"
    paths = _interpolation_paths(output)
    if _interpolation_up_to_date(spec, output):
        log.info("study: %s is up to date", directory)
        return paths
    log.info("study: interpolating over %d alphas (BatchNorm: %s)",
             len(spec.interpolation.alphas), spec.interpolation.bn)
    if num_processes > 1:
        _launched("interpolation", spec.interpolation, [output / "sb", output / "lb"],
                  directory, num_processes)
        return paths
    return run_interpolation(spec.interpolation, output / "sb", output / "lb", directory,
                             progress=progress)


def _measure(spec: KeskarStudySpec, run_dir: Path, num_processes: int = 1) -> dict[str, Any]:
    """RUN/sharpness.json, unless it is newer than the run's weights and has this spec."""
    target = run_dir / "sharpness.json"
    if _sharpness_up_to_date(spec, run_dir):
        log.info("study: %s is up to date", target)
        return read_json(target)
    log.info("study: sharpness of the %s solution", run_dir.name.upper())
    if num_processes > 1:
        _launched("sharpness", spec.sharpness, [run_dir], target, num_processes)
        return read_json(target)
    return run_sharpness(spec.sharpness, run_dir, output=target)


def write_initial_weights(base: RunConfig, path: Path) -> Path:
    """Build the model as ``lbtkit run`` would (seed, pretrained, init_weights) and save it
    to ``path``; an existing file must hold exactly these weights (a resumed study)."""
    torch.manual_seed(base.seed)
    model = build_model_for(base)
    if not path.exists():
        save_weights(model, path)
        return path
    stored = read_weights(path)
    state = model.state_dict()
    if stored.keys() != state.keys() or any(
        not torch.equal(stored[k], state[k].cpu()) for k in state
    ):
        raise ConfigError(
            f"{path} holds other initial weights than model {base.model!r} with seed "
            f"{base.seed} gives; use another output directory"
        )
    return path


def _check_batch_sizes(base: RunConfig, sb: int, lb: int) -> None:
    data = load_dataset(base.dataset, base.data_dir, download=base.download,
                        image_size=base.image_size, num_classes=base.num_classes)
    n_train = data.train_labels.shape[0]
    if lb > n_train:
        raise ConfigError(
            f"lb batch {lb} exceeds the training set ({n_train} samples of {base.dataset}); "
            f"Keskar's LB is 10% of the data: {n_train // 10}"
        )


def _interpolation_paths(output: Path) -> dict[str, Path]:
    directory = output / "interpolation"
    return {kind: directory / f"interpolation.{kind}" for kind in ("csv", "png", "json")}


def _interpolation_up_to_date(spec: KeskarStudySpec, output: Path) -> bool:
    """OUTPUT/interpolation/ is newer than both runs' weights and holds this spec."""
    meta = interpolation_meta(spec.interpolation, output / "sb", output / "lb")
    weights = [RunDir(output / label).model_path for label in LABELS]
    return _up_to_date(list(_interpolation_paths(output).values()), {
        "sb_run": meta["sb_run"], "lb_run": meta["lb_run"], "spec": meta["spec"]}, weights)


def _sharpness_up_to_date(spec: KeskarStudySpec, run_dir: Path) -> bool:
    """RUN/sharpness.json is newer than the run's weights and holds this spec."""
    return _up_to_date([run_dir / "sharpness.json"], {"spec": spec.sharpness.to_dict()},
                       [RunDir(run_dir).model_path])


def _up_to_date(files: list[Path], expected: dict[str, Any], inputs: list[Path]) -> bool:
    """All ``files`` and ``inputs`` exist, the files are newer than every input, and the JSON
    among them (the first .json) holds ``expected``."""
    if not all(f.exists() for f in files + inputs):
        return False
    newest_input = max(p.stat().st_mtime_ns for p in inputs)
    if any(f.stat().st_mtime_ns < newest_input for f in files):
        return False
    stored = read_json(next(f for f in files if f.suffix == ".json"), kind=dict)
    return all(stored.get(k) == v for k, v in expected.items())
