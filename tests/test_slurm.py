"""The job scripts on a real two-node SLURM on this machine (tests/slurm_cluster.py), not a mock.

1. ``sbatch --wait --array=0-2 jobs/sweep.sh`` completes every task; the report has every row.
   A plain ``sbatch jobs/sweep.sh`` (no --array) fails at once instead of training one entry.
2. A task signalled mid-run (as SLURM does before the time limit) checkpoints, requeues itself
   (that task only), resumes, and ends with the weights of an uninterrupted run.
3. ``lbtkit.slurm.submit.submit_sweep``: an array with a diverging entry plus the report job
   after it; the entry is recorded and reported as diverged, the others complete.
4. ``scancel`` (SIGTERM) checkpoints but does not requeue: the cancelled job stays cancelled.
5. Container mode (``LBT_IMAGE``), submitted by ``submit_sweep``: the task runs ``apptainer exec
   --bind ... IMAGE lbtkit sweep run-task ...`` (the image's lbtkit, not a pinned host path),
   with a stand-in apptainer that runs the command on the host (no Apptainer here).
6. ``jobs/multinode.sh`` on 2 nodes x 1 and x 2 processes keeps the global batch; a SIGUSR1
   requeues it and it resumes to the weights of an uninterrupted run; two 1-node multi-process
   jobs on one node at once rendezvous on their own ports.
7. A deliberately slow step (35 s, > torchrun's default 30 s grace) still checkpoints.
8. A wheel installed into a fresh venv, no checkout: ``lbtkit sweep submit`` completes.

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

from helpers import cli_env, install_wheel_venv, run_cli, scaled_timeout
from slurm_cluster import SlurmCluster, slurm  # noqa: F401  (slurm: the session fixture)

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


def wait_for(condition, *, timeout: float, what: str, poll: float = 0.2,
             diagnostics=lambda: "") -> None:
    """Wait (``scaled_timeout(timeout)``) for ``condition``; fail with ``diagnostics()``."""
    limit = scaled_timeout(timeout)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {limit:.0f} s waiting for {what}\n{diagnostics()}")


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
        wait_for(lambda: metrics_lines(run_dir) >= 1, timeout=120, what="entry 1's first epoch",
                 diagnostics=lambda: slurm.diagnostics(array_id, (log,)))
        assert task(slurm, array_id, 1)["JobState"] == "RUNNING"
        # What SLURM does at --signal=B:USR1@margin, now: SIGUSR1 to the batch shell only.
        slurm.run("scancel", "--signal=USR1", "--batch", f"{array_id}_1", env=env)
        records = slurm.wait_final(array_id, timeout=180, outputs=(log,))
        # Entry 0 finished long ago: its record may have aged out (MinJobAge); its log says
        # whether the requeue ran it again.
        (entry1,) = [r for r in records if r.get("ArrayTaskId") == "1"]
    finally:
        out, _ = uninterrupted.communicate(timeout=scaled_timeout(300))
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
    log0 = read_log(tmp_path / f"lbtkit-sweep_{array_id}_0.out")
    assert log0.count("entry 0 of 2") == 1 and "run completed" in log0, log0

    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["epochs_completed"] == 6
    assert metrics_lines(run_dir) == 6
    assert_same_weights(run_dir / "model.safetensors",
                        reference / runs[1]["run_dir"] / "model.safetensors")


# --- 3. submit_sweep: a diverging entry, the report job after the array --------------------------


def test_submitted_sweep_records_and_reports_a_diverged_entry(slurm, tmp_path, monkeypatch):  # noqa: F811
    from lbtkit.slurm.submit import submit_sweep

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
    outputs = tuple(tmp_path / f"lbtkit-sweep_{array_id}_{i}.out" for i in range(3))
    tasks = slurm.wait_final(array_id, timeout=240, outputs=outputs)
    report_job = slurm.wait_final(report_id, timeout=120,
                                  outputs=(tmp_path / f"lbtkit-report_{report_id}.out",))[0]
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
    log = tmp_path / f"lbtkit-run_{job_id}.out"
    wait_for(lambda: metrics_lines(run_dir) >= 1, timeout=120, what="the first epoch",
             diagnostics=lambda: slurm.diagnostics(job_id, (log,)))
    slurm.run("scancel", job_id, env=env)  # SIGTERM to the batch shell and the run
    slurm.wait_final(job_id, timeout=60, outputs=(log,))
    wait_for(lambda: "exited with status" in read_log(log), timeout=30,
             what="the batch shell's last words",
             diagnostics=lambda: slurm.diagnostics(job_id, (log,)))
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

    from lbtkit.slurm.submit import submit_sweep

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
    (record,) = slurm.wait_final(array_id, timeout=120,
                                 outputs=(tmp_path / f"lbtkit-sweep_{array_id}_0.out",))
    log = read_log(tmp_path / f"lbtkit-sweep_{array_id}_0.out")
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), log
    assert f"container: {box.image} via apptainer" in log, log
    # The data directory ("data", relative to the submit directory) -> tmp_path covers the
    # sweep's parent; no host interpreter path: lbtkit is the image's.
    assert box.runs() == [["exec", "--bind", f"{site},{tmp_path}", str(box.image),
                           "lbtkit", "sweep", "run-task", str(sweep), "--index", "0"]], log
    assert "run completed" in log, log
    (results,) = (sweep / "runs").glob("*/results.json")
    assert json.loads(results.read_text())["status"] == "completed"


# --- 6. multi-node for real: two slurmd "nodes" on this machine ---------------------------------


def multinode_env(tmp_path: Path, per_node: int) -> dict[str, str]:
    """CPU processes per node (gloo); torchrun and lbtkit of this venv."""
    env = job_env(tmp_path)
    env["LBT_GPUS_PER_NODE"] = str(per_node)
    env["LBT_ACCELERATE"] = f"{sys.executable} -m accelerate.commands.accelerate_cli"
    env["LBT_LBTKIT"] = f"{sys.executable} -m lbtkit"
    return env


@pytest.mark.parametrize("per_node", [1, 2])
def test_multinode_on_two_nodes_keeps_the_global_batch(slurm, tmp_path, per_node):  # noqa: F811
    run_dir = tmp_path / "run"
    job_id = slurm.sbatch("-N", "2", str(JOBS / "multinode.sh"), "--preset", "smoke",
                          "--epochs", "1", "--batch-size", "64", "--output", str(run_dir),
                          env=multinode_env(tmp_path, per_node), cwd=tmp_path)
    log = tmp_path / f"lbtkit-multinode_{job_id}.out"
    (record,) = slurm.wait_final(job_id, timeout=300, outputs=(log,))
    text = read_log(log)
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), text
    assert record["NodeList"] == "lbt[1-2]", record
    assert f"2 node(s) x {per_node} process(es), rendezvous at lbt1:" in text, text
    results = json.loads((run_dir / "results.json").read_text())
    world = 2 * per_node
    assert (results["status"], results["world_size"]) == ("completed", world)
    assert results["config"]["batch_size"] == 64
    assert results["per_device_batch_size"] * world * results["grad_accum_steps"] == 64
    assert results["steps_per_epoch"] == 1437 // 64  # the same optimizer steps as 1 process


def test_multinode_signal_requeues_and_resumes_to_identical_weights(slurm, tmp_path):  # noqa: F811
    run_dir, reference = tmp_path / "run", tmp_path / "reference"
    # One torch thread in every process of both runs: the job's (one process per node) and the
    # reference's (two on this machine) would otherwise get different thread counts from the
    # usable CPUs per local process (lbtkit.cpu), and float sums round differently.
    flags = ["--preset", "smoke", "--model", "c1", "--epochs", "4", "--batch-size", "64",
             "--threads", "1"]
    env = multinode_env(tmp_path, 1)
    job_id = slurm.sbatch("-N", "2", str(JOBS / "multinode.sh"), *flags, "--output",
                          str(run_dir), env=env, cwd=tmp_path)
    log = tmp_path / f"lbtkit-multinode_{job_id}.out"
    # The uninterrupted run: the same world size (2), on this machine, outside SLURM.
    uninterrupted = subprocess.Popen(
        [sys.executable, "-m", "lbtkit", "run", *flags, "--output", str(reference),
         "--num-processes", "2", "--no-progress"],
        env=job_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: metrics_lines(run_dir) >= 1, timeout=300, what="the first epoch",
                 diagnostics=lambda: slurm.diagnostics(job_id, (log,)))
        slurm.run("scancel", "--signal=USR1", "--batch", job_id, env=env)
        wait_for(lambda: "requeueing job" in read_log(log), timeout=180, what="the requeue",
                 diagnostics=lambda: slurm.diagnostics(job_id, (log,)))
        (record,) = slurm.wait_final(job_id, timeout=400, outputs=(log,))
    finally:
        out, _ = uninterrupted.communicate(timeout=scaled_timeout(600))
    assert uninterrupted.returncode == 0, out
    text = read_log(log)
    assert "received SIGUSR1: sending SIGTERM to job step" in text, text
    assert f"requeueing job {job_id} (restart 1)" in text, text
    assert (record["JobState"], record["Restarts"]) == ("COMPLETED", "1"), text
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["status"], results["epochs_completed"]) == ("completed", 4)
    assert_same_weights(run_dir / "model.safetensors", reference / "model.safetensors")


def test_two_multiprocess_jobs_on_one_node_use_their_own_ports(slurm, tmp_path):  # noqa: F811
    """Two 1-node x 2-process jobs at once on the same node: each rendezvous on a port derived
    from its job id (torchrun's c10d default, localhost:29400, would be shared)."""
    env = multinode_env(tmp_path, 2)
    jobs = [slurm.sbatch("-N", "1", "-w", "lbt1", str(JOBS / "multinode.sh"), "--preset",
                         "smoke", "--epochs", "1", "--output", str(tmp_path / f"run{i}"),
                         env=env, cwd=tmp_path) for i in range(2)]
    logs = tuple(tmp_path / f"lbtkit-multinode_{job}.out" for job in jobs)
    records = [slurm.wait_final(job, timeout=300, outputs=logs)[0] for job in jobs]
    texts = [read_log(log) for log in logs]
    for record, text in zip(records, texts, strict=True):
        assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), text
        assert record["NodeList"] == "lbt1"
    ports = [re.search(r"rendezvous at lbt1:(\d+)", text).group(1) for text in texts]
    assert ports[0] != ports[1]
    # They ran at the same time (both fit on lbt1: one CPU each).
    assert records[1]["StartTime"] <= records[0]["EndTime"], records
    for i in range(2):
        results = json.loads((tmp_path / f"run{i}" / "results.json").read_text())
        assert (results["status"], results["world_size"]) == ("completed", 2)


