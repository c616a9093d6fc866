"""The sweep report: ``report.md`` with the seed-style table, ``results.csv``, and figures.

Every sweep entry gets a row, whatever state its run is in; a missing or damaged run file
shows up as a status ("pending", "unreadable", ...) with empty numbers, never as an
exception or a silently shorter table.

The markdown's words are in the templates ``sweep_report.md.j2`` and ``sweep_sentences.md.j2``
(``lbtkit/templates``); the functions here compute what they say: the numbers, and which
sentence applies (``plan_data``, ``budget_data``, ``validation_data``, ``stability_data``,
``noise_data``).

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas directly, not
through pyplot: nothing global is switched (a notebook calling this keeps its backend) and
no figure outlives the call.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import statistics
from collections import Counter
from io import StringIO
from pathlib import Path
from typing import Any

from lbtkit.errors import STATUS_COMPLETED, STATUS_DIVERGED, STATUS_FAILED, UserError
from lbtkit.fileio import atomic_write_text, read_json
from lbtkit.markdown import DASH, format_lr, render, sentence
from lbtkit.sweep import SWEEP_FILE, RunRecord, load_sweep, number, read_run

# Keys every row has; swept keys other than these get their own columns.
_FIXED_KEYS = ("batch_size", "seed")
_BAD = (STATUS_DIVERGED, STATUS_FAILED)

__all__ = ["accuracy_measures", "accuracy_ylim", "budget_data", "chance_loss", "collect",
           "dodge_factor", "fixed_epochs", "held_out", "noise_data", "plan_data",
           "stability_data", "stability_text", "validation_data", "validation_text",
           "write_report"]


# --- formatting --------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.2f}%"


def _mean_std(values: list[float]) -> str:
    """Mean ± sample std of fractions, as percentages; one value is shown alone."""
    if not values:
        return DASH
    if len(values) == 1:
        return _percent(values[0])
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}%"


def _value(value: Any) -> str:
    """A swept value for a legend: floats the way the lr column writes them."""
    return format_lr(value) if isinstance(value, float) else str(value)


# --- collecting --------------------------------------------------------------------------


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per sweep entry, in plan order, whatever the state of its run."""
    return [row for row, _ in _collect(load_sweep(sweep_dir))]


def _collect(sweep: dict[str, Any]) -> list[tuple[dict[str, Any], RunRecord]]:
    extra = _extra_keys(sweep)
    pairs = []
    for entry in sweep["runs"]:
        record = read_run(entry)
        pairs.append((_row(entry, record, extra, Path(sweep["sweep_dir"])), record))
    return pairs


def _extra_keys(sweep: dict[str, Any]) -> list[str]:
    """The columns that tell entries of one batch size and seed apart."""
    variant = ["variant"] if sweep.get("variants") else []
    return variant + [key for key in sweep["grid"] if key not in _FIXED_KEYS]


def _row(entry: dict[str, Any], record: RunRecord, extra: list[str], root: Path
         ) -> dict[str, Any]:
    config, planned = entry["config"], entry["batch_plan"]
    results = record.results or {}
    final = results.get("final") if isinstance(results.get("final"), dict) else {}

    def actual(key: str) -> int:
        """The batch split the run really used (its world size may differ from the plan's)."""
        value = number(results.get(key))
        return int(value) if value is not None else planned[key]

    seconds = number(results.get("train_seconds"))
    if seconds is None and record.results is None and record.metrics:
        seconds = number(record.metrics[-1].get("elapsed_s"))  # a run still going
    return {
        "index": entry["index"],
        "name": config["name"],
        **{key: entry.get("variant") if key == "variant" else config[key] for key in extra},
        "batch_size": config["batch_size"],
        "seed": config["seed"],
        "world_size": actual("world_size"),
        "per_device_batch_size": actual("per_device_batch_size"),
        "grad_accum_steps": actual("grad_accum_steps"),
        "lr": config["lr"],
        "epochs": config["epochs"],
        "epochs_completed": record.epochs_completed,
        "steps": _steps(record),
        "val_split": _val_split(config),
        "best_val_acc": record.best_val_acc,
        "final_val_acc": number(final.get("val_acc")),
        "test_acc": number(results.get("test_acc")),
        "test_loss": number(results.get("test_loss")),
        "final_train_loss": number(final.get("train_loss")),
        **_stability(record.metrics, config.get("num_classes")),
        "train_seconds": seconds,
        "images_per_second": number(results.get("images_per_second")),
        "status": record.state,
        "run_dir": Path(os.path.relpath(entry["run_dir"], root)).as_posix(),
    }


