"""L-BFGS-B in a box over millions of variables: scipy's solver without its per-variable loops.

``scipy.optimize.minimize(method="L-BFGS-B")`` turns the box into a list of Python tuples and
back, then classifies every variable in a Python loop: about 3.7 s per million variables per
call on a laptop CPU (scipy 1.17) before the first function evaluation. For Keskar's sharpness
of a network (one call per eps and subspace, a few iterations each) that was most of the time:
a third of the quick Fashion-MNIST study. ``minimize_in_box`` drives the same compiled
routine (``scipy.optimize._lbfgsb.setulb``) exactly as scipy's ``_minimize_lbfgsb`` does, with
the bound arrays built by numpy, so the iterates are scipy's (tested bit for bit against
``minimize``). The routine is private: for scipy versions whose form of it is not the one
known here, ``minimize`` itself runs (same numbers, the old speed).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy
from scipy.optimize import Bounds, minimize

__all__ = ["minimize_in_box"]

# scipy 1.15 replaced the Fortran L-BFGS-B by a C translation with this setulb signature.
_KNOWN_SETULB = ((1, 15), (1, 16), (1, 17))
_MEMORY = 10  # scipy's default maxcor: the number of correction pairs kept
_MAX_LINE_SEARCH = 20  # scipy's default maxls
_TASK_EVALUATE, _TASK_NEW_ITERATION, _TASK_STOP = 3, 1, 5
_STOP_MAXITER = 504


def minimize_in_box(
    fun: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    *,
    iters: int,
    callback: Callable[[], None] | None = None,
) -> np.ndarray:
    """Minimise ``fun`` (value and gradient) from ``x0`` within ``lower <= x <= upper`` by
    L-BFGS-B for ``iters`` iterations, with no tolerance stop; the last iterate.
    ``callback`` is called after each iteration."""
    if _fast_path_available():
        return _drive_setulb(fun, x0, lower, upper, iters, callback)
    result = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=Bounds(lower, upper),
                      options={"maxiter": iters, "ftol": 0.0, "gtol": 0.0},
                      callback=(lambda _: callback()) if callback else None)
    return result.x


def _fast_path_available() -> bool:
    version = tuple(int(part) for part in scipy.__version__.split(".")[:2])
    if version not in _KNOWN_SETULB:
        return False
    from scipy.optimize import _lbfgsb

    return hasattr(_lbfgsb, "setulb")


def _bound_kinds(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """L-BFGS-B's code per variable: 0 free, 1 lower only, 2 both, 3 upper only."""
    has_lower, has_upper = np.isfinite(lower), np.isfinite(upper)
    return np.select([has_lower & has_upper, has_lower, has_upper], [2, 1, 3], 0).astype(np.int32)


def _drive_setulb(fun, x0, lower, upper, iters, callback) -> np.ndarray:
    from scipy.optimize import _lbfgsb

    lower = np.asarray(lower, dtype=np.float64)
    upper = np.asarray(upper, dtype=np.float64)
    if (lower > upper).any():
        raise ValueError("a lower bound is above its upper bound")
    n, m = x0.size, _MEMORY
    x = np.clip(np.asarray(x0, dtype=np.float64).ravel(), lower, upper)
    kinds = _bound_kinds(lower, upper)
    low, high = np.where(np.isfinite(lower), lower, 0.0), np.where(np.isfinite(upper), upper, 0.0)
    f, g = 0.0, np.zeros(n)
    work = np.zeros(2 * m * n + 5 * n + 11 * m * m + 8 * m)
    int_work = np.zeros(3 * n, dtype=np.int32)
    task, line_task = np.zeros(2, dtype=np.int32), np.zeros(2, dtype=np.int32)
    lsave, isave, dsave = (np.zeros(4, dtype=np.int32), np.zeros(44, dtype=np.int32),
                           np.zeros(29))
    done = 0
    while True:
        g = np.asarray(g, dtype=np.float64)
        # factr and pgtol 0: no tolerance stop, only the iteration count.
        _lbfgsb.setulb(m, x, low, high, kinds, f, g, 0.0, 0.0, work, int_work, task, lsave,
                       isave, dsave, _MAX_LINE_SEARCH, line_task)
        if task[0] == _TASK_EVALUATE:
            f, g = fun(x.copy())
        elif task[0] == _TASK_NEW_ITERATION:
            done += 1
            if callback is not None:
                callback()
            if done >= iters:
                task[0], task[1] = _TASK_STOP, _STOP_MAXITER
        else:
            return x
