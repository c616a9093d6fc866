"""``lbtkit demo``: the kit's whole story, offline, on real data, in a few minutes on a CPU.

The batch-size study and the sharp-minima study on scikit-learn's bundled 8x8 handwritten
digits (no download) with Keskar's F1 MLP, through the same code paths as a cluster study:

1. a batch-size sweep (``lbtkit sweep plan`` + ``sweep run``: ``plan_sweep``, ``run_all``), lr
   scaled linearly with the batch, then ``lbtkit report`` (``write_report``);
2. the Keskar study on the smallest vs the largest batch of that sweep: the parametric
   interpolation plot (``run_interpolation``) and the sharpness table (``run_sharpness``);
3. ``index.md``: what was run, the tables and figures, and sentences computed from the numbers
   with the thresholds stated next to them (``lbtkit.studies.demo_report``: verdicts as data,
   words from the templates). Nothing is
   tuned to produce a gap.

What runs is one ``DemoSpec``: ``FULL`` (``make demo``, the numbers under docs/demo) or
``QUICK`` (``--quick`` and the tests).

    OUTPUT/index.md                        start here
    OUTPUT/report.md, results.csv          the sweep report (all columns, timings included)
    OUTPUT/accuracy_vs_batch.png, learning_curves.png
    OUTPUT/keskar/interpolation.{csv,png,json}
    OUTPUT/keskar/sharpness-sb.json, sharpness-lb.json
    OUTPUT/work/                           the sweep and its run directories (weights,
                                           checkpoints): scratch, git-ignored

The Keskar step measures the sweep's own smallest- and largest-batch runs rather than training
two more: every sweep entry builds its model right after ``torch.manual_seed(seed)`` (as
``lbtkit.train.run`` does, and as ``keskar_study`` does for its ``init.safetensors``), so all
entries start from the same initial weights and draw the same data order.

Determinism: fixed seeds, and torch runs on ``spec.threads`` intra-op threads (default 1) during
the demo, because a different thread count changes float reductions and hence the numbers. The
same machine gives the same tables; wall time and images/s (report.md, results.csv only) vary.
Re-running on the same OUTPUT resumes: completed sweep runs are not retrained.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from lbtkit.config import build_config
from lbtkit.errors import STATUS_COMPLETED, STATUS_INTERRUPTED, ConfigError
from lbtkit.fileio import atomic_write_text
from lbtkit.rundir import RunDir
from lbtkit.specs import InterpolationSpec, SharpnessSpec, Spec, whole_number
from lbtkit.studies.demo_report import render_index, summarise

log = logging.getLogger(__name__)

MODEL = "f1"
DATASET = "digits"
SEED = 0
BATCH_SIZES = (8, 32, 128, 512, 1024)
# Chosen to fit the time budget (3 minutes on 2 shared CPU cores), not to produce any result.
EPOCHS = 20
# The smoke preset's recipe for F1 on digits, unchanged: SGD with momentum, lr 0.05 at batch
# 64 scaled linearly with the batch (Goyal et al. 2017, the seed's rule), cosine to zero. At
# batch 64 it trains F1 to ~95% in 3 epochs; small batches get proportionally small steps.
RECIPE: dict[str, Any] = {
    "optimizer": "sgd",
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "base_lr": 0.05,
    "base_batch_size": 64,
    "lr_scaling": "linear",
    "scheduler": "cosine",
    "warmup_epochs": 0.0,
    # Checkpoints only on a signal (Ctrl-C still saves one): the runs take seconds.
    "checkpoint_every": 0,
}
EVAL_BATCH = 1024
# Keskar's parametric plot over -1:2:25, BatchNorm statistics re-estimated at every alpha.
INTERPOLATION = InterpolationSpec(alphas="-1:2:25", bn="recalibrate", eval_batch_size=EVAL_BATCH)
# Keskar's two box sizes and 10 L-BFGS-B iterations over the full space, and the top Hessian
# eigenvalue; 4096 samples is more than the 1437 training images: f is the full training loss.
SHARPNESS = SharpnessSpec(eps=(1e-3, 5e-4), subspaces=("full",), iters=10, hessian=True,
                          top_k=1, hessian_iters=20, trace=False, samples=4096,
                          batch_size=EVAL_BATCH, seed=SEED)


@dataclass(frozen=True)
class DemoSpec(Spec):
    """What the demo runs: the sweep's ``batch_sizes`` (sorted, at least two), ``epochs`` and
    ``seed``; torch's intra-op ``threads`` during the demo (None: leave torch's setting); and
    the Keskar step on the smallest (SB) vs the largest (LB) batch, as ``interpolation`` and
    ``sharpness`` say (the sharpness spec has its own seed)."""

    kind: ClassVar[str] = "demo spec"

    batch_sizes: tuple[int, ...] = BATCH_SIZES
    epochs: int = EPOCHS
    seed: int = SEED
    threads: int | None = 1
    interpolation: InterpolationSpec = INTERPOLATION
    sharpness: SharpnessSpec = SHARPNESS

    def __post_init__(self) -> None:
        sizes = sorted({whole_number("batch_sizes", b, 1) for b in self.batch_sizes})
        if len(sizes) < 2:
            raise ConfigError(f"the demo needs at least two batch sizes, got {sizes}")
        self._set("batch_sizes", tuple(sizes))
        self._set("epochs", whole_number("epochs", self.epochs, 1))
        self._set("seed", whole_number("seed", self.seed, 0))
        if self.threads is not None:
            self._set("threads", whole_number("threads", self.threads, 1))
        self._nest("interpolation", InterpolationSpec)
        self._nest("sharpness", SharpnessSpec)


# ``lbtkit demo`` (``make demo``): the numbers committed under docs/demo.
FULL = DemoSpec()
# ``lbtkit demo --quick`` and the test suite: the same steps in seconds.
QUICK = DemoSpec(
    batch_sizes=(16, 256), epochs=1,
    interpolation=INTERPOLATION.updated(alphas=(-0.5, 0.0, 0.5, 1.0, 1.5)),
    sharpness=SHARPNESS.updated(eps=(1e-3,), iters=2, hessian_iters=3, samples=256),
)


def run_demo(
    output: str | Path,
    spec: DemoSpec = FULL,
    *,
    work_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo ``spec`` into ``output``; return {"status", "index", "sweep_dir",
    "numbers", ...}.

    ``work_dir`` holds the sweep and its run directories (default ``output/work``, git-ignored
    by an ``output/.gitignore``). Status "interrupted" means a run was stopped (rerun to
    resume); "completed" means index.md was written, whatever the runs' own outcomes (a
    diverged run is a result and index.md says so).
    """
    output = Path(output)
    clock = _Clock()
    previous_threads = torch.get_num_threads()
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    try:
        output.mkdir(parents=True, exist_ok=True)
        work = Path(work_dir) if work_dir is not None else output / "work"
        _ignore_work_dir(output, work)
        sweep_dir = work / (f"sweep-{MODEL}-s{spec.seed}-e{spec.epochs}-b"
                            f"{'-'.join(map(str, spec.batch_sizes))}")
        rows = _sweep(spec, sweep_dir, clock, progress=progress)
        if rows is None:
            clock.stage("interrupted: rerun the same command to resume")
            return {"status": STATUS_INTERRUPTED, "sweep_dir": sweep_dir}

        from lbtkit.report import write_report

        clock.stage(f"2/4 sweep report into {output}")
        report_paths = write_report(sweep_dir, output)
        ends = {"sb": rows[0], "lb": rows[-1]}  # rows are in plan order: batch size ascending
        keskar: dict[str, Any] | None = None
        not_done = [r for r in ends.values() if r["status"] != STATUS_COMPLETED]
        if not_done:
            clock.stage(f"3/4 skipped: the batch-{not_done[0]['batch_size']} run is "
                        f"{not_done[0]['status']}, so there is no solution to measure")
        else:
            keskar = _keskar(spec, ends, output / "keskar", clock)

        clock.stage("4/4 index.md")
        n_train, n_val = _split_sizes()
        numbers = summarise(rows, keskar, n_val=n_val, n_train=n_train)
        index = output / "index.md"
        atomic_write_text(index, render_index(output, rows, keskar, numbers,
                                              index_settings(spec, sweep_dir), report_paths))
        clock.stage(f"done: open {index}")
        return {"status": STATUS_COMPLETED, "index": index, "sweep_dir": sweep_dir,
                "report": report_paths, "keskar": keskar, "numbers": numbers,
                "seconds": clock.elapsed()}
    finally:
        torch.set_num_threads(previous_threads)


