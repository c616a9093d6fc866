"""Seconds per call of Keskar's box-constrained L-BFGS-B: ``minimize_in_box`` vs scipy's
``minimize(method="L-BFGS-B")``, on as many variables as F1 on Fashion-MNIST has parameters.

``lbtkit.landscape.sharpness.keskar_sharpness`` maximises the loss over the box
``|y_i| <= eps (|x0_i| + 1)`` with L-BFGS-B, once per eps and subspace. scipy's wrapper turns the
box into Python tuples and back and classifies every variable in a Python loop;
``lbtkit.landscape.lbfgsb.minimize_in_box`` drives the same compiled routine with numpy-built
bound arrays. Both sides here run the same few iterations on the same cheap function (a
quadratic: its gradient costs next to nothing, so what is timed is the solver's own cost, the
part a network's gradient does not hide) and must reach the same iterate; the ratio is the
reference's seconds over ours (higher is better).

    python bench/lbfgsb_box.py                     # 1,462,538 variables, 3 iterations
    python bench/lbfgsb_box.py --quick             # 20,000 variables: checks it runs
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, minimize

from lbtkit.landscape.lbfgsb import minimize_in_box

from common import Timer, apply_quick, base_parser, compare, interleave, setup, write_result

F1_FASHION_PARAMETERS = 1_462_538  # lbtkit.studies.budget.PARAMETERS


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--variables", type=int, default=F1_FASHION_PARAMETERS)
    parser.add_argument("--iters", type=int, default=3, help="L-BFGS-B iterations per call")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    apply_quick(args, parser, variables=20_000, repeats=2)
    _, machine = setup(args)
    rng = np.random.default_rng(0)
    bound = 1e-3 * (np.abs(rng.normal(size=args.variables)) + 1.0)
    start = rng.uniform(-1.0, 1.0, size=args.variables) * bound
    curvature = rng.uniform(0.5, 2.0, size=args.variables)

    def negative_f(y: np.ndarray) -> tuple[float, np.ndarray]:  # maximise a bowl's height
        return float(-(curvature * y * y).sum()), -2.0 * curvature * y

    def ours() -> np.ndarray:
        return minimize_in_box(negative_f, start, -bound, bound, iters=args.iters)

    def reference() -> np.ndarray:
        return minimize(negative_f, start, jac=True, method="L-BFGS-B",
                        bounds=Bounds(-bound, bound),
                        options={"maxiter": args.iters, "ftol": 0.0, "gtol": 0.0}).x

    assert np.array_equal(ours(), reference())  # the same solver: the same iterate

    def timed(fn) -> float:
        with Timer() as t:
            fn()
        return t.seconds

    seconds = interleave({"ours": lambda: timed(ours), "reference": lambda: timed(reference)},
                         repeats=args.repeats)
    result = compare([1 / v for v in seconds["ours"]], [1 / v for v in seconds["reference"]])
    medians = {side: sorted(v)[len(v) // 2] for side, v in seconds.items()}
    print(f"ours      median {medians['ours']:.2f} s per call ({args.variables:,} variables, "
          f"{args.iters} iterations)")
    print(f"reference median {medians['reference']:.2f} s per call (scipy minimize)")
    write_result("lbfgsb_box", {
        "description": "s per box-constrained L-BFGS-B call (Keskar's sharpness): "
                       "lbtkit.landscape.lbfgsb.minimize_in_box vs scipy.optimize.minimize",
        "settings": {"variables": args.variables, "iters": args.iters,
                     "repeats": args.repeats},
        "unit": "s per call (ratio: reference s / ours s)",
        "machine": machine,
        "ours_s": {"median": medians["ours"], "values": seconds["ours"]},
        "reference_s": {"median": medians["reference"], "values": seconds["reference"]},
        **result,
        "target": 2.0,
    }, results_dir=args.results_dir, quick=args.quick)


if __name__ == "__main__":
    main()
