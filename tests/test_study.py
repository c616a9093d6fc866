"""``keskar_study`` end to end on the smoke preset, and its report's computed sentences."""

from __future__ import annotations

import csv
import json
import logging
import re

import pytest
import torch
from safetensors.torch import load_file

from lbtkit.config import RunConfig, preset_values
from lbtkit.errors import ConfigError
from lbtkit.models import build_model
from lbtkit.specs import InterpolationSpec, KeskarStudySpec, SharpnessSpec
from lbtkit.studies.keskar import keskar_study
from lbtkit.studies.keskar_report import compare_sharpness

from helpers import assert_user_error

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def smoke(**values) -> RunConfig:
    return RunConfig().updated(preset_values("smoke")).updated({"epochs": 1, **values})


def test_keskar_study_end_to_end(tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO, logger="lbtkit")
    out = tmp_path / "study"
    spec = KeskarStudySpec(
        sb=32, lb=512, interpolation=InterpolationSpec(alphas=[-1.0, 0.0, 0.5, 1.0, 2.0]),
        sharpness=SharpnessSpec(eps=(1e-3,), subspaces=("random:5",), iters=2, hessian=True,
                                hessian_iters=3, trace=True, trace_samples=2, samples=256))
    summary = keskar_study(smoke(), spec, out, progress=False)
    assert summary["status"] == "completed"
    # The library logs its steps and prints nothing: its user decides what is shown.
    assert "study: SB run, batch 32" in caplog.text and "study: wrote" in caplog.text
    assert "study:" not in capsys.readouterr().out

    # Both runs started from the saved initialisation, which is the seeded model.
    init = out / "init.safetensors"
    torch.manual_seed(0)
    expected = build_model("f1", num_classes=10, in_channels=1, image_size=8).state_dict()
    stored = load_file(str(init))
    assert stored.keys() == expected.keys()
    assert all(torch.equal(stored[k], expected[k]) for k in expected)
    results = {}
    for label, batch in (("sb", 32), ("lb", 512)):
        config = json.loads((out / label / "config.json").read_text())
        assert (config["init_weights"], config["batch_size"]) == (str(init), batch)
        results[label] = json.loads((out / label / "results.json").read_text())
        stored = json.loads((out / label / "sharpness.json").read_text())
        assert SharpnessSpec.from_dict(stored["spec"]) == spec.sharpness

    with (out / "interpolation" / "interpolation.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 10 and {r["split"] for r in rows} == {"train", "test"}
    assert len({r["alpha"] for r in rows}) == 5
    assert (out / "interpolation" / "interpolation.png").read_bytes()[:8] == PNG_MAGIC

    report = (out / "report.md").read_text()
    assert "![parametric plot](interpolation/interpolation.png)" in report
    for label in ("SB", "LB"):
        final = results[label.lower()]["final"]
        cells = next(line for line in report.splitlines() if line.startswith(f"| {label} |"))
        cells = [c.strip() for c in cells.strip("|").split("|")]
        assert int(cells[3]) == results[label.lower()]["epochs_completed"]
        assert float(cells[4]) == round(100 * final["train_acc"], 2)
        assert float(cells[5]) == round(100 * final["val_acc"], 2)
        phi = json.loads((out / label.lower() / "sharpness.json").read_text())["sharpness"][0]
        assert float(cells[6]) == pytest.approx(phi["phi"], rel=1e-3)
    assert re.search(r"sharper than|No sharpness gap", report)

    # A second call resumes: nothing is retrained or re-measured.
    sharpness_file = out / "sb" / "sharpness.json"
    before = sharpness_file.stat().st_mtime_ns
    interpolation_file = out / "interpolation" / "interpolation.json"
    stored = json.loads(interpolation_file.read_text())
    assert InterpolationSpec.from_dict(stored["spec"]) == spec.interpolation
    interpolated = interpolation_file.stat().st_mtime_ns
    assert keskar_study(smoke(), spec, out, progress=False)["status"] == "completed"
    assert sharpness_file.stat().st_mtime_ns == before
    assert interpolation_file.stat().st_mtime_ns == interpolated
    # Another sharpness spec is measured again; the interpolation is kept.
    again = spec.updated(sharpness=spec.sharpness.updated(iters=3))
    assert keskar_study(smoke(), again, out, progress=False)["status"] == "completed"
    assert sharpness_file.stat().st_mtime_ns != before
    assert interpolation_file.stat().st_mtime_ns == interpolated


def test_study_refuses_bad_batch_sizes_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"exceeds the training set.*1437"):
        keskar_study(smoke(), KeskarStudySpec(sb=32, lb=5000), tmp_path / "s", progress=False)
    with pytest.raises(ConfigError, match="sb < lb"):
        KeskarStudySpec(sb=512, lb=512)
    with pytest.raises(ConfigError, match="subspace 'half'"):
        KeskarStudySpec(sb=32, lb=512, sharpness={"subspaces": "half"})
    assert not (tmp_path / "s").exists()


