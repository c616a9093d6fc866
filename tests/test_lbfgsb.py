"""minimize_in_box is scipy's L-BFGS-B: the same points evaluated, the same iterate, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import Bounds, minimize

from lbtkit.landscape import lbfgsb
from lbtkit.landscape.lbfgsb import minimize_in_box


def _problem(n: int = 40, seed: int = 0):
    """A non-convex smooth function and a box that some iterates reach, some do not."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n))
    q, c = a @ a.T / n, rng.normal(size=n)

    def fun(y: np.ndarray) -> tuple[float, np.ndarray]:
        return float(0.5 * y @ q @ y - c @ y + np.sin(3 * y).sum()), q @ y - c + 3 * np.cos(3 * y)

    lower, upper = -rng.uniform(0.5, 2.0, n), rng.uniform(0.5, 2.0, n)
    lower[:3], upper[3:6] = -np.inf, np.inf  # free on one side for a few variables
    return fun, rng.uniform(-0.5, 0.5, n), lower, upper


def _recording(fun):
    points: list[np.ndarray] = []

    def recorded(y):
        points.append(y.copy())
        return fun(y)

    return recorded, points


@pytest.mark.parametrize("iters", [1, 3, 8])
def test_the_iterates_are_scipys(iters):
    fun, x0, lower, upper = _problem()
    theirs_fun, theirs = _recording(fun)
    reference = minimize(theirs_fun, x0, jac=True, method="L-BFGS-B",
                         bounds=Bounds(lower, upper),
                         options={"maxiter": iters, "ftol": 0.0, "gtol": 0.0})
    ours_fun, ours = _recording(fun)
    ticks = []
    x = minimize_in_box(ours_fun, x0, lower, upper, iters=iters,
                        callback=lambda: ticks.append(1))
    assert lbfgsb._fast_path_available()  # the scipy this suite installs takes the fast path
    assert reference.nit == iters and len(ticks) == iters
    assert len(ours) == len(theirs) > iters
    for a, b in zip(ours, theirs, strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(x, reference.x)
    assert np.all((lower <= x) & (x <= upper))


def test_another_scipy_runs_minimize_with_the_same_result(monkeypatch):
    fun, x0, lower, upper = _problem(seed=1)
    fast = minimize_in_box(fun, x0, lower, upper, iters=4)
    monkeypatch.setattr(lbfgsb, "_KNOWN_SETULB", ())
    assert not lbfgsb._fast_path_available()
    assert np.array_equal(minimize_in_box(fun, x0, lower, upper, iters=4), fast)


def test_bound_kinds_and_a_start_outside_the_box():
    lower = np.array([-1.0, -np.inf, -1.0, -np.inf])
    upper = np.array([1.0, 1.0, np.inf, np.inf])
    assert lbfgsb._bound_kinds(lower, upper).tolist() == [2, 3, 1, 0]
    x = minimize_in_box(lambda y: (float(-(y @ y)), -2 * y), np.array([5.0, 0.1, -5.0, 0.0]),
                        np.full(4, -1.0), np.full(4, 1.0), iters=2)
    assert np.all(np.abs(x) <= 1.0)  # started clipped into the box, stayed there
    with pytest.raises(ValueError, match="lower bound is above"):
        minimize_in_box(lambda y: (0.0, 0 * y), np.zeros(2), np.ones(2), np.zeros(2), iters=1)
