"""`lbtkit sweep ...` and `lbtkit report` through the real CLI."""

from __future__ import annotations

import json

import pytest

from helpers import assert_user_error


def test_plan_status_run_task_report(cli, tmp_path):
    sweep = tmp_path / "sweep"
    out = cli("sweep", "plan", "--preset", "smoke", "--epochs", "1", "--batch-sizes", "32,64",
              "--grid", "lr_scaling=linear,sqrt", "--output", sweep, check=0).stdout
    assert "4 runs" in out and "b64-s0-sqrt" in out
    plan = json.loads((sweep / "sweep.json").read_text())
    assert [e["config"]["lr"] for e in plan["runs"]] == pytest.approx(
        [0.025, 0.05 * (0.5 ** 0.5), 0.05, 0.05]
    )
    assert cli("sweep", "status", sweep, check=0).stdout.count("pending") == 4

    cli("sweep", "run-task", sweep, "--index", "2", "--no-progress", check=0)
    status = cli("sweep", "status", sweep, check=0).stdout
    assert status.count("pending") == 3 and status.count("completed") == 1

    cli("report", sweep, check=0)
    report = (sweep / "report.md").read_text()
    results = json.loads((sweep / "runs" / "b64-s0-linear" / "results.json").read_text())
    assert f"{100 * results['best_val_acc']:.2f}%" in report
    assert report.count("pending") >= 3  # not-yet-run entries are shown, not dropped


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--batch-sizes", "32,abc"], "abc"),
        (["--batch-sizes", "100", "--num-processes", "3"], "100"),
        (["--grid", "learning_rate=0.1,0.2"], "learning_rate"),
        (["--grid", "seed"], "seed"),
    ],
)
def test_plan_bad_input(cli, tmp_path, args, needle):
    assert_user_error(cli("sweep", "plan", "--preset", "smoke", *args,
                           "--output", tmp_path / "s"), needle)


def test_run_task_bad_index_and_missing_plan(cli, tmp_path):
    sweep = tmp_path / "sweep"
    cli("sweep", "plan", "--preset", "smoke", "--batch-sizes", "32", "--output", sweep, check=0)
    assert_user_error(cli("sweep", "run-task", sweep, "--index", "7"), "7")
    assert_user_error(cli("report", tmp_path / "nowhere"), "nowhere")