def chance_loss(num_classes: Any) -> float | None:
    """ln(num_classes): the cross-entropy of a uniform guess. A training loss above it has
    learned less than nothing (None when the number of classes is unknown)."""
    n = number(num_classes)
    return math.log(n) if n is not None and n > 1 else None


def _stability(metrics: list[dict[str, Any]], num_classes: Any) -> dict[str, Any]:
    """The highest training loss of any logged epoch, its epoch, and ``unstable``: whether it
    exceeds chance (None when there is no loss or no number of classes). A non-finite loss is
    not counted here: that run's status is "diverged"."""
    losses = [(number(row.get("train_loss")), number(row.get("epoch"))) for row in metrics]
    losses = [(loss, epoch) for loss, epoch in losses if loss is not None]
    chance = chance_loss(num_classes)
    if not losses:
        return {"chance_loss": chance, "max_train_loss": None, "max_train_loss_epoch": None,
                "unstable": None}
    loss, epoch = max(losses, key=lambda pair: pair[0])
    return {"chance_loss": chance, "max_train_loss": loss,
            "max_train_loss_epoch": None if epoch is None else int(epoch),
            "unstable": None if chance is None else loss > chance}


def _steps(record: RunRecord) -> int | None:
    """Optimizer steps taken: the last logged epoch's step count."""
    steps = [number(row.get("step")) for row in record.metrics]
    steps = [s for s in steps if s is not None]
    return int(max(steps)) if steps else None


def _val_split(config: dict[str, Any]) -> int:
    value = number(config.get("val_split"))
    return int(value) if value is not None else 0


# --- writing -------------------------------------------------------------------------------

# The report's page and its sentences (lbtkit/templates): the words are there, the numbers and
# which sentence applies are computed here.
PAGE = "sweep_report.md.j2"
SENTENCES = "sweep_sentences.md.j2"

# The plan settings the report's first line names.
_PLAN_KEYS = ("model", "dataset", "epochs", "optimizer", "base_lr", "lr_scaling", "lr")


def write_report(sweep_dir: str | Path, output: Path | None = None) -> dict[str, Path]:
    """Write report.md, results.csv, accuracy_vs_batch.png and learning_curves.png.

    They go into ``output`` (default: the sweep directory); returns their paths by kind.
    """
    sweep = load_sweep(sweep_dir)
    out = Path(output) if output is not None else Path(sweep["sweep_dir"])
    out.mkdir(parents=True, exist_ok=True)
    pairs = _collect(sweep)
    rows = [row for row, _ in pairs]
    paths = {
        "report": out / "report.md",
        "csv": out / "results.csv",
        "accuracy_vs_batch": out / "accuracy_vs_batch.png",
        "learning_curves": out / "learning_curves.png",
    }
    _write_csv(rows, paths["csv"])
    extra = _extra_keys(sweep)
    noise = _noise_scales(pairs)
    _plot_accuracy(rows, extra, paths["accuracy_vs_batch"], noise=_noise_summary(noise),
                   budget=fixed_epochs(sweep))
    _plot_curves(pairs, extra, paths["learning_curves"])
    atomic_write_text(paths["report"], _markdown(sweep, rows, paths, noise))
    return paths


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    buffer = StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    atomic_write_text(path, buffer.getvalue())


