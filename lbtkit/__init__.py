"""lbtkit: the large-batch training kit.

The public API is small: ``RunConfig`` (with ``build_config`` to layer presets, files and
overrides), ``lbtkit.train.run(config)`` to train, ``load_run(path)`` to get a trained model
back from its run directory.
"""

from __future__ import annotations

__version__ = "0.1.0"

from lbtkit.config import RunConfig, build_config
from lbtkit.rundir import load_run

__all__ = ["RunConfig", "__version__", "build_config", "load_run"]
