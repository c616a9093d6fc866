"""2-D loss landscapes (Li et al. 2018): direction normalisation, exact centre and other
solution, one process against two, files and user errors through the CLI."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from lbtkit.errors import ConfigError
from lbtkit.landscape import (
    between_direction,
    landscape_runs,
    normalize_direction,
    random_direction,
)
from lbtkit.specs import PlaneSpec, parse_grid

from helpers import assert_user_error, invoke_cli, run_cli, train_sb_lb, train_smoke

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two F1 solutions on digits (batch 32 and 512), one epoch each."""
    return train_sb_lb(tmp_path_factory.mktemp("runs"))


# --- directions ------------------------------------------------------------------------------


def _weights():
    """A conv weight, a linear weight, a bias and a BatchNorm weight with known filter norms."""
    generator = torch.Generator().manual_seed(1)
    conv = torch.randn(4, 3, 3, 3, generator=generator)
    linear = torch.randn(5, 7, generator=generator)
    return [conv, linear, torch.randn(5, generator=generator), torch.rand(4, generator=generator)]


def test_filter_normalisation_gives_each_filter_the_norm_of_its_weight_filter():
    # by hand: row [3, 4] (norm 5) against a weight row of norm 1, row [0, 1] against norm 2
    (d,) = normalize_direction([torch.tensor([[3.0, 4.0], [0.0, 1.0]])],
                               [torch.tensor([[1.0, 0.0], [0.0, 2.0]])])
    assert torch.equal(d, torch.tensor([[0.6, 0.8], [0.0, 2.0]]))

    weights = _weights()
    raw = random_direction(weights, torch.Generator().manual_seed(0))
    before = [t.clone() for t in raw]
    normalized = normalize_direction(raw, weights, "filter")
    assert all(torch.equal(a, b) for a, b in zip(raw, before, strict=True))  # inputs untouched
    for d, r, w in zip(normalized[:2], raw[:2], weights[:2], strict=True):
        for f in range(w.shape[0]):  # every output channel / row
            assert d[f].norm().item() == pytest.approx(w[f].norm().item(), rel=1e-6)
            # only rescaled: same orientation as the raw filter
            cosine = torch.nn.functional.cosine_similarity(d[f].flatten(), r[f].flatten(), dim=0)
            assert cosine.item() == pytest.approx(1.0, abs=1e-6)
    # biases and BatchNorm entries: the weights' own values (the reference code's convention)
    assert torch.equal(normalized[2], weights[2]) and torch.equal(normalized[3], weights[3])


def test_layer_none_and_ignore_bn_bias():
    weights = _weights()
    raw = random_direction(weights, torch.Generator().manual_seed(0))
    layer = normalize_direction(raw, weights, "layer")
    for d, r, w in zip(layer[:2], raw[:2], weights[:2], strict=True):
        assert d.norm().item() == pytest.approx(w.norm().item(), rel=1e-6)
        assert torch.allclose(d, r * (w.norm() / r.norm()))  # one factor per tensor
    assert not all(math.isclose(layer[0][f].norm().item(), weights[0][f].norm().item(),
                                rel_tol=1e-3) for f in range(4))
    none = normalize_direction(raw, weights, "none")
    assert all(torch.equal(a, b) for a, b in zip(none, raw, strict=True))
    for norm in ("filter", "layer", "none"):
        ignored = normalize_direction(raw, weights, norm, ignore_bn_bias=True)
        assert not ignored[2].any() and not ignored[3].any(), norm
        assert ignored[0].any() and ignored[1].any(), norm
    zero = normalize_direction([torch.zeros(2, 3)], [torch.ones(2, 3)], "filter")[0]
    assert not zero.any() and torch.isfinite(zero).all()
    with pytest.raises(ConfigError, match="'unit'"):
        normalize_direction(raw, weights, "unit")


def test_random_and_between_directions():
    weights = _weights()
    a = random_direction(weights, torch.Generator().manual_seed(3))
    b = random_direction(weights, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) and x.shape == w.shape for x, y, w in zip(a, b, weights,
                                                                              strict=True))
    other = [w + 2 for w in weights]
    assert all(torch.allclose(d, torch.full_like(d, 2.0))
               for d in between_direction(weights, other))