def _markdown(sweep: dict[str, Any], rows: list[dict[str, Any]], paths: dict[str, Path],
              noise: list[dict[str, Any]]) -> str:
    """report.md's text, from ``sweep_report.md.j2``."""
    extra = _extra_keys(sweep)
    root = Path(sweep["sweep_dir"])
    several_seeds = len(sweep["grid"].get("seed", [])) > 1
    budget = fixed_epochs(sweep)
    files = {kind: paths[kind].name for kind in ("accuracy_vs_batch", "learning_curves", "csv")}
    return render(
        PAGE, name=root.name, plan=plan_data(sweep), extra=extra, several_seeds=several_seeds,
        counts=list(Counter(row["status"] for row in rows).items()),
        budget=None if budget is None else budget_data(budget, rows),
        completed=any(row["status"] == STATUS_COMPLETED for row in rows),
        test_column=held_out(rows) != "test", runs=[_flagged(row) for row in rows],
        groups=[_group_data(group) for group in _groups(rows, extra).values()]
        if several_seeds else [],
        validation=validation_data(rows), stability=stability_data(rows, extra),
        files={**files, "plan": os.path.relpath(root / SWEEP_FILE, paths["report"].parent)},
        noise=noise_data(noise), noise_file=_NOISE_SCALE_FILE)


def plan_data(sweep: dict[str, Any]) -> dict[str, Any]:
    """What the plan's line says: each setting in ``_PLAN_KEYS`` as its base value and, when
    the grid sweeps it, its swept values; how the lr follows the batch size (``lr_rule``); the
    base batch size; the number of processes."""
    base, grid = sweep["base"], sweep["grid"]
    axes = {key: {"key": key, "value": base.get(key),
                  "swept": [_value(v) for v in grid[key]] if key in grid else None}
            for key in _PLAN_KEYS}
    return {"axes": axes, "lr_rule": _lr_rule(base, grid),
            "base_batch_size": base["base_batch_size"], "world_size": sweep["world_size"]}


def _lr_rule(base: dict[str, Any], grid: dict[str, Any]) -> str:
    """"lr swept"; "fixed lr" (the base's lr at every batch size); "scaling swept" (base_lr
    scaled by each swept rule); else "scaled" by the base's lr_scaling rule."""
    if "lr" in grid:
        return "lr swept"
    if base.get("lr") is not None:
        return "fixed lr"
    return "scaling swept" if "lr_scaling" in grid else "scaled"


def fixed_epochs(sweep: dict[str, Any]) -> int | None:
    """The sweep's epoch budget when every entry trains that many epochs, whatever its
    batch size (one epochs value, no rule that stops a run early); else None."""
    base = sweep["base"]
    if "epochs" in sweep["grid"]:
        return None
    stops = ("stop_train_acc", "stop_plateau_epochs", "targets")
    if any(base.get(key) for key in stops) or any(key in sweep["grid"] for key in stops):
        return None
    return int(base["epochs"])


