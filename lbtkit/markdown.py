"""The markdown every report shares: the dash for a missing value, the table, the number
formats, and the Jinja2 templates in ``lbtkit/templates``.

Every page and every sentence is a template; the numbers and the verdicts behind them come
from Python. ``render`` fills a page, ``sentence`` calls one macro of a sentence file and joins
its lines into one (templates wrap their prose for reading; a sentence is one line of
markdown).
"""

from __future__ import annotations

import functools
import math
from typing import Any

# A missing value in a table or a sentence.
DASH = "—"


def markdown_table(header: list[str], body: list[list[str]]) -> list[str]:
    """A GitHub markdown table, one line per row (header, rule, body)."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cells) + " |" for cells in body)]


def format_lr(x: float) -> str:
    """A learning rate as the seed's table writes it: 3e-4, 1.2e-3, 9.6e-3, 0.1, 0.05.

    Three significant digits; scientific notation when the rounded value is below 0.01 or
    10000 and above.
    """
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return str(x)
    mantissa, exponent = f"{x:.2e}".split("e")
    power = int(exponent)
    if -2 <= power <= 3:
        return _strip_zeros(f"{x:.{max(0, 2 - power)}f}")
    return f"{_strip_zeros(mantissa)}e{power}"


def format_duration(seconds: float) -> str:
    """Seconds (>= 0) as h:mm:ss, hours unbounded: 3725 -> "1:02:05"."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def format_number(value: Any) -> str:
    """A number for prose: 3 significant digits, thousands separated; n/a for None."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, int) or abs(value) >= 100:
        return f"{round(value):,}"
    return f"{value:.3g}"


def format_interval(ci: Any) -> str:
    """An interval (low, high) for prose, as :func:`format_number` writes each end."""
    return "n/a" if not ci else f"{format_number(ci[0])}–{format_number(ci[1])}"


def _strip_zeros(text: str) -> str:
    return text.rstrip("0").rstrip(".") if "." in text else text


def pm(stat: dict[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std`` of a {"mean", "std"} (std left out when there is none)."""
    if stat["mean"] is None:
        return DASH
    text = f"{scale * stat['mean']:.{digits}f}"
    return text if stat["std"] is None else f"{text} ± {scale * stat['std']:.{digits}f}"


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
        or_dash=_or_dash, lr=format_lr, pm=pm, listed=listed,
        duration=lambda v: DASH if v is None else format_duration(v),
        table=lambda rows: "\n".join(markdown_table(rows[0], rows[1:])),
        s=lambda n: "" if n == 1 else "s",  # the plural's s
        oneline=_one_line,  # a sentence macro's output, called from a page
        num=format_number, interval=format_interval,
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
