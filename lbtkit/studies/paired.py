"""SB versus LB, paired by seed: the statistics behind every comparison the study states.

Each seed trains SB and LB from one shared initialisation, so the two runs of a seed are a
pair, and the question is whether LB's value minus SB's, over the seeds, is centred away from
zero. ``paired_difference`` answers it with the paired t-test (``scipy.stats.ttest_rel``:
Student's t on the per-seed differences, n - 1 degrees of freedom, two-sided) and the 95%
interval of the mean difference from the same t distribution. A difference "differs" only
when its p-value is below ``ALPHA``, which is stated before the numbers are seen.

Pure functions: no files, no training. ``paired_comparisons`` pairs ``side_record`` rows
(``lbtkit.studies.summary``) by seed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

ALPHA = 0.05  # two-sided significance level of every SB-vs-LB verdict
CONFIDENCE = 0.95  # of every interval shown
TEST = "paired t-test (scipy.stats.ttest_rel), two-sided"


def paired_difference(sb: Sequence[float], lb: Sequence[float], *, alpha: float = ALPHA,
                      confidence: float = CONFIDENCE) -> dict[str, Any]:
    """LB minus SB over pairs (``sb[i]`` and ``lb[i]`` are one seed's): the mean difference,
    its standard deviation and standard error, the paired t statistic, its degrees of freedom,
    the two-sided p-value, the ``confidence`` interval of the mean difference, and whether
    p < ``alpha`` ("differs").

    With fewer than two pairs there is no spread: p, the interval and t are None and nothing
    differs. Differences that are all equal have no spread either: p is 0 when they are not
    zero (1 when they are) and the interval is the point itself.
    """
    from scipy import stats

    if len(sb) != len(lb):
        raise ValueError(f"paired values need as many SB as LB values, got {len(sb)} and "
                         f"{len(lb)}")
    diffs = [float(b) - float(a) for a, b in zip(sb, lb, strict=True)]
    n = len(diffs)
    out: dict[str, Any] = {"n": n, "mean": statistics.fmean(diffs) if diffs else None,
                           "std": None, "se": None, "t": None, "df": n - 1 if n > 1 else None,
                           "p": None, "low": None, "high": None, "differs": False,
                           "alpha": alpha, "confidence": confidence, "test": TEST}
    if n < 2:
        return out
    std = statistics.stdev(diffs)
    se = std / math.sqrt(n)
    out.update(std=std, se=se)
    if se == 0:
        p = 0.0 if out["mean"] != 0 else 1.0
        out.update(p=p, low=out["mean"], high=out["mean"], differs=p < alpha,
                   t=math.copysign(math.inf, out["mean"]) if out["mean"] else 0.0)
        return out
    result = stats.ttest_rel(lb, sb)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    p = float(result.pvalue)
    out.update(t=float(result.statistic), p=p, low=out["mean"] - half,
               high=out["mean"] + half, differs=p < alpha)
    return out


def paired_values(records: Sequence[dict[str, Any]], column: str
                  ) -> tuple[list[int], list[float], list[float]]:
    """(seeds, SB values, LB values) of ``column`` over the seeds with a finite value on both
    sides, in seed order."""
    by_seed: dict[int, dict[str, float]] = {}
    for record in records:
        value = record.get(column)
        if value is not None and math.isfinite(float(value)):
            by_seed.setdefault(record["seed"], {})[record["side"]] = float(value)
    seeds = sorted(s for s, sides in by_seed.items() if {"sb", "lb"} <= set(sides))
    return (seeds, [by_seed[s]["sb"] for s in seeds], [by_seed[s]["lb"] for s in seeds])


def paired_comparisons(records: Sequence[dict[str, Any]], columns: Sequence[str], *,
                       alpha: float = ALPHA) -> dict[str, dict[str, Any]]:
    """column -> ``paired_difference`` of LB minus SB over the seeds that have both, with the
    seeds it used."""
    out = {}
    for column in columns:
        seeds, sb, lb = paired_values(records, column)
        out[column] = {**paired_difference(sb, lb, alpha=alpha), "seeds": seeds}
    return out