def budget_data(epochs: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The epoch budget and, when runs of more than one batch size trained all of it, the
    steps the smallest and the largest batch size took ({"batch_size", "steps"} each)."""
    steps = sorted((row["batch_size"], row["steps"]) for row in rows
                   if row["steps"] is not None and row["epochs_completed"] == row["epochs"])
    ends = [steps[0], steps[-1]] if len(steps) > 1 and steps[0][0] != steps[-1][0] else []
    return {"epochs": epochs, "steps": [{"batch_size": b, "steps": n} for b, n in ends]}


def held_out(rows: list[dict[str, Any]]) -> str:
    """"held out" when every run validated on a split of its training set, "test" when every
    one validated on the test split, "mixed" otherwise."""
    splits = {row["val_split"] > 0 for row in rows}
    return "held out" if splits == {True} else "test" if splits == {False} else "mixed"


def validation_data(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Which images the validation numbers are of (``held_out``'s kind) and, when every run
    held out the same number, that number (else None)."""
    sizes = sorted({row["val_split"] for row in rows})
    return {"kind": held_out(rows), "size": sizes[0] if len(sizes) == 1 else None}


def validation_text(rows: list[dict[str, Any]]) -> str:
    """Which images the validation numbers are of, and whether the test set is separate."""
    return sentence(SENTENCES, "validation", validation_data(rows))


def stability_data(rows: list[dict[str, Any]], extra: list[str]) -> dict[str, Any]:
    """The chance level (when every run shares one), the unstable runs (a training loss
    above it at some epoch: their highest loss and its epoch) and the diverged runs (a
    non-finite loss)."""
    chance = {row["chance_loss"] for row in rows} - {None}
    return {
        "chance": chance.pop() if len(chance) == 1 else None,
        "unstable": [{**_who(row, extra), "loss": row["max_train_loss"],
                      "epoch": row["max_train_loss_epoch"]}
                     for row in rows if _flag_unstable(row)],
        "diverged": [_who(row, extra) for row in rows if row["status"] == STATUS_DIVERGED],
    }


def stability_text(rows: list[dict[str, Any]], extra: list[str]) -> str:
    """Which runs diverged (a non-finite loss) and which were unstable (a training loss
    above chance at some epoch), in one paragraph."""
    return sentence(SENTENCES, "stability", stability_data(rows, extra))


def _who(row: dict[str, Any], extra: list[str]) -> dict[str, Any]:
    """What tells a run apart: batch size, the other swept values, seed."""
    return {"batch_size": row["batch_size"], "seed": row["seed"],
            "others": [{"key": key, "value": row[key]} for key in extra]}


def _flag_unstable(row: dict[str, Any]) -> bool:
    """Whether the run's status is flagged unstable (a diverged run says more already)."""
    return bool(row["unstable"]) and row["status"] != STATUS_DIVERGED


def _flagged(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "flag_unstable": _flag_unstable(row)}


def _group_data(group: list[dict[str, Any]]) -> dict[str, Any]:
    """One batch size's (and other swept values') runs pooled over seeds: the accuracies'
    mean ± std over completed seeds, mean wall time and images/s, and how many runs ended
    how (a run of each status, with its count)."""
    done = [r for r in group if r["status"] == STATUS_COMPLETED]
    states: dict[tuple, list] = {}
    for row in group:
        states.setdefault((row["status"], _flag_unstable(row)), [_flagged(row), 0])[1] += 1
    return {
        "first": _flagged(group[0]), "completed": len(done), "runs": len(group),
        **{key: _mean_std(_present(done, key))
           for key in ("best_val_acc", "final_val_acc", "test_acc")},
        **{key: _mean(_present(done, key)) for key in ("train_seconds", "images_per_second")},
        "states": [tuple(state) for state in states.values()],
    }


def _groups(rows: list[dict[str, Any]], extra: list[str]) -> dict[tuple, list[dict[str, Any]]]:
    """Rows by (batch size, other swept values), in plan order: seeds are pooled."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["batch_size"], *(row[k] for k in extra)), []).append(row)
    return groups


def _present(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [row[key] for row in rows if row[key] is not None]


def _mean(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


# --- figures -------------------------------------------------------------------------------


def _figure(width: float, height: float, panels: int = 1):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots(1, panels)
    return figure, axes


def _label(key: tuple, extra: list[str]) -> str:
    return ", ".join(f"{k}={_value(v)}" for k, v in zip(extra, key, strict=True))


# Horizontal offset between series at one batch size, in powers of 2 on the log2 axis.
_DODGE = 0.08


def dodge_factor(position: int, count: int) -> float:
    """The factor that moves series ``position`` of ``count`` off its batch size so that
    series at one batch size sit side by side (centred on it), not on top of each other."""
    return 2.0 ** (_DODGE * (position - (count - 1) / 2))


# The accuracy figure's y-range: at most this many points below its highest value, so that a
# 1-point drop stays visible when a run collapses; values below it sit on the axis, labelled.
_ACCURACY_SPAN = 10.0


def accuracy_measures(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(row key, legend label, line style) of each accuracy the figure draws: best and final
    validation, and test when the runs held out a validation split."""
    kind = held_out(rows)
    where = {"held out": "validation (held out)", "test": "validation (= test split)",
             "mixed": "validation"}[kind]
    measures = [("best_val_acc", f"best {where}", "o-"), ("final_val_acc", f"final {where}",
                                                           "s--")]
    if kind != "test":
        measures.append(("test_acc", "test (final weights)", "^:"))
    return measures


def accuracy_ylim(values: list[float], span: float = _ACCURACY_SPAN) -> tuple[float, float]:
    """The y-range (percent) for ``values``: from a little below the lowest to a little above
    the highest, but never more than ``span`` points below the highest."""
    top = max(values) + 0.5
    return max(min(values) - 0.5, top - span), top


def _plot_accuracy(rows: list[dict[str, Any]], extra: list[str], path: Path,
                   noise: float | None = None, budget: int | None = None) -> None:
    """Best and final validation and test top-1 against batch size (log2 axis): mean ± std
    over completed seeds, seeds as dots; batch sizes with a diverged/failed or unfinished run
    marked on the axis; the gradient noise scale ``noise`` (B_simple) as a vertical line when
    measured. The y-range shows a 1-point drop (``accuracy_ylim``)."""
    from matplotlib.ticker import MultipleLocator, NullLocator

    figure, ax = _figure(6.8, 4.6)
    batches = sorted({row["batch_size"] for row in rows})
    # One colour per combination of the other swept values (just one when only batch varies),
    # one line style per accuracy.
    series: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        series.setdefault(tuple(row[k] for k in extra), []).append(row)
    several_seeds = len({row["seed"] for row in rows}) > 1
    measures = accuracy_measures(rows)
    lines = []  # (x, means, stds, colour, style, label, seed dots)
    for position, (key, group) in enumerate(series.items()):
        for number_, (field, measure, style) in enumerate(measures):
            # Side by side at each batch size; colours tell the accuracies apart when there
            # is one series, the series apart (line styles the accuracies) when there are more.
            dodge = dodge_factor(position * len(measures) + number_,
                                 len(series) * len(measures))
            color = f"C{(number_ if len(series) == 1 else position) % 10}"
            xs, means, stds, dots = [], [], [], []
            for batch in batches:
                accs = [100 * r[field] for r in group if r["batch_size"] == batch
                        and r["status"] == STATUS_COMPLETED and r[field] is not None]
                if not accs:
                    continue
                xs.append(batch * dodge)
                means.append(statistics.mean(accs))
                stds.append(statistics.stdev(accs) if len(accs) > 1 else 0.0)
                dots += [(batch * dodge, a) for a in accs] if several_seeds else []
            if xs:
                label = ", ".join(filter(None, [_label(key, extra), measure]))
                lines.append((xs, means, stds, color, style, label, dots))
    if lines:
        low, high = accuracy_ylim([m for line in lines for m in line[1]])
        ax.set_ylim(low, high)
        for number_, (xs, means, stds, color, style, label, dots) in enumerate(lines):
            shown = [max(m, low) for m in means]  # a collapse sits on the axis, labelled
            ax.errorbar(xs, shown, yerr=stds, fmt=style, color=color, capsize=3, label=label,
                        markersize=5, clip_on=False)
            for x, m in zip(xs, means, strict=True):
                if m < low:
                    ax.annotate(f"{m:.1f}%", (x, low), xytext=(-30, 4 + 9 * number_),
                                textcoords="offset points", fontsize="x-small", color=color,
                                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8,
                                      "pad": 0.5})
            if dots:
                ax.scatter([x for x, _ in dots], [max(a, low) for _, a in dots], s=10,
                           color=color, alpha=0.4, zorder=3)
        ax.yaxis.set_major_locator(MultipleLocator(2 if high - low > 5 else 1))
        ax.yaxis.set_minor_locator(MultipleLocator(1 if high - low > 5 else 0.5))
        ax.grid(alpha=0.15, which="minor", axis="y")

    axis = ax.get_xaxis_transform()  # x in data, y in axes units: marks sit on the axis
    bad = sorted({row["batch_size"] for row in rows if row["status"] in _BAD})
    if bad:
        ax.plot(bad, [0.0] * len(bad), "x", color="tab:red", markersize=10, mew=2,
                transform=axis, clip_on=False, zorder=4, label="diverged / failed")
    open_batches = sorted({row["batch_size"] for row in rows
                           if row["status"] not in (STATUS_COMPLETED, *_BAD)})
    if open_batches:
        ax.plot(open_batches, [0.0] * len(open_batches), "o", color="0.5", mfc="none",
                markersize=8, transform=axis, clip_on=False, zorder=4, label="no result yet")
    if not lines:
        ax.text(0.5, 0.5, "no completed runs", transform=ax.transAxes, ha="center",
                va="center", fontsize=14, color="0.4")
        ax.set_yticks([])
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.xaxis.set_minor_locator(NullLocator())
    if len(batches) == 1:
        ax.set_xlim(batches[0] / 2, batches[0] * 2)
    if noise is not None:
        ax.axvline(noise, color="tab:purple", linestyle="--", linewidth=1.2,
                   label=f"B_simple ~ {_noise_text(noise)}")
        low_x, high_x = ax.get_xlim()
        if not low_x <= noise <= high_x:  # keep the line in view, however far from the sweep
            ax.set_xlim(min(low_x, noise / 1.5), max(high_x, noise * 1.5))
    ax.set_xlabel("batch size (global)")
    clipped = bool(lines) and min(m for line in lines for m in line[1]) < ax.get_ylim()[0]
    ax.set_ylabel("top-1 (%)" + (", mean ± std over seeds" if several_seeds else "")
                  + ("; lower values labelled on the axis" if clipped else ""))
    ax.set_title("Accuracy vs batch size" + (
        "" if budget is None else f", a fixed budget of {budget} epoch{'s' * (budget != 1)}"))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    _save(figure, path)


