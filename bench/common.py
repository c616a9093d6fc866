"""Shared pieces of the benchmark scripts: machine description, timing, results.

Every script in ``bench/`` runs both sides (ours and a reference) in one process on the same
data, interleaves their repeats so that load from other processes hits both alike, reports
medians and the median of the per-pair ratios (:func:`compare`), writes
``bench/results/<name>.json`` with :func:`write_result` and prints
``ratio: X.XX`` (ours over the reference, higher is better) as its last line.

The scripts are run as files (``python bench/x.py``), so they import this module by name from
their own folder. They run under OpenMP's default wait policy, as the ``lbtkit`` CLI does, or
under the one the user's environment sets (recorded with each result).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from lbtkit.cpu import wait_policy

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
# Where --quick writes unless told: a quick figure must never replace a committed one.
QUICK_RESULTS_DIR = BENCH_DIR.parent / "build" / "bench-quick"


# --- the machine -------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    """Cores this process may run on (a cgroup/affinity limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when there is a GPU, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is available")
    return device


def sync(device: torch.device) -> None:
    """Wait for queued device work (timing must not stop before the GPU does)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_info(device: torch.device) -> dict[str, Any]:
    import torchvision

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "host_cores": os.cpu_count(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "openmp_wait": wait_policy()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "os": f"{platform.system()} {platform.release()}",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "lbtkit_commit": _git_commit(),
    }
    return info


def machine_line(info: dict[str, Any]) -> str:
    """One line for a README: CPU, cores, device, threads, torch, load average."""
    device = info["gpu"] or info["device"]
    return (f"{info['cpu']}, {info['cores']} cores, device {device}, "
            f"{info['torch_threads']} torch threads, torch {info['torch']}, "
            f"Python {info['python']}, 1-minute load average "
            f"{info['load_average_at_start'][0]} at the start")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=BENCH_DIR, capture_output=True,
            text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# --- timing ------------------------------------------------------------------------------------


def interleave(
    sides: dict[str, Callable[[], float]], *, repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Call every side ``warmup + repeats`` times, alternating, and keep the last ``repeats``.

    Each callable measures itself and returns its figure (e.g. images/s). The order flips on
    every round (A B, B A, A B, ...) so a slow drift in machine load does not favour one side.
    """
    names = list(sides)
    kept: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        order = names if round_ % 2 == 0 else names[::-1]
        for name in order:
            value = sides[name]()
            label = "warm-up" if round_ < warmup else f"repeat {round_ - warmup + 1}"
            print(f"  {name:<10} {label:<10} {value:>12,.1f}", flush=True)
            if round_ >= warmup:
                kept[name].append(value)
    return kept


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median (the headline figure), extremes and every value, rounded for a diff-able file."""
    return {
        "median": round(statistics.median(values), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
        "values": [round(v, 1) for v in values],
    }


def compare(ours: Sequence[float], reference: Sequence[float]) -> dict[str, Any]:
    """Both sides' summaries and the ratio ours / reference.

    ``ours[i]`` and ``reference[i]`` must be a pair measured back to back. The headline
    ``ratio`` is the median of the per-pair ratios: load from other processes that changes
    between pairs cancels out of it, which it does not out of the ratio of the two medians
    (also given, as ``ratio_of_medians``).
    """
    ratios = [a / b for a, b in zip(ours, reference, strict=True)]
    return {
        "ours": summary(ours),
        "reference": summary(reference),
        "paired_ratios": [round(r, 4) for r in ratios],
        "ratio": statistics.median(ratios),
        "ratio_of_medians": round(statistics.median(ours) / statistics.median(reference), 4),
    }


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds`` (wall clock, monotonic)."""

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


# --- command line and results -----------------------------------------------------------------


def base_parser(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark takes; scripts add their own."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch.set_num_threads for both sides (default: leave torch's default)",
    )
    add_output_flags(parser)
    return parser


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """``--results-dir`` and ``--quick``, which every script takes."""
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON file goes"
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="the same code path on tiny sizes, in well under a minute: checks that the script "
             f"runs and prints its ratio, not the figure (JSON to {QUICK_RESULTS_DIR} unless "
             "--results-dir is given)",
    )


def apply_quick(args: argparse.Namespace, parser: argparse.ArgumentParser, **tiny: Any) -> None:
    """With ``--quick``, use the ``tiny`` values for every option the user left at its
    default (a flag given on the command line still wins), and the quick results folder."""
    if not args.quick:
        return
    for name, value in tiny.items():
        if getattr(args, name) == parser.get_default(name):
            setattr(args, name, value)
    if args.results_dir == RESULTS_DIR:
        args.results_dir = QUICK_RESULTS_DIR


def setup(args: argparse.Namespace) -> tuple[torch.device, dict[str, Any]]:
    """Apply the common flags; returns the device and the machine description."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    info = machine_info(device)
    print(f"machine: {machine_line(info)}", flush=True)
    return device, info


def write_result(
    name: str, payload: dict[str, Any], *, results_dir: Path = RESULTS_DIR, quick: bool = False,
) -> Path:
    """Write ``<results_dir>/<name>.json`` and print ``ratio: X.XX`` as the very last line.

    ``payload`` must hold ``ratio`` and ``target`` (the minimum acceptable ratio) and should
    hold ``machine``, ``settings``, ``ours`` and ``reference``; ``target_met``, ``quick`` and
    the load average at the end (``machine`` has it at the start) are added here.
    """
    ratio, target = float(payload["ratio"]), float(payload["target"])
    record = {
        "benchmark": name,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        **payload,
        "ratio": round(ratio, 4),
        "target": target,
        "target_met": ratio >= target,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    verdict = "met" if record["target_met"] else "NOT met"
    print(f"target: ratio >= {target:g} ({verdict})")
    print(f"wrote {path}")
    print(f"ratio: {ratio:.2f}", flush=True)
    return path
