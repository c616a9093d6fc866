"""``lbtkit study fashion`` (``make study``): both studies on Fashion-MNIST, one command.

1. Keskar et al.'s F1 protocol (preset ``keskar-f1-fashion``) for each seed of the spec:
   ``lbtkit.studies.keskar.keskar_study`` trains SB and LB from that seed's
   ``init.safetensors`` (the same initial weights on both sides), each until the stopping
   rule fires or the epochs cap,
   then interpolates between them and measures both (sharpness, top Hessian eigenvalue);
2. the per-side summary over seeds (mean ± std), the interpolation band over seeds;
3. the fixed-epoch-budget batch-size sweep (preset ``fashion-batch-sweep``: validation held
   out of the training set, test reported once) through ``lbtkit sweep`` plan/run and
   ``lbtkit report``, and the gradient noise scale (``lbtkit noise-scale``) at the final
   weights of its smallest batch;
4. ``index.md``: the tables, figures and sentences (``lbtkit.studies.fashion_report``), with the
   machine and the measured wall time.

    OUTPUT/index.md                          start here
    OUTPUT/study.json                        spec, machine, timings and every number shown
    OUTPUT/keskar/runs.csv                   one row per seed and side (the table's inputs)
    OUTPUT/keskar/interpolation_band.{png,csv}
    OUTPUT/sweep/report.md, results.csv, accuracy_vs_batch.png, learning_curves.png
    OUTPUT/work/                             run directories, per-seed studies: scratch,
                                             git-ignored

Re-running resumes: completed runs are not retrained (``lbtkit.train.run``), an interpolation
or sharpness file newer than its runs' weights and holding the same spec is kept
(``keskar_study``), and so is a noise-scale file (same rule). ``work/timings.json`` adds up
each step's wall time over the invocations, and index.md shows the sum.

What runs is one ``FashionStudySpec`` (``lbtkit.specs``): ``FULL`` (``make study``) or
``QUICK`` (``--quick`` and the tests: the same steps on less). Why ``FULL`` fits in an hour is
``lbtkit.studies.budget`` (arithmetic from measured per-epoch costs, tested).
"""

from __future__ import annotations

import csv
import logging
import time
from io import StringIO
from pathlib import Path
from typing import Any

import torch

from lbtkit.config import build_config
from lbtkit.errors import STATUS_COMPLETED, STATUS_DIVERGED, STATUS_INTERRUPTED
from lbtkit.fileio import atomic_write_text, read_json, write_json
from lbtkit.rundir import RunDir
from lbtkit.specs import FashionStudySpec, KeskarStudySpec, NoiseScaleSpec
from lbtkit.studies import budget
from lbtkit.studies.clock import StudyClock, describe_machine, ignore_in_git
from lbtkit.studies.fashion_presets import EVAL_BATCH, FULL, QUICK
from lbtkit.studies.paired import paired_comparisons
from lbtkit.studies.summary import (
    interpolation_band,
    number_columns,
    side_record,
    side_summary,
)

log = logging.getLogger(__name__)

KESKAR_PRESET = "keskar-f1-fashion"
SWEEP_PRESET = "fashion-batch-sweep"
DATASET = "fashion-mnist"