# --- 7. a slow step under a multi-process launch still checkpoints ------------------------------

# Loaded by every Python of the job (PYTHONPATH): each optimizer step first sleeps, and rank 0
# counts the steps it started in a file. No test hook in lbtkit itself.
SLOW_STEP = """
import os, time
import torch.optim.optimizer as optimizer

def _slow(opt, args, kwargs):
    if os.environ.get("RANK", "0") == "0":
        with open(os.environ["SLOW_STEP_MARKER"], "a") as handle:
            handle.write("step\\n")
    time.sleep(float(os.environ["SLOW_STEP_SECONDS"]))

optimizer.register_optimizer_step_pre_hook(_slow)
"""


def test_a_slow_step_checkpoints_within_the_grace_period(slurm, tmp_path):  # noqa: F811
    """A 35 s step, SIGTERM relayed at its start: torchrun's default grace (30 s) would
    SIGKILL the workers mid-step; the job's grace is its signal margin (120 s), and the loop
    polls after the step (time-based), so the run checkpoints and exits 75."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SLOW_STEP)
    marker = tmp_path / "steps"
    env = multinode_env(tmp_path, 2)
    env.update(PYTHONPATH=f"{hooks}{os.pathsep}{env.get('PYTHONPATH', '')}",
               SLOW_STEP_MARKER=str(marker), SLOW_STEP_SECONDS="35")
    run_dir = tmp_path / "run"
    job_id = slurm.sbatch(str(JOBS / "run.sh"), "--preset", "smoke", "--epochs", "1",
                          "--output", str(run_dir), env=env, cwd=tmp_path)
    log = tmp_path / f"lbtkit-run_{job_id}.out"
    steps = lambda: len(marker.read_text().splitlines()) if marker.exists() else 0  # noqa: E731
    wait_for(lambda: steps() >= 2, timeout=300, what="the second step",
             diagnostics=lambda: slurm.diagnostics(job_id, (log,)))
    slurm.run("scancel", "--signal=TERM", "--batch", job_id, env=env)
    (record,) = slurm.wait_final(job_id, timeout=300, outputs=(log,))
    text = read_log(log)
    assert "TORCH_ELASTIC_SHUTDOWN_TIMEOUT" not in text or "120" in text
    assert "via 9" not in text and "SIGKILL" not in text, text
    assert (record["JobState"], record["ExitCode"]) == ("FAILED", "75:0"), text
    assert "stopped by SIGTERM at step 2" in text, text
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["status"], results["global_step"]) == ("interrupted", 2)
    assert any((run_dir / "checkpoints").iterdir())
    assert steps() == 2  # no third step: the stop was seen right after the slow one


# --- 8. from a wheel, without a checkout ---------------------------------------------------------


def test_a_wheel_installed_without_a_checkout_submits_a_sweep(slurm, tmp_path):  # noqa: F811
    """pip wheel (from a copy of the tracked files), a fresh venv that sees this venv's
    packages through a .pth file (no torch reinstall), the wheel installed with --no-deps:
    `lbtkit sweep submit` runs the installed job scripts on the test SLURM to completion."""
    env = {k: v for k, v in job_env(tmp_path).items() if k != "PYTHONPATH"}
    venv = install_wheel_venv(tmp_path, env)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    work = tmp_path / "work"  # no checkout here, nor above
    work.mkdir()
    where = subprocess.run([str(venv / "bin" / "lbtkit"), "jobs", "path"], env=env, cwd=work,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(venv)), where
    assert (Path(where) / "sweep.sh").is_file() and (Path(where) / "common.sh").is_file()
    lbtkit = [str(venv / "bin" / "lbtkit")]
    subprocess.run([*lbtkit, "sweep", "plan", "--preset", "smoke", "--batch-sizes", "64",
                    "--epochs", "1", "--output", "sweep"], env=env, cwd=work, check=True,
                   capture_output=True, timeout=scaled_timeout(120))
    submitted = subprocess.run([*lbtkit, "sweep", "submit", "sweep"], cwd=work,
                               env={**env, "SLURM_CONF": str(slurm.conf)}, capture_output=True,
                               text=True, timeout=scaled_timeout(120))
    assert submitted.returncode == 0, submitted.stderr
    assert f"{where}/sweep.sh" in submitted.stdout
    array_id, report_id = re.search(r"array job (\d+); report job (\d+)",
                                    submitted.stdout).groups()
    outputs = (work / f"lbtkit-sweep_{array_id}_0.out", work / f"lbtkit-report_{report_id}.out")
    (task,) = slurm.wait_final(array_id, timeout=240, outputs=outputs)
    (report,) = slurm.wait_final(report_id, timeout=120, outputs=outputs)
    text = read_log(outputs[0])
    assert (task["JobState"], report["JobState"]) == ("COMPLETED", "COMPLETED"), text
    assert f"running: {venv}/bin/python -m lbtkit sweep run-task" in text, text
    assert [r["status"] for r in report_rows(work / "sweep")] == ["completed"]
