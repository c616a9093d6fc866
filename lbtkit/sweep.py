"""Sweeps: a grid of runs planned once into ``sweep.json``, then run anywhere, in any order.

    SWEEP/sweep.json      the plan: base config, grid, one resolved config per entry
    SWEEP/runs/NAME/      each entry's run directory (see lbtkit.rundir)

The entries are the product of the grid with ``batch_size`` varying slowest, ``seed``
fastest and any other swept keys in between (in RunConfig field order), so the seeds of one
batch size are neighbours. Paths in ``sweep.json`` are relative to the sweep directory, so
the directory can be moved or mounted elsewhere (a container, another cluster's scratch);
``load_sweep`` makes them absolute again.

An entry's state is read from its run directory alone, so ``sweep_status`` works the same
whether the runs were made by ``run_all`` on a laptop or by SLURM array tasks (``run_task``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import re
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lbtkit.config import RunConfig, field_type, plan_batches
from lbtkit.errors import (
    EXIT_ENVIRONMENT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    STATUS_COMPLETED,
    STATUS_DIVERGED,
    STATUS_FAILED,
    STATUS_INTERRUPTED,
    ConfigError,
    EnvironmentFault,
    UserError,
    exit_code,
)
from lbtkit.fileio import read_json, write_json
from lbtkit.rundir import RunDir, versions

logger = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
SWEEP_VERSION = 1
RUNS_FOLDER = "runs"
LOGS_FOLDER = "logs"  # the logs of the children of run_entries

STATE_PENDING = "pending"
STATE_RUNNING = "running"
STATE_STALE = "stale"  # started, unfinished, and silent for a while: killed or hung
STATE_UNREADABLE = "unreadable"

# A run that wrote nothing for this long is reported stale rather than running. A checkpoint
# per epoch is the slowest regular write, so keep this above the longest expected epoch.
ACTIVE_WINDOW_SECONDS = 15 * 60
# Outcomes that a rerun would only repeat: run_all does not retrain them.
_FINAL = (STATUS_COMPLETED, STATUS_DIVERGED)
# The sweep sets these per entry.
_NOT_SWEEPABLE = ("name", "output_dir")


class SweepError(UserError):
    """A sweep directory whose plan is missing or cannot be read."""


# --- planning ------------------------------------------------------------------------------


def plan_sweep(
    base: RunConfig, grid: dict[str, list], output: Path, *, world_size: int = 1,
    variants: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write ``output/sweep.json`` for the product of ``grid`` over ``base``; return the plan.

    ``base`` should be unresolved (``lr`` None) so that each entry's lr is scaled from its own
    batch size; a base with ``lr`` set keeps that lr for every entry. Grid keys are RunConfig
    field names. ``variants`` names sets of overrides (e.g. one per large-batch remedy), each
    crossed with the grid and applied over it; the entry's name ends with the variant's.
    Every entry is resolved and its batch plan checked for ``world_size`` processes here, so
    a bad grid fails now rather than in the middle of the sweep. Planning the same sweep
    again is a no-op; a different plan over an existing one is refused.
    """
    if world_size < 1:
        raise ConfigError(f"world size must be >= 1, got {world_size}")
    output = Path(output)
    keys = _ordered_keys(grid)
    values = {key: _grid_values(key, grid[key]) for key in keys}
    checked_variants = _checked_variants(variants)
    base = dataclasses.replace(base, name=None, output_dir=None)
    # The variant varies just inside the batch size, so one batch size's entries are together.
    axes = [values[keys[0]], list(checked_variants or [None]),
            *(values[key] for key in keys[1:])]

    runs = []
    for index, (first, variant, *rest) in enumerate(itertools.product(*axes)):
        config = base.updated(dict(zip(keys, (first, *rest), strict=True)), source="sweep grid")
        if variant is not None:
            config = config.updated(checked_variants[variant], source=f"variant {variant!r}")
        name = _entry_name(config, keys, variant)
        run_dir = f"{RUNS_FOLDER}/{name}"
        try:
            config = dataclasses.replace(config, name=name, output_dir=run_dir).resolved()
            batch_plan = plan_batches(config, world_size)
        except ConfigError as exc:
            raise ConfigError(f"sweep entry {index} ({name}): {exc}") from None
        entry = {
            "index": index,
            "config": config.to_dict(),
            "run_dir": run_dir,
            "batch_plan": batch_plan.to_dict(),
        }
        if variant is not None:
            entry["variant"] = variant
        runs.append(entry)
    names = [entry["config"]["name"] for entry in runs]
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"two sweep entries would share the run name {twice!r}")

    plan = {
        "version": SWEEP_VERSION,
        "base": base.to_dict(),
        "grid": values,
        "world_size": world_size,
        "runs": runs,
    }
    if checked_variants:
        plan["variants"] = checked_variants
    plan = json.loads(json.dumps(plan))  # compare as it will read back from disk
    path = output / SWEEP_FILE
    if path.exists():
        existing = _with_new_fields(_read_plan_file(path))
        if existing != plan:
            raise ConfigError(
                f"{path} holds a different sweep ({_difference(existing, plan)}); "
                f"choose another output directory, or delete it to re-plan"
            )
    else:
        write_json(path, plan)
    return load_sweep(output)