def run_fashion_study(
    output: str | Path,
    spec: FashionStudySpec = FULL,
    *,
    data_dir: str = "data",
    progress: bool = True,
    jobs: int = 1,
) -> dict[str, Any]:
    """Run ``spec`` into ``output``; return {"status", "index", "numbers", ...}.

    Status "interrupted": a run was stopped (rerun to resume); "completed": index.md was
    written. ``data_dir``: where ``lbtkit run`` looks for Fashion-MNIST first (then the
    Debian package's folder). ``jobs`` > 1: the seeds of the Keskar part and the sweep's
    entries run that many at once in child processes first (``lbtkit.local_pool``), each
    with ``spec.threads`` threads: the same numbers as one at a time.
    """
    output = Path(output)
    previous_threads = torch.get_num_threads()
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    try:
        output.mkdir(parents=True, exist_ok=True)
        work = output / "work"
        work.mkdir(exist_ok=True)
        ignore_in_git(output, "/work/\n")
        clock = StudyClock(work / "timings.json", budget.expected(spec), jobs=jobs)
        machine = describe_machine(spec.threads, jobs)
        log.info("fashion study: %d seeds, SB %d vs LB %d, then batch sizes %s; on %s",
                 len(spec.seeds), spec.sb, spec.lb,
                 ", ".join(map(str, spec.sweep_batch_sizes)), machine["text"])

        if jobs > 1 and not _runs_at_once(spec, work, clock, jobs=jobs, data_dir=data_dir):
            clock.log("interrupted: rerun the same command to resume")
            return {"status": STATUS_INTERRUPTED}
        keskar = _keskar(spec, work, output / "keskar", clock, data_dir=data_dir,
                         progress=progress)
        if keskar["status"] == STATUS_INTERRUPTED:
            return keskar
        sweep = _sweep(spec, work / "sweep", output / "sweep", clock, data_dir=data_dir,
                       progress=progress, jobs=jobs)
        if sweep["status"] == STATUS_INTERRUPTED:
            return sweep

        from lbtkit.studies.fashion_report import index_numbers, render_index

        with clock.step("index"):
            numbers = index_numbers(spec, keskar, sweep)
            record = {"spec": spec.to_dict(), "quick": _same_but_seeds(spec, QUICK),
                      "full": _same_but_seeds(spec, FULL), "machine": machine,
                      "seconds": clock.totals(), "child_seconds": clock.children(),
                      "numbers": numbers}
            write_json(output / "study.json", record)
            index = output / "index.md"
            atomic_write_text(index, render_index(output, record, keskar, sweep))
        clock.log(f"done: open {index}")
        return {"status": STATUS_COMPLETED, "index": index, "numbers": numbers,
                "keskar": keskar, "sweep": sweep, "seconds": clock.totals()}
    finally:
        torch.set_num_threads(previous_threads)


# --- 1-2: Keskar's protocol over seeds ---------------------------------------------------------


def keskar_base(spec: FashionStudySpec, seed: int, *, data_dir: str):
    """One seed's unresolved base config: the preset, this seed, the stopping rule and cap."""
    return build_config(preset=KESKAR_PRESET, overrides={
        "seed": seed, "name": f"fashion-s{seed}", "data_dir": data_dir,
        "eval_batch_size": EVAL_BATCH, **spec.stop_fields()}, resolve=False)


def _keskar(spec: FashionStudySpec, work: Path, out: Path, clock: StudyClock, *,
            data_dir: str, progress: bool) -> dict[str, Any]:
    records, curves, left_out = [], [], []
    for number, seed in enumerate(spec.seeds, start=1):
        name = f"keskar seed {seed}"
        clock.log(f"step 1/3 Keskar F1 protocol, seed {seed} ({number} of {len(spec.seeds)}): "
                  f"SB {spec.sb} and LB {spec.lb} from one initialisation, each until "
                  f"{_rule_text(spec)}, then interpolation and sharpness", upcoming=name)
        with clock.step(name):
            summary = keskar_seed(spec, seed, work, data_dir=data_dir, progress=progress)
        if summary["status"] == STATUS_INTERRUPTED:
            clock.log("interrupted: rerun the same command to resume")
            return {"status": STATUS_INTERRUPTED}
        if summary["status"] != STATUS_COMPLETED:
            log.warning("seed %d: the %s run is %s; left out of the means", seed,
                        summary.get("stopped_at", "?").upper(), summary["status"])
            left_out.append({"seed": seed, "side": summary.get("stopped_at"),
                             "status": summary["status"]})
            continue
        curves.append(_read_curve(summary["interpolation"]["csv"]))
        for label in ("sb", "lb"):
            records.append(side_record(seed, label, summary["runs"][label],
                                       summary["sharpness"][label]))
        clock.log(f"seed {seed}: " + "; ".join(
            f"{r['side'].upper()} {_count(r['epochs'], 'epoch')}, train acc "
            f"{_percent(r['train_acc_eval'])} (eval mode), test acc "
            f"{_percent(r['test_acc'])} ({r['stopped_by']})" for r in records[-2:]))
    return _write_keskar(records, curves, left_out, out)


