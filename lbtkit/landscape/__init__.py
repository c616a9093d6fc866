"""The loss landscape around trained solutions (Keskar et al. 2016).

- ``interpolate``: loss and accuracy along the line through a small-batch and a large-batch
  solution (the parametric plot), with BatchNorm statistics handled explicitly (``bn``);
- ``plane``: loss and accuracy on a 2-D plane around a solution, along filter-normalised random
  directions or through a second solution (Li et al. 2018);
- ``sharpness``: Keskar's sharpness metric, top Hessian eigenvalues, the Hessian trace.

``lbtkit.analysis_workers`` hands any of them to ``accelerate launch`` workers (--num-processes).

Each analysis takes a typed, validated spec (``lbtkit.specs``: ``InterpolationSpec``,
``PlaneSpec``, ``SharpnessSpec``) and stores it under "spec" in its output JSON. Everything reads
finished run directories (``lbtkit.run_model.load_run``), never the training loop.
"""

from lbtkit.landscape.bn import evaluate_batch_stats, recalibrate_bn
from lbtkit.landscape.interpolate import (
    interpolate_runs,
    interpolation_meta,
    run_interpolation,
    steepest_midpoints,
    write_interpolation,
)
from lbtkit.landscape.plane import (
    between_direction,
    landscape_meta,
    landscape_runs,
    normalize_direction,
    random_direction,
    run_landscape,
    write_landscape,
)
from lbtkit.landscape.sharpness import (
    gradient_norm,
    hessian_top_eigenvalues,
    hutchinson_trace,
    keskar_sharpness,
    network_loss,
    random_subspace,
    run_sharpness,
    sharpness_settings,
)

__all__ = [
    "between_direction",
    "evaluate_batch_stats",
    "gradient_norm",
    "hessian_top_eigenvalues",
    "hutchinson_trace",
    "interpolate_runs",
    "interpolation_meta",
    "keskar_sharpness",
    "landscape_meta",
    "landscape_runs",
    "network_loss",
    "normalize_direction",
    "random_direction",
    "random_subspace",
    "recalibrate_bn",
    "run_interpolation",
    "run_landscape",
    "run_sharpness",
    "sharpness_settings",
    "steepest_midpoints",
    "write_interpolation",
    "write_landscape",
]
