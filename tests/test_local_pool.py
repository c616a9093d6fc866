"""The local process pool (lbtkit.local_pool): sharing CPUs and GPUs out, running commands N at
once, stopping them together. The children here are shell commands (milliseconds); the sweep on
top of the pool is tested in test_sweep_jobs.py."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import lbtkit
from lbtkit.local_pool import (
    Task,
    gpu_slots,
    lbtkit_task,
    run_tasks,
    threads_per_job,
    visible_gpus,
)

from helpers import alive, scaled_timeout

# --- sharing the machine out ---------------------------------------------------------------------


@pytest.mark.parametrize(("cpus", "jobs", "threads"), [
    (2, 1, 2), (2, 2, 1), (8, 3, 2), (2, 4, 1), (64, 4, 16),
])
def test_each_job_gets_its_share_of_the_cpus(cpus, jobs, threads):
    assert threads_per_job(cpus, jobs) == threads


@pytest.mark.parametrize(("gpus", "jobs", "world_size", "slots"), [
    (["0", "1", "2", "3"], 4, 1, ["0", "1", "2", "3"]),  # four single-GPU entries at once
    (["0", "1", "2", "3"], 2, 1, ["0", "1"]),
    (["0", "1", "2", "3"], 8, 1, ["0", "1", "2", "3"]),  # no more at once than GPUs
    (["0", "1", "2", "3"], 4, 2, ["0,1", "2,3"]),  # two 2-process entries, their own pairs
    (["0", "1", "2"], 4, 2, ["0,1"]),  # the third GPU cannot hold a 2-process entry
    (["0", "1", "2", "3"], 1, 4, ["0,1,2,3"]),
    (["3", "5"], 2, 1, ["3", "5"]),  # the ids this process was given, not 0..N-1
    (["0", "1"], 2, 4, None),  # an entry needs more GPUs than there are
    ([], 2, 1, None),  # the CPU: no GPUs to give out
])
def test_gpu_slots_give_each_entry_gpus_of_its_own(gpus, jobs, world_size, slots):
    assert gpu_slots(gpus, jobs, world_size) == slots


def test_visible_gpus_keep_the_parents_ids():
    assert visible_gpus(0, {}) == []
    assert visible_gpus(2, {}) == ["0", "1"]
    assert visible_gpus(2, {"CUDA_VISIBLE_DEVICES": "4, 6"}) == ["4", "6"]
    assert visible_gpus(2, {"CUDA_VISIBLE_DEVICES": ""}) == ["0", "1"]


# --- running ---------------------------------------------------------------------------------


def sh(script: str, log: Path, key, **env: str) -> Task:
    return Task(key=key, command=["sh", "-c", script], log=log, env=env)


def test_tasks_run_at_once_in_their_slots_and_log(tmp_path):
    # Each waits for the other's marker: this finishes only if both run at the same time.
    def waits_for(me: str, other: str) -> str:
        return (f"echo $SLOT > {tmp_path}/{me}; "
                f"while [ ! -e {tmp_path}/{other} ]; do sleep 0.01; done; echo done-$WHO; "
                f"exit {3 if me == 'b' else 0}")

    tasks = [sh(waits_for("a", "b"), tmp_path / "a.log", "a", WHO="a"),
             sh(waits_for("b", "a"), tmp_path / "b.log", "b", WHO="b"),
             sh("echo $SLOT", tmp_path / "c.log", "c")]
    started, finished = [], []
    result = run_tasks(tasks, [{"SLOT": "x"}, {"SLOT": "y"}],
                       on_start=lambda task, pid: started.append(task.key),
                       on_finish=lambda task, code: finished.append((task.key, code)))
    assert result.returncodes == {"a": 0, "b": 3, "c": 0}
    assert result.stopped_by is None
    assert started == ["a", "b", "c"]
    assert sorted(finished) == [("a", 0), ("b", 3), ("c", 0)]
    assert {(tmp_path / "a").read_text(), (tmp_path / "b").read_text()} == {"x\n", "y\n"}
    log = (tmp_path / "a.log").read_text().splitlines()
    assert log[0].startswith("--- ") and log[0].endswith(tasks[0].command[-1])
    assert log[1:] == ["done-a"]  # stdout, after the header


def test_an_interrupted_task_stops_the_others_and_no_more_start(tmp_path):
    pid_file = tmp_path / "sleeper.pid"
    tasks = [sh(f"echo $$ > {pid_file}; exec sleep 600", tmp_path / "s.log", "sleeper"),
             sh(f"while [ ! -s {pid_file} ]; do sleep 0.01; done; exit 75",
                tmp_path / "i.log", "interrupted"),
             sh("exit 0", tmp_path / "never.log", "never")]
    result = run_tasks(tasks, [{}, {}], on_finish=lambda task, code: code == 75)
    assert result.returncodes == {"interrupted": 75, "sleeper": -signal.SIGTERM}
    assert result.stopped_by == "a task was interrupted"
    assert not (tmp_path / "never.log").exists()


def test_lbtkit_tasks_share_their_slots_worker_until_one_fails(tmp_path):
    """One process per slot runs its tasks one after another, each task's output in its own
    log; a task that did not exit 0 ends that worker, and the next task gets a fresh one."""
    no_plan = tmp_path / "nowhere"
    tasks = [lbtkit_task("a", ["--version"], tmp_path / "a.log"),
             lbtkit_task("b", ["--version"], tmp_path / "b.log"),
             lbtkit_task("mistake", ["sweep", "status", no_plan], tmp_path / "mistake.log"),
             lbtkit_task("c", ["--version"], tmp_path / "c.log")]
    pids = {}
    result = run_tasks(tasks, [{}], on_start=lambda task, pid: pids.setdefault(task.key, pid))
    assert result.returncodes == {"a": 0, "b": 0, "mistake": 2, "c": 0}
    assert pids["a"] == pids["b"] == pids["mistake"] != pids["c"]
    for key in "abc":
        log = (tmp_path / f"{key}.log").read_text().splitlines()
        assert log[0].startswith("--- ") and log[0].endswith("--version")
        assert log[1:] == [f"lbtkit {lbtkit.__version__}"]
    mistake = (tmp_path / "mistake.log").read_text().splitlines()
    assert mistake[1:] == [f"error: no sweep plan at {no_plan / 'sweep.json'} "
                           "(make one with: lbtkit sweep plan)"]
    assert not any(alive(pid) for pid in pids.values())  # every worker ended with the pool


def test_a_tasks_env_does_not_leak_into_the_next_task_of_its_worker(tmp_path, monkeypatch):
    """The worker starts with the slot's environment; a task's env holds for that task only."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    doctor = ["doctor", "--output", tmp_path / "run"]  # a writable output dir: it exits 0
    tasks = [lbtkit_task("passive", doctor, tmp_path / "passive.log",
                         env={"OMP_WAIT_POLICY": "PASSIVE"}),
             lbtkit_task("plain", doctor, tmp_path / "plain.log")]
    pids = {}
    result = run_tasks(tasks, [{}], on_start=lambda task, pid: pids.setdefault(task.key, pid))
    assert result.returncodes == {"passive": 0, "plain": 0}
    assert pids["passive"] == pids["plain"]  # the same worker ran both
    assert "OMP_WAIT_POLICY=PASSIVE" in (tmp_path / "passive.log").read_text()
    assert "OMP_WAIT_POLICY" not in (tmp_path / "plain.log").read_text()


