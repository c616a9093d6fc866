"""The job scripts on a real single-node SLURM (tests/slurm_cluster.py), not a mock.

1. ``sbatch --wait --array=0-2 jobs/sweep.sh`` completes every task; the report has every row.
   A plain ``sbatch jobs/sweep.sh`` (no --array) fails at once instead of training one entry.
2. A task signalled mid-run (as SLURM does before the time limit) checkpoints, requeues itself
   (that task only), resumes, and ends with the weights of an uninterrupted run.
3. ``lbtkit.slurm.submit_sweep``: an array with a diverging entry plus the report job after it;
   the entry is recorded and reported as diverged, the others complete.
4. ``scancel`` (SIGTERM) checkpoints but does not requeue: the cancelled job stays cancelled.
5. Container mode (``LBT_IMAGE``), submitted by ``submit_sweep``: the task runs ``apptainer exec
   --bind ... IMAGE lbtkit sweep run-task ...`` (the image's lbtkit, not a pinned host path),
   with a stand-in apptainer that runs the command on the host (no Apptainer here).

Needs root and the Debian packages (tests/install-slurm.sh); skipped without them unless
LBTKIT_REQUIRE_SLURM=1, which turns the skip into a failure (CI).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, slurm  # noqa: F401  (slurm: the session fixture)

from conftest import cli_env, run_cli

ROOT = Path(__file__).resolve().parent.parent
JOBS = ROOT / "jobs"

pytestmark = pytest.mark.slow


def job_env(tmp_path: Path) -> dict[str, str]:
    """What sbatch passes on to the jobs: this venv's lbtkit first on PATH, one thread, gloo on
    loopback, no Accelerate default config, and no LBT_* / SLURM_* of the caller."""
    env = {k: v for k, v in cli_env(tmp_path).items()
           if not k.startswith(("LBT_", "SLURM_", "SBATCH_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def plan(sweep: Path, grid: dict[str, list], **overrides) -> list[dict]:
    """Plan a sweep over the smoke preset (in-process: `lbtkit sweep plan` is tested elsewhere)."""
    from lbtkit.config import build_config
    from lbtkit.sweep import plan_sweep

    plan_sweep(build_config(preset="smoke", overrides=overrides, resolve=False), grid, sweep)
    return json.loads((sweep / "sweep.json").read_text())["runs"]


def submitted_id(result: subprocess.CompletedProcess) -> str:
    match = re.search(r"Submitted batch job (\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return match.group(1)


def task(cluster: SlurmCluster, array_id: str, index: int) -> dict[str, str]:
    records = [r for r in cluster.jobs(array_id) if r.get("ArrayTaskId") == str(index)]
    assert len(records) == 1, records
    return records[0]


def wait_for(condition, *, timeout: float, what: str, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def metrics_lines(run_dir: Path) -> int:
    try:
        return len([line for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                    if line.strip()])
    except OSError:
        return 0


def read_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else f"(no log at {path})"


def report_rows(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_weights(a: Path, b: Path) -> None:
    import torch
    from safetensors.torch import load_file

    left, right = load_file(a), load_file(b)
    assert left.keys() == right.keys()
    different = [k for k in left if not torch.equal(left[k], right[k])]
    assert not different, f"tensors differ after the requeue: {different}"


# --- 1. a sweep as one job array ---------------------------------------------------------------


def test_sweep_array_completes_and_the_report_has_every_row(slurm, tmp_path):  # noqa: F811
    sweep = tmp_path / "sweep"
    runs = plan(sweep, {"batch_size": [32, 64, 128]}, epochs=1)
    env = job_env(tmp_path)

    result = slurm.run("sbatch", "--wait", f"--array=0-{len(runs) - 1}", JOBS / "sweep.sh", sweep,
                       env=env, cwd=tmp_path, timeout=240, check=False)
    array_id = submitted_id(result)
    logs = [tmp_path / f"lbtkit-sweep_{array_id}_{i}.out" for i in range(len(runs))]
    all_logs = "\n".join(read_log(p) for p in logs)
    assert result.returncode == 0, f"{result.stderr}\n{all_logs}"
    for index, log in enumerate(logs):
        text = read_log(log)
        assert f"entry {index} of 3" in text
        assert "run completed" in text, text
    for record in slurm.jobs(array_id):
        assert record["JobState"] == "COMPLETED", record
        assert record["ExitCode"] == "0:0"

    run_cli("report", str(sweep), check=0)
    rows = report_rows(sweep)
    assert [(r["batch_size"], r["status"]) for r in rows] == [
        ("32", "completed"), ("64", "completed"), ("128", "completed")]
    report = (sweep / "report.md").read_text()
    for batch in (32, 64, 128):
        assert re.search(rf"^\| {batch} \|.*\| completed \|$", report, re.MULTILINE), report


def test_plain_sbatch_without_an_array_refuses_to_run(slurm, tmp_path):  # noqa: F811
    sweep = tmp_path / "sweep"
    plan(sweep, {"batch_size": [32, 64, 128]}, epochs=1)
    result = slurm.run("sbatch", "--wait", JOBS / "sweep.sh", sweep, env=job_env(tmp_path),
                       cwd=tmp_path, timeout=60, check=False)
    job_id = submitted_id(result)
    assert result.returncode == 2
    (log,) = tmp_path.glob(f"lbtkit-sweep_{job_id}_*.out")  # %a of a job outside an array
    text = read_log(log)
    assert "SLURM_ARRAY_TASK_ID is not set" in text, text
    assert f"sbatch --array=0-2 jobs/sweep.sh {sweep}" in text, text
    assert not (sweep / "runs").exists()


# --- 2. signalled, checkpointed, requeued, resumed ------------------------------------------------


def test_signalled_task_requeues_resumes_and_matches_an_uninterrupted_run(slurm, tmp_path):  # noqa: F811
    # Entry 0 is short; entry 1 (c1, 6 epochs, about 2 s an epoch) is signalled mid-run. Entry 1
    # is the array's last task, whose own job id equals the array job id: requeueing that id
    # would requeue (rerun) entry 0 as well, so this also checks the requeue names the task.
    sweep = tmp_path / "sweep"
    runs = plan(sweep, {"batch_size": [32], "epochs": [1, 6]}, model="c1")
    assert [r["config"]["epochs"] for r in runs] == [1, 6]
    reference = tmp_path / "reference"
    reference.mkdir()
    shutil.copy(sweep / "sweep.json", reference / "sweep.json")
    run_dir = sweep / runs[1]["run_dir"]
    env = job_env(tmp_path)

    array_id = slurm.sbatch("--array=0-1", str(JOBS / "sweep.sh"), str(sweep), env=env,
                            cwd=tmp_path)
    # The uninterrupted run of the same entry, meanwhile, outside SLURM.
    uninterrupted = subprocess.Popen(
        [sys.executable, "-m", "lbtkit", "sweep", "run-task", str(reference), "--index", "1",
         "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    log = tmp_path / f"lbtkit-sweep_{array_id}_1.out"
    try:
        wait_for(lambda: metrics_lines(run_dir) >= 1, timeout=120,
                 what=f"entry 1's first epoch\n{slurm.logs()}")
        assert task(slurm, array_id, 1)["JobState"] == "RUNNING"
        # What SLURM does at --signal=B:USR1@margin, now: SIGUSR1 to the batch shell only.
        slurm.run("scancel", "--signal=USR1", "--batch", f"{array_id}_1", env=env)
        slurm.wait_final(array_id, timeout=180)
        entry0, entry1 = task(slurm, array_id, 0), task(slurm, array_id, 1)
    finally:
        out, _ = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, out

    text = read_log(log)
    assert "received SIGUSR1: sending SIGTERM" in text, text
    assert "checkpoint saved" in text, text
    assert f"requeueing job {array_id}_1 (restart 1)" in text, text
    assert "resuming " in text, text
    assert "restart 1) on" in text, text  # the requeued task: same index, SLURM_RESTART_COUNT=1
    assert text.count("entry 1 of 2") == 2, text
    assert text.rstrip().endswith(f"run completed: {run_dir}"), text

    assert (entry1["JobState"], entry1["Restarts"], entry1["ExitCode"]) == ("COMPLETED", "1", "0:0")
    assert entry1["JobId"] == array_id  # the case where requeueing $SLURM_JOB_ID is wrong
    assert (entry0["JobState"], entry0["Restarts"]) == ("COMPLETED", "0"), entry0

    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["epochs_completed"] == 6
    assert metrics_lines(run_dir) == 6
    assert_same_weights(run_dir / "model.safetensors",
                        reference / runs[1]["run_dir"] / "model.safetensors")


# --- 3. submit_sweep: a diverging entry, the report job after the array --------------------------


def test_submitted_sweep_records_and_reports_a_diverged_entry(slurm, tmp_path, monkeypatch):  # noqa: F811
    from lbtkit.slurm import submit_sweep

    sweep = tmp_path / "sweep"
    runs = plan(sweep, {"batch_size": [64], "base_lr": [0.02, 0.05, 1e8]}, epochs=1, log_every=1)
    assert [r["config"]["lr"] for r in runs] == [0.02, 0.05, 1e8]
    for name, value in {**job_env(tmp_path), "SLURM_CONF": str(slurm.conf)}.items():
        monkeypatch.setenv(name, value)
    for name in [n for n in os.environ if n.startswith(("LBT_", "SBATCH_"))]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # sbatch runs the jobs (and writes their logs) here

    submitted = submit_sweep(sweep, max_parallel=2)
    array_id, report_id = submitted["array_job_id"], submitted["report_job_id"]
    assert submitted["commands"][0][:3] == ["sbatch", "--parsable", "--array=0-2%2"]
    pending_report = slurm.jobs(report_id)[0]
    # The array job id stands for all its tasks: afterany waits for every one.
    assert pending_report["Dependency"] == f"afterany:{array_id}_*(unfulfilled)", pending_report
    tasks = slurm.wait_final(array_id, timeout=240)
    report_job = slurm.wait_final(report_id, timeout=120)[0]
    logs = "\n".join(read_log(p) for p in sorted(tmp_path.glob("lbtkit-*.out")))
    assert len(tasks) == 3
    for record in tasks:
        # A diverged entry is a result of the sweep: its task exits 0 like the others.
        assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), logs
    assert report_job["JobState"] == "COMPLETED", logs

    statuses = [json.loads((sweep / r["run_dir"] / "results.json").read_text())["status"]
                for r in runs]
    assert statuses == ["completed", "completed", "diverged"]
    assert "run diverged" in read_log(tmp_path / f"lbtkit-sweep_{array_id}_2.out")
    rows = report_rows(sweep)
    assert [r["status"] for r in rows] == ["completed", "completed", "diverged"]
    report = (sweep / "report.md").read_text()
    assert "diverged" in report
    assert re.search(r"^\|.*\| diverged \|$", report, re.MULTILINE), report
    assert f"report of {sweep}" in read_log(tmp_path / f"lbtkit-report_{report_id}.out")


# --- 4. scancel: checkpoint, but stay cancelled -------------------------------------------------


def test_a_cancelled_run_checkpoints_and_is_not_requeued(slurm, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    env = job_env(tmp_path)
    job_id = slurm.sbatch(str(JOBS / "run.sh"), "--preset", "smoke", "--model", "c1",
                          "--epochs", "6", "--batch-size", "32", "--output", str(run_dir),
                          env=env, cwd=tmp_path)
    wait_for(lambda: metrics_lines(run_dir) >= 1, timeout=120,
             what=f"the first epoch\n{slurm.logs()}")
    slurm.run("scancel", job_id, env=env)  # SIGTERM to the batch shell and the run
    slurm.wait_final(job_id, timeout=60)
    wait_for(lambda: "exited with status" in read_log(tmp_path / f"lbtkit-run_{job_id}.out"),
             timeout=30, what="the batch shell's last words")
    time.sleep(8)  # a requeued job would be back within about 7 s
    record = slurm.jobs(job_id)[0]
    assert (record["JobState"], record["Restarts"]) == ("CANCELLED", "0"), record
    text = read_log(tmp_path / f"lbtkit-run_{job_id}.out")
    assert "received SIGTERM" in text, text
    assert "not requeueing" in text, text
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "interrupted"
    assert any((run_dir / "checkpoints").iterdir())


# --- 5. container mode, with a stand-in apptainer -------------------------------------------------


def test_a_submitted_sweep_runs_in_the_container(slurm, tmp_path, monkeypatch):  # noqa: F811
    from test_jobs_static import Container

    from lbtkit.slurm import submit_sweep

    box = Container(tmp_path)
    site = tmp_path / "site"
    site.mkdir()
    sweep = tmp_path / "work" / "sweep"
    plan(sweep, {"batch_size": [32]}, epochs=1)
    env = job_env(tmp_path)
    env["PATH"] = f"{box.bin}{os.pathsep}{env['PATH']}"
    for name, value in {**env, "SLURM_CONF": str(slurm.conf), "LBT_IMAGE": str(box.image),
                        "LBT_BIND": str(site)}.items():
        monkeypatch.setenv(name, value)
    for name in [n for n in os.environ if n.startswith(("LBT_", "SBATCH_"))]:
        if name not in ("LBT_IMAGE", "LBT_BIND"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)

    array_id = submit_sweep(sweep, with_report=False)["array_job_id"]
    (record,) = slurm.wait_final(array_id, timeout=120)
    log = read_log(tmp_path / f"lbtkit-sweep_{array_id}_0.out")
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), log
    assert f"container: {box.image} via apptainer" in log, log
    # The data directory ("data", relative to the submit directory) -> tmp_path covers the
    # sweep's parent; no host interpreter path: lbtkit is the image's.
    assert box.calls() == [["exec", "--bind", f"{site},{tmp_path}", str(box.image),
                            "lbtkit", "sweep", "run-task", str(sweep), "--index", "0"]], log
    assert "run completed" in log, log
    (results,) = (sweep / "runs").glob("*/results.json")
    assert json.loads(results.read_text())["status"] == "completed"