def parse_grid(*, batch_sizes: str, seeds: str | None = None,
               extra: list[str] | tuple[str, ...] = ()) -> dict[str, list]:
    """The grid from command-line text: ``"32,64"``, ``"0,1"`` and ``KEY=V1,V2`` items.

    Values are parsed by the field's declared type, so ``--grid lr_scaling=linear,sqrt``
    and ``--grid base_lr=0.1,0.2`` both work; a bad item raises ConfigError naming it.
    """
    grid: dict[str, list] = {"batch_size": _parse_values("batch_size", batch_sizes)}
    if seeds:
        grid["seed"] = _parse_values("seed", seeds)
    for item in extra:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2")
        if key in grid:
            raise ConfigError(f"--grid {item!r}: {key} is already swept")
        grid[key] = _parse_values(key, text)
    return grid


def _parse_values(key: str, text: str) -> list[Any]:
    known = RunConfig.field_names()
    if key not in known:
        raise ConfigError(f"unknown sweep key {key!r}; known keys: {', '.join(known)}")
    kind = field_type(key)
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise ConfigError(f"sweep key {key!r} has no values in {text!r}")
    values: list[Any] = []
    for item in items:
        try:
            if kind is bool:
                if item.lower() not in ("true", "false"):
                    raise ValueError(item)
                values.append(item.lower() == "true")
            else:
                values.append(kind(item))
        except ValueError:
            raise ConfigError(f"sweep key {key!r}: {item!r} is not a valid value") from None
    return values


def _ordered_keys(grid: dict[str, list]) -> list[str]:
    known = RunConfig.field_names()
    for key in grid:
        if key not in known:
            raise ConfigError(f"unknown sweep key {key!r}; known keys: {', '.join(known)}")
        if key in _NOT_SWEEPABLE:
            raise ConfigError(f"{key!r} cannot be swept: the sweep sets it for every entry")
    middle = [k for k in known if k in grid and k not in ("batch_size", "seed")]
    return [k for k in ("batch_size", *middle, "seed") if k in grid]


def _grid_values(key: str, values: Any) -> list[Any]:
    """The values of one grid key, type-checked like a config file's, without repeats."""
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"sweep key {key!r} needs a list of values, got {values!r}")
    if not values:
        raise ConfigError(f"sweep key {key!r} has no values")
    checked: list[Any] = []
    for value in values:
        if value is None:
            raise ConfigError(f"sweep key {key!r} lists null; give explicit values")
        coerced = getattr(RunConfig().updated({key: value}, source="sweep grid"), key)
        if coerced in checked:
            raise ConfigError(f"sweep key {key!r} lists {value!r} twice")
        checked.append(coerced)
    return checked


def _checked_variants(variants: dict[str, dict[str, Any]] | None
                      ) -> dict[str, dict[str, Any]] | None:
    """Variant names usable in run names, and overrides that are RunConfig fields."""
    if variants is None:
        return None
    if not isinstance(variants, dict) or not variants:
        raise ConfigError("sweep variants must be a non-empty table of NAME = {KEY = VALUE}")
    checked = {}
    for name, overrides in variants.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", str(name)):
            raise ConfigError(
                f"sweep variant name {name!r}: use letters, digits and . _ + - (it names runs)"
            )
        if not isinstance(overrides, dict):
            raise ConfigError(f"sweep variant {name!r} needs a table of settings, "
                              f"got {overrides!r}")
        for key in overrides:
            if key in _NOT_SWEEPABLE:
                raise ConfigError(f"sweep variant {name!r} cannot set {key!r}: "
                                  f"the sweep sets it for every entry")
        RunConfig().updated(overrides, source=f"sweep variant {name!r}")  # names the bad key
        checked[str(name)] = dict(overrides)
    return checked


