"""``lbtkit demo`` shortened (QUICK): every artefact exists and agrees with the runs' files."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from lbtkit.studies.demo import QUICK, run_demo
from lbtkit.studies.demo_report import (
    interpolation_sentence,
    peak_sentence,
    recalibrated_sentence,
)
from lbtkit.studies.verdicts import gap_threshold

from helpers import markdown_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SB, LB = QUICK.batch_sizes


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    summary = run_demo(out, QUICK, progress=False)
    return out, summary


def results_of(summary: dict, batch: int) -> dict:
    path = Path(summary["sweep_dir"]) / "runs" / f"b{batch}-s0" / "results.json"
    return json.loads(path.read_text())


def percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def test_demo_writes_every_artefact_and_links_them(demo):
    out, summary = demo
    assert summary["status"] == "completed"
    index = (out / "index.md").read_text()
    targets = re.findall(r"\]\(([^)]+)\)", index)
    expected = {"report.md", "results.csv", "accuracy_vs_batch.png", "learning_curves.png",
                "keskar/interpolation.png", "keskar/interpolation.csv",
                "keskar/sharpness-sb.json", "keskar/sharpness-lb.json"}
    assert expected <= set(targets)
    for target in targets:
        assert (out / target).is_file(), target
    for target in re.findall(r"\]\(([^)]+)\)", (out / "report.md").read_text()):
        assert (out / target).is_file(), target

    # The bulky run directories stay in the git-ignored work directory.
    assert (out / ".gitignore").read_text() == "/work/\n"
    assert Path(summary["sweep_dir"]).parent == out / "work"
    outside = {p.relative_to(out).as_posix() for p in out.rglob("*")
               if p.is_file() and "work" not in p.relative_to(out).parts}
    assert outside == expected | {"index.md", ".gitignore", "keskar/interpolation.json"}


def test_figures_are_valid_pngs(demo):
    from matplotlib.image import imread

    out, _ = demo
    for name in ("accuracy_vs_batch.png", "learning_curves.png", "keskar/interpolation.png"):
        path = out / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name
        pixels = imread(path)
        assert pixels.ndim == 3 and pixels.shape[0] > 0 and pixels.shape[1] > 0, name


def test_tables_match_the_runs_results(demo):
    out, summary = demo
    results = {batch: results_of(summary, batch) for batch in (SB, LB)}
    for batch, result in results.items():
        assert result["status"] == "completed"
        assert (result["config"]["batch_size"], result["config"]["epochs"]) == (
            batch, QUICK.epochs)

    report_rows = markdown_table((out / "report.md").read_text(), "batch size")
    assert [int(r["batch size"]) for r in report_rows] == [SB, LB]
    for row in report_rows:
        result = results[int(row["batch size"])]
        assert row["best val top-1"] == percent(result["best_val_acc"])
        assert row["final val top-1"] == percent(result["final"]["val_acc"])
        assert row["status"] == "completed"

    with (out / "results.csv").open() as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [int(r["batch_size"]) for r in csv_rows] == [SB, LB]
    for row in csv_rows:
        assert float(row["best_val_acc"]) == results[int(row["batch_size"])]["best_val_acc"]

    index = (out / "index.md").read_text()
    index_rows = markdown_table(index, "batch size")
    assert [int(r["batch size"]) for r in index_rows] == [SB, LB]
    for row in index_rows:
        result = results[int(row["batch size"])]
        assert row["best val top-1"] == percent(result["best_val_acc"])
        assert row["final val top-1"] == percent(result["final"]["val_acc"])
        assert int(row["optimizer steps"]) == result["global_step"]

    keskar_rows = {r[""]: r for r in markdown_table(index, "")}
    for label, batch in (("SB", SB), ("LB", LB)):
        row, result = keskar_rows[label], results[batch]
        sharpness = json.loads((out / "keskar" / f"sharpness-{label.lower()}.json").read_text())
        assert int(row["batch"]) == batch
        assert row["val acc"] == percent(result["final"]["val_acc"])
        phi = sharpness["sharpness"][0]
        assert float(row[f"φ full space, ε={phi['eps']:g}"]) == pytest.approx(phi["phi"],
                                                                              rel=1e-3)
        top = sharpness["hessian"]["top_eigenvalues"][0]
        assert float(row["top Hessian eigenvalue"]) == pytest.approx(top, rel=1e-3)

    with (out / "keskar" / "interpolation.csv").open() as handle:
        alphas = {float(r["alpha"]) for r in csv.DictReader(handle)}
    assert alphas == set(QUICK.interpolation.alphas)


def test_sentences_follow_the_numbers(demo):
    out, summary = demo
    index = (out / "index.md").read_text()
    sb, lb = results_of(summary, SB)["best_val_acc"], results_of(summary, LB)["best_val_acc"]
    match = re.search(rf"At batch {SB} the best validation accuracy is ([\d.]+)%, at batch "
                      rf"{LB} ([\d.]+)%: (.*?)\n", index)
    assert match, index
    assert match[1] == f"{100 * sb:.2f}" and match[2] == f"{100 * lb:.2f}"
    diff = round(100 * sb, 2) - round(100 * lb, 2)
    threshold = 100 * gap_threshold(sb, lb, summary["numbers"]["n_val"])
    assert f"({threshold:.2f} points on 360 validation images)" in match[3]
    if abs(diff) <= threshold:
        assert f"a difference of {diff:.2f} points" in match[3]
        assert "no generalisation gap at this scale" in match[3]
    elif diff > 0:
        assert f"the largest batch is {diff:.2f} points worse" in match[3]
    else:
        assert f"the largest batch is {-diff:.2f} points better" in match[3]
    assert summary["numbers"]["diff_points"] == pytest.approx(diff)

    steps = [results_of(summary, b)["global_step"] for b in (SB, LB)]
    assert f"{steps[0]} optimizer steps at batch {SB} and {steps[1]} at batch {LB}" in index
    phis = [json.loads((out / "keskar" / f"sharpness-{k}.json").read_text())["sharpness"][0]
            ["phi"] for k in ("sb", "lb")]
    assert f"φ = {phis[0]:.4g} (SB) vs {phis[1]:.4g} (LB)" in index


def test_peak_and_gap_sentences_on_made_up_numbers():
    def row(batch, acc, status="completed"):
        return {"batch_size": batch, "best_val_acc": acc, "status": status}

    # 2 s.e. of 0.95 vs 0.94 on 360 images is ~3.3 points: 0.94 is within, 0.80 is not.
    assert gap_threshold(0.95, 0.94, 360) == pytest.approx(
        2 * ((0.95 * 0.05 + 0.94 * 0.06) / 360) ** 0.5)
    assert gap_threshold(1.0, 1.0, 360) == pytest.approx(1 / 360)
    text = peak_sentence([row(8, 0.94), row(32, 0.95), row(1024, 0.80)], n_val=360)
    assert text == ("Over the sweep, the best validation accuracy peaks at batch 32 (95.00%); "
                    "batch size 8 is within two standard errors of it, 1024 (80.00%) is not.")
    text = peak_sentence([row(8, 0.95), row(64, None, "diverged"), row(1024, 0.95)], n_val=360)
    assert "peaks at batch 8" in text and "every other batch size is within" in text
    assert "batch 64: diverged" in text


def test_interpolation_sentences_on_made_up_rows():
    def rows(losses, test_accs=None):
        out = [{"alpha": a, "split": "train", "loss": v, "accuracy": 0.9}
               for a, v in losses.items()]
        for a, acc in (test_accs or {}).items():
            out.append({"alpha": a, "split": "test", "loss": 0.3, "accuracy": acc})
        return out

    text = interpolation_sentence(rows({-1.0: 3.0, 0.0: 0.1, 0.5: 0.5, 1.0: 0.2, 2.0: 9.0}))
    assert "rises to 0.5 (α=0.5), a barrier above both ends" in text
    assert "rises more steeply beyond LB" in text
    text = interpolation_sentence(rows({0.0: 0.1, 0.5: 0.15, 1.0: 0.2}))
    assert "no barrier on the straight path" in text
    assert interpolation_sentence(rows({0.5: 0.1})) is None
    text = recalibrated_sentence(rows({}, {0.0: 0.95, 1.0: 0.94}), n_val=360)
    assert "a difference of 1.00 points, within two standard errors" in text


def test_cli_demo_command_is_wired(cli):
    result = cli("demo", "--help")
    if result.returncode != 0 and "No such command" in result.stderr:
        pytest.skip("the demo command is not in lbtkit/cli/ yet")
    assert result.returncode == 0, result.stderr
    assert "--output" in result.stdout and "--quick" in result.stdout


def test_diverged_runs_are_reported_not_hidden(tmp_path, monkeypatch):
    import lbtkit.studies.demo

    # An absurd learning rate: every run diverges at its first step.
    monkeypatch.setattr(lbtkit.studies.demo, "RECIPE",
                        {**lbtkit.studies.demo.RECIPE, "base_lr": 1e6, "log_every": 1})
    summary = run_demo(tmp_path / "out", QUICK, progress=False)
    assert summary["status"] == "completed" and summary["keskar"] is None
    index = (tmp_path / "out" / "index.md").read_text()
    assert f"No accuracy comparison: the batch-{SB} run is diverged." in index
    assert f"Not run: the batch-{SB} run is diverged" in index
    assert [r["status"] for r in markdown_table(index, "batch size")] == ["diverged", "diverged"]
    assert not (tmp_path / "out" / "keskar").exists()
