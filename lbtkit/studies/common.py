"""What the studies' reports share: the SB/LB labels and links between pages (the number
formats and the Jinja2 templates are ``lbtkit.markdown``'s: the sweep report uses them too)."""

from __future__ import annotations

import os
from pathlib import Path

# The small-batch and the large-batch side of every SB-vs-LB comparison, in that order.
LABELS = ("sb", "lb")

def relative_link(path: Path, output: Path) -> str:
    """``path`` as a link from a page written into ``output``."""
    return Path(os.path.relpath(path, output)).as_posix()