def sweep_table(values: dict[str, Any], source: str
                ) -> tuple[dict[str, list], dict[str, dict[str, Any]] | None]:
    """The ``[sweep]`` table of a preset or config file: (grid, variants).

    Keys are RunConfig fields with lists of values (``batch_size = [1024]``), plus an
    optional ``[sweep.variants.NAME]`` table of overrides per variant.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"[sweep] in {source} must be a table")
    grid = {key: value for key, value in values.items() if key != "variants"}
    for key, value in grid.items():
        if not isinstance(value, list):
            raise ConfigError(f"[sweep] {key} in {source} needs a list of values, "
                              f"got {value!r}")
    return grid, values.get("variants")


def _entry_name(config: RunConfig, keys: list[str], variant: str | None = None) -> str:
    """A short run name from the swept values: ``b256-s0``, ``b256-s0-sqrt``, ``b64-s1-epochs9``,
    ``b1024-s0-lars`` (variant ``lars``)."""
    parts = [f"b{config.batch_size}", f"s{config.seed}"]
    if variant is not None:
        parts.append(variant)
    for key in keys:
        if key in ("batch_size", "seed"):
            continue
        value = getattr(config, key)
        if isinstance(value, str):
            parts.append(value)  # model and rule names speak for themselves
        elif isinstance(value, bool):
            parts.append(key if value else f"no-{key}")
        elif isinstance(value, float):
            parts.append(key + re.sub(r"e\+?(-?)0*(\d)", r"e\1\2", f"{value:g}"))
        else:
            parts.append(f"{key}{value}")
    return re.sub(r"[^A-Za-z0-9._+-]", "_", "-".join(parts))


def _with_new_fields(plan: dict[str, Any]) -> dict[str, Any]:
    """A stored plan with the RunConfig fields it predates filled in with their defaults.

    A plan written by an older lbtkit lacks fields added since; a missing field meant its
    default behaviour, so re-planning the same sweep after an upgrade is still the same sweep
    (the run directories' config.json files are read the same way, via RunConfig.from_dict).
    """
    defaults = RunConfig().to_dict()

    def fill(config: Any) -> Any:
        return {**defaults, **config} if isinstance(config, dict) else config

    filled = dict(plan)
    filled["base"] = fill(plan.get("base"))
    if isinstance(plan.get("runs"), list):
        filled["runs"] = [{**entry, "config": fill(entry.get("config"))}
                          if isinstance(entry, dict) else entry for entry in plan["runs"]]
    return filled


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The first thing that differs between two plans, for the refusal message."""
    for key in ("world_size", "grid", "variants"):
        if old.get(key) != new.get(key):
            return f"{key} {old.get(key)!r} there, {new.get(key)!r} now"
    old_base = old.get("base") if isinstance(old.get("base"), dict) else {}
    for key, value in new["base"].items():
        if old_base.get(key) != value:
            return f"base {key} = {old_base.get(key)!r} there, {value!r} now"
    return "its entries differ"


# --- loading ---------------------------------------------------------------------------------


def load_sweep(sweep_dir: str | Path) -> dict[str, Any]:
    """Read ``sweep_dir/sweep.json``; run dirs and output_dirs come back absolute.

    The returned dict is the plan plus ``sweep_dir`` (absolute).
    """
    root = Path(os.path.normpath(Path(sweep_dir).absolute()))
    path = root / SWEEP_FILE
    if not path.is_file():
        raise SweepError(f"no sweep plan at {path} (make one with: lbtkit sweep plan)")
    plan = _read_plan_file(path)
    if plan.get("version") != SWEEP_VERSION:
        raise SweepError(
            f"{path} has format version {plan.get('version')!r}; this lbtkit reads "
            f"version {SWEEP_VERSION}"
        )
    missing = [key for key in ("base", "grid", "world_size", "runs") if key not in plan]
    if missing:
        raise SweepError(f"{path} is not a valid sweep plan (no {missing[0]!r})")
    world = plan["world_size"]
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise SweepError(f"{path}: world_size must be a whole number >= 1, got {world!r}")
    if not isinstance(plan["runs"], list):
        raise SweepError(f"{path}: runs must be a list of entries, got {plan['runs']!r:.80}")
    try:
        runs = []
        for position, entry in enumerate(plan["runs"]):
            if entry["index"] != position:
                raise SweepError(f"{path}: entry {position} says index {entry['index']!r}")
            config = dict(entry["config"])
            config["output_dir"] = _inside(root, config["output_dir"], f"{path} entry {position}")
            RunConfig.from_dict(config, source=f"{path} entry {position}")  # fail here, not later
            run_dir = _inside(root, entry["run_dir"], f"{path} entry {position}")
            runs.append({**entry, "config": config, "run_dir": run_dir})
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise SweepError(f"{path} is not a valid sweep plan (bad or missing {exc})") from None
    if not runs:
        raise SweepError(f"{path} is not a valid sweep plan (no entries)")
    return {**plan, "runs": runs, "sweep_dir": str(root)}


def _inside(root: Path, relative: Any, where: str) -> str:
    """``root / relative`` for a path of the plan; one that leaves the sweep directory (an
    absolute path, ``..``) is refused: a plan's entries write nowhere else."""
    if not isinstance(relative, str) or not relative:
        raise SweepError(f"{where}: a run directory must be a relative path, got {relative!r}")
    joined = Path(os.path.normpath(root / relative))
    if Path(relative).is_absolute() or not joined.is_relative_to(root) or joined == root:
        raise SweepError(f"{where}: run directory {relative!r} is outside the sweep directory "
                         f"{root}; a plan's runs live in it (runs/NAME)")
    return str(joined)


def _read_plan_file(path: Path) -> dict[str, Any]:
    return read_json(path, kind=dict, error=SweepError)


def entry_config(sweep: dict[str, Any], index: int) -> RunConfig:
    """The resolved config of entry ``index`` of a loaded sweep (absolute output_dir)."""
    runs = sweep["runs"]
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(runs):
        raise ConfigError(
            f"sweep index {index!r} is out of range: valid indices are 0..{len(runs) - 1} "
            f"({len(runs)} entries in {sweep['sweep_dir']})"
        )
    return RunConfig.from_dict(runs[index]["config"], source=f"sweep entry {index}")


# --- running ---------------------------------------------------------------------------------


def run_task(sweep_dir: str | Path, index: int, *, progress: bool = True,
             threads: int | None = None) -> int:
    """Train entry ``index``; return its process exit code (see ``lbtkit.train.exit_code``).
    ``threads``: torch threads, when the entry's config sets none.

    This is what one SLURM array task calls, in every process of an ``accelerate launch``:
    ``lbtkit.train.run`` does the distribution, the resume and the completed-run shortcut.
    """
    from lbtkit.train import run

    config = _with_threads(entry_config(load_sweep(sweep_dir), index), threads)
    return exit_code(run(config, progress=progress)["status"])


def _with_threads(config: RunConfig, threads: int | None) -> RunConfig:
    """``config`` with ``threads`` torch threads unless it sets its own (``threads`` does not
    change what is trained, so a run may resume with another count)."""
    if threads is None or config.threads is not None:
        return config
    return dataclasses.replace(config, threads=threads)


def run_all(sweep_dir: str | Path, *, progress: bool = True, jobs: int = 1,
            threads: int | None = None) -> dict[int, str]:
    """Run the sweep's entries one after another in this process; return index -> status.

    Completed and diverged entries are skipped (a rerun would only repeat them); interrupted
    and failed ones are retried, resuming from their last checkpoint. An exception in one run
    is recorded as ``failed`` in its results.json and the sweep goes on. An interruption
    (signal, Ctrl-C) stops the loop: the entries after it are missing from the result.

    ``jobs`` > 1: ``jobs`` entries at once, each in a child process (``run_entries``), with
    the same outcomes. ``threads``: torch threads of an entry whose config sets none (None:
    this process's setting; with ``jobs`` > 1, the usable CPUs shared out).
    """
    from lbtkit.distributed import launched_world_size
    from lbtkit.preflight import preflight_all
    from lbtkit.train import run

    if jobs != 1:
        return run_entries(sweep_dir, jobs=jobs, threads=threads)
    sweep = load_sweep(sweep_dir)
    total = len(sweep["runs"])
    # A missing data set is one line now, not one failure per entry.
    preflight_all([entry_config(sweep, entry["index"]) for entry in sweep["runs"]
                   if read_run(entry).state not in _FINAL], world_size=launched_world_size())
    statuses: dict[int, str] = {}
    for entry in sweep["runs"]:
        index = entry["index"]
        label = f"sweep [{index + 1}/{total}] {entry['config']['name']}"
        state = read_run(entry).state
        if state in _FINAL:
            statuses[index] = state
            logger.info("%s: %s already; skipping", label, state)
            continue
        logger.info("%s: batch %s, lr %g", label, entry["config"]["batch_size"],
                    entry["config"]["lr"])
        results_path = RunDir(entry["run_dir"]).results_path
        before = _mtime(results_path)
        try:
            status = run(_with_threads(entry_config(sweep, index), threads),
                         progress=progress)["status"]
        except KeyboardInterrupt:
            statuses[index] = STATUS_INTERRUPTED
            logger.info("%s: interrupted; stopping the sweep", label)
            break
        except Exception as exc:
            status = STATUS_FAILED
            # A mistake or a full disk is one line; a bug keeps its traceback.
            one_line = isinstance(exc, (UserError, EnvironmentFault))
            text = f"error: {exc}" if one_line else traceback.format_exc()
            # The CLI shows an error record as "error: MESSAGE" on stderr.
            logger.error("%s", exc if one_line else text)
            # A run that got as far as writing its own results.json said what happened.
            if _mtime(results_path) == before:
                _record_failure(results_path, entry, f"{type(exc).__name__}: {exc}", text)
        statuses[index] = status
        logger.info("%s: %s", label, status)
        if status == STATUS_INTERRUPTED:
            break
    return statuses


def run_all_exit_code(statuses: dict[int, str]) -> int:
    """Exit code for ``lbtkit sweep run``: 75 when stopped early, 1 when a run failed, else 0.

    Diverged runs are results of a sweep, not errors, so they leave the code at 0.
    """
    values = set(statuses.values())
    if STATUS_INTERRUPTED in values:
        return EXIT_INTERRUPTED
    return EXIT_ENVIRONMENT if STATUS_FAILED in values else EXIT_OK


def run_entries(sweep_dir: str | Path, indices: Iterable[int] | None = None, *, jobs: int,
                threads: int | None = None) -> dict[int, str]:
    """Run entries ``indices`` (default: all) of a sweep, ``jobs`` at once, each in a child
    process (``lbtkit sweep run-task``); return index -> status, as ``run_all`` does.

    The outcomes are ``run_all``'s: completed and diverged entries are skipped, a mistake
    (no data, a bad batch plan) stops everything before any entry starts, a child that dies
    without writing its results.json is recorded as ``failed`` and the rest go on, and a
    signal (or an interrupted entry) stops every running entry at a checkpoint: they are
    ``interrupted``, the entries not yet started are missing from the result.

    Each child gets ``threads`` torch threads (default: the usable CPUs over the entries run
    at once) unless its config sets its own; a run's numbers depend on its thread count, so
    this equals one-at-a-time only at the same count. On a machine with GPUs, an entry of
    the plan's ``world_size`` processes gets that many GPUs of its own
    (``CUDA_VISIBLE_DEVICES``, through ``accelerate launch`` when more than one), and only as
    many entries run at once as fit. A child's output goes to SWEEP/logs/NAME.log.
    """
    from lbtkit.cpu import usable_cpus
    from lbtkit.distributed import in_launched_worker
    from lbtkit.local_pool import run_tasks, threads_per_job
    from lbtkit.preflight import preflight_all

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be a whole number >= 1, got {jobs!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ConfigError(f"threads must be a whole number >= 1, got {threads!r}")
    if in_launched_worker():
        raise ConfigError("a sweep with jobs starts its own processes: run it without "
                          "accelerate launch")
    sweep = load_sweep(sweep_dir)
    chosen = _chosen_indices(sweep, indices)
    statuses: dict[int, str] = {}
    todo = []
    for index in chosen:
        entry = sweep["runs"][index]
        state = read_run(entry).state
        if state in _FINAL:
            statuses[index] = state
            logger.info("%s: %s already; skipping", _label(sweep, entry), state)
        else:
            todo.append(entry)
    slots, processes = _slots(sweep["world_size"], jobs)
    preflight_all([entry_config(sweep, entry["index"]) for entry in todo], world_size=processes)
    per_job = threads or threads_per_job(usable_cpus().count, len(slots))
    tasks = [_entry_task(sweep, entry, per_job, processes) for entry in todo]
    watcher = _EntryWatcher(sweep, todo)
    run_tasks(tasks, slots, on_start=watcher.started, on_finish=watcher.finished)
    statuses.update(watcher.statuses)
    return dict(sorted(statuses.items()))


def _chosen_indices(sweep: dict[str, Any], indices: Iterable[int] | None) -> list[int]:
    if indices is None:
        return [entry["index"] for entry in sweep["runs"]]
    chosen = list(indices)
    for index in chosen:
        entry_config(sweep, index)  # names an index out of range
    if len(set(chosen)) < len(chosen):
        raise ConfigError(f"sweep indices {chosen} list an entry twice")
    return chosen


def _label(sweep: dict[str, Any], entry: dict[str, Any]) -> str:
    return f"sweep [{entry['index'] + 1}/{len(sweep['runs'])}] {entry['config']['name']}"


def _slots(world_size: int, jobs: int) -> tuple[list[dict[str, str]], int]:
    """The environment of each concurrent slot, and the processes an entry runs on: its own
    GPUs when they fit (``world_size`` of them), else one process with what all see."""
    import os

    import torch

    from lbtkit.local_pool import gpu_slots, visible_gpus

    gpus = visible_gpus(torch.cuda.device_count(), os.environ)
    assignment = gpu_slots(gpus, jobs, world_size)
    if assignment is None:
        if gpus:
            logger.warning("sweep: %d GPU(s) cannot give an entry its %d; the entries run "
                           "at once share them", len(gpus), world_size)
        return [{} for _ in range(jobs)], 1
    if len(assignment) < jobs:
        logger.info("sweep: %d GPU(s) fit %d entries of %d process(es) at once, not %d",
                    len(gpus), len(assignment), world_size, jobs)
    return [{"CUDA_VISIBLE_DEVICES": gpus} for gpus in assignment], world_size


def _entry_task(sweep: dict[str, Any], entry: dict[str, Any], threads: int,
                processes: int):
    """The child that runs one entry: ``lbtkit sweep run-task`` (under ``accelerate launch``
    for several processes), its threads, its log."""
    import sys

    from lbtkit.launch import free_port, launcher_environment, lbtkit_launch_command
    from lbtkit.local_pool import Task

    per_process = max(1, threads // processes)
    # With progress: to a file that is plain lines every log_every steps (lbtkit.progress).
    args = ["sweep", "run-task", sweep["sweep_dir"], "--index", str(entry["index"]),
            "--threads", str(per_process)]
    if processes > 1:
        command = lbtkit_launch_command(args, processes, free_port())
        env = launcher_environment(os.environ)
    else:
        command = [sys.executable, "-m", "lbtkit", *args]
        env = {}
    log = Path(sweep["sweep_dir"]) / LOGS_FOLDER / f"{entry['config']['name']}.log"
    return Task(key=entry["index"], command=command, log=log, launches=processes > 1,
                env={**env, "OMP_NUM_THREADS": str(per_process)}, in_worker=processes == 1)


class _EntryWatcher:
    """Progress lines as the children start and end, and each entry's status from its run
    directory (a failure recorded when the child could not record it)."""

    def __init__(self, sweep: dict[str, Any], todo: list[dict[str, Any]]) -> None:
        self.sweep = sweep
        self.entries = {entry["index"]: entry for entry in todo}
        self.before: dict[int, float | None] = {}
        self.statuses: dict[int, str] = {}

    def started(self, task, pid: int) -> None:
        entry = self.entries[task.key]
        self.before[task.key] = _mtime(RunDir(entry["run_dir"]).results_path)
        config = entry["config"]
        gpus = task.env.get("CUDA_VISIBLE_DEVICES")
        logger.info("%s: batch %s, lr %g; pid %d, %s thread(s)%s; log %s",
                    _label(self.sweep, entry), config["batch_size"], config["lr"], pid,
                    task.env["OMP_NUM_THREADS"], f", GPUs {gpus}" if gpus else "", task.log)

    def finished(self, task, returncode: int) -> bool:
        """Record the entry's status; True (stop the others) when it was interrupted."""
        entry = self.entries[task.key]
        status = self._status(entry, task, returncode)
        self.statuses[task.key] = status
        logger.info("%s: %s (%d of %d done)", _label(self.sweep, entry), status,
                    len(self.statuses), len(self.entries))
        return status == STATUS_INTERRUPTED

    def _status(self, entry: dict[str, Any], task, returncode: int) -> str:
        import signal

        from lbtkit.errors import EXIT_INTERRUPTED

        run = RunDir(entry["run_dir"])
        if _mtime(run.results_path) != self.before[task.key]:
            results = run.read_results()
            if results is not None:
                return results["status"]
        if returncode in (EXIT_INTERRUPTED, -signal.SIGTERM, -signal.SIGINT):
            return STATUS_INTERRUPTED  # stopped while starting: nothing to checkpoint yet
        tail = _tail(task.log)
        logger.error("%s: exit %d without results; the end of %s:\n%s",
                     _label(self.sweep, entry), returncode, task.log, tail)
        last = tail.splitlines()[-1] if tail else ""
        _record_failure(run.results_path, entry, f"exit {returncode}: {last}", tail)
        return STATUS_FAILED


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _record_failure(path: Path, entry: dict[str, Any], error: str, text: str) -> None:
    write_json(path, {
        "status": STATUS_FAILED,
        "error": error,
        "traceback": text,
        "config": entry["config"],
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
    })


# --- state -----------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """What an entry's run directory says, read defensively (never raises)."""

    entry: dict[str, Any]
    state: str
    results: dict[str, Any] | None  # the run's results.json, when it speaks for the run
    metrics: list[dict[str, Any]]  # readable metrics.jsonl rows

    @property
    def best_val_acc(self) -> float | None:
        if self.results is not None:
            return number(self.results.get("best_val_acc"))
        accs = [number(row.get("val_acc")) for row in self.metrics]
        return max((a for a in accs if a is not None), default=None)

    @property
    def epochs_completed(self) -> int:
        if self.results is not None:
            done = number(self.results.get("epochs_completed"))
            return int(done) if done is not None else 0
        return max((int(row["epoch"]) for row in self.metrics), default=0)


def read_run(entry: dict[str, Any], *, now: float | None = None) -> RunRecord:
    """The state of one loaded sweep entry, from its run directory.

    pending: not started. completed / diverged / failed / interrupted: the results.json
    status. running: started (or resumed after an interruption or failure) and written to
    within ``ACTIVE_WINDOW_SECONDS``; stale: the same but silent for longer. unreadable:
    results.json exists but cannot be parsed.
    """
    run = RunDir(entry["run_dir"])
    now = time.time() if now is None else now
    metrics = run.read_metrics()
    results_time = _mtime(run.results_path)
    if results_time is not None:
        results = run.read_results()
        if results is None:  # there, but unreadable (lbtkit.rundir logged why)
            return RunRecord(entry, STATE_UNREADABLE, None, [])
        # After an interruption or failure, a newer config.json means a new attempt began.
        if results["status"] in _FINAL or _last_activity(run) <= results_time:
            return RunRecord(entry, results["status"], results, metrics)
    elif not run.config_path.exists():
        return RunRecord(entry, STATE_PENDING, None, metrics)
    fresh = now - _last_activity(run) < ACTIVE_WINDOW_SECONDS
    return RunRecord(entry, STATE_RUNNING if fresh else STATE_STALE, None, metrics)


def sweep_status(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per entry: index, name, batch_size, seed, state, best_val_acc (so far),
    epochs_completed, epochs."""
    sweep = load_sweep(sweep_dir)
    now = time.time()
    rows = []
    for entry in sweep["runs"]:
        record = read_run(entry, now=now)
        config = entry["config"]
        rows.append({
            "index": entry["index"],
            "name": config["name"],
            "batch_size": config["batch_size"],
            "seed": config["seed"],
            "state": record.state,
            "best_val_acc": record.best_val_acc,
            "epochs_completed": record.epochs_completed,
            "epochs": config["epochs"],
        })
    return rows


def number(value: Any) -> float | None:
    """``value`` when it is a finite real number, else None (run files are read untrusted)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None
    return value if math.isfinite(value) else None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _last_activity(run: RunDir) -> float:
    """Newest write time among the files a live run keeps touching."""
    paths = [run.config_path, run.metrics_path, run.checkpoints]
    with contextlib.suppress(OSError):  # no checkpoints yet, or one deleted as we looked
        paths += list(run.checkpoints.iterdir())
    return max((t for t in map(_mtime, paths) if t is not None), default=0.0)