def _plot_curves(pairs: list[tuple[dict[str, Any], RunRecord]], extra: list[str],
                 path: Path) -> None:
    """Val accuracy and train loss per epoch, one line per batch size (mean over completed
    seeds), coloured by batch size; other swept values get their own line styles."""
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    figure, (ax_acc, ax_loss) = _figure(11.0, 4.2, panels=2)
    done = [(row, rec) for row, rec in pairs if row["status"] == STATUS_COMPLETED]
    batches = sorted({row["batch_size"] for row, _ in pairs})
    span = math.log2(batches[-1] / batches[0]) or 1.0
    cmap = colormaps["viridis"]
    styles = ["-", "--", ":", "-."]
    others = list(dict.fromkeys(tuple(row[k] for k in extra) for row, _ in pairs))
    # Colour tells apart whichever has more values (batch sizes, or the other swept values
    # such as remedy variants); line style the other.
    by_other = len(others) > len(batches)

    lines: dict[tuple, list[RunRecord]] = {}
    for row, rec in done:
        lines.setdefault((row["batch_size"], *(row[k] for k in extra)), []).append(rec)
    for key in sorted(lines, key=lambda k: (k[0], others.index(k[1:]))):
        batch, other = key[0], key[1:]
        if by_other:
            color = f"C{others.index(other) % 10}"
            style = styles[batches.index(batch) % len(styles)]
        else:
            color = cmap(0.9 * math.log2(batch / batches[0]) / span)
            style = styles[others.index(other) % len(styles)]
        label = ", ".join([f"b={batch}", *filter(None, [_label(other, extra)])])
        for ax, field, scale in ((ax_acc, "val_acc", 100.0), (ax_loss, "train_loss", 1.0)):
            epochs, values = _mean_curve(lines[key], field)
            ax.plot(epochs, [scale * v for v in values], style, color=color, label=label,
                    marker="o" if len(epochs) < 3 else None, markersize=4)
    where = {"held out": " (held out of the training set)", "test": " (= test split)",
             "mixed": ""}[held_out([row for row, _ in pairs])]
    chance = {row["chance_loss"] for row, _ in pairs} - {None}
    if done and len(chance) == 1:
        ax_loss.axhline(chance.pop(), color="tab:red", linestyle=":", linewidth=1,
                        label="chance, ln(classes): above it = unstable")
    for ax, ylabel, title in ((ax_acc, "val top-1 (%)", f"Validation accuracy{where}"),
                              (ax_loss, "train loss", "Training loss")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if not done:
            ax.text(0.5, 0.5, "no completed runs", transform=ax.transAxes, ha="center",
                    va="center", fontsize=14, color="0.4")
    if done:
        ax_loss.legend(fontsize="small", title="batch size" if not extra else
                       ", ".join(["batch size", *extra]))
    _save(figure, path)


# --- gradient noise scale (McCandlish et al. 2018; lbtkit.noise_scale) ----------------------

# lbtkit.noise_scale.NOISE_SCALE_FILE, repeated so that the report does not import torch.
_NOISE_SCALE_FILE = "noise_scale.json"


def _noise_scales(pairs: list[tuple[dict[str, Any], RunRecord]]) -> list[dict[str, Any]]:
    """Each run's B_simple, where it has one: its ``noise_scale.json`` (``lbtkit noise-scale``,
    at the final weights) when readable, else the last value it logged while training
    (``--log-noise-scale``). Read defensively, like every run file here. A stored estimate
    within two of its standard errors of zero is "unresolved": listed, not drawn."""
    found = []
    for row, record in pairs:
        value, error, from_file = None, None, True
        path = Path(record.entry["run_dir"]) / _NOISE_SCALE_FILE
        with contextlib.suppress(UserError):
            stored = read_json(path, kind=dict) if path.exists() else {}
            value = number(stored.get("b_simple"))
            error = number(stored.get("b_simple_std_error"))
        if value is None:
            from_file = False
            value = next((number(m.get("noise_scale")) for m in reversed(record.metrics)
                          if number(m.get("noise_scale")) is not None), None)
        if value is not None and value > 0:
            found.append({"row": row, "value": value, "from_file": from_file, "error": error,
                          "resolved": error is None or value > 2 * error})
    return found


def _noise_summary(noise: list[dict[str, Any]]) -> float | None:
    """The one value the figure marks: the median over the runs that have a resolved one.
    B_simple changes during training and between runs; the markdown lists every run's."""
    values = [n["value"] for n in noise if n["resolved"]]
    return statistics.median(values) if values else None


def _noise_text(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def noise_data(noise: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The noise-scale section's numbers (None when no run has one): the summary the figure
    marks and how many resolved runs it is the median of, and each run's estimate."""
    if not noise:
        return None
    summary = _noise_summary(noise)
    return {"summary": None if summary is None else _noise_text(summary),
            "resolved": sum(n["resolved"] for n in noise),
            "runs": [{**n, "value": _noise_text(n["value"]),
                      "error": None if n["error"] is None else _noise_text(n["error"])}
                     for n in noise]}


def _save(figure, path: Path) -> None:
    """Write a PNG under a temporary name, then rename: a kill never leaves a torn image."""
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, path)


def _mean_curve(records: list[RunRecord], field: str) -> tuple[list[int], list[float]]:
    """Per-epoch mean of ``field`` over runs, skipping epochs without a value (not evaluated)."""
    by_epoch: dict[int, list[float]] = {}
    for record in records:
        for row in record.metrics:
            value = number(row.get(field))
            if value is not None:
                by_epoch.setdefault(int(row["epoch"]), []).append(value)
    epochs = sorted(by_epoch)
    return epochs, [statistics.mean(by_epoch[e]) for e in epochs]
