"""``lbtkit study critical-batch``: how large can the batch be? Steps to a target, measured.

The method of Shallue et al. (2019) and McCandlish et al. (2018), on sweeps that run anywhere:

1. **Rounds of sweeps.** Round 0 (``OUTPUT/work/round-0``, an ordinary ``lbtkit sweep``) trains
   every batch size at a few learning rates around the scaling rule, two or more seeds each,
   SGD with momentum at a constant learning rate after a short warm-up, evaluated at
   geometrically spaced steps until every target is met (``lbtkit.targets``). The remedies
   (LARS, LAMB) run the same way at the largest batch sizes. Where the best learning rate for
   a target sits on the edge of the grid tried, round k+1 adds the next one out
   (``extensions``), as Shallue et al. require, up to the spec's number of rounds. Each round
   is a sweep directory, so ``lbtkit sweep submit OUTPUT/work/round-K`` runs it on SLURM as an
   array; rerunning this command then finds the runs done and carries on.
2. **Steps to each target** per (optimizer, batch size, learning rate, seed): ``steps.csv``.
3. **The fit** S(B) = S_min + E_min/B per target on the best learning rate's mean steps, with a
   bootstrap interval over seeds (``lbtkit.critical_batch``): ``fit.json``.
4. **The prediction**: B_simple (``lbtkit noise-scale --weights``) of the reference run at the
   weights where it first met each target, beside B_crit.
5. ``index.md`` and the figures (``lbtkit.studies.critical_batch_report``).

    OUTPUT/index.md, fit.json, steps.csv, study.json, *.png
    OUTPUT/work/round-K/       the sweeps (git-ignored scratch)
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lbtkit.config import RunConfig, scale_lr
from lbtkit.critical_batch import DIVERGED, best_per_batch
from lbtkit.errors import STATUS_COMPLETED, STATUS_DIVERGED, STATUS_INTERRUPTED
from lbtkit.fileio import read_json
from lbtkit.rundir import RunDir
from lbtkit.specs import CriticalBatchSpec, NoiseScaleSpec
from lbtkit.targets import parse_targets

log = logging.getLogger(__name__)

NOT_REACHED = "not reached"  # completed at the epochs cap without meeting the target

# Steps-to-target on Fashion-MNIST with Keskar's F1 (the default), 16 to 8,192.
FULL = CriticalBatchSpec()
# ``--quick`` and the tests: the same code path on three batch sizes, easy targets, short runs,
# smaller evaluation sets (an evaluation was most of a quick run's time), and one remedy (LARS)
# at the largest batch.
QUICK = FULL.updated(
    batch_sizes=(64, 512, 2048), targets=("train_loss<=0.8", "train_loss<=0.6",
                                          "val_error<=0.25"),
    train_eval_samples=1024, val_split=2000,
    min_epochs=1, min_steps=40, extension_rounds=1, remedies=("lars",), remedy_batches=1,
    reference_batch=64,
    noise_scale=NoiseScaleSpec(batch_sizes=(32, 512), draws=4, seed=0), bootstrap_samples=200,
)


@dataclass(frozen=True, order=True)
class Point:
    """One (optimizer, batch size, learning rate) of the grid; its runs are one per seed."""

    optimizer: str
    batch_size: int
    lr: float

    @property
    def variant(self) -> str:
        return f"{self.optimizer}-b{self.batch_size}-lr{self.lr:.4g}"


def default_jobs() -> int:
    """Runs at once: 2 where 2 or more CPUs are usable (each run takes one thread), else 1."""
    from lbtkit.cpu import usable_cpus

    return 2 if usable_cpus().count >= 2 else 1


def center_lr(spec: CriticalBatchSpec, optimizer: str, batch_size: int) -> float:
    """The scaling rule's learning rate for ``optimizer`` at ``batch_size``."""
    return scale_lr(spec.lr_at_256[optimizer], 256, batch_size, spec.lr_scaling)


def _rounded(lr: float) -> float:
    return float(f"{lr:.4g}")


def initial_points(spec: CriticalBatchSpec) -> list[Point]:
    """Round 0: SGD at every batch size and each remedy at the largest, each at the scaling
    rule's learning rate times each of ``lr_factors``."""
    pairs = [("sgd", b) for b in spec.batch_sizes]
    pairs += [(opt, b) for opt in spec.remedies for b in spec.remedy_sizes()]
    return [Point(opt, b, _rounded(center_lr(spec, opt, b) * f))
            for opt, b in pairs for f in spec.lr_factors]


def extensions(spec: CriticalBatchSpec, records: list[dict[str, Any]]) -> list[Point]:
    """The learning rates the next round adds: one step beyond the edge, for every
    (optimizer, target, batch size) whose best learning rate is on the edge of those tried."""
    points = set()
    for (optimizer, _target), group in _groups(records).items():
        for best in best_per_batch(group).values():
            if best.edge == "high":
                points.add(Point(optimizer, best.batch_size, _rounded(best.lrs[-1] * spec.lr_step)))
            elif best.edge == "low":
                points.add(Point(optimizer, best.batch_size, _rounded(best.lrs[0] / spec.lr_step)))
    tried = {(r["optimizer"], r["batch_size"], r["lr"]) for r in records}
    return sorted(p for p in points if (p.optimizer, p.batch_size, p.lr) not in tried)


