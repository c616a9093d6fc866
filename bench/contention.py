"""F1 training throughput with a competing busy process, against the same run on its own.

Each measurement is one ``python -m lbtkit run --model f1`` in a fresh process (OpenMP reads
its wait policy once, when torch loads), reading ``images_per_second`` (training steps only)
from its results.json. Two policies:

- **old**, lbtkit's behaviour before ``lbtkit.cpu``: a fixed thread count, the usable CPUs
  (``OMP_NUM_THREADS``), with libgomp's default wait, spelt out as ``GOMP_SPINCOUNT=300000``
  (its documented default when ``OMP_WAIT_POLICY`` is unset);
- **new**, whatever the CLI now chooses by itself (``lbtkit.cpu``, ``lbtkit.contention``: the
  same count as a ceiling, following other processes' load).

Each round runs both policies idle and then each with one competing process
(``python -c "while True: pass"``) started just before it, in alternating order. The headline
ratio is the new policy's contended over idle throughput (median of the per-round ratios;
target >= 0.5); the new policy's idle throughput over the old one's is the second target
(>= 0.9, no more than 10% lost when nothing competes).

    python bench/contention.py                  # F1, Fashion-MNIST, batch 256, 1 epoch, 3 rounds
    python bench/contention.py --quick          # the bundled digits, 1 round: checks it runs
    python bench/contention.py --new-env OMP_WAIT_POLICY=PASSIVE   # try another policy as "new"

"Idle" means no competitor started by this script; on a shared machine others' load is in
both figures (the load average is recorded at the start and the end).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lbtkit.cpu import usable_cpus

from common import apply_quick, base_parser, setup, summary, write_result

# libgomp's default spin when OMP_WAIT_POLICY is unset, at a fixed count: the usable CPUs.
OLD_ENV = {"GOMP_SPINCOUNT": "300000", "OMP_NUM_THREADS": str(usable_cpus().count)}
# The shell's own settings must not leak into either side.
CLEARED = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME",
           "LBTKIT_USER_OMP_NUM_THREADS")
BUSY = [sys.executable, "-c", "while True: pass"]


@contextlib.contextmanager
def competitor(on: bool) -> Iterator[None]:
    """One busy process for the duration of the block (nothing when ``on`` is false)."""
    if not on:
        yield
        return
    busy = subprocess.Popen(BUSY)
    try:
        yield
    finally:
        busy.kill()
        busy.wait()


def train_rate(args, env: dict[str, str], work: Path) -> float:
    """Training images/s of one fresh ``lbtkit run`` in ``work`` with ``env``."""
    command = [sys.executable, "-m", "lbtkit", "run", "--model", "f1",
               "--dataset", args.dataset, "--data-dir", args.data_dir,
               "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
               "--checkpoint-every", "0", "--no-progress", "--output", str(work)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"lbtkit run failed ({done.returncode}):\n{done.stderr[-2000:]}")
    results = json.loads((work / "results.json").read_text())
    return float(results["images_per_second"])


def side_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    return {**env, **extra}


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--new-env {pair!r}: expected NAME=VALUE")
        env[name] = value
    return env


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default="data",
                        help="where lbtkit looks (it also finds the Debian package's copy)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per measurement")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of the four measurements (old/new, idle/contended)")
    parser.add_argument("--new-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the new side (repeatable)")
    args = parser.parse_args()
    apply_quick(args, parser, dataset="digits", epochs=1, rounds=1)
    _, machine = setup(args)
    envs = {"old": side_env(OLD_ENV), "new": side_env(parse_env(args.new_env))}
    cases = [(policy, busy) for busy in (False, True) for policy in ("old", "new")]
    rates: dict[tuple[str, bool], list[float]] = {case: [] for case in cases}
    with tempfile.TemporaryDirectory(prefix="lbtkit-contention-") as tmp:
        for round_ in range(args.rounds):
            for i, (policy, busy) in enumerate(cases if round_ % 2 == 0 else cases[::-1]):
                with competitor(busy):
                    rate = train_rate(args, envs[policy], Path(tmp) / f"r{round_}-{i}")
                rates[(policy, busy)].append(rate)
                label = "contended" if busy else "idle"
                print(f"  round {round_ + 1} {policy:<3} {label:<9} {rate:>10,.0f} img/s  "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
    per_round = {
        "new_contended_over_idle": _ratios(rates[("new", True)], rates[("new", False)]),
        "old_contended_over_idle": _ratios(rates[("old", True)], rates[("old", False)]),
        "new_idle_over_old_idle": _ratios(rates[("new", False)], rates[("old", False)]),
    }
    medians = {name: statistics.median(values) for name, values in per_round.items()}
    for name, value in medians.items():
        print(f"{name}: {value:.2f}")
    idle_kept = medians["new_idle_over_old_idle"]
    write_result("contention", {
        "description": "F1 training img/s with one competing busy process over img/s without "
                       "(new thread policy, following the load); and the new policy's idle "
                       "img/s over the old one's (fixed threads, default spin)",
        "settings": {"model": "f1", "dataset": args.dataset, "batch_size": args.batch_size,
                     "epochs": args.epochs, "rounds": args.rounds,
                     "old_env": OLD_ENV, "new_env": parse_env(args.new_env)},
        "unit": "training images/s (results.json images_per_second)",
        "machine": machine,
        "rates": {f"{p} {'contended' if b else 'idle'}": summary(v)
                  for (p, b), v in rates.items()},
        "per_round_ratios": {k: [round(r, 4) for r in v] for k, v in per_round.items()},
        **{k: round(v, 4) for k, v in medians.items() if k != "new_contended_over_idle"},
        "idle_target": 0.9,
        "idle_target_met": idle_kept >= 0.9,
        "ratio": medians["new_contended_over_idle"],
        "target": 0.5,
    }, results_dir=args.results_dir, quick=args.quick)


def _ratios(numerators: list[float], denominators: list[float]) -> list[float]:
    return [a / b for a, b in zip(numerators, denominators, strict=True)]


if __name__ == "__main__":
    main()
