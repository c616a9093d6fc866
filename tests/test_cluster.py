"""lbtkit.slurm: what a SLURM job runs, decided from the environment and the files (no SLURM)."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from lbtkit.errors import UserError
from lbtkit.launch import launcher_environment
from lbtkit.slurm import container, requeue, submit
from lbtkit.slurm import plan as slurm_plan
from lbtkit.slurm.env import SlurmEnv, gpus_per_node
from lbtkit.slurm.plan import plan_job, rendezvous_port

LAUNCH = ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]


def sweep_plan(folder: Path, batch_sizes=(32, 64), **overrides) -> Path:
    from lbtkit.config import build_config
    from lbtkit.sweep import plan_sweep

    config = build_config(preset="smoke", overrides={"epochs": 1, **overrides}, resolve=False)
    plan_sweep(config, {"batch_size": list(batch_sizes)}, folder)
    return folder


def test_slurm_env_is_typed_and_names_the_array_task():
    env = SlurmEnv.from_environ({
        "SLURM_JOB_ID": "1002", "SLURM_ARRAY_JOB_ID": "1000", "SLURM_ARRAY_TASK_ID": "2",
        "SLURM_RESTART_COUNT": "1", "SLURM_NNODES": "2", "SLURM_NODEID": "1",
        "SLURM_CPUS_PER_TASK": "8", "SLURM_JOB_NODELIST": "n[1-2]"})
    assert (env.array_task_id, env.restart_count, env.num_nodes, env.node_id) == (2, 1, 2, 1)
    assert env.requeue_id == "1000_2"  # never the bare job id of an array task
    assert SlurmEnv.from_environ({"SLURM_JOB_ID": "7"}).requeue_id == "7"
    assert SlurmEnv.from_environ({}).requeue_id is None
    with pytest.raises(UserError, match="SLURM_NNODES must be a number"):
        SlurmEnv.from_environ({"SLURM_NNODES": "two"})


@pytest.mark.parametrize(("env", "expected"), [
    ({"LBT_GPUS_PER_NODE": "3", "CUDA_VISIBLE_DEVICES": "0"}, 3),
    ({"CUDA_VISIBLE_DEVICES": "0,1,3", "SLURM_GPUS_ON_NODE": "8"}, 3),
    ({"CUDA_VISIBLE_DEVICES": ""}, 0),
    ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, 0),
    ({"SLURM_GPUS_ON_NODE": "4"}, 4),
    ({}, 5),  # from nvidia-smi
])
def test_gpu_count(env, expected):
    assert gpus_per_node(env, nvidia_smi=lambda: 5) == expected


def test_a_bad_gpu_count_is_refused():
    with pytest.raises(UserError, match="LBT_GPUS_PER_NODE must be a number, got 'four'"):
        gpus_per_node({"LBT_GPUS_PER_NODE": "four"})


def test_rendezvous_ports_follow_the_job_id_below_the_ephemeral_range():
    ports = {job: rendezvous_port(job, first_ephemeral=32768, is_free=lambda p: True)
             for job in range(1000, 1200)}
    assert len(set(ports.values())) == len(ports)  # neighbouring jobs never collide
    assert all(20000 <= p < 32768 for p in ports.values())
    assert rendezvous_port(1000, first_ephemeral=32768, is_free=lambda p: True) == ports[1000]


def test_a_busy_port_is_skipped_and_the_choice_is_still_deterministic():
    first = rendezvous_port(4242, first_ephemeral=32768, is_free=lambda p: True)
    busy = {first}
    second = rendezvous_port(4242, first_ephemeral=32768, is_free=lambda p: p not in busy)
    assert second != first
    assert second == rendezvous_port(4242, first_ephemeral=32768,
                                     is_free=lambda p: p not in busy)
    with pytest.raises(UserError, match="no free rendezvous port"):
        rendezvous_port(4242, first_ephemeral=32768, is_free=lambda p: False)


def test_the_real_port_is_free_and_below_the_kernels_range():
    port = rendezvous_port("123457")
    assert 20000 <= port < slurm_plan.ephemeral_start()
    assert slurm_plan.port_is_free(port)


def test_the_grace_period_follows_the_signal_margin():
    assert launcher_environment({}) == {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "120"}
    assert launcher_environment({"LBT_SIGNAL_MARGIN": "300"}) == {
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "300"}
    with pytest.raises(UserError, match="LBT_SIGNAL_MARGIN"):
        launcher_environment({"LBT_SIGNAL_MARGIN": "soon"})


def test_flags_of_the_run_command():
    args = ["--preset", "p", "--data-dir", "/d", "--output", "o", "--config=c.toml",
            "--init-weights", "w/init.safetensors"]
    assert slurm_plan.flag_value("--output", args) == "o"
    assert slurm_plan.flag_value("--config", args) == "c.toml"
    assert slurm_plan.flag_value("--epochs", args) is None
    assert slurm_plan.run_paths(args) == ["/d", "c.toml", "w/init.safetensors"]


def test_bind_directories(tmp_path):
    """The parent (a run directory need not exist yet), else the nearest existing ancestor;
    a directory right under / itself; relative paths from the working directory."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    cases = {f"{tmp_path}/a/b": f"{tmp_path}/a", f"{tmp_path}/a/new/deeper/run": f"{tmp_path}/a",
             "runs/b32": str(tmp_path), "./a/../a/b/": f"{tmp_path}/a", "/tmp": "/tmp",
             "/no-such-dir": None}
    assert {path: container.bind_dir(path, tmp_path) for path in cases} == cases


