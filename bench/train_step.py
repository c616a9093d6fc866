"""Training images/s: lbtkit's loop (``lbtkit.train.run``) vs a bare hand-written PyTorch loop.

Same model (built with the same seed), same batches, same optimizer (SGD, momentum 0.9,
weight decay 5e-4; ``fused=True`` on CUDA as lbtkit builds it), data already in memory on
the device, same number of steps, in the same process (so the same torch thread count).

Both sides do the same work per step. lbtkit's loop always augments, so the bare loop makes
its batches with the same on-device calls (``draw_epoch`` per epoch, then index gather,
``augment``, ``normalize``) from the same ``synthetic`` dataset and the same (seed, epoch)
draws, and then runs ``model(x)``, ``F.cross_entropy``, ``loss.backward()``, ``opt.step()``,
``opt.zero_grad(set_to_none=True)``, with one host sync at the end of the epoch (lbtkit has
one there too). What is left in the difference is the loop's own cost: Accelerate's wrappers,
setting the lr every step, the on-device running loss/accuracy sums and the non-finite flag,
the progress and stop checks.

Ours is timed by lbtkit itself: one real ``run`` (``progress=False``, ``checkpoint_every 0``,
evaluation only after the last epoch), reading each epoch's ``images_per_second`` from
RUN/metrics.jsonl (its clock covers the steps only, not evaluation). The bare loop runs
interleaved with it, in one of two ways (``--interleave``):

* step (default on the CPU): ``Schedule.lr_at_step``, the first thing lbtkit's loop calls in
  every step, is wrapped so that one bare step runs before each lbtkit step; the time spent
  in the wrapper is taken out of lbtkit's epoch time. The sides alternate every step, so load
  from other processes hits both alike. Exact only where work is synchronous (the CPU).
* epoch (default on CUDA): ``lbtkit.train.draw_epoch`` is wrapped so that each time the loop
  draws an epoch, one whole bare epoch runs first, outside lbtkit's epoch clock.

The first ``--warmup-epochs`` epochs are dropped; the ratio is the median over the other
epochs of lbtkit's rate over the bare loop's in the same epoch.

    python bench/train_step.py                      # c1, batch 256, 8 epochs of 2048 images
    python bench/train_step.py --train-images 50000 --epochs 6 --channels-last  # on a GPU
    python bench/train_step.py --quick              # batch 64, 2 epochs of 256: checks it runs
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import lbtkit.data.synthetic as synthetic
import lbtkit.train
from lbtkit.config import build_config
from lbtkit.data import draw_epoch, load_dataset
from lbtkit.data.device import augment
from lbtkit.evaluate import InputSpec
from lbtkit.models import build_model
from lbtkit.rundir import RunDir
from lbtkit.schedule import Schedule

from common import Timer, apply_quick, base_parser, compare, setup, sync, write_result

TARGET = 0.95  # our overhead must stay within 5%
SEED = 0


class BareLoop:
    """The hand-written loop: nothing but the step, on the same data as lbtkit's."""

    def __init__(self, args, device: torch.device, steps_per_epoch: int) -> None:
        self.device, self.batch, self.steps = device, args.batch_size, steps_per_epoch
        data = load_dataset("synthetic", "unused").to(device)
        self.info, self.images, self.labels = data.info, data.train_images, data.train_labels
        self.inputs = InputSpec(self.info, self.info.image_size, args.channels_last)
        torch.manual_seed(SEED)  # lbtkit seeds the same way before building: same weights
        model = build_model(args.model, num_classes=self.info.num_classes,
                            in_channels=self.info.channels, image_size=self.info.image_size)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model = model.to(device)
        fused = {"fused": True} if device.type == "cuda" else {}
        self.optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9,
                                         weight_decay=5e-4, **fused)
        self.model = torch.compile(model) if args.compile else model
        self.model.train()
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision)
        self.autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else \
            contextlib.nullcontext
        self.scaler = torch.amp.GradScaler(device.type) if args.mixed_precision == "fp16" \
            else None

    def new_epoch(self, epoch: int) -> None:
        self.draw = draw_epoch(self.labels.shape[0], seed=SEED, epoch=epoch,
                               padding=self.info.crop_padding, flip=self.info.flip,
                               device=self.device)

    def step(self, step: int) -> None:
        b, draw = self.batch, self.draw
        idx = draw.order[step * b:(step + 1) * b]
        x = self.inputs(augment(self.images[idx], draw.shifts[idx], draw.flips[idx],
                                padding=self.info.crop_padding))
        y = self.labels[idx]
        with self.autocast():
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if step == self.steps - 1:
            loss.item()  # the one host sync per epoch (lbtkit has one there too)

    def epoch(self, epoch: int) -> float:
        """One whole epoch; returns its training images/s."""
        self.new_epoch(epoch)
        sync(self.device)
        with Timer() as t:
            for step in range(self.steps):
                self.step(step)
        return self.steps * self.batch / t.seconds


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="c1", help="an lbtkit model name")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=8, help="epochs per side")
    parser.add_argument("--warmup-epochs", type=int, default=1, help="epochs dropped first")
    parser.add_argument(
        "--train-images", type=int, default=synthetic.SYNTHETIC_NUM_TRAIN,
        help="size of the synthetic training set (lbtkit's own is 2048; larger epochs "
             "time better on a fast GPU)",
    )
    parser.add_argument(
        "--interleave", default="auto", choices=("auto", "step", "epoch"),
        help="alternate the sides every step (exact only where work is synchronous: the "
             "CPU) or every epoch; auto: step on the CPU, epoch on CUDA",
    )
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--mixed-precision", default="no", choices=("no", "bf16", "fp16"))
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    args = parser.parse_args()
    apply_quick(args, parser, batch_size=64, epochs=2, train_images=256)
    if args.epochs <= args.warmup_epochs:
        parser.error("--epochs must be larger than --warmup-epochs")
    device, machine = setup(args)
    lbtkit_device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.type != lbtkit_device:
        parser.error(f"lbtkit trains on {lbtkit_device} here; use --device {lbtkit_device}")
    interleave = args.interleave
    if interleave == "auto":
        interleave = "step" if device.type == "cpu" else "epoch"

    # lbtkit's synthetic set has a fixed size; the bench may ask for more (both sides read it).
    synthetic.SYNTHETIC_NUM_TRAIN = args.train_images
    steps = args.train_images // args.batch_size
    if steps == 0:
        parser.error("--batch-size is larger than --train-images")
    seen = steps * args.batch_size
    bare = BareLoop(args, device, steps)
    bare_seconds = [0.0] * args.epochs  # the bare loop's own step time, per epoch
    inside = [0.0] * args.epochs  # all bench time spent inside lbtkit's epoch clock
    threads: list[int] = []

    def bare_epoch_first(*a, **kw):
        # Wraps lbtkit.train.draw_epoch: at the start of each of lbtkit's epochs, before
        # its epoch clock starts, one whole bare epoch runs.
        epoch = kw["epoch"]
        bare_seconds[epoch] = seen / bare.epoch(epoch)
        threads.append(torch.get_num_threads())
        return real_draw_epoch(*a, **kw)

    def bare_step_first(schedule, global_step: int) -> float:
        # Wraps Schedule.lr_at_step, which lbtkit's loop calls first thing in every step:
        # one bare step runs, and its time is taken out of lbtkit's epoch time afterwards.
        epoch, step = divmod(global_step, steps)
        with Timer() as everything:
            if step == 0:
                bare.new_epoch(epoch)
                threads.append(torch.get_num_threads())
            with Timer() as t:
                bare.step(step)
        bare_seconds[epoch] += t.seconds
        inside[epoch] += everything.seconds
        return real_lr_at_step(schedule, global_step)

    real_draw_epoch, real_lr_at_step = lbtkit.train.draw_epoch, Schedule.lr_at_step
    print(f"training images/s, {args.model} batch {args.batch_size}, {steps} steps per epoch, "
          f"{args.epochs} epochs per side alternating every {interleave}, first "
          f"{args.warmup_epochs} dropped", flush=True)
    with tempfile.TemporaryDirectory(prefix="lbtkit-bench-") as tmp:
        config = build_config(overrides={
            "model": args.model, "dataset": "synthetic", "batch_size": args.batch_size,
            "epochs": args.epochs, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4,
            "lr": args.lr, "seed": SEED, "eval_every": args.epochs, "checkpoint_every": 0,
            "channels_last": args.channels_last, "mixed_precision": args.mixed_precision,
            "compile": args.compile, "output_dir": str(Path(tmp) / "run"),
        })
        if interleave == "epoch":
            lbtkit.train.draw_epoch = bare_epoch_first
        else:
            Schedule.lr_at_step = bare_step_first
        try:
            results = lbtkit.train.run(config, progress=False)
        finally:
            lbtkit.train.draw_epoch, Schedule.lr_at_step = real_draw_epoch, real_lr_at_step
        rows = RunDir(config.output_dir).read_metrics()
    if results["status"] != "completed" or len(rows) != args.epochs or \
            len(threads) != args.epochs:
        raise SystemExit(f"lbtkit run {results['status']} after {len(rows)} epochs "
                         f"({len(threads)} bare epochs); cannot compare")
    if len(set(threads)) != 1:
        raise SystemExit(f"torch thread count changed during the run: {threads}")

    # lbtkit's own figure is seen / (its epoch seconds); take out the bench's share.
    our_seconds = [seen / row["images_per_second"] - extra
                   for row, extra in zip(rows, inside, strict=True)]
    our_rates = [seen / s for s in our_seconds]
    bare_rates = [seen / s for s in bare_seconds]
    for epoch, (a, b) in enumerate(zip(our_rates, bare_rates, strict=True), 1):
        note = "  (warm-up, dropped)" if epoch <= args.warmup_epochs else ""
        print(f"  epoch {epoch:<3} lbtkit {a:>10,.1f}  bare {b:>10,.1f}  ratio {a / b:.3f}{note}")

    keep = slice(args.warmup_epochs, None)
    result = compare(our_rates[keep], bare_rates[keep])
    print(f"lbtkit median {result['ours']['median']:>10,.1f} images/s")
    print(f"bare   median {result['reference']['median']:>10,.1f} images/s")
    print(f"lbtkit overhead: {100 * (1 / result['ratio'] - 1):+.1f}% time per step "
          "(median over epochs)")

    write_result("train_step", {
        "description": "training images/s of lbtkit.train.run vs a bare hand-written loop "
                       "(same model, batches, optimizer and on-device augmentation)",
        "machine": {**machine, "torch_threads": threads[0]},
        "settings": {
            "model": args.model, "batch_size": args.batch_size, "lr": args.lr,
            "optimizer": "sgd momentum 0.9 weight_decay 5e-4", "dataset": "synthetic",
            "train_images": args.train_images, "steps_per_epoch": steps,
            "epochs": args.epochs, "warmup_epochs": args.warmup_epochs,
            "interleave": interleave, "channels_last": args.channels_last,
            "mixed_precision": args.mixed_precision, "compile": args.compile,
        },
        "unit": "images/s",
        **result,
        "target": TARGET,
    }, results_dir=args.results_dir, quick=args.quick)


if __name__ == "__main__":
    main()