def test_parse_grid():
    xs, ys = parse_grid("-1:1:21")
    assert len(xs) == 21 and xs == ys and xs[0] == -1.0 and xs[10] == 0.0 and xs[-1] == 1.0
    assert parse_grid("-0.5:1.5:5, -1:1:3") == ([-0.5, 0.0, 0.5, 1.0, 1.5], [-1.0, 0.0, 1.0])
    assert parse_grid("0:0:1") == ([0.0], [0.0])
    for bad in ("", "1:x:3", "-1:1", "0:1:0", "0:1:2.5", "0:inf:3", "0:1:3,0:1:3,0:1:3",
                "0,1"):
        with pytest.raises(ConfigError, match="grid"):
            parse_grid(bad)


# --- the plane -------------------------------------------------------------------------------


def test_centre_and_other_solution_reproduce_the_runs_own_evaluation(runs):
    sb, lb, results = runs
    # "interpolate" keeps the trained running statistics, which the runs' own numbers used
    rows = landscape_runs(PlaneSpec(x=[0.0], y=[0.0], splits=["test"], bn="interpolate"), sb)
    assert [(r["x"], r["y"], r["split"]) for r in rows] == [(0.0, 0.0, "test")]
    assert rows[0]["accuracy"] == results["sb"]["final"]["val_acc"]
    assert rows[0]["loss"] == pytest.approx(results["sb"]["final"]["val_loss"], rel=1e-6)

    between = PlaneSpec(x=[0.0, 1.0], y=[0.0], directions="between", splits=["test"],
                        bn="interpolate")
    rows = landscape_runs(between, sb, lb)
    for row, label in zip(rows, ("sb", "lb"), strict=True):
        final = results[label]["final"]
        assert row["accuracy"] == final["val_acc"]
        assert row["loss"] == pytest.approx(final["val_loss"], rel=1e-6)
        assert row["negative_variances"] == 0

    # beyond the centre, mixed running variances go negative: reported, NaN, never plotted
    rows = landscape_runs(between.updated(x=[-1.0]), sb, lb)
    assert rows[0]["negative_variances"] > 0 and math.isnan(rows[0]["loss"])


def test_plane_moves_away_from_the_centre_and_depends_on_the_seed(runs):
    sb, _, _ = runs
    spec = PlaneSpec(x=[0.0, 1.0], y=[0.0, 1.0], splits=["train"], bn="recalibrate",
                     bn_samples=256)
    rows = landscape_runs(spec, sb)
    assert [(r["x"], r["y"]) for r in rows] == [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]
    losses = [r["loss"] for r in rows]
    assert all(math.isfinite(v) for v in losses) and len(set(losses)) == 4
    # a step of 1 along a filter-normalised direction is as long as the weights: much worse
    assert min(losses[1:]) > losses[0]
    again = landscape_runs(spec, sb)
    assert [r["loss"] for r in again] == losses
    reseeded = landscape_runs(spec.updated(seed=1), sb)
    assert reseeded[0]["loss"] == losses[0] and reseeded[3]["loss"] != losses[3]


def test_inconsistent_options_and_runs_are_refused(runs, tmp_path):
    sb, lb, _ = runs
    centre = PlaneSpec(x=[0.0], y=[0.0])
    with pytest.raises(ConfigError, match="--other"):
        landscape_runs(centre.updated(directions="between"), sb)
    with pytest.raises(ConfigError, match="--other"):
        landscape_runs(centre, sb, lb)
    with pytest.raises(ConfigError, match="'diagonal'"):
        centre.updated(directions="diagonal")
    with pytest.raises(ConfigError, match="'running'"):
        centre.updated(bn="running")
    other = tmp_path / "c1"
    train_smoke(other, model="c1", batch_size=512)
    with pytest.raises(ConfigError, match=r"model.*'f1'.*'c1'"):
        landscape_runs(centre.updated(directions="between"), sb, other)


