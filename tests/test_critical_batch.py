"""The critical-batch math (lbtkit.critical_batch, lbtkit.targets) on known answers."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from lbtkit.critical_batch import (
    DIMINISHING,
    DIVERGED,
    MAXIMAL,
    PERFECT,
    best_per_batch,
    bootstrap_fit,
    fit_best,
    fit_steps,
    ratio_interval,
    regime,
)
from lbtkit.errors import ConfigError
from lbtkit.targets import Target, all_met, eval_steps, first_steps, parse_targets

SIZES = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]


def test_fit_recovers_s_min_and_b_crit_exactly_without_noise():
    steps = [100 * (1 + 500 / b) for b in SIZES]
    fit = fit_steps(SIZES, steps)
    assert fit.s_min == pytest.approx(100, rel=1e-6)
    assert fit.b_crit == pytest.approx(500, rel=1e-6)
    assert fit.e_min == pytest.approx(50_000, rel=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_fit_recovers_known_s_min_and_b_crit_from_noisy_steps(seed):
    rng = random.Random(seed)
    # 5% multiplicative noise, as seeds give.
    steps = [80 * (1 + 300 / b) * math.exp(rng.gauss(0, 0.05)) for b in SIZES]
    fit = fit_steps(SIZES, steps)
    assert fit.s_min == pytest.approx(80, rel=0.1)
    assert fit.b_crit == pytest.approx(300, rel=0.15)


def test_fit_refuses_one_batch_size_and_bad_steps():
    with pytest.raises(ValueError, match="two or more distinct"):
        fit_steps([64, 64], [10, 12])
    with pytest.raises(ValueError, match="positive"):
        fit_steps([64, 128], [10, 0])


def test_regimes_follow_the_stated_factor_of_b_crit():
    assert regime(100, 400) == PERFECT
    assert regime(101, 400) == DIMINISHING
    assert regime(1599, 400) == DIMINISHING
    assert regime(1600, 400) == MAXIMAL


def _records(table, seeds=(0, 1)):
    """table: {(batch, lr): steps or callable(seed) or None or 'diverged'}."""
    out = []
    for (batch, lr), value in table.items():
        for seed in seeds:
            steps = value(seed) if callable(value) else value
            status = DIVERGED if steps == "diverged" else "reached" if steps else "not reached"
            out.append({"seed": seed, "batch_size": batch, "lr": lr,
                        "steps": steps if isinstance(steps, int) else None, "status": status})
    return out


def test_best_lr_is_the_lowest_mean_and_interior_when_both_neighbours_are_worse():
    best = best_per_batch(_records({(64, 0.1): 500, (64, 0.2): 300, (64, 0.4): 350}))[64]
    assert (best.lr, best.steps, best.edge) == (0.2, 300, None)


def test_best_on_the_edge_of_the_grid_asks_for_an_extension_that_way():
    high = best_per_batch(_records({(64, 0.1): 500, (64, 0.2): 400, (64, 0.4): 350}))[64]
    low = best_per_batch(_records({(64, 0.1): 300, (64, 0.2): 400, (64, 0.4): 350}))[64]
    assert (high.edge, low.edge) == ("high", "low")


def test_a_tie_with_the_edge_counts_as_the_edge_on_either_side():
    # Steps are counted at evaluation steps, so neighbours tie; a tie does not bracket the best.
    high = best_per_batch(_records({(64, 0.1): 500, (64, 0.2): 300, (64, 0.4): 300}))[64]
    low = best_per_batch(_records({(64, 0.1): 300, (64, 0.2): 300, (64, 0.4): 350}))[64]
    assert (high.lr, high.steps, high.edge) == (0.2, 300, "high")
    assert (low.lr, low.steps, low.edge) == (0.1, 300, "low")


def test_a_diverged_larger_lr_makes_the_best_interior():
    best = best_per_batch(_records({(64, 0.1): 500, (64, 0.2): 300,
                                    (64, 0.4): "diverged"}))[64]
    assert best.lr == 0.2 and best.edge is None


def test_no_lr_reaching_the_target_extends_down_after_divergence_else_up():
    diverged = best_per_batch(_records({(64, 0.1): None, (64, 0.2): "diverged"}))[64]
    slow = best_per_batch(_records({(64, 0.1): None, (64, 0.2): None}))[64]
    assert (diverged.lr, diverged.edge) == (None, "low")
    assert (slow.lr, slow.edge) == (None, "high")


def test_a_seed_that_missed_the_target_disqualifies_that_lr():
    best = best_per_batch(_records({(64, 0.1): 500,
                                    (64, 0.2): lambda s: 100 if s == 0 else None,
                                    (64, 0.4): 600}))[64]
    assert best.lr == 0.1


def test_bootstrap_interval_brackets_the_seed_spread():
    # Seed 0 follows B_crit 200, seed 1 B_crit 800: the interval must span both.
    def steps(batch, b_crit):
        return round(50 * (1 + b_crit / batch))
    table = {(b, 0.1): (lambda s, b=b: steps(b, 200 if s == 0 else 800)) for b in SIZES}
    records = _records(table)
    interval = bootstrap_fit(records, samples=300, seed=0)
    assert interval["b_crit"][0] == pytest.approx(200, rel=0.05)
    assert interval["b_crit"][1] == pytest.approx(800, rel=0.05)
    fit = fit_best(best_per_batch(records))
    assert interval["b_crit"][0] < fit.b_crit < interval["b_crit"][1]


def test_ratio_interval_combines_both_sides_by_bounds():
    ratio, (low, high) = ratio_interval(400.0, (200.0, 800.0), 600.0, 50.0)
    assert ratio == pytest.approx(1.5)
    assert low == pytest.approx(500 / 800)
    assert high == pytest.approx(700 / 200)


# --- targets ----------------------------------------------------------------------------------


def test_parse_targets_sorts_and_names_bad_input():
    assert parse_targets("val_error<=0.12, train_loss<=0.3,train_loss<=0.3") == (
        Target("train_loss", 0.3), Target("val_error", 0.12))
    assert parse_targets("") == ()
    for bad, words in (("loss<0.3", "expected METRIC<=VALUE"), ("acc<=0.3", "unknown metric"),
                       ("train_loss<=-1", "positive"), ("train_loss<=nan", "positive")):
        with pytest.raises(ConfigError, match=words):
            parse_targets(bad)


def test_eval_steps_are_geometric_with_unit_steps_first_and_the_last_step():
    steps = eval_steps(1.1, 100)
    assert steps[:10] == list(range(1, 11))
    assert steps[-1] == 100
    assert all(b > a for a, b in itertools.pairwise(steps))
    ratios = [b / a for a, b in itertools.pairwise(steps[10:-1])]
    assert all(1.1 - 1e-9 <= r < 1.1 + 1 / 10 for r in ratios)
    assert eval_steps(2.0, 1) == [1]
    with pytest.raises(ConfigError, match="eval_growth"):
        eval_steps(1.0, 10)


def test_first_step_meeting_a_target_is_exact_on_a_scripted_loss_curve():
    # The loss is 1/step, evaluated at steps 1, 2, ..., 10, 11, 13, 15, 17, ... (growth 1.1):
    # 0.07 is first met at step 15 (1/14 > 0.07), 0.0625 (step 16) at the evaluation after 17.
    steps = eval_steps(1.1, 400)
    assert {15, 17} <= set(steps) and 16 not in steps
    rows = [{"step": s, "train_eval_loss": 1 / s, "val_error": 0.5} for s in steps]
    targets = parse_targets("train_loss<=0.07,train_loss<=0.0625,val_error<=0.4")
    met = first_steps(rows, targets)
    assert met == {"train_loss<=0.0625": 17, "train_loss<=0.07": 15, "val_error<=0.4": None}
    assert not all_met(rows, targets)
    assert all_met(rows, targets[:2])
    # Rows out of order and repeated (a resumed run) give the same answer.
    assert first_steps(rows[::-1] + rows[:5], targets) == met


def test_the_study_spec_round_trips_through_json_and_names_bad_values():
    import json

    from lbtkit.specs import CriticalBatchSpec
    from lbtkit.studies.critical_batch import FULL, QUICK

    for spec in (FULL, QUICK):
        assert CriticalBatchSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    for bad, words in (({"batch_sizes": (16, 32)}, "at least three batch sizes"),
                       ({"seeds": (0,)}, "at least two different seeds"),
                       ({"lr_factors": (1.0, 2.0)}, "three or more positive factors"),
                       ({"targets": ("loss<0.3",)}, "expected METRIC<=VALUE"),
                       ({"reference_batch": 100}, "reference_batch 100 is not one of"),
                       ({"remedies": ("adam",)}, "unknown remedy 'adam'"),
                       ({"jobs": 0}, "jobs must be a whole number >= 1")):
        with pytest.raises(ConfigError, match=words):
            CriticalBatchSpec(**bad)
