"""The analysis specs: each bad value is refused naming it, and every spec round-trips through
JSON (as it is stored in the analyses' output files and handed to launched workers)."""

from __future__ import annotations

import json
import re

import pytest

from lbtkit.errors import ConfigError
from lbtkit.specs import (
    InterpolationSpec,
    KeskarStudySpec,
    NoiseScaleSpec,
    PlaneSpec,
    SharpnessSpec,
    parse_alphas,
    parse_grid,
)
from lbtkit.studies.demo import FULL, QUICK, DemoSpec

EVAL_BATCH = "eval_batch_size must be a whole number >= 1, got"


def through_json(spec):
    return type(spec).from_dict(json.loads(json.dumps(spec.to_dict())))


@pytest.mark.parametrize("spec", [
    InterpolationSpec(),
    InterpolationSpec(alphas="-0.5:1.5:9", splits="test", bn="batch-stats", bn_samples=100,
                      eval_batch_size=64),
    PlaneSpec(),
    PlaneSpec.from_dict({"grid": "-0.5:1.5:5,-1:1:3", "directions": "between", "norm": "layer",
                         "ignore_bn_bias": True, "bn": "interpolate", "seed": 3}),
    SharpnessSpec(),
    SharpnessSpec(eps="1e-3,5e-4,1e-4", subspaces="full,random:10", iters=3, hessian=True,
                  top_k=2, hessian_iters=5, trace=True, trace_samples=4, samples=64,
                  batch_size=32, seed=7),
    NoiseScaleSpec(),
    NoiseScaleSpec(batch_sizes=(16, 256), draws=6, seed=2, chunk_size=8),
    KeskarStudySpec(),
    KeskarStudySpec(sb=32, lb=512, interpolation=InterpolationSpec(alphas=[0.0, 1.0]),
                    sharpness=SharpnessSpec(subspaces=("random:5",))),
    FULL,
    QUICK,
    DemoSpec(threads=None),  # None is a value here (leave torch's threads), not "default"
], ids=lambda spec: type(spec).__name__)
def test_round_trip_through_json(spec):
    again = through_json(spec)
    assert again == spec and type(again) is type(spec)
    assert again.to_dict() == spec.to_dict()


def test_text_forms_are_parsed_into_fields():
    assert InterpolationSpec(alphas="0:1:3").alphas == (0.0, 0.5, 1.0)
    assert InterpolationSpec().alphas == tuple(parse_alphas("-1:2:25"))
    assert InterpolationSpec(splits="train, test").splits == ("train", "test")
    plane = PlaneSpec.from_dict({"grid": "-0.5:1.5:5,-1:1:3"})
    assert (list(plane.x), list(plane.y)) == parse_grid("-0.5:1.5:5,-1:1:3")
    assert SharpnessSpec(eps="1e-3, 5e-4").eps == (1e-3, 5e-4)
    assert SharpnessSpec(subspaces="full,random:3").subspaces == ("full", "random:3")
    assert SharpnessSpec(bn="batch, running").bn == ("batch", "running")
    # a whole float (a JSON 1.0) is a whole number; the stored value is an int
    assert InterpolationSpec(eval_batch_size=256.0).eval_batch_size == 256
    assert DemoSpec(batch_sizes=(256, 16, 256)).batch_sizes == (16, 256)


@pytest.mark.parametrize(("build", "needle"), [
    (lambda: InterpolationSpec(alphas="1:x:3"), "'1:x:3'"),
    (lambda: InterpolationSpec(alphas=[]), "alphas"),
    (lambda: InterpolationSpec(alphas=[0.0, float("nan")]), "nan"),
    (lambda: InterpolationSpec(splits="train,val"), "'val'"),
    (lambda: InterpolationSpec(bn="running"), "BatchNorm mode 'running'"),
    (lambda: InterpolationSpec(bn_samples=1), "bn_samples must be a whole number >= 2, got 1"),
    (lambda: InterpolationSpec(eval_batch_size=0), f"{EVAL_BATCH} 0"),
    (lambda: InterpolationSpec(eval_batch_size="big"), f"{EVAL_BATCH} 'big'"),
    (lambda: InterpolationSpec(eval_batch_size=True), f"{EVAL_BATCH} True"),
    (lambda: PlaneSpec(directions="diagonal"), "'diagonal'"),
    (lambda: PlaneSpec(norm="filters"), "'filters'"),
    (lambda: PlaneSpec(x=[]), "x must be a non-empty list"),
    (lambda: PlaneSpec(y="0,1"), "y must be a list of numbers, got '0,1'"),
    (lambda: PlaneSpec(ignore_bn_bias="yes"), "ignore_bn_bias must be true or false, got 'yes'"),
    (lambda: PlaneSpec(seed=-1), "seed must be a whole number >= 0, got -1"),
    (lambda: PlaneSpec.from_dict({"grid": "-1:1:x"}), "'-1:1:x'"),
    (lambda: SharpnessSpec(eps="big"), "eps 'big'"),
    (lambda: SharpnessSpec(eps=(-1e-3,)), "eps must be non-negative numbers, got [-0.001]"),
    (lambda: SharpnessSpec(subspaces="half"), "subspace 'half'"),
    (lambda: SharpnessSpec(subspaces=""), "no subspace given in ''"),
    (lambda: SharpnessSpec(iters=0), "iters must be a whole number >= 1, got 0"),
    (lambda: SharpnessSpec(samples=0), "samples must be a whole number >= 1, got 0"),
    (lambda: SharpnessSpec(hessian=True, top_k=3, hessian_iters=2), "got 3 and 2"),
    (lambda: SharpnessSpec(trace=True, trace_samples=1), "trace_samples must be >= 2, got 1"),
    (lambda: SharpnessSpec(bn="eval"), "unknown BatchNorm convention 'eval' for bn"),
    (lambda: SharpnessSpec(bn="batch,batch"), "bn must be one or more of running, batch"),
    (lambda: NoiseScaleSpec(batch_sizes=(64, 64)), "batch_sizes [64, 64]"),
    (lambda: NoiseScaleSpec(batch_sizes=(0, 64)), "batch_sizes must be a whole number >= 1, got 0"),
    (lambda: NoiseScaleSpec(batch_sizes=(32,)), "two batch sizes, got (32,)"),
    (lambda: NoiseScaleSpec(draws=1), "draws must be at least 2 (for a standard error), got 1"),
    (lambda: NoiseScaleSpec(chunk_size=0), "chunk_size must be a whole number >= 1, got 0"),
    (lambda: KeskarStudySpec(sb=512, lb=512), "need 0 < sb < lb batch sizes, got sb=512, lb=512"),
    (lambda: KeskarStudySpec(sharpness={"iters": -2}), "iters must be a whole number >= 1, got -2"),
    (lambda: KeskarStudySpec(sharpness={"eta": 1}), "unknown key 'eta' in sharpness of the study"),
    (lambda: KeskarStudySpec(interpolation="all"),
     "interpolation: expected InterpolationSpec or a table of its keys, got 'all'"),
    (lambda: DemoSpec(batch_sizes=(64,)), "the demo needs at least two batch sizes, got [64]"),
    (lambda: DemoSpec(threads=0), "threads must be a whole number >= 1, got 0"),
], ids=lambda value: value if isinstance(value, str) else "")
def test_bad_values_are_refused_naming_them(build, needle):
    with pytest.raises(ConfigError) as caught:
        build()
    assert needle in str(caught.value)