def test_compare_sharpness_sentence_follows_the_numbers():
    sentence = compare_sharpness(1.0, 10.0, what="x")
    assert sentence.startswith("LB is sharper than SB by a factor of 10")
    assert compare_sharpness(10.0, 1.0, what="x").startswith("SB is sharper than LB")
    assert compare_sharpness(1.0, 1.01, what="x").startswith("No sharpness gap measured")
    assert compare_sharpness(0.0, 0.0, what="x").startswith("No sharpness gap measured")


def test_with_jobs_the_steps_run_in_children_and_give_the_same_numbers(tmp_path, caplog):
    """SB and LB train at once, then the three analyses (each once the runs it reads are
    trained) in the pool's worker processes; the study then only reads them. One thread
    everywhere: a run's numbers depend on its thread count."""
    caplog.set_level(logging.INFO, logger="lbtkit")
    spec = KeskarStudySpec(
        sb=32, lb=512, interpolation=InterpolationSpec(alphas=[0.0, 0.5, 1.0]),
        sharpness=SharpnessSpec(eps=(1e-3,), subspaces=("random:5",), iters=2, hessian=False,
                                trace=False, samples=256))
    base = smoke(threads=1)
    assert keskar_study(base, spec, tmp_path / "one", progress=False)["status"] == "completed"
    caplog.clear()
    at_once = keskar_study(base, spec, tmp_path / "two", progress=False, jobs=2)
    assert at_once["status"] == "completed"
    assert caplog.text.count("already completed; not retraining") == 2  # trained by children
    assert "up to date" in caplog.text and "interpolating over" not in caplog.text
    for label in ("sb", "lb"):
        assert (tmp_path / "two" / label / "model.safetensors").read_bytes() == \
            (tmp_path / "one" / label / "model.safetensors").read_bytes()
        sharpness = [[{key: value for key, value in entry.items() if key != "seconds"}
                      for entry in json.loads((tmp_path / side / label / "sharpness.json")
                                              .read_text())["sharpness"]]
                     for side in ("one", "two")]
        assert sharpness[0] == sharpness[1] and sharpness[0][0]["phi"] > 0
        assert "epoch 1/1" in (tmp_path / "two" / "logs" / f"{label}.log").read_text()
    assert (tmp_path / "two" / "interpolation" / "interpolation.csv").read_text() == \
        (tmp_path / "one" / "interpolation" / "interpolation.csv").read_text()
    # A rerun starts no child: every step is done.
    measured = (tmp_path / "two" / "sb" / "sharpness.json").stat().st_mtime_ns
    caplog.clear()
    assert keskar_study(base, spec, tmp_path / "two", progress=False, jobs=2)["status"] == \
        "completed"
    assert "exited" not in caplog.text and "at once" not in caplog.text
    assert (tmp_path / "two" / "sb" / "sharpness.json").stat().st_mtime_ns == measured
    with pytest.raises(ConfigError, match="jobs or num_processes"):
        keskar_study(base, spec, tmp_path / "both", jobs=2, num_processes=2)


@pytest.mark.parametrize(("flags", "needle"), [
    (["--jobs", "0"], "--jobs must be >= 1, got 0"),
    (["--jobs", "2", "--num-processes", "2"], "cannot be combined with --num-processes 2"),
])
def test_cli_names_bad_jobs_before_anything_runs(cli, tmp_path, flags, needle):
    # With --num-processes: in a fresh interpreter (conftest refuses launches in this one).
    result = cli("study", "keskar", "--preset", "smoke", "--output", str(tmp_path / "s"),
                 *flags, check=None, fresh="--num-processes" in flags)
    assert_user_error(result, needle)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("command", [["fashion-seed", "--seed", "0"], ["fashion-noise"]])
def test_a_study_fashion_child_names_a_spec_that_is_not_json(cli, tmp_path, command):
    result = cli("study", command[0], str(tmp_path / "work"), *command[1:], "--spec", "{bad",
                 check=None)
    assert_user_error(result, "--spec is not JSON")
    assert "'{bad'" in result.stderr
