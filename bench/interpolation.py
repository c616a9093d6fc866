"""A 25-alpha interpolation grid: lbtkit's resident path vs the seed's reload-per-alpha approach.

Two C1 solutions (batch 64 and 512, one epoch on the CIFAR-shaped ``synthetic`` set) are
trained first, then both sides evaluate theta(a) = a*theta_LB + (1-a)*theta_SB on the train
and test splits for every alpha, with the seed's BatchNorm handling (buffers interpolated too)
so both do the same arithmetic:

* ours: ``lbtkit.landscape.interpolate_runs(..., bn="interpolate")``: data and both parameter
  sets loaded once and kept on the device, parameters lerped in place per alpha;
* reference (the seed's): per alpha, interpolate the two state dicts, build a model and
  ``load_state_dict`` it, then a ``DataLoader`` per split over the images with ToTensor +
  Normalize per sample (2 workers), summing cross-entropy and correct predictions.

The figure is evaluated images per second over a whole grid (both splits, every alpha); the
ratio is ours over the reference, median of alternating repeats. A third, interleaved side,
the forward floor, runs only the model's forward passes over the same number of images
(normalised inputs and one model already resident, nothing else): the cost neither side can
avoid. ``reference / floor`` bounds the ratio any evaluation path could reach with this
model on this device. ``--channels-last`` trains the two runs in channels-last, so ours
evaluates in it (the reference stays NCHW as in the seed; the floor follows ours).

    python bench/interpolation.py
    python bench/interpolation.py --quick      # 512 + 128 images, 2 alphas: checks it runs
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

import lbtkit.data.synthetic as synthetic
from lbtkit.config import build_config
from lbtkit.data import load_dataset
from lbtkit.evaluate import InputSpec
from lbtkit.landscape import interpolate_runs
from lbtkit.models import build_model
from lbtkit.specs import InterpolationSpec
from lbtkit.train import run

from common import Timer, apply_quick, base_parser, compare, interleave, setup, write_result


class HWCImages(Dataset):
    """Images as the seed held them (HWC uint8), transformed per sample like torchvision's."""

    def __init__(self, images: np.ndarray, labels: list[int], transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def train_pair(root: Path, *, channels_last: bool = False) -> tuple[Path, Path]:
    dirs = []
    for batch in (64, 512):
        config = build_config(overrides={
            "model": "c1", "dataset": "synthetic", "epochs": 1, "batch_size": batch,
            "checkpoint_every": 0, "output_dir": str(root / f"b{batch}"),
            "channels_last": channels_last,
        })
        run(config, progress=False)
        dirs.append(root / f"b{batch}")
    return dirs[0], dirs[1]


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--alphas", type=int, default=25, help="points on [-1, 2]")
    parser.add_argument("--batch-size", type=int, default=512, help="evaluation batch")
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--channels-last", action="store_true",
                        help="ours evaluates in channels-last (the runs are trained in it)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed grids per side first")
    parser.add_argument(
        "--train-images", type=int, default=synthetic.SYNTHETIC_NUM_TRAIN,
        help="size of the synthetic training set (lbtkit's own is 2048)",
    )
    parser.add_argument(
        "--val-images", type=int, default=synthetic.SYNTHETIC_NUM_VAL,
        help="size of the synthetic test set (lbtkit's own is 512)",
    )
    args = parser.parse_args()
    apply_quick(args, parser, alphas=2, repeats=1, warmup=0, train_images=512, val_images=128)
    device, machine = setup(args)
    alphas = np.linspace(-1.0, 2.0, args.alphas).tolist()
    # The runs, both sides and the floor all read this synthetic set.
    synthetic.SYNTHETIC_NUM_TRAIN, synthetic.SYNTHETIC_NUM_VAL = args.train_images, args.val_images
    spec = InterpolationSpec(alphas=tuple(alphas), bn="interpolate",
                             eval_batch_size=args.batch_size)

    with tempfile.TemporaryDirectory() as tmp:
        sb_dir, lb_dir = train_pair(Path(tmp), channels_last=args.channels_last)
        data = load_dataset("synthetic", "data")
        info = data.info
        splits = {
            "train": (data.train_images.permute(0, 2, 3, 1).numpy(), data.train_labels.tolist()),
            "test": (data.val_images.permute(0, 2, 3, 1).numpy(), data.val_labels.tolist()),
        }
        images_per_grid = len(alphas) * sum(len(labels) for _, labels in splits.values())
        sb_state = load_file(str(sb_dir / "model.safetensors"))
        lb_state = load_file(str(lb_dir / "model.safetensors"))
        transform = transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize(info.mean, info.std)]
        )

        def ours() -> float:
            with Timer() as t:
                rows = interpolate_runs(spec, sb_dir, lb_dir, progress=False)
            assert len(rows) == 2 * len(alphas)
            return images_per_grid / t.seconds

        def reference() -> float:
            with Timer() as t:
                for alpha in alphas:
                    state = {k: (alpha * lb_state[k] + (1 - alpha) * sb_state[k])
                             if sb_state[k].is_floating_point() else sb_state[k]
                             for k in sb_state}
                    model = build_model("c1", num_classes=info.num_classes,
                                        in_channels=info.channels, image_size=info.image_size)
                    model.load_state_dict(state)
                    model.to(device).eval()
                    for images, labels in splits.values():
                        loader = DataLoader(HWCImages(images, labels, transform),
                                            batch_size=args.batch_size,
                                            num_workers=args.workers)
                        loss = torch.zeros((), device=device)
                        correct = torch.zeros((), device=device)
                        with torch.inference_mode():
                            for x, y in loader:
                                x, y = x.to(device), y.to(device)
                                logits = model(x)
                                loss += F.cross_entropy(logits, y, reduction="sum")
                                correct += (logits.argmax(1) == y).sum()
                        loss.item()
            return images_per_grid / t.seconds

        # The floor evaluates the very same weights (BN buffers interpolated too, so NaN where
        # the others get NaN): one model per alpha, built before the clock starts.
        floor_models = []
        for alpha in alphas:
            model = build_model("c1", num_classes=info.num_classes,
                                in_channels=info.channels, image_size=info.image_size)
            model.load_state_dict({k: (alpha * lb_state[k] + (1 - alpha) * sb_state[k])
                                   if sb_state[k].is_floating_point() else sb_state[k]
                                   for k in sb_state})
            model.to(device).eval()
            if args.channels_last:
                model = model.to(memory_format=torch.channels_last)
            floor_models.append(model)
        inputs = InputSpec(info, info.image_size, args.channels_last)
        resident = [inputs(images.to(device)) for images in (data.train_images, data.val_images)]

        def floor() -> float:
            with Timer() as t, torch.inference_mode():
                for model in floor_models:
                    for x in resident:
                        for start in range(0, x.shape[0], args.batch_size):
                            model(x[start:start + args.batch_size])
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            return images_per_grid / t.seconds

        print(f"{len(alphas)}-alpha grid over train+test ({images_per_grid:,} evaluations "
              f"per grid); evaluated images/s, alternating", flush=True)
        rates = interleave({"ours": ours, "reference": reference, "floor": floor},
                           repeats=args.repeats, warmup=args.warmup)
    result = compare(rates["ours"], rates["reference"])
    floor_median = float(np.median(rates["floor"]))
    bound = floor_median / result["reference"]["median"]
    print(f"ours      median {result['ours']['median']:,.0f} images/s")
    print(f"reference median {result['reference']['median']:,.0f} images/s")
    print(f"floor     median {floor_median:,.0f} images/s (forward passes only): no evaluation "
          f"path can beat the reference by more than {bound:.2f}x here")
    write_result("interpolation", {
        "description": f"a {len(alphas)}-alpha interpolation grid (train + test splits, BN buffers "
                       "interpolated): lbtkit's resident in-place path vs the seed's state-dict "
                       "reload and DataLoader per alpha",
        "settings": {"alphas": len(alphas), "model": "c1", "dataset": "synthetic",
                     "eval_batch_size": args.batch_size, "reference_workers": args.workers,
                     "repeats": args.repeats, "images_per_grid": images_per_grid,
                     "train_images": args.train_images, "val_images": args.val_images,
                     "channels_last": args.channels_last},
        "floor": {"median": floor_median, "values": rates["floor"],
                  "what": "forward passes only, inputs and model resident"},
        "ratio_bound": bound,
        "unit": "evaluated images/s",
        "machine": machine,
        **result,
        "target": 5.0,
    }, results_dir=args.results_dir, quick=args.quick)


if __name__ == "__main__":
    main()
