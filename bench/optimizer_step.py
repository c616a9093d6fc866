"""Milliseconds per optimizer step on F1's parameters: torch's fused kernels (what
``lbtkit.train.build_optimizer`` uses where torch has them, the CPU included) vs the default
per-tensor loop (what lbtkit used on the CPU before).

The step alone is timed, on fixed random gradients, so what is measured is the optimizer's own
cost, which a small network at a small batch does not hide: at batch 16 an F1 forward and
backward take a few milliseconds, about as long as the default SGD step. The ratio is the
default's ms over the fused ms (higher is better), the median of back-to-back pairs.

    python bench/optimizer_step.py                    # SGD (momentum, wd) and Adam, 300 steps
    python bench/optimizer_step.py --optimizer adam   # one of them
    python bench/optimizer_step.py --quick            # 20 steps: checks it runs
"""

from __future__ import annotations

import torch

from lbtkit.models import build_model

from common import Timer, apply_quick, base_parser, compare, interleave, setup, write_result

MAKERS = {
    "sgd": lambda params, **kw: torch.optim.SGD(params, lr=0.01, momentum=0.9,
                                                weight_decay=1e-4, **kw),
    "adam": lambda params, **kw: torch.optim.Adam(params, lr=1e-3, **kw),
}


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--optimizer", choices=[*MAKERS, "all"], default="all")
    parser.add_argument("--steps", type=int, default=300, help="steps per timed call")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    apply_quick(args, parser, steps=20, repeats=2)
    device, machine = setup(args)
    names = list(MAKERS) if args.optimizer == "all" else [args.optimizer]
    per_optimizer = {name: _measure(name, device, args.steps, args.repeats) for name in names}
    headline = names[0]
    write_result("optimizer_step", {
        "description": "ms per optimizer step on F1's 1.46M parameters: torch's fused kernel "
                       "(lbtkit's choice) vs the default per-tensor loop",
        "settings": {"model": "f1", "optimizers": names, "steps": args.steps,
                     "repeats": args.repeats, "headline": headline},
        "unit": "steps/s (ratio: fused over default)",
        "machine": machine,
        "optimizers": per_optimizer,
        "ratio": per_optimizer[headline]["ratio"],
        "target": 1.0,
    }, results_dir=args.results_dir, quick=args.quick)


def _measure(name: str, device: torch.device, steps: int, repeats: int) -> dict:
    model = build_model("f1", num_classes=10, image_size=28, in_channels=1).to(device)
    params = [p for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizers = {"fused": MAKERS[name](params, fused=True), "default": MAKERS[name](params)}

    def steps_per_second(optimizer: torch.optim.Optimizer) -> float:
        with Timer() as t:
            for _ in range(steps):
                optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        return steps / t.seconds

    print(f"{name}: steps/s")
    rates = interleave({side: (lambda o=o: steps_per_second(o)) for side, o in optimizers.items()},
                       repeats=repeats)
    result = compare(rates["fused"], rates["default"])
    print(f"{name}: fused {1e3 / result['ours']['median']:.2f} ms, default "
          f"{1e3 / result['reference']['median']:.2f} ms per step")
    return result


if __name__ == "__main__":
    main()