def _groups(records: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["optimizer"], r["target"]), []).append(r)
    return groups


# --- the sweeps ------------------------------------------------------------------------------


def base_config(spec: CriticalBatchSpec, *, data_dir: str) -> RunConfig:
    """Every run's settings but its batch size, learning rate and optimizer (unresolved)."""
    return RunConfig().updated({
        "model": spec.model, "dataset": spec.dataset, "data_dir": data_dir,
        "scheduler": "constant", "lr_scaling": "none",
        "momentum": 0.9, "weight_decay": 1e-4, "warmup_steps": spec.warmup_steps,
        "targets": ",".join(spec.targets), "eval_growth": spec.eval_growth,
        "train_eval_samples": spec.train_eval_samples, "val_split": spec.val_split,
        # Validation at the evaluation steps (and at the end of a run at its cap).
        "eval_every": 1000, "eval_batch_size": spec.eval_batch_size,
        "threads": spec.threads,
    }, source="critical-batch study")


def round_variants(spec: CriticalBatchSpec, points: list[Point], train_images: int
                   ) -> dict[str, dict[str, Any]]:
    """One sweep variant per point; the seeds are the sweep's grid. The reference batch's
    SGD runs keep their weights where they meet each target (for the noise scale)."""
    return {p.variant: {"batch_size": p.batch_size, "lr": p.lr, "optimizer": p.optimizer,
                        "epochs": spec.epochs_for(p.batch_size, train_images),
                        "keep_target_weights": p.optimizer == "sgd"
                        and p.batch_size == spec.reference_batch}
            for p in points}


def training_images(spec: CriticalBatchSpec, *, data_dir: str) -> int:
    """The training split's size once ``val_split`` images are held out."""
    from lbtkit.data import load_dataset

    total = load_dataset(spec.dataset, data_dir).train_labels.shape[0]
    return total - spec.val_split


def plan_round(spec: CriticalBatchSpec, points: list[Point], sweep_dir: Path, *,
               data_dir: str) -> dict[str, Any]:
    from lbtkit.sweep import plan_sweep

    variants = round_variants(spec, points, training_images(spec, data_dir=data_dir))
    return plan_sweep(base_config(spec, data_dir=data_dir), {"seed": list(spec.seeds)},
                      sweep_dir, variants=variants)


def run_round(sweep_dir: Path, *, jobs: int, progress: bool) -> bool:
    """Run a round's entries (``jobs`` at once); False when interrupted."""
    from lbtkit.sweep import run_all

    statuses = run_all(sweep_dir, progress=progress, jobs=jobs)
    return STATUS_INTERRUPTED not in statuses.values()


def read_records(sweep_dir: Path, round_number: int) -> list[dict[str, Any]]:
    """One record per (entry, target) of a round's sweep, from the runs' results.json."""
    from lbtkit.sweep import load_sweep

    records = []
    for entry in load_sweep(sweep_dir)["runs"]:
        config = entry["config"]
        results = RunDir(entry["run_dir"]).read_results() or {}
        status = results.get("status")
        met = results.get("steps_to_targets") or {}
        for target in parse_targets(config["targets"]):
            steps = met.get(target.name) if status == STATUS_COMPLETED else None
            records.append({
                "seed": config["seed"], "batch_size": config["batch_size"], "lr": config["lr"],
                "optimizer": config["optimizer"], "target": target.name, "steps": steps,
                "examples": None if steps is None else steps * config["batch_size"],
                "status": _record_status(status, steps), "round": round_number,
                "run": Path(entry["run_dir"]).name, "test_acc": results.get("test_acc"),
            })
    return records


def _record_status(status: str | None, steps: int | None) -> str:
    if status == STATUS_DIVERGED:
        return DIVERGED
    if status == STATUS_COMPLETED:
        return "reached" if steps is not None else NOT_REACHED
    return status or "missing"


def tune(spec: CriticalBatchSpec, work: Path, *, data_dir: str, progress: bool,
         on_round=None) -> list[dict[str, Any]] | None:
    """Run round 0 and the extension rounds; every record, or None when interrupted."""
    points = initial_points(spec)
    records: list[dict[str, Any]] = []
    for number in range(spec.extension_rounds + 1):
        sweep_dir = work / f"round-{number}"
        plan_round(spec, points, sweep_dir, data_dir=data_dir)
        if on_round is not None:
            on_round(number, points, sweep_dir)
        if not run_round(sweep_dir, jobs=spec.jobs, progress=progress):
            return None
        records += read_records(sweep_dir, number)
        points = extensions(spec, records)
        if not points:
            break
        log.info("critical batch: round %d: %d learning rates on the edge of the grid; "
                 "extending: %s", number, len(points), ", ".join(p.variant for p in points))
    return records


# --- the noise-scale prediction -----------------------------------------------------------


