"""The loss landscape around trained solutions (Keskar et al. 2016).

- ``interpolate``: loss and accuracy along the line through a small-batch and a large-batch
  solution (the parametric plot), with BatchNorm statistics handled explicitly (``bn``);
- ``sharpness``: Keskar's sharpness metric, top Hessian eigenvalues, the Hessian trace.

Everything reads finished run directories (``lbtkit.rundir.load_run``), never the training loop.
"""

from lbtkit.landscape.bn import evaluate_batch_stats, recalibrate_bn
from lbtkit.landscape.interpolate import (
    BN_MODES,
    SPLITS,
    interpolate_runs,
    interpolation_meta,
    parse_alphas,
    parse_splits,
    run_interpolation,
    shard,
    write_interpolation,
)
from lbtkit.landscape.sharpness import (
    hessian_top_eigenvalues,
    hutchinson_trace,
    keskar_sharpness,
    network_loss,
    parse_subspace,
    random_subspace,
    run_sharpness,
    sharpness_settings,
)

__all__ = [
    "BN_MODES",
    "SPLITS",
    "evaluate_batch_stats",
    "hessian_top_eigenvalues",
    "hutchinson_trace",
    "interpolate_runs",
    "interpolation_meta",
    "keskar_sharpness",
    "network_loss",
    "parse_alphas",
    "parse_splits",
    "parse_subspace",
    "random_subspace",
    "recalibrate_bn",
    "run_interpolation",
    "run_sharpness",
    "shard",
    "sharpness_settings",
    "write_interpolation",
]
