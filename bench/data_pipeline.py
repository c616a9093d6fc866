"""Images/s of one augmented training epoch: lbtkit's on-device path vs a torchvision DataLoader.

Both sides see the same CIFAR-shaped uint8 images (random pixels: speed does not depend on
the content) and produce the same thing, a normalised float32 (B, 3, 32, 32) batch plus its
labels for every full batch of a shuffled epoch, with a random 32-pixel crop of the 4-pixel
padded image and a random horizontal flip:

* reference: the seed's pipeline. A torchvision-style Dataset over numpy HWC uint8 images
  (what ``torchvision.datasets.CIFAR10`` keeps in memory) making a PIL image per sample and
  applying ``RandomCrop(32, 4), RandomHorizontalFlip(), ToTensor(), Normalize(mean, std)``,
  read by ``DataLoader(batch_size=B, shuffle=True, num_workers=2, drop_last=True)``. Workers
  are started anew every epoch (the DataLoader default), as the seed did; on CUDA each batch
  is also copied to the GPU (``pin_memory=True``, ``non_blocking=True``).
* ours: the training loop's path. The uint8 (N, 3, 32, 32) tensor already on the device,
  ``draw_epoch`` once per epoch, then per batch the index gather, ``augment`` and
  ``normalize`` (through ``InputSpec``, exactly as lbtkit.train does) and the label gather.

Each batch is consumed on both sides (a running checksum on the device, read once per epoch),
so no work can be skipped. Figures are images/s over whole epochs (``N // B * B`` images,
including the per-epoch shuffle, and for the reference the worker start-up); both sides are
repeated in alternation; the ratio is the median of the per-repeat ratios.

    python bench/data_pipeline.py                       # defaults: 50,000 images, batch 512
    python bench/data_pipeline.py --repeats 10 --device cuda
    python bench/data_pipeline.py --quick               # 2,048 images, 2 repeats: checks it runs
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lbtkit.data import DATASETS, draw_epoch
from lbtkit.data.device import augment
from lbtkit.evaluate import InputSpec

from common import Timer, apply_quick, base_parser, compare, interleave, setup, sync, write_result

TARGET = 10.0  # ours must be at least 10x the reference
INFO = DATASETS["cifar10"]  # mean/std, crop padding 4, flip


class HWCImages(Dataset):
    """In-memory numpy HWC uint8 images as PIL images, like torchvision.datasets.CIFAR10."""

    def __init__(self, data: np.ndarray, targets: list[int], transform) -> None:
        self.data, self.targets, self.transform = data, targets, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        from PIL import Image

        img, target = self.data[index], self.targets[index]
        return self.transform(Image.fromarray(img)), target


def seed_transform():
    """The seed's per-sample training transform chain (torchvision pads with zeros)."""
    import torchvision.transforms as T

    return T.Compose([
        T.RandomCrop(32, padding=INFO.crop_padding),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(INFO.mean, INFO.std),
    ])


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50_000, help="images per epoch")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per side")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs per side first")
    parser.add_argument(
        "--padding-mode", default="reflect", choices=("reflect", "zeros"),
        help="ours: crop padding (lbtkit trains with reflect; torchvision's RandomCrop pads "
             "with zeros)",
    )
    args = parser.parse_args()
    apply_quick(args, parser, images=2048, repeats=2, warmup=0)
    device, machine = setup(args)
    n, batch = args.images, args.batch_size
    if n < batch:
        parser.error(f"--images {n} is smaller than one batch ({batch})")
    per_epoch = n // batch * batch

    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)  # CIFAR's in-memory layout
    targets = rng.integers(0, INFO.num_classes, size=n).tolist()

    # --- reference -------------------------------------------------------------------------
    loader = DataLoader(
        HWCImages(hwc, targets, seed_transform()), batch_size=batch, shuffle=True,
        num_workers=args.workers, drop_last=True, pin_memory=device.type == "cuda",
    )

    def reference_epoch() -> float:
        checksum = torch.zeros((), device=device)
        with Timer() as t:
            for x, y in loader:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                checksum += x[:, 0, 0, 0].sum() + y.sum()
            checksum.item()
        return per_epoch / t.seconds

    # --- ours ------------------------------------------------------------------------------
    images = torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous().to(device)
    labels = torch.tensor(targets, dtype=torch.int64, device=device)
    inputs = InputSpec(INFO, image_size=32, channels_last=False)
    epochs_done = 0

    def our_epoch() -> float:
        nonlocal epochs_done
        epochs_done += 1
        checksum = torch.zeros((), device=device)
        sync(device)
        with Timer() as t:
            draw = draw_epoch(n, seed=0, epoch=epochs_done, padding=INFO.crop_padding,
                              flip=INFO.flip, device=device)
            for start in range(0, per_epoch, batch):
                idx = draw.order[start:start + batch]
                x = inputs(augment(images[idx], draw.shifts[idx], draw.flips[idx],
                                   padding=INFO.crop_padding, padding_mode=args.padding_mode))
                y = labels[idx]
                checksum += x[:, 0, 0, 0].sum() + y.sum()
            checksum.item()
        return per_epoch / t.seconds

    print(f"images/s of one augmented epoch ({per_epoch:,} images, batch {batch}); "
          f"{args.warmup} warm-up + {args.repeats} timed epochs per side, alternating", flush=True)
    rates = interleave({"ours": our_epoch, "reference": reference_epoch},
                       repeats=args.repeats, warmup=args.warmup)
    result = compare(rates["ours"], rates["reference"])
    print(f"ours      median {result['ours']['median']:>12,.0f} images/s")
    print(f"reference median {result['reference']['median']:>12,.0f} images/s")
    print(f"per-repeat ratios: {', '.join(f'{r:.1f}' for r in result['paired_ratios'])}")

    write_result("data_pipeline", {
        "description": "images/s of one augmented CIFAR-shaped training epoch: lbtkit "
                       "draw_epoch+augment+normalize on the device vs torchvision DataLoader "
                       "with per-sample PIL transforms",
        "machine": machine,
        "settings": {
            "images": n, "images_per_epoch": per_epoch, "batch_size": batch,
            "reference_workers": args.workers, "repeats": args.repeats, "warmup": args.warmup,
            "ours_padding_mode": args.padding_mode, "reference_padding_mode": "zeros",
        },
        "unit": "images/s",
        **result,
        "target": TARGET,
    }, results_dir=args.results_dir, quick=args.quick)


if __name__ == "__main__":
    main()