def reference_runs(spec: CriticalBatchSpec, work: Path, records: list[dict[str, Any]]
                   ) -> dict[str, dict[str, Any]]:
    """For each target: the seed-``seeds[0]`` SGD run at the reference batch with the best
    learning rate for that target, and the step where it met it."""
    chosen = {}
    for (optimizer, target), group in _groups(records).items():
        if optimizer != "sgd":
            continue
        best = best_per_batch(group).get(spec.reference_batch)
        if best is None or best.lr is None:
            continue
        record = next(r for r in group if r["batch_size"] == spec.reference_batch
                      and r["lr"] == best.lr and r["seed"] == spec.seeds[0])
        run_dir = work / f"round-{record['round']}" / "runs" / record["run"]
        chosen[target] = {"run": run_dir, "lr": best.lr, "step": record["steps"]}
    return chosen


def noise_at_targets(spec: CriticalBatchSpec, work: Path, records: list[dict[str, Any]]
                     ) -> dict[str, dict[str, Any]]:
    """B_simple (``lbtkit noise-scale --weights``) of the reference run at each target."""
    from lbtkit.noise_scale import default_output, run_noise_scale

    measured = {}
    for target, ref in reference_runs(spec, work, records).items():
        weights = ref["run"] / "snapshots" / f"step-{ref['step']:09d}" / "model.safetensors"
        if not weights.is_file():
            log.warning("critical batch: no weights at step %d of %s; no B_simple for %s",
                        ref["step"], ref["run"], target)
            continue
        output = default_output(ref["run"], weights)
        stored = read_json(output, kind=dict) if output.is_file() else {}
        if stored.get("spec") == spec.noise_scale.to_dict():
            result = stored
        else:
            log.info("critical batch: noise scale of %s at step %d (%s)", ref["run"].name,
                     ref["step"], target)
            result = run_noise_scale(spec.noise_scale, ref["run"], weights=weights)
        measured[target] = {"b_simple": result["b_simple"],
                            "b_simple_se": result["b_simple_std_error"], "step": ref["step"],
                            "lr": ref["lr"], "run": ref["run"].name,
                            "file": str(output.relative_to(work.parent))}
    return measured


# --- the study -------------------------------------------------------------------------------


def run_critical_batch_study(output: str | Path, spec: CriticalBatchSpec = FULL, *,
                             data_dir: str = "data", progress: bool = True) -> dict[str, Any]:
    """Run ``spec`` into ``output``; {"status": "interrupted"} (rerun to resume) or
    {"status": "completed", "index": path, "fit": fit.json's dict}."""
    import torch

    from lbtkit.studies import budget
    from lbtkit.studies.clock import StudyClock, describe_machine, ignore_in_git
    from lbtkit.studies.critical_batch_report import analyse, write_outputs

    output = Path(output)
    work = output / "work"
    work.mkdir(parents=True, exist_ok=True)
    ignore_in_git(output, "/work/\n")
    previous_threads = torch.get_num_threads()
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    try:
        estimates = budget.critical_batch_estimate(
            spec, [point.batch_size for point in initial_points(spec)])
        clock = StudyClock(work / "timings.json", estimates, name="critical batch")
        machine = describe_machine(spec.threads, spec.jobs)
        clock.log(f"{len(spec.batch_sizes)} batch sizes x "
                  f"{len(spec.lr_factors)} learning rates x {len(spec.seeds)} seeds, targets "
                  f"{', '.join(spec.targets)}; on {machine['text']}, {spec.jobs} job(s)",
                  upcoming="tuning")

        def on_round(number: int, points: list[Point], sweep_dir: Path) -> None:
            clock.log(f"round {number}: {len(points)} learning rates x {len(spec.seeds)} "
                      f"seeds in {sweep_dir}")

        with clock.step("tuning"):
            records = tune(spec, work, data_dir=data_dir, progress=progress,
                           on_round=on_round)
        if records is None:
            clock.log("interrupted: rerun the same command to resume")
            return {"status": STATUS_INTERRUPTED}
        clock.log("noise scale of the reference run at each target", upcoming="noise scale")
        with clock.step("noise scale"):
            noise = noise_at_targets(spec, work, records)
        with clock.step("report"):
            analysis = analyse(spec, records, noise)
            index = write_outputs(output, spec, records, analysis,
                                  machine=machine, seconds=clock.totals())
        clock.log(f"done: open {index}")
        return {"status": STATUS_COMPLETED, "index": index, "fit": analysis["fit"],
                "records": records}
    finally:
        torch.set_num_threads(previous_threads)


def read_steps_csv(path: str | Path) -> list[dict[str, Any]]:
    """steps.csv back as records (what a reader refits from)."""
    with Path(path).open() as handle:
        rows = list(csv.DictReader(handle))
    return [{**r, "seed": int(r["seed"]), "batch_size": int(r["batch_size"]),
             "lr": float(r["lr"]), "steps": int(r["steps"]) if r["steps"] else None,
             "examples": int(r["examples"]) if r["examples"] else None,
             "test_acc": float(r["test_acc"]) if r.get("test_acc") else None,
             "round": int(r["round"])} for r in rows]
