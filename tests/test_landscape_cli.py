"""`lbtkit interpolate`, `lbtkit sharpness` and `lbtkit study keskar` through the real CLI."""

from __future__ import annotations

import csv
import json

import pytest

from helpers import assert_user_error, invoke_cli, run_cli, train_smoke


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    for name, batch in (("sb", 32), ("lb", 256)):
        train_smoke(tmp / name, batch_size=batch)
    return tmp / "sb", tmp / "lb"


def _rows(path):
    with open(path) as handle:
        return [(float(r["alpha"]), r["split"], float(r["loss"]), float(r["accuracy"]))
                for r in csv.DictReader(handle)]


@pytest.mark.slow
def test_interpolate_split_over_two_processes_equals_one(two_runs, tmp_path):
    sb, lb = two_runs
    common = ["--alphas", "-0.5:1.5:5", "--bn", "recalibrate", "--bn-samples", "512"]
    invoke_cli("interpolate", sb, lb, *common, "--output", tmp_path / "one",
               tmp_path=tmp_path, check=0)
    run_cli("interpolate", sb, lb, *common, "--num-processes", "2", "--output",
            tmp_path / "two", tmp_path=tmp_path, check=0, timeout=400)
    one, two = _rows(tmp_path / "one" / "interpolation.csv"), _rows(tmp_path / "two" /
                                                                   "interpolation.csv")
    assert len(one) == 10 and [r[:2] for r in one] == [r[:2] for r in two]
    for a, b in zip(one, two, strict=True):
        assert a[2] == pytest.approx(b[2], rel=1e-5) and a[3] == pytest.approx(b[3], abs=1e-9)
    assert (tmp_path / "two" / "interpolation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sharpness_writes_json(two_runs, tmp_path):
    sb, _ = two_runs
    out = tmp_path / "s.json"
    invoke_cli("sharpness", sb, "--eps", "1e-3", "--subspace", "random:10", "--iters", "2",
               "--samples", "256", "--output", out, tmp_path=tmp_path, check=0)
    result = json.loads(out.read_text())
    assert result["samples_used"] == 256 and result["settings"]["iters"] == 2
    (row,) = result["sharpness"]
    assert (row["subspace"], row["eps"]) == ("random:10", 1e-3)
    assert row["phi"] >= 0 and result["train_loss"] > 0


@pytest.mark.slow
def test_sharpness_split_over_two_processes_matches_one(two_runs, tmp_path):
    """Two processes each differentiate half of the sample's batches and sum across: the
    same measures as one process, up to the rounding of that sum."""
    sb, _ = two_runs
    args = ["--eps", "1e-3", "--subspace", "full,random:10", "--iters", "2", "--samples",
            "256", "--eval-batch-size", "64", "--hessian", "--hessian-iters", "3"]
    invoke_cli("sharpness", sb, *args, "--output", tmp_path / "one.json", tmp_path=tmp_path,
               check=0)
    two = run_cli("sharpness", sb, *args, "--num-processes", "2", "--output",
                  tmp_path / "two.json", tmp_path=tmp_path, check=0, timeout=400)
    assert "\"processes\": 2" in two.stdout  # the launching command prints the file
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one["processes"] == 1 and one["samples_used"] == two["samples_used"] == 256
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-6)
    for a, b in zip(one["sharpness"], two["sharpness"], strict=True):
        assert (a["subspace"], a["eps"]) == (b["subspace"], b["eps"])
        assert b["phi"] == pytest.approx(a["phi"], rel=1e-3, abs=1e-6)
    assert two["hessian"]["top_eigenvalues"] == pytest.approx(
        one["hessian"]["top_eigenvalues"], rel=1e-4)


def test_bad_landscape_input(two_runs, tmp_path):
    sb, lb = two_runs
    assert_user_error(invoke_cli("interpolate", sb, lb, "--alphas", "1:x:3", "--output",
                                 tmp_path / "o", tmp_path=tmp_path), "1:x:3")
    assert_user_error(invoke_cli("interpolate", sb, tmp_path / "missing", "--output",
                                 tmp_path / "o", tmp_path=tmp_path), "missing")
    assert_user_error(invoke_cli("sharpness", sb, "--eps", "big", tmp_path=tmp_path), "big")
    assert_user_error(invoke_cli("interpolate", sb, lb, "--num-processes", "0", "--output",
                                 tmp_path / "o", tmp_path=tmp_path),
                      "--num-processes must be >= 1, got 0")


def test_the_cli_shows_the_library_log_lines(two_runs, tmp_path):
    """The library logs; the CLI shows its warnings as "warning: ..." lines on stderr, and
    stdout keeps only the command's own output."""
    sb, lb = two_runs
    result = invoke_cli("interpolate", sb, lb, "--alphas", "-1,0", "--bn", "interpolate",
                        "--splits", "test", "--output", tmp_path / "o", tmp_path=tmp_path,
                        check=0)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings and warnings[0].startswith("warning: alpha=-1: "), result.stderr
    assert "BatchNorm running variances are negative" in warnings[0]
    assert "warning" not in result.stdout
    assert f"csv: {tmp_path / 'o' / 'interpolation.csv'}" in result.stdout


def test_study_flags_become_the_specs_its_files_carry(tmp_path):
    from lbtkit.specs import InterpolationSpec, SharpnessSpec

    out = tmp_path / "study"
    result = invoke_cli("study", "keskar", "--preset", "smoke", "--epochs", "1", "--sb", "32",
                        "--lb", "512", "--alphas", "0,1", "--bn", "batch-stats", "--eps", "1e-3",
                        "--subspace", "random:3", "--iters", "1", "--samples", "64",
                        "--hessian-k", "0", "--no-trace", "--seed", "3", "--eval-batch-size", "256",
                        "--no-progress", "--output", out, tmp_path=tmp_path, check=0)
    assert f"study: wrote {out / 'report.md'}" in result.stdout  # the library's log line
    interpolation = json.loads((out / "interpolation" / "interpolation.json").read_text())
    assert InterpolationSpec.from_dict(interpolation["spec"]) == InterpolationSpec(
        alphas=(0.0, 1.0), bn="batch-stats", eval_batch_size=256)
    # --hessian-k 0 skips the Hessian; the run config's seed and eval batch measure sharpness
    expected = SharpnessSpec(eps=(1e-3,), subspaces=("random:3",), iters=1, samples=64,
                             hessian=False, trace=False, batch_size=256, seed=3)
    for label in ("sb", "lb"):
        stored = json.loads((out / label / "sharpness.json").read_text())
        assert SharpnessSpec.from_dict(stored["spec"]) == expected
        assert stored["hessian"] is None and stored["trace"] is None


@pytest.mark.slow
def test_study_runs_each_step_on_several_processes(tmp_path):
    out = tmp_path / "study"
    run_cli("study", "keskar", "--preset", "smoke", "--epochs", "1", "--sb", "32",
            "--lb", "256", "--alphas", "0,1", "--eps", "1e-3", "--subspace", "random:3",
            "--iters", "1", "--samples", "64", "--hessian-k", "0", "--no-trace",
            "--eval-batch-size", "32", "--no-progress", "--num-processes", "2", "--output", out,
            tmp_path=tmp_path, check=0, timeout=900)
    assert (out / "report.md").exists()
    for label in ("sb", "lb"):
        results = json.loads((out / label / "results.json").read_text())
        assert (results["status"], results["world_size"]) == ("completed", 2)
        assert json.loads((out / label / "sharpness.json").read_text())["processes"] == 2
    interpolation = json.loads((out / "interpolation" / "interpolation.json").read_text())
    assert interpolation["processes"] == 2
