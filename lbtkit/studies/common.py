"""What the studies' reports share: the SB/LB labels, number formats, and the Jinja2 templates.

Every page and every sentence is a template in ``lbtkit/templates``; the numbers and the
verdicts behind them come from each study's pure functions. ``render`` fills a page,
``sentence`` calls one macro of a sentence file and joins its lines into one (templates wrap
their prose for reading; a sentence is one line of markdown).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from lbtkit.markdown import DASH, markdown_table
from lbtkit.report import format_duration, format_lr

# The small-batch and the large-batch side of every SB-vs-LB comparison, in that order.
LABELS = ("sb", "lb")

__all__ = ["DASH", "LABELS", "markdown_table", "pm", "relative_link", "render", "sentence"]


def pm(stat: dict[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std`` of a {"mean", "std"} (std left out when there is none)."""
    if stat["mean"] is None:
        return DASH
    text = f"{scale * stat['mean']:.{digits}f}"
    return text if stat["std"] is None else f"{text} ± {scale * stat['std']:.{digits}f}"


def relative_link(path: Path, output: Path) -> str:
    """``path`` as a link from a page written into ``output``."""
    return Path(os.path.relpath(path, output)).as_posix()


def listed(items: list[Any]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    words = [str(item) for item in items]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _or_dash(value: Any, spec: str = "", scale: float = 1.0, suffix: str = "") -> str:
    """``value`` (times ``scale``) in format ``spec`` with ``suffix``; the dash for None."""
    if value is None:
        return DASH
    return format(value if scale == 1 else scale * value, spec) + suffix


@functools.cache
def _environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("lbtkit", "templates"), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                      autoescape=False)
    env.filters.update(
        f=format,  # {{ x | f(".2f") }}: Python's format spec, as an f-string has it
        percent=lambda v: _or_dash(v, ".2f", 100, "%"),  # 0.9027 -> 90.27%; None -> the dash
        or_dash=_or_dash, lr=format_lr, duration=format_duration, pm=pm, listed=listed,
        table=lambda rows: "\n".join(markdown_table(rows[0], rows[1:])),
        s=lambda n: "" if n == 1 else "s",  # the plural's s
        oneline=_one_line,  # a sentence macro's output, called from a page
    )
    env.globals["DASH"] = DASH
    return env


def render(template: str, **context: Any) -> str:
    """The page ``template`` (a file in lbtkit/templates) filled with ``context``."""
    return _environment().get_template(template).render(**context)


def sentence(template: str, macro: str, *args: Any, **kwargs: Any) -> str:
    """One sentence: macro ``macro`` of the sentence file ``template``, its lines joined."""
    return _one_line(getattr(_environment().get_template(template).module, macro)(*args,
                                                                                   **kwargs))


def _one_line(text: Any) -> str:
    """Lines joined by one space: templates wrap a sentence for reading."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())