def _sweep(spec: DemoSpec, sweep_dir: Path, clock: _Clock, *, progress: bool
           ) -> list[dict[str, Any]] | None:
    """Plan and run the batch-size sweep; its report rows (with ``global_step`` and
    ``run_path``), or None when a run was interrupted."""
    from lbtkit.report import collect
    from lbtkit.sweep import load_sweep, plan_sweep, run_all

    base = build_config(overrides={"model": MODEL, "dataset": DATASET, "epochs": spec.epochs,
                                   "seed": spec.seed, **RECIPE}, resolve=False)
    clock.stage(f"1/4 batch-size sweep: {MODEL} on {DATASET}, batch sizes "
                f"{', '.join(map(str, spec.batch_sizes))}, {spec.epochs} epoch"
                f"{'s' if spec.epochs != 1 else ''} each, in {sweep_dir}")
    plan_sweep(base, {"batch_size": list(spec.batch_sizes)}, sweep_dir)
    statuses = run_all(sweep_dir, progress=progress)
    if STATUS_INTERRUPTED in statuses.values() or len(statuses) < len(spec.batch_sizes):
        return None
    rows = collect(sweep_dir)
    for row, entry in zip(rows, load_sweep(sweep_dir)["runs"], strict=True):
        results = RunDir(entry["run_dir"]).read_results() or {}
        row["global_step"] = results.get("global_step")
        row["run_path"] = Path(entry["run_dir"])
    return rows


