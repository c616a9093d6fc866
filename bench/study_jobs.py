"""Wall time of ``lbtkit study fashion --quick`` with 1 job against 2 jobs at once, and whether
both give the same numbers.

Each side is a fresh study in its own folder, run by the library call the CLI makes
(``run_fashion_study``; with 2 jobs the seeds and sweep entries run in child processes of
their own, one thread each, as with 1). The ratio is the 1-job time over the 2-job time, the
speed-up (higher is better; issue 22's target "2 jobs take at most 0.6x the time of 1" is a
ratio of at least 1/0.6 = 1.67). The rounds alternate which side goes first.

    python bench/study_jobs.py            # the --quick study (Fashion-MNIST), 1 round: ~6 min
    python bench/study_jobs.py --rounds 2
    python bench/study_jobs.py --quick    # a smaller study on the first 16,384 training and
                                          # 2,048 test images (written as IDX files): < 1 min

Needs the real Fashion-MNIST (``apt-get install dataset-fashion-mnist``).
"""

from __future__ import annotations

import gzip
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from lbtkit.data.idx_reader import find_idx_files
from lbtkit.specs import FashionStudySpec
from lbtkit.studies.fashion import run_fashion_study
from lbtkit.studies.fashion_presets import QUICK

from common import apply_quick, base_parser, setup, summary, write_result

TARGET_SPEEDUP = 1 / 0.6
# --quick: the same steps on still less: one epoch a side (SB at batch 2048: 29 steps), two
# sweep entries, points and measurements on a few hundred images.
TINY = QUICK.updated(
    sb=2048, epochs_cap=1, stop_train_acc=0.5, sweep_batch_sizes=(4096, 8192),
    interpolation=QUICK.interpolation.updated(alphas=(0.0, 1.0), refine=0, bn_samples=500),
    sharpness=QUICK.sharpness.updated(subspaces=("full",), samples=64, batch_size=64,
                                      hessian_iters=1, gradient_samples=256),
    noise_scale=QUICK.noise_scale.updated(draws=2),
)
TINY_IMAGES = {"train": 16384, "t10k": 2048}  # --quick: the first images of each split


def write_subset(data_dir: Path) -> None:
    """The first ``TINY_IMAGES`` of the real Fashion-MNIST as IDX files under ``data_dir``
    (where ``lbtkit run --data-dir`` looks first): the study's code path on a quarter of the
    data."""
    folder = data_dir / "fashion-mnist"
    folder.mkdir(parents=True)
    real = find_idx_files("fashion-mnist", folder)  # the system copy: folder is empty
    if real is None:
        raise SystemExit("needs the real Fashion-MNIST (apt-get install dataset-fashion-mnist)")
    for path in real:
        blob = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        dims = [int.from_bytes(blob[4 + 4 * i:8 + 4 * i], "big") for i in range(blob[3])]
        count = TINY_IMAGES[path.name.split("-")[0]]
        item = len(blob[4 + 4 * len(dims):]) // dims[0]
        header = blob[:4] + b"".join(d.to_bytes(4, "big") for d in [count, *dims[1:]])
        start = 4 + 4 * len(dims)
        (folder / path.name.removesuffix(".gz")).write_bytes(
            header + blob[start:start + count * item])


def timed_study(spec: FashionStudySpec, output: Path, jobs: int,
                data_dir: Path) -> tuple[float, Any, dict]:
    """Seconds for one fresh study, its numbers, and where its time went (the study's own
    clock: its steps in this process, and each child process's wall time)."""
    start = time.monotonic()
    result = run_fashion_study(output, spec, progress=False, jobs=jobs,
                               data_dir=str(data_dir))
    seconds = time.monotonic() - start
    if result["status"] != "completed":
        raise SystemExit(f"the study with {jobs} job(s) ended {result['status']}")
    study = json.loads((output / "study.json").read_text())
    parts = {"steps": _rounded(study["seconds"]), "children": _rounded(study["child_seconds"])}
    return seconds, result["numbers"], parts


def _rounded(seconds: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 1) for name, value in seconds.items()}


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the two studies")
    args = parser.parse_args()
    apply_quick(args, parser)
    _, machine = setup(args)
    logging.getLogger("lbtkit").setLevel(logging.WARNING)  # the study's own log lines
    spec = TINY if args.quick else QUICK
    seconds: dict[int, list[float]] = {1: [], 2: []}
    numbers: dict[int, Any] = {}
    parts: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="lbtkit-study-jobs-") as tmp:
        data_dir = Path(tmp) / "data"  # empty without --quick: the system copy is read
        if args.quick:
            write_subset(data_dir)
        for round_ in range(args.rounds):
            for jobs in ((1, 2) if round_ % 2 == 0 else (2, 1)):
                took, numbers[jobs], parts[f"round {round_ + 1}, {jobs} job(s)"] = timed_study(
                    spec, Path(tmp) / f"r{round_}-j{jobs}", jobs, data_dir)
                seconds[jobs].append(took)
                print(f"  round {round_ + 1}: {jobs} job(s) {took:7.1f} s", flush=True)
    speedups = [one / two for one, two in zip(seconds[1], seconds[2], strict=True)]
    ratio = statistics.median(speedups)
    same = numbers[1] == numbers[2]
    print(f"2 jobs / 1 job time: {1 / ratio:.2f} (target <= 0.6); same numbers: {same}")
    write_result("study_jobs", {
        "description": "wall seconds of the fashion study (--quick spec) with 1 job over "
                       "with 2 jobs at once (each child one thread)",
        "settings": {"spec": "tiny (bench --quick)" if args.quick else "QUICK",
                     "images": TINY_IMAGES if args.quick else "all",
                     "rounds": args.rounds},
        "unit": "seconds",
        "machine": machine,
        "reference": summary(seconds[1]),
        "ours": summary(seconds[2]),
        "two_jobs_time_over_one": round(1 / ratio, 4),
        "where_the_time_went": parts,
        "same_numbers": same,
        "ratio": ratio,
        "target": round(TARGET_SPEEDUP, 4),
    }, results_dir=args.results_dir, quick=args.quick)


if __name__ == "__main__":
    main()