def keskar_seed(spec: FashionStudySpec, seed: int, work: Path, *, data_dir: str,
                progress: bool = True) -> dict[str, Any]:
    """One seed of the Keskar part: ``keskar_study`` in WORK/keskar-sSEED (resumable)."""
    from lbtkit.studies.keskar import keskar_study

    study_spec = KeskarStudySpec(sb=spec.sb, lb=spec.lb, interpolation=spec.interpolation,
                                 sharpness=spec.sharpness)
    return keskar_study(keskar_base(spec, seed, data_dir=data_dir), study_spec,
                        work / f"keskar-s{seed}", progress=progress)


def _write_keskar(records: list[dict[str, Any]], curves: list[list[dict[str, Any]]],
                  left_out: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """runs.csv, interpolation_band.csv/.png; the numbers behind the Keskar tables."""
    from lbtkit.studies.figures import plot_interpolation_band

    out.mkdir(parents=True, exist_ok=True)
    paths = {"runs": out / "runs.csv", "band_csv": out / "interpolation_band.csv",
             "band_png": out / "interpolation_band.png"}
    band = interpolation_band(curves)
    if records:
        _write_csv(paths["runs"], records)
    if band:
        _write_csv(paths["band_csv"], band)
        plot_interpolation_band(band, paths["band_png"], seeds=len(curves), curves=curves)
    return {"status": STATUS_COMPLETED, "records": records, "left_out": left_out,
            "summary": side_summary(records) if records else None,
            "paired": paired_comparisons(records, number_columns(records)) if records else None,
            "band": band, "paths": paths}


def _read_curve(path: Path) -> list[dict[str, Any]]:
    with Path(path).open() as handle:
        return [{"alpha": float(r["alpha"]), "split": r["split"], "loss": float(r["loss"]),
                 "accuracy": float(r["accuracy"])} for r in csv.DictReader(handle)]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _rule_text(spec: FashionStudySpec) -> str:
    rules = []
    if spec.stop_train_acc is not None:
        kind = ("eval-mode accuracy on the whole training set"
                if spec.stop_train_acc_mode == "eval" else "running training accuracy")
        rules.append(f"{kind} >= {spec.stop_train_acc:g}")
    if spec.stop_plateau_epochs is not None:
        rules.append(f"a training-loss plateau of {spec.stop_plateau_epochs} epochs")
    return " or ".join(rules) + f" (cap {_count(spec.epochs_cap, 'epoch')})"


# --- 3: the batch-size sweep and the noise scale -----------------------------------------------


def sweep_base(spec: FashionStudySpec, *, data_dir: str):
    """The sweep's unresolved base config: the preset with the spec's epochs and warm-up."""
    return build_config(preset=SWEEP_PRESET, overrides={
        "epochs": spec.sweep_epochs, "warmup_epochs": spec.sweep_warmup_epochs,
        "seed": spec.sweep_seed, "data_dir": data_dir, "eval_batch_size": EVAL_BATCH},
        resolve=False)


def _sweep(spec: FashionStudySpec, sweep_dir: Path, out: Path, clock: StudyClock, *,
           data_dir: str, progress: bool, jobs: int = 1) -> dict[str, Any]:
    from lbtkit.report import collect, write_report
    from lbtkit.sweep import plan_sweep, run_all

    sizes = ", ".join(map(str, spec.sweep_batch_sizes))
    clock.log(f"step 2/3 batch-size sweep at a fixed epoch budget: batch sizes {sizes}, "
              f"{_count(spec.sweep_epochs, 'epoch')} each, seed {spec.sweep_seed}, in "
              f"{sweep_dir}", upcoming="sweep")
    with clock.step("sweep"):
        plan_sweep(sweep_base(spec, data_dir=data_dir),
                   {"batch_size": list(spec.sweep_batch_sizes)}, sweep_dir)
        statuses = run_all(sweep_dir, progress=progress, jobs=jobs, threads=spec.threads)
    if STATUS_INTERRUPTED in statuses.values() or len(statuses) < len(spec.sweep_batch_sizes):
        clock.log("interrupted: rerun the same command to resume")
        return {"status": STATUS_INTERRUPTED}
    smallest = _smallest_run(sweep_dir)
    noise = noise_init = None
    if RunDir(smallest).read_results().get("status") == STATUS_COMPLETED:
        clock.log(f"step 3/3 gradient noise scale of the batch-{spec.sweep_batch_sizes[0]} "
                  f"run at its initial and its final weights: batches "
                  f"{spec.noise_scale.batch_sizes[0]} and {spec.noise_scale.batch_sizes[1]}, "
                  f"{spec.noise_scale.draws} of each", upcoming="noise scale")
        with clock.step("noise scale"):
            noise_init = sweep_noise_scale(spec, sweep_dir, initial=True)
            noise = sweep_noise_scale(spec, sweep_dir)
    with clock.step("sweep report"):
        report = write_report(sweep_dir, out)
    return {"status": STATUS_COMPLETED, "rows": collect(sweep_dir), "noise": noise,
            "noise_init": noise_init, "noise_run": smallest, "report": report,
            "sweep_dir": sweep_dir}


def _smallest_run(sweep_dir: Path) -> Path:
    from lbtkit.sweep import load_sweep

    return Path(load_sweep(sweep_dir)["runs"][0]["run_dir"])


def sweep_noise_scale(spec: FashionStudySpec, sweep_dir: Path, *, initial: bool = False
                      ) -> dict[str, Any] | None:
    """The noise scale of the sweep's smallest-batch run (``_noise_scale``), None unless that
    run completed; what step 3 reads, or what a child of ``--jobs`` (``lbtkit study
    fashion-noise``) writes for it."""
    smallest = _smallest_run(sweep_dir)
    if RunDir(smallest).read_results().get("status") != STATUS_COMPLETED:
        return None
    return _noise_scale(spec.noise_scale, smallest, initial=initial)


def _noise_scale(spec: NoiseScaleSpec, run_dir: Path, *, initial: bool = False
                 ) -> dict[str, Any]:
    """RUN/noise_scale.json at the run's final weights, or RUN/noise_scale-init.json at its
    initial ones (RUN/init.safetensors: its seed's draw, as ``lbtkit run`` makes it); kept
    when newer than the run's weights and holding this spec. The noise scale grows as
    training proceeds (McCandlish et al.), so the two bracket the run."""
    from lbtkit.noise_scale import run_noise_scale
    from lbtkit.studies.keskar import write_initial_weights

    run = RunDir(run_dir)
    target = _noise_target(run_dir, initial)
    if _noise_up_to_date(spec, run_dir, initial):
        log.info("fashion study: %s is up to date", target)
        return read_json(target)
    weights = None
    if initial:
        weights = write_initial_weights(run.read_config(), run_dir / "init.safetensors")
    return run_noise_scale(spec, run_dir, output=target, weights=weights)


def _noise_target(run_dir: Path, initial: bool) -> Path:
    return run_dir / ("noise_scale-init.json" if initial else "noise_scale.json")


def _noise_up_to_date(spec: NoiseScaleSpec, run_dir: Path, initial: bool) -> bool:
    """The noise-scale file exists, is newer than the run's weights and holds ``spec``."""
    target, weights = _noise_target(run_dir, initial), RunDir(run_dir).model_path
    return target.exists() and weights.exists() and \
        target.stat().st_mtime_ns >= weights.stat().st_mtime_ns and \
        read_json(target, kind=dict).get("spec") == spec.to_dict()


# --- with --jobs N: the independent runs at once -----------------------------------------------


def _runs_at_once(spec: FashionStudySpec, work: Path, clock: StudyClock, *, jobs: int,
                  data_dir: str) -> bool:
    """``_child_tasks`` in child processes, ``jobs`` at once; False when one was interrupted
    (a signal stops them all). The steps after read their results up to date, and retry in
    this process what a child left failed, so its error shows as it would one at a time.
    Each child gets ``spec.threads`` torch threads (else the usable CPUs / ``jobs``): the
    same numbers."""
    from lbtkit.cpu import usable_cpus
    from lbtkit.local_pool import run_tasks, threads_per_job

    threads = spec.threads or threads_per_job(usable_cpus().count, jobs)
    tasks = _child_tasks(spec, work, threads, data_dir=data_dir)
    clock.log(f"steps 1-3/3 the Keskar seeds, the sweep's entries and its noise scale, "
              f"{jobs} processes at once, {_count(threads, 'thread')} each (logs in "
              f"{work / 'logs'} and {work / 'sweep' / 'logs'})", upcoming="runs at once")
    started: dict[str, float] = {}

    def on_start(task, pid: int) -> None:
        started[task.key] = time.monotonic()
        log.info("fashion: %s started (pid %d)", task.key, pid)

    def on_finish(task, code: int) -> bool:
        clock.record_child(task.key, time.monotonic() - started.pop(task.key))
        return _child_finished(task, code)

    with clock.step(f"runs, {jobs} at once"):
        result = run_tasks(tasks, [{} for _ in range(jobs)], on_start=on_start,
                           on_finish=on_finish)
    return result.stopped_by is None


def _child_tasks(spec: FashionStudySpec, work: Path, threads: int, *, data_dir: str) -> list:
    """Every seed's ``keskar_seed`` (``lbtkit study fashion-seed``), the long ones first so
    the short ones fill the gaps; every sweep entry not yet done (``lbtkit sweep run-task``);
    the noise scale of the smallest batch's run at its initial and final weights once it is
    trained (``lbtkit study fashion-noise``): in the slots the last entries free, not after."""
    import json

    from lbtkit.local_pool import lbtkit_task
    from lbtkit.sweep import load_sweep, plan_sweep, read_run

    env = {"OMP_NUM_THREADS": str(threads)}
    spec_json = json.dumps(spec.to_dict())
    tasks = [lbtkit_task(f"keskar seed {seed}", [
        "study", "fashion-seed", work, "--seed", seed, "--spec", spec_json,
        "--data-dir", data_dir, "--threads", threads], work / "logs" / f"keskar-s{seed}.log",
        env) for seed in spec.seeds]
    sweep_dir = work / "sweep"
    plan_sweep(sweep_base(spec, data_dir=data_dir),
               {"batch_size": list(spec.sweep_batch_sizes)}, sweep_dir)  # as _sweep will
    entries = load_sweep(sweep_dir)["runs"]
    for entry in entries:
        if read_run(entry).state in (STATUS_COMPLETED, STATUS_DIVERGED):
            continue  # a rerun: nothing to start a process for
        name = entry["config"]["name"]
        tasks.append(lbtkit_task(f"sweep {name}", [
            "sweep", "run-task", sweep_dir, "--index", entry["index"], "--threads", threads],
            sweep_dir / "logs" / f"{name}.log", env))
    smallest = f"sweep {entries[0]['config']['name']}"
    after = [smallest] if smallest in {task.key for task in tasks} else []
    for initial in (True, False):
        if not after and _noise_up_to_date(spec.noise_scale, Path(entries[0]["run_dir"]),
                                           initial):
            continue  # a rerun: measured already
        tasks.append(lbtkit_task(f"noise scale{' at init' if initial else ''}", [
            "study", "fashion-noise", work, "--spec", spec_json, "--threads", threads,
            *(["--initial"] if initial else [])],
            work / "logs" / f"noise-scale{'-init' if initial else ''}.log", env, after=after))
    return tasks


def _child_finished(task, code: int) -> bool:
    """A progress line; True (stop the others) when the child was interrupted."""
    from lbtkit.errors import EXIT_INTERRUPTED

    outcome = {0: "done", 3: "diverged", EXIT_INTERRUPTED: "interrupted"}.get(
        code, f"failed (exit {code}; see {task.log})")
    log.info("fashion: %s %s", task.key, outcome)
    return code == EXIT_INTERRUPTED


# --- helpers -----------------------------------------------------------------------------------


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _same_but_seeds(spec: FashionStudySpec, reference: FashionStudySpec) -> bool:
    """``spec`` has ``reference``'s settings, whatever its seeds (``--seeds N``)."""
    return spec.updated(seeds=reference.seeds) == reference


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"
