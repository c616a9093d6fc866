"""The paired SB-vs-LB statistics, on answers known in closed form."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from lbtkit.studies.paired import ALPHA, paired_comparisons, paired_difference, paired_values


def test_paired_t_on_three_pairs_matches_the_closed_form():
    # differences 1, 2, 3: mean 2, std 1, se 1/sqrt(3), t = 2 sqrt(3) on 2 degrees of freedom,
    # where the two-sided p-value is 1 - t / sqrt(2 + t^2) and t_0.975 = 4.302653 (tables).
    d = paired_difference([10.0, 20.0, 30.0], [11.0, 22.0, 33.0])
    t = 2 * math.sqrt(3)
    assert (d["n"], d["df"], d["mean"], d["std"]) == (3, 2, 2.0, 1.0)
    assert d["se"] == pytest.approx(1 / math.sqrt(3))
    assert d["t"] == pytest.approx(t)
    assert d["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t))  # 0.0742
    half = 4.302653 / math.sqrt(3)
    assert (d["low"], d["high"]) == pytest.approx((2 - half, 2 + half), abs=1e-6)
    assert d["differs"] is False and d["alpha"] == ALPHA == 0.05
    assert "paired t" in d["test"]


def test_the_sign_is_lb_minus_sb_and_alpha_decides():
    d = paired_difference([1.0, 2.0, 3.0], [0.0, 1.1, 1.9])
    assert d["mean"] == pytest.approx(-1.0) and d["t"] < 0 and d["high"] < 0
    assert d["p"] < 0.05 and d["differs"] is True
    assert paired_difference([1.0, 2.0, 3.0], [0.0, 1.1, 1.9], alpha=d["p"] / 2)["differs"] \
        is False


def test_degenerate_pairs():
    one = paired_difference([1.0], [2.0])
    assert (one["mean"], one["p"], one["low"], one["differs"]) == (1.0, None, None, False)
    same = paired_difference([1.0, 2.0], [1.5, 2.5])  # every difference 0.5: no spread
    assert (same["p"], same["low"], same["high"], same["differs"]) == (0.0, 0.5, 0.5, True)
    assert paired_difference([1.0, 2.0], [1.0, 2.0])["p"] == 1.0
    with pytest.raises(ValueError, match="as many"):
        paired_difference([1.0], [1.0, 2.0])


def test_records_pair_by_seed_and_skip_missing_values():
    records = [{"seed": 1, "side": "lb", "x": 5.0}, {"seed": 0, "side": "sb", "x": 1.0},
               {"seed": 0, "side": "lb", "x": 3.0}, {"seed": 1, "side": "sb", "x": 2.0},
               {"seed": 2, "side": "sb", "x": 1.0}, {"seed": 2, "side": "lb", "x": None},
               {"seed": 3, "side": "sb", "x": float("nan")}, {"seed": 3, "side": "lb", "x": 1}]
    assert paired_values(records, "x") == ([0, 1], [1.0, 2.0], [3.0, 5.0])
    compared = paired_comparisons(records, ["x"])["x"]
    assert compared["seeds"] == [0, 1] and compared["mean"] == 2.5 and compared["n"] == 2


def test_the_committed_five_seed_study_recomputes_from_runs_csv():
    # docs/fashion/index.md's paired rows, recomputed from the committed runs.csv alone:
    # LB - SB test accuracy -0.42 points, p = 0.19 (no difference); phi full eps=1e-3 with
    # batch statistics +656, p = 0.00077 (differs).
    path = Path(__file__).resolve().parents[1] / "docs" / "fashion" / "keskar" / "runs.csv"
    with path.open() as handle:
        records = [{**r, "seed": int(r["seed"])} for r in csv.DictReader(handle)]
    assert len(records) == 10  # 5 seeds x (SB, LB)
    compared = paired_comparisons(records, ["test_acc", "phi full eps=0.001 bn=batch"])
    assert compared["test_acc"]["mean"] == pytest.approx(-0.00418, abs=5e-5)
    assert compared["test_acc"]["p"] == pytest.approx(0.19, abs=0.005)
    assert compared["test_acc"]["differs"] is False
    phi = compared["phi full eps=0.001 bn=batch"]
    assert phi["mean"] == pytest.approx(656.0, abs=0.5)
    assert phi["p"] == pytest.approx(0.00077, abs=1e-5)
    assert phi["differs"] is True