def test_container_binds_leave_out_covered_paths_and_refuse_separators(tmp_path):
    (tmp_path / "runs").mkdir()
    binds = container.container_binds(
        [tmp_path / "runs" / "b64", tmp_path / "runs" / "b64" / "x", "/usr/lib/x"],
        f"{tmp_path}/runs,/usr:/host-usr:ro", tmp_path)
    assert binds == [f"{tmp_path}/runs", "/usr:/host-usr:ro", "/usr/lib"]
    with pytest.raises(UserError, match="LBT_BIND: /no/such does not exist"):
        container.container_binds([], "/no/such", tmp_path)
    (tmp_path / "a,b").mkdir()
    with pytest.raises(UserError, match="cannot contain"):
        container.container_binds([tmp_path / "a,b" / "run"], "", tmp_path)


def job_env(**more: str) -> dict[str, str]:
    return {"HOME": "/nonexistent", "PATH": os.environ["PATH"], **more}


def test_a_sweep_task_on_one_cpu(tmp_path):
    sweep = sweep_plan(tmp_path / "sweep")
    plan = plan_job("sweep", [str(sweep)], job_env(
        SLURM_JOB_ID="8", SLURM_ARRAY_JOB_ID="7", SLURM_ARRAY_TASK_ID="1",
        CUDA_VISIBLE_DEVICES="", LBT_LBTKIT="/venv/bin/python -m lbtkit"), tmp_path)
    assert plan.command == ["/venv/bin/python", "-m", "lbtkit", "sweep", "run-task", str(sweep),
                            "--index", "1"]
    assert plan.run_dir == f"{sweep}/runs/b64-s0"
    assert plan.finish == ["/venv/bin/python", "-m", "lbtkit", "job", "finish"]
    assert plan.relay == "pid"
    assert plan.env == {}
    assert f"sweep {sweep} entry 1 of 2 -> {sweep}/runs/b64-s0" in plan.notes


def test_a_sweep_task_on_four_gpus_launches_accelerate_with_its_own_port(tmp_path):
    sweep = sweep_plan(tmp_path / "sweep")
    plan = plan_job("sweep", [str(sweep)], job_env(
        SLURM_JOB_ID="77", SLURM_ARRAY_TASK_ID="0", CUDA_VISIBLE_DEVICES="0,1,2,3",
        LBT_ACCELERATE="/venv/bin/accelerate", LBT_PORT="29999", LBT_SIGNAL_MARGIN="240"),
        tmp_path)
    assert plan.command == ["/venv/bin/accelerate", "launch", *LAUNCH, "--num_processes", "4",
                            "--num_machines", "1", "--main_process_port", "29999", "-m",
                            "lbtkit", "sweep", "run-task", str(sweep), "--index", "0"]
    assert plan.env == {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "240"}
    assert any("the plan was checked for 1 process(es), this task runs 4" in n
               for n in plan.notes)


@pytest.mark.parametrize(("env", "message"), [
    ({}, "SLURM_ARRAY_TASK_ID is not set"),
    ({"SLURM_ARRAY_TASK_ID": "2"}, "array index 2 is out of range"),
])
def test_a_sweep_task_outside_its_array_is_refused(tmp_path, env, message):
    sweep = sweep_plan(tmp_path / "sweep")
    with pytest.raises(UserError, match=message):
        plan_job("sweep", [str(sweep)], job_env(**env), tmp_path)
    with pytest.raises(UserError, match="no sweep plan at"):
        plan_job("sweep", [str(tmp_path)], job_env(SLURM_ARRAY_TASK_ID="0"), tmp_path)


