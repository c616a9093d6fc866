"""How long an F1 epoch on Fashion-MNIST takes on this CPU, and how many epochs each side of
Keskar's comparison needs to fit the training set: the numbers that plan the study's budget.

    OMP_NUM_THREADS=1 python bench/fashion_epochs.py --batch-sizes 256,6000 --max-seconds 120
    python bench/fashion_epochs.py --quick      # one epoch per batch size: checks it runs

For each batch size, from the same initial weights (seed 0): Adam at lr 1e-3 (the
``keskar-f1-fashion`` recipe, constant lr), the training path of ``lbtkit run`` (a seeded
per-epoch permutation, whole batches only, the data set's normalisation; Fashion-MNIST has no
augmentation), one process, one torch thread. After each epoch it records the epoch's
training seconds (wall clock, and this process's CPU seconds, which a loaded machine inflates
less), the running train loss and accuracy over the epoch's batches (what ``metrics.jsonl``
logs), and the loss and accuracy of the whole training set in eval mode (BatchNorm running
statistics; timed separately, as a stopping rule would pay for it). A side stops at
``--target`` eval-mode train accuracy, at ``--max-epochs``, or once ``--max-seconds`` of
training have passed, whichever comes first; the JSON in ``bench/results/`` keeps every epoch.
No learning-rate schedule depends on the epoch count, so a capped run's curve is the start of
the uncapped one. Timings are wall clock: on a shared machine they are inflated.

Not a comparison with a target: its last line, ``ratio: X.XX``, is the first batch size's
median seconds per epoch over the last one's (how much faster the large batch goes through
the data), for the same shape of output as the other scripts.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import argparse
import json
import time
from datetime import datetime, timezone

import torch
import torch.nn.functional as F

from lbtkit.data import draw_epoch, load_dataset
from lbtkit.evaluate import InputSpec, evaluate_sums, mean_loss_and_accuracy
from lbtkit.models import build_model

from common import add_output_flags, apply_quick, machine_info, machine_line


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="256,6000")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--target", type=float, default=0.99,
                        help="stop a side at this eval-mode train accuracy")
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=150.0,
                        help="stop a side after this much training time (not counting eval)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results-name", default="fashion_epochs",
                        help="write RESULTS_DIR/NAME.json")
    add_output_flags(parser)
    args = parser.parse_args()
    apply_quick(args, parser, max_epochs=1)
    return args


def train_side(data, batch_size: int, args: argparse.Namespace) -> dict:
    info = data.info
    torch.manual_seed(args.seed)  # the same initial weights for every batch size
    model = build_model("f1", num_classes=info.num_classes, in_channels=info.channels,
                        image_size=info.image_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    inputs = InputSpec(info, info.image_size)
    n = data.train_labels.shape[0]
    steps = n // batch_size
    epochs, trained_s = [], 0.0
    for epoch in range(args.max_epochs):
        draw = draw_epoch(n, seed=args.seed, epoch=epoch, padding=0, flip=False)
        model.train()
        sums = torch.zeros(2, dtype=torch.float64)
        start, cpu_start = time.perf_counter(), time.process_time()
        for step in range(steps):
            idx = draw.order[step * batch_size:(step + 1) * batch_size]
            logits = model(inputs(data.train_images[idx]))
            loss = F.cross_entropy(logits, data.train_labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.stack((loss.detach().double() * batch_size,
                                 (logits.argmax(1) == data.train_labels[idx]).sum().double()))
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
        trained_s += seconds
        start = time.perf_counter()
        totals = evaluate_sums(model, data.train_images, data.train_labels, inputs,
                               batch_size=2000)
        eval_s = time.perf_counter() - start
        eval_loss, eval_acc = mean_loss_and_accuracy(totals)
        seen = steps * batch_size
        row = {"epoch": epoch + 1, "train_seconds": seconds, "train_cpu_seconds": cpu_seconds,
               "eval_train_seconds": eval_s,
               "running_loss": sums[0].item() / seen, "running_acc": sums[1].item() / seen,
               "train_loss": eval_loss, "train_acc": eval_acc}
        epochs.append(row)
        print(f"b{batch_size} epoch {epoch + 1}: {seconds:.1f}s (CPU {cpu_seconds:.1f}s; "
              f"+{eval_s:.1f}s eval) "
              f"running acc {row['running_acc']:.4f} loss {row['running_loss']:.4f}; "
              f"train acc {eval_acc:.4f} loss {eval_loss:.4f}", flush=True)
        if eval_acc >= args.target or trained_s >= args.max_seconds:
            break
    reached = next((r["epoch"] for r in epochs if r["train_acc"] >= args.target), None)
    per_epoch = sorted(r["train_seconds"] for r in epochs)
    per_epoch_cpu = sorted(r["train_cpu_seconds"] for r in epochs)
    return {"batch_size": batch_size, "steps_per_epoch": steps,
            "median_epoch_seconds": per_epoch[len(per_epoch) // 2],
            "min_epoch_seconds": per_epoch[0],
            "median_epoch_cpu_seconds": per_epoch_cpu[len(per_epoch_cpu) // 2],
            "median_eval_train_seconds": sorted(
                r["eval_train_seconds"] for r in epochs)[len(epochs) // 2],
            "epochs_run": len(epochs), "target": args.target, "epoch_reaching_target": reached,
            "epochs": epochs}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    info = machine_info(torch.device("cpu"))
    print(machine_line(info), f"| torch threads {torch.get_num_threads()}")
    data = load_dataset("fashion-mnist", args.data_dir)
    sides = [train_side(data, int(b), args) for b in args.batch_sizes.split(",")]
    for side in sides:
        last = side["epochs"][-1]
        print(f"batch {side['batch_size']}: {side['median_epoch_seconds']:.1f} s/epoch "
              f"(min {side['min_epoch_seconds']:.1f}, CPU {side['median_epoch_cpu_seconds']:.1f}) "
              f"(+{side['median_eval_train_seconds']:.1f} s to evaluate the training set); "
              f"target {args.target} reached at epoch {side['epoch_reaching_target']}; "
              f"after {side['epochs_run']} epochs train acc {last['train_acc']:.4f} "
              f"loss {last['train_loss']:.4f}")
    # Not a ratio benchmark (common.write_result): a measurement for planning, kept as JSON.
    ratio = sides[0]["median_epoch_seconds"] / sides[-1]["median_epoch_seconds"]
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"{args.results_name}.json"
    record = {"benchmark": "fashion_epochs",
              "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "quick": args.quick,
              "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
              "machine": info, "settings": {**vars(args), "results_dir": str(args.results_dir)},
              "sides": sides,
              "ratio": round(ratio, 4),
              "ratio_is": "seconds per epoch, first batch size over last"}
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    print(f"ratio: {ratio:.2f}", flush=True)


if __name__ == "__main__":
    main()
