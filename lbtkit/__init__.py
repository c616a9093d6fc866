"""lbtkit: the large-batch training kit.

The public API is small: ``RunConfig`` (with ``build_config`` to layer presets, files and
overrides), ``lbtkit.train.run(config)`` to train, ``load_run(path)`` to get a trained model
back from its run directory.
"""

from __future__ import annotations

from lbtkit.config import RunConfig, build_config
from lbtkit.run_model import load_run
from lbtkit.version import __version__

__all__ = ["RunConfig", "__version__", "build_config", "load_run"]