def index_settings(spec: DemoSpec, sweep_dir: Path) -> dict[str, Any]:
    """What ``lbtkit.studies.demo_report.render_index`` says about how the demo was run."""
    sharpness = spec.sharpness
    return {"batch_sizes": list(spec.batch_sizes), "epochs": spec.epochs, "seed": spec.seed,
            "alphas": list(spec.interpolation.alphas), "eps": list(sharpness.eps),
            "sharpness_iters": sharpness.iters, "hessian_iters": sharpness.hessian_iters,
            "sharpness_samples": sharpness.samples, "threads": spec.threads,
            "sweep_dir": sweep_dir, "model": MODEL, "dataset": DATASET, "recipe": RECIPE,
            "bn": spec.interpolation.bn, "parameters": _parameter_count(),
            "quick": dataclasses.replace(spec, threads=QUICK.threads) == QUICK}


# --- the Keskar step ------------------------------------------------------------------------


def _keskar(spec: DemoSpec, ends: dict[str, dict[str, Any]], out: Path, clock: _Clock
            ) -> dict[str, Any]:
    """Interpolate between the two end runs, measure both, evaluate both on the training set."""
    from lbtkit.landscape import run_interpolation, run_sharpness

    sb, lb = ends["sb"], ends["lb"]
    clock.stage(f"3/4 Keskar study, SB = batch {sb['batch_size']} vs LB = batch "
                f"{lb['batch_size']}: interpolating over {len(spec.interpolation.alphas)} "
                f"alphas (BatchNorm: {spec.interpolation.bn})")
    paths = run_interpolation(spec.interpolation, sb["run_path"], lb["run_path"], out)
    interpolation = _read_interpolation(paths["csv"])
    sharpness, train = {}, {}
    measured = spec.sharpness
    spaces = ", ".join("full space" if s == "full" else f"subspace {s}"
                       for s in measured.subspaces)
    for label, row in ends.items():
        clock.stage(f"3/4 sharpness of the {label.upper()} solution (batch {row['batch_size']}):"
                    f" {spaces}, eps {', '.join(f'{e:g}' for e in measured.eps)}, "
                    f"{measured.iters} L-BFGS-B iterations; top Hessian eigenvalue "
                    f"({measured.hessian_iters} Lanczos steps)")
        target = out / f"sharpness-{label}.json"
        sharpness[label] = run_sharpness(measured, row["run_path"], output=target)
        train[label] = _train_fit(row["run_path"])
    return {"paths": {**paths, "sharpness_sb": out / "sharpness-sb.json",
                      "sharpness_lb": out / "sharpness-lb.json"},
            "interpolation": interpolation, "sharpness": sharpness, "train": train,
            "ends": ends}


def _train_fit(run_path: Path) -> dict[str, float]:
    """Loss and accuracy of the final weights on the un-augmented training set (BatchNorm on
    running statistics, as the validation numbers in results.json)."""
    from lbtkit.data import load_dataset
    from lbtkit.evaluate import InputSpec, evaluate_sums, mean_loss_and_accuracy
    from lbtkit.run_model import load_run

    model, config = load_run(run_path)
    data = load_dataset(config.dataset, config.data_dir, image_size=config.image_size,
                        num_classes=config.num_classes)
    inputs = InputSpec(data.info, config.image_size, config.channels_last)
    totals = evaluate_sums(model, data.train_images, data.train_labels, inputs,
                           batch_size=EVAL_BATCH)
    loss, accuracy = mean_loss_and_accuracy(totals)
    return {"loss": loss, "accuracy": accuracy}


def _read_interpolation(path: Path) -> list[dict[str, Any]]:
    import csv

    with path.open() as handle:
        return [{"alpha": float(r["alpha"]), "split": r["split"], "loss": float(r["loss"]),
                 "accuracy": float(r["accuracy"])} for r in csv.DictReader(handle)]


def _split_sizes() -> tuple[int, int]:
    from lbtkit.data import load_dataset

    data = load_dataset(DATASET, "data")
    return data.train_labels.shape[0], data.val_labels.shape[0]


# --- helpers --------------------------------------------------------------------------------


def _parameter_count() -> int:
    from lbtkit.config import RunConfig
    from lbtkit.run_model import build_model_for

    with torch.random.fork_rng():  # building draws initial weights: leave the global RNG alone
        model = build_model_for(RunConfig(model=MODEL, dataset=DATASET), initial_weights=False)
    return sum(p.numel() for p in model.parameters())


def _ignore_work_dir(output: Path, work: Path) -> None:
    """Keep the bulky run directories out of git when they live under ``output``."""
    try:
        relative = work.resolve().relative_to(output.resolve())
    except ValueError:
        return
    entry = f"/{relative.as_posix()}/\n"
    ignore = output / ".gitignore"
    if not ignore.exists() or entry not in ignore.read_text():
        atomic_write_text(ignore, entry)


class _Clock:
    """Stage lines with the time since the demo started."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def stage(self, text: str) -> None:
        minutes, seconds = divmod(int(self.elapsed()), 60)
        log.info("demo [%d:%02d] %s", minutes, seconds, text)