def test_a_task_waits_for_the_tasks_it_needs_and_is_dropped_when_one_fails(tmp_path):
    tasks = [sh(f"while [ ! -e {tmp_path}/go ]; do sleep 0.01; done", tmp_path / "a.log", "a"),
             Task(key="needs a", command=["true"], log=tmp_path / "na.log", after=("a",)),
             sh(f"touch {tmp_path}/go; exit 1", tmp_path / "fails.log", "fails"),
             Task(key="needs fails", command=["true"], log=tmp_path / "nf.log",
                  after=("fails",)),
             Task(key="needs that", command=["true"], log=tmp_path / "nn.log",
                  after=("needs fails",))]
    started = []
    result = run_tasks(tasks, [{}, {}], on_start=lambda task, pid: started.append(task.key))
    assert started == ["a", "fails", "needs a"]  # "needs a" waited: a slot was free before
    assert result.returncodes == {"fails": 1, "a": 0, "needs a": 0}
    with pytest.raises(ValueError, match="'b'"):
        run_tasks([Task(key="x", command=["true"], log=tmp_path / "x.log", after=("b",))],
                  [{}])


PARENT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from lbtkit.local_pool import Task, run_tasks
    folder = Path(sys.argv[1])
    tasks = [Task(key=i, command=["sh", "-c", f"echo $$ > {folder}/{i}.pid; exec sleep 600"],
                  log=folder / f"{i}.log") for i in range(2)]
    run_tasks(tasks, [{}, {}])
""")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_or_killed_parent_leaves_no_child_running(tmp_path, signum):
    """SIGTERM is relayed; SIGKILL cannot be, and the children get the parent-death signal."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)],
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    pid_files = [tmp_path / f"{i}.pid" for i in range(2)]
    try:
        deadline = time.monotonic() + scaled_timeout(60)
        while not all(path.exists() and path.read_text().strip() for path in pid_files):
            assert parent.poll() is None, f"the parent exited {parent.returncode}"
            assert time.monotonic() < deadline, "the children never started"
            time.sleep(0.01)
        children = [int(path.read_text()) for path in pid_files]
        parent.send_signal(signum)
        parent.wait(timeout=scaled_timeout(30))
        deadline = time.monotonic() + scaled_timeout(30)
        while [pid for pid in children if alive(pid)]:
            assert time.monotonic() < deadline, f"children still running: {children}"
            time.sleep(0.01)
    finally:
        if parent.poll() is None:
            parent.kill()
        for path in pid_files:  # never leave a sleeper behind, whatever failed
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(path.read_text()), signal.SIGKILL)
    assert parent.returncode == (0 if signum == signal.SIGTERM else -signal.SIGKILL)