def test_from_dict_refuses_unknown_keys_and_keeps_defaults_for_missing_ones():
    with pytest.raises(ConfigError, match=r"unknown key 'alpha' in interpolation spec; known "
                                          r"keys: alphas, splits"):
        InterpolationSpec.from_dict({"alpha": "0:1:3"})
    with pytest.raises(ConfigError, match=r"unknown key 'eps' in job\.json"):
        PlaneSpec.from_dict({"eps": 1}, source="job.json")
    assert SharpnessSpec.from_dict({"seed": 3}) == SharpnessSpec(seed=3)
    with pytest.raises(ConfigError, match="iters must be a whole number >= 1, got None"):
        SharpnessSpec.from_dict({"iters": None})
    with pytest.raises(ConfigError, match="must be a table of keys"):
        SharpnessSpec.from_dict([1, 2])


def test_a_plane_needs_a_second_run_exactly_with_between_directions(tmp_path):
    PlaneSpec().check_other(None)
    PlaneSpec(directions="between").check_other(tmp_path)
    with pytest.raises(ConfigError, match="--directions between needs a second solution"):
        PlaneSpec(directions="between").check_other(None)
    with pytest.raises(ConfigError, match=f"--other {tmp_path} is used only with"):
        PlaneSpec().check_other(tmp_path)


def test_specs_are_frozen_and_updated_copies_are_validated():
    spec = SharpnessSpec()
    with pytest.raises(AttributeError):
        spec.iters = 3  # type: ignore[misc]
    assert spec.updated(iters=3).iters == 3 and spec.iters == 10
    with pytest.raises(ConfigError, match="iters must be a whole number >= 1, got 0"):
        spec.updated(iters=0)


def test_fashion_study_specs_round_trip_and_refuse_bad_values():
    from lbtkit.specs import FashionStudySpec
    from lbtkit.studies.fashion_presets import FULL as FASHION_FULL
    from lbtkit.studies.fashion_presets import QUICK as FASHION_QUICK

    for spec in (FASHION_FULL, FASHION_QUICK, FashionStudySpec()):
        again = through_json(spec)
        assert again == spec and type(again) is FashionStudySpec
    assert len(FASHION_FULL.seeds) == 5
    assert FASHION_FULL.stop_fields() == {"epochs": 100, "stop_train_acc": 0.99,
                                          "stop_train_acc_mode": "eval",
                                          "stop_plateau_epochs": None, "stop_plateau_delta": 1e-3}
    bad = [
        ({"seeds": (0,)}, "at least two different seeds"),
        ({"seeds": (0, 0, 1)}, "each once"),
        ({"seeds": "0,1"}, "seeds must be a list"),
        ({"sb": 6000, "lb": 256}, "need 0 < sb < lb"),
        ({"stop_train_acc": None, "stop_plateau_epochs": None}, "needs a stopping rule"),
        ({"stop_train_acc": 1.5}, "stop_train_acc must be in (0, 1], got 1.5"),
        ({"stop_train_acc_mode": "train"}, "unknown training-accuracy mode 'train'"),
        ({"stop_plateau_epochs": 0}, "stop_plateau_epochs must be a whole number >= 1"),
        ({"stop_plateau_delta": 1.0}, "stop_plateau_delta must be in [0, 1)"),
        ({"epochs_cap": 0}, "epochs_cap must be a whole number >= 1"),
        ({"sweep_batch_sizes": (64,)}, "at least two batch sizes"),
        ({"sweep_epochs": 2, "sweep_warmup_epochs": 2}, "sweep_warmup_epochs must be in"),
        ({"noise_scale": {"batch_sizes": [64, 32]}}, "the small batch must be smaller"),
        ({"threads": 0}, "threads must be a whole number >= 1"),
    ]
    for values, needle in bad:
        with pytest.raises(ConfigError, match=re.escape(needle)):
            FashionStudySpec.from_dict(values)
