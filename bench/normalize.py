"""Milliseconds to normalise one uint8 CIFAR batch: lbtkit's ``normalize`` vs ``addcmul``.

``lbtkit.data.normalize`` turns uint8 (B, 3, 32, 32) images into ``(x/255 - mean)/std`` in
float32. On CUDA it uses ``torch.addcmul(bias, images, scale)``, which reads the uint8 input
directly; on the CPU it converts first and multiply-adds in place, because the mixed-dtype
``addcmul`` kernel is slow there. This script times both on the same batch (the reference is
the ``addcmul`` form) so the choice can be rechecked on any machine; the ratio is the
reference's time over ours (higher is better, 1.0 = no gain).

    python bench/normalize.py                 # batch 512, 20 calls per repeat
    python bench/normalize.py --quick         # 2 calls, 2 repeats: checks it runs
"""

from __future__ import annotations

import torch

from lbtkit.data import DATASETS, normalize
from lbtkit.data.device import _affine

from common import Timer, apply_quick, base_parser, compare, interleave, setup, sync, write_result

INFO = DATASETS["cifar10"]


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--calls", type=int, default=20, help="calls per timed repeat")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    apply_quick(args, parser, calls=2, repeats=2)
    device, machine = setup(args)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch_size, 3, 32, 32), dtype=torch.uint8,
                           generator=generator).to(device)
    mean, std = tuple(INFO.mean), tuple(INFO.std)
    scale, bias = _affine(mean, std, device)
    torch.testing.assert_close(normalize(images, mean, std),
                               torch.addcmul(bias, images, scale))  # the same numbers

    def timed(fn) -> float:
        with Timer() as t:
            for _ in range(args.calls):
                fn()
            sync(device)
        return 1000 * t.seconds / args.calls

    # Milliseconds, so the "higher is better" ratio is reference / ours: compare the inverses.
    ms = interleave({"ours": lambda: timed(lambda: normalize(images, mean, std)),
                     "reference": lambda: timed(lambda: torch.addcmul(bias, images, scale))},
                    repeats=args.repeats)
    result = compare([1 / v for v in ms["ours"]], [1 / v for v in ms["reference"]])
    ours_ms = sorted(ms["ours"])[len(ms["ours"]) // 2]
    reference_ms = sorted(ms["reference"])[len(ms["reference"]) // 2]
    print(f"ours      median {ours_ms:.2f} ms per batch of {args.batch_size}")
    print(f"reference median {reference_ms:.2f} ms per batch (addcmul)")
    write_result("normalize", {
        "description": "ms to normalise a uint8 CIFAR batch: lbtkit.data.normalize vs "
                       "torch.addcmul on the uint8 tensor",
        "settings": {"batch_size": args.batch_size, "calls": args.calls,
                     "repeats": args.repeats},
        "unit": "ms per batch (ratio: reference ms / ours ms)",
        "machine": machine,
        "ours_ms": {"median": ours_ms, "values": ms["ours"]},
        "reference_ms": {"median": reference_ms, "values": ms["reference"]},
        **result,
        "target": 1.0,
    }, results_dir=args.results_dir, quick=args.quick)


if __name__ == "__main__":
    main()