def test_ignoring_the_accelerate_default_config(tmp_path):
    plan = plan_job("run", ["--output", "r"], job_env(
        LBT_GPUS_PER_NODE="2", LBT_IGNORE_ACCELERATE_CONFIG="1", TMPDIR=str(tmp_path)), tmp_path)
    config = Path(plan.command[plan.command.index("--config_file") + 1])
    assert "distributed_type: MULTI_GPU" in config.read_text()
    assert plan.temp_files == [str(config)]


def test_an_srun_prefix_relays_to_job_steps_and_multinode_refuses_it(tmp_path):
    env = job_env(LBT_EXEC="srun --ntasks=1 --container-image=x", SLURM_JOB_ID="1",
                  CUDA_VISIBLE_DEVICES="")
    plan = plan_job("run", ["--output", "r"], env, tmp_path)
    assert plan.relay == "steps"
    assert plan.command[:3] == ["srun", "--ntasks=1", "--container-image=x"]
    assert plan_job("run", ["--output", "r"], {**env, "LBT_EXEC": "taskset -c 0"},
                    tmp_path).relay == "pid"
    with pytest.raises(UserError, match="LBT_EXEC starts with srun"):
        plan_job("multinode", ["--output", "r"], env, tmp_path)


def multinode(tmp_path, nodes: str, **env):
    environ = job_env(SLURM_JOB_ID="5000", SLURM_NNODES=nodes, SLURM_JOB_NODELIST="node[1-2]",
                      LBT_PORT="25000", **env)
    return slurm_plan._plan_multinode(["--preset", "smoke", "--output", "r"], environ, tmp_path,
                                   hosts=lambda nodelist: ["node1", "node2"])


