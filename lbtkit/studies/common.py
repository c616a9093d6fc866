"""What the studies' reports share: the SB/LB labels and links between pages.

The number formats and the Jinja2 templates live in ``lbtkit.markdown`` (the sweep report uses
them too); they are re-exported here for the studies' report modules.
"""

from __future__ import annotations

import os
from pathlib import Path

from lbtkit.markdown import DASH, listed, markdown_table, pm, render, sentence

# The small-batch and the large-batch side of every SB-vs-LB comparison, in that order.
LABELS = ("sb", "lb")

__all__ = ["DASH", "LABELS", "listed", "markdown_table", "pm", "relative_link", "render",
           "sentence"]


def relative_link(path: Path, output: Path) -> str:
    """``path`` as a link from a page written into ``output``."""
    return Path(os.path.relpath(path, output)).as_posix()