def test_a_launch_file_runs_the_spec_it_holds(runs, tmp_path):
    from lbtkit.analysis_workers import JOB_FILE, run_job, write_job

    sb, _, _ = runs
    spec = PlaneSpec(x=[0.0, 0.5], y=[0.0], splits=["test"], bn="batch-stats", seed=3)
    job = write_job("landscape", spec, [sb, None], tmp_path / "out")
    assert job == tmp_path / "out" / JOB_FILE
    paths = run_job(job, progress=False)
    meta = json.loads(paths["json"].read_text())
    assert PlaneSpec.from_dict(meta["spec"]) == spec and meta["run"] == str(sb.resolve())
    assert [(r["x"], r["y"]) for r in meta["rows"]] == [(0.0, 0.0), (0.5, 0.0)]
    with pytest.raises(ConfigError, match="not an analysis launch file"):
        run_job(paths["json"])
    with pytest.raises(ConfigError, match="unknown analysis 'plane'"):
        write_job("plane", spec, [sb], tmp_path / "other")


# --- the command line ------------------------------------------------------------------------


def _rows(path):
    with open(path) as handle:
        return [(float(r["x"]), float(r["y"]), r["split"], float(r["loss"]),
                 float(r["accuracy"])) for r in csv.DictReader(handle)]


@pytest.mark.slow
def test_cli_two_processes_equal_one_and_write_csv_png_json(runs, tmp_path):
    sb, lb, _ = runs
    common = ["--other", lb, "--directions", "between", "--grid", "-0.5:1:3,-1:1:3",
              "--bn", "recalibrate", "--bn-samples", "256", "--ignore-bn-bias", "--seed", "7"]
    invoke_cli("landscape", sb, *common, "--output", tmp_path / "one", tmp_path=tmp_path,
               check=0)
    run_cli("landscape", sb, *common, "--num-processes", "2", "--output", tmp_path / "two",
            tmp_path=tmp_path, check=0, timeout=400)
    one, two = _rows(tmp_path / "one" / "landscape.csv"), _rows(tmp_path / "two" /
                                                              "landscape.csv")
    assert len(one) == 18 and [r[:3] for r in one] == [r[:3] for r in two]
    for a, b in zip(one, two, strict=True):
        assert a[3] == pytest.approx(b[3], rel=1e-5) and a[4] == pytest.approx(b[4], abs=1e-9)
    assert (tmp_path / "two" / "landscape.png").read_bytes()[:8] == PNG_MAGIC
    meta = json.loads((tmp_path / "two" / "landscape.json").read_text())
    assert meta["x"] == [-0.5, 0.25, 1.0] and meta["y"] == [-1.0, 0.0, 1.0]
    assert (meta["directions"], meta["norm"], meta["seed"]) == ("between", "filter", 7)
    assert meta["ignore_bn_bias"] is True and meta["processes"] == 2
    assert meta["other_run"] == str(lb.resolve()) and len(meta["rows"]) == 18
    assert abs(meta["direction_norms"]["cosine"]) < 0.2
    # the spec the workers were handed is the one the files carry, equal to the flags' spec
    spec = PlaneSpec.from_dict(meta["spec"])
    assert spec == PlaneSpec.from_dict({
        "grid": "-0.5:1:3,-1:1:3", "directions": "between", "bn": "recalibrate",
        "bn_samples": 256, "ignore_bn_bias": True, "seed": 7})
    assert json.loads((tmp_path / "two" / "launch-spec.json").read_text())["spec"] == \
        meta["spec"]


def test_cli_default_output_and_user_errors(runs, tmp_path):
    sb, _, _ = runs
    out = invoke_cli("landscape", sb, "--grid", "-1:1:2", "--splits", "test", "--bn",
                     "batch-stats", "--norm", "layer", tmp_path=tmp_path, check=0)
    assert f"png: {sb / 'landscape' / 'landscape.png'}" in out.stdout
    assert len(_rows(sb / "landscape" / "landscape.csv")) == 4

    def refused(*args: str, needle: str) -> None:
        assert_user_error(invoke_cli("landscape", sb, *args, "--output", tmp_path / "o",
                                     tmp_path=tmp_path), needle)

    refused("--grid", "-1:1:x", needle="-1:1:x")
    refused("--norm", "filters", needle="filters")
    refused("--directions", "between", needle="--other")
    refused("--other", tmp_path / "missing", "--directions", "between", needle="missing")