def test_multinode_runs_one_launch_per_node_with_its_rank_expanded_there(tmp_path):
    plan = multinode(tmp_path, "2", LBT_GPUS_PER_NODE="4", SLURM_CPUS_PER_TASK="16")
    assert plan.relay == "steps"
    launch = ["accelerate", "launch", *LAUNCH, "--num_machines", "2", "--num_processes", "8",
              "--main_process_ip", "node1", "--main_process_port", "25000",
              "--same_network"]
    assert plan.command == [
        "srun", "--kill-on-bad-exit=1", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
        "--cpus-per-task=16", "bash", "-c", slurm_plan.NODE_SCRIPT, "lbtkit-node", *launch, "--",
        "-m", "lbtkit", "run", "--preset", "smoke", "--output", "r"]
    # What each node's bash makes of it: the rank of that node, after the launch options.
    script = ["bash", "-c", slurm_plan.NODE_SCRIPT.replace("exec ", "printf '%s\\n' "), "node",
              *launch, "--", "-m", "lbtkit", "run"]
    out = subprocess.run(script, env={**os.environ, "SLURM_NODEID": "1"}, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out == [*launch, "--machine_rank", "1", "-m", "lbtkit", "run"]


def test_multinode_on_one_node_uses_a_static_rendezvous_on_its_own_port(tmp_path):
    """accelerate sets no c10d endpoint for one machine: torchrun would use localhost:29400,
    the same for every job on the node."""
    plan = multinode(tmp_path, "1", CUDA_VISIBLE_DEVICES="")
    assert "--rdzv_backend" not in plan.command
    assert plan.command[plan.command.index("--main_process_port") + 1] == "25000"
    assert plan.env == {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "120"}


def test_the_report_job(tmp_path):
    sweep = sweep_plan(tmp_path / "sweep")
    plan = plan_job("report", [str(sweep), "--output", "out"], job_env(LBT_LBTKIT="lbt"),
                    tmp_path)
    assert plan.command == ["lbt"]
    with pytest.raises(UserError, match="no sweep plan"):
        plan_job("report", [str(tmp_path)], job_env(), tmp_path)


def test_container_prefix(tmp_path):
    image = tmp_path / "lbtkit.sif"
    image.write_text("")
    site = tmp_path / "site"
    site.mkdir()
    (tmp_path / "torch").mkdir()
    sweep = sweep_plan(tmp_path / "work" / "sweep")
    plan = plan_job("sweep", [str(sweep)], job_env(
        LBT_IMAGE=str(image), LBT_RUNTIME="singularity", LBT_BIND=str(site),
        LBT_TORCH_HOME=str(tmp_path / "torch"), LBT_APPTAINER_ARGS="--nvccli --writable-tmpfs",
        SLURM_ARRAY_TASK_ID="0", CUDA_VISIBLE_DEVICES="0"), tmp_path)
    # The data directory ("data", relative to the submit directory) -> tmp_path, which
    # covers the sweep's parent; lbtkit is the image's (no host path).
    prefix = ["singularity", "exec", "--nv", "--bind", f"{site},{tmp_path}",
              "--env", f"TORCH_HOME={tmp_path / 'torch'}", "--nvccli", "--writable-tmpfs",
              str(image)]
    assert plan.command == [*prefix, "lbtkit", "sweep", "run-task", str(sweep), "--index", "0"]
    assert plan.finish == [*prefix, "lbtkit", "job", "finish"]
    with pytest.raises(UserError, match="LBT_IMAGE and LBT_EXEC are both set"):
        plan_job("run", ["--output", "r"], job_env(LBT_IMAGE=str(image), LBT_EXEC="srun"),
                 tmp_path)


def test_the_plan_evaluates_in_bash(tmp_path):
    job = slurm_plan.JobPlan(["a b", "it's", "$HOME"], "r d", ["lbtkit", "job", "finish"],
                       env={"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "9"})
    script = job.to_shell() + ('printf "%s\\n" "${LBT_CMD[@]}" "$LBT_RUN_DIR" '
                               '"$TORCH_ELASTIC_SHUTDOWN_TIMEOUT"')
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True).stdout
    assert out.splitlines() == ["a b", "it's", "$HOME", "r d", "9"]


# --- the outcome ---------------------------------------------------------------------------------

ARRAY_TASK = SlurmEnv(job_id="12", array_job_id="10", array_task_id=2)


@pytest.mark.parametrize(("status", "code", "signals", "slurm", "expected"), [
    ("interrupted", 75, ["USR1"], ARRAY_TASK, ("requeue", "10_2")),
    ("interrupted", 1, ["USR1"], ARRAY_TASK, ("requeue", "10_2")),  # a launcher's exit 1
    (None, 75, ["USR1"], ARRAY_TASK, ("requeue", "10_2")),
    ("interrupted", 75, ["TERM"], ARRAY_TASK, ("exit", "75")),  # scancel: stay cancelled
    ("interrupted", 75, ["USR1"], SlurmEnv(), ("exit", "75")),  # not under SLURM
    ("completed", 1, [], ARRAY_TASK, ("exit", "0")),
    ("diverged", 3, [], ARRAY_TASK, ("exit", "5")),
    (None, 3, [], ARRAY_TASK, ("exit", "5")),
    (None, 7, [], ARRAY_TASK, ("exit", "7")),
])
def test_outcome(status, code, signals, slurm, expected):
    action, value, notes = requeue.outcome(status=status, exit_status=code, signals=signals,
                                           diverged_exit=5, slurm=slurm, run_dir="r")
    assert (action, value) == expected, notes


def test_only_a_fresh_results_file_counts(tmp_path):
    (tmp_path / "results.json").write_text('{"status": "completed"}')
    assert requeue.fresh_status(tmp_path, time.time() - 60) == "completed"
    assert requeue.fresh_status(tmp_path, time.time() + 60) is None
    (tmp_path / "results.json").write_text('{"status": ')  # torn: no status, no crash
    assert requeue.fresh_status(tmp_path, 0) is None


def test_job_commands_of_the_cli(tmp_path, cli):
    sweep = sweep_plan(tmp_path / "sweep")
    result = cli("job", "plan", "sweep", "--", str(sweep))
    assert result.returncode == 2
    assert "SLURM_ARRAY_TASK_ID is not set" in result.stderr
    run_dir = sweep / "runs" / "b32-s0"
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text('{"status": "diverged"}')
    result = cli("job", "finish", "--exit-status", "3", "--since", "0", "sweep", "--", str(sweep))
    assert result.stdout.split() == ["exit", "0"], result.stderr
    assert "run diverged" in result.stderr
    path = cli("jobs", "path").stdout.strip()
    assert Path(path) == Path(submit.__file__).parent / "jobs"
    copied = cli("jobs", "copy", str(tmp_path / "mine")).stdout.split()
    assert sorted(Path(p).name for p in copied) == sorted(
        ["common.sh", "sweep.sh", "run.sh", "multinode.sh", "report.sh"])
    assert shlex.split((tmp_path / "mine" / "sweep.sh").read_text().splitlines()[0]) == [
        "#!/bin/bash"]
