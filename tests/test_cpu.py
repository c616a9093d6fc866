"""lbtkit.cpu: usable CPUs (affinity, cgroup quota, SLURM), the thread count and whether it
follows the load, the user's variables recorded for launched workers, and doctor's warnings."""

from __future__ import annotations

import torch

from lbtkit import cpu
from lbtkit.cpu import (
    USER_THREADS_VAR,
    UsableCpus,
    cgroup_cpu_quota,
    cpu_policy,
    record_user_threads,
    set_cpu_threads,
    usable_cpus,
    wait_policy,
)
from lbtkit.doctor import cpu_check

WORKER = {"LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- cgroup quota ----------------------------------------------------------------------------


def test_cgroup_v2_quota_is_the_tightest_of_the_cgroup_and_its_parents(tmp_path):
    root = tmp_path / "cgroup"
    proc = write(tmp_path / "proc_cgroup", "0::/job/step\n")
    write(root / "job" / "cpu.max", "150000 100000\n")  # 1.5 CPUs for the job
    write(root / "job" / "step" / "cpu.max", "max 100000\n")  # the step: no limit of its own
    write(root / "cpu.max", "400000 100000\n")
    assert cgroup_cpu_quota(root, proc) == 1.5


def test_cgroup_v2_without_a_limit_has_no_quota(tmp_path):
    root = tmp_path / "cgroup"
    proc = write(tmp_path / "proc_cgroup", "0::/user.slice\n")
    write(root / "user.slice" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(root, proc) is None


def test_cgroup_v1_quota_falls_back_to_the_mount_root_in_a_container(tmp_path):
    # Inside a container /proc/self/cgroup names the host's path, which its mount does not hold.
    root = tmp_path / "cgroup"
    proc = write(tmp_path / "proc_cgroup",
                 "5:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "300000\n")
    write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(root, proc) == 3.0
    write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_quota(root, proc) is None


def test_no_cgroup_file_system_means_no_quota(tmp_path):
    assert cgroup_cpu_quota(tmp_path / "none", tmp_path / "no_proc_cgroup") is None
    proc = write(tmp_path / "proc_cgroup", "0::/\n")
    write(tmp_path / "cgroup" / "cpu.max", "garbage\n")
    assert cgroup_cpu_quota(tmp_path / "cgroup", proc) is None


# --- usable CPUs and threads -----------------------------------------------------------------


def test_usable_cpus_are_the_tightest_limit_and_say_which():
    assert usable_cpus({}, affinity=8, quota=None, read_cgroup=False) == UsableCpus(8, "affinity")
    # A fractional quota rounds down (threads beyond it get throttled), but never below 1.
    assert usable_cpus({}, affinity=8, quota=2.5) == UsableCpus(2, "cgroup quota")
    assert usable_cpus({}, affinity=8, quota=0.5) == UsableCpus(1, "cgroup quota")
    assert usable_cpus({"SLURM_CPUS_PER_TASK": "3"}, affinity=8, quota=4.0) \
        == UsableCpus(3, "SLURM_CPUS_PER_TASK")
    assert usable_cpus({"SLURM_CPUS_PER_TASK": "16"}, affinity=4, read_cgroup=False) \
        == UsableCpus(4, "affinity")
    assert usable_cpus({"SLURM_CPUS_PER_TASK": "junk"}, affinity=4, read_cgroup=False).count == 4


def policy(threads=None, environ=None, usable=8, torch_threads=64):
    return cpu_policy(threads, environ or {}, usable=UsableCpus(usable, "affinity"),
                      torch_threads=torch_threads)


def test_threads_come_from_the_setting_then_omp_num_threads_then_usable_cpus():
    assert (policy(3).threads, policy(3).threads_from) == (3, "threads setting")
    chosen = policy(None, {"OMP_NUM_THREADS": "5"})
    assert (chosen.threads, chosen.threads_from) == (5, "OMP_NUM_THREADS")
    assert policy(3, {"OMP_NUM_THREADS": "5"}).threads == 3
    derived = policy(None, {})
    assert (derived.threads, derived.usable_cpus, derived.local_processes) == (8, 8, 1)
    assert derived.threads_from.startswith("usable CPUs")


def test_launched_workers_share_the_usable_cpus_and_ignore_the_launchers_omp_num_threads():
    # accelerate launch sets OMP_NUM_THREADS=1 in every worker: not the user's choice.
    worker = policy(None, {**WORKER, "OMP_NUM_THREADS": "1"}, usable=8, torch_threads=1)
    assert (worker.threads, worker.local_processes) == (4, 2)
    assert policy(None, {**WORKER, "LOCAL_WORLD_SIZE": "3"}, usable=2).threads == 1
    # The value the user gave the lbtkit command, recorded before it launched the workers.
    asked = policy(None, {**WORKER, "OMP_NUM_THREADS": "1", USER_THREADS_VAR: "3"})
    assert (asked.threads, asked.threads_from) == (3, "OMP_NUM_THREADS")


def test_a_program_that_lowered_torchs_threads_keeps_them():
    kept = policy(None, {}, usable=8, torch_threads=1)
    assert kept.threads == 1 and "set_num_threads" in kept.threads_from
    assert kept.adaptive is False


def test_only_a_count_lbtkit_chose_follows_the_load():
    assert policy(None, {}).adaptive is True
    assert policy(None, {**WORKER, "OMP_NUM_THREADS": "1"}, torch_threads=1).adaptive is True
    assert policy(3).adaptive is False
    assert policy(None, {"OMP_NUM_THREADS": "5"}).adaptive is False


def test_set_cpu_threads_sets_torch():
    before = torch.get_num_threads()
    try:
        assert set_cpu_threads(1, {}).threads == 1 == torch.get_num_threads()
        usable = cpu.usable_cpus({}).count
        assert set_cpu_threads(None, WORKER).threads == max(1, usable // 2) \
            == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


# --- the wait policy -------------------------------------------------------------------------


def test_the_users_own_wait_setting_is_reported_and_none_means_openmps_default():
    assert wait_policy({"OMP_WAIT_POLICY": "PASSIVE", "OTHER": "x"}) \
        == ({"OMP_WAIT_POLICY": "PASSIVE"}, "environment")
    assert wait_policy({}) == ({}, "OpenMP default (spins)")


def test_the_users_omp_num_threads_is_recorded_for_launched_workers_only_by_the_top_process():
    env = {"OMP_NUM_THREADS": "3"}
    assert record_user_threads(env) is True
    assert env[USER_THREADS_VAR] == "3" and env["OMP_NUM_THREADS"] == "3"
    assert record_user_threads(env) is False  # a nested lbtkit keeps the first record
    worker = {**WORKER, "OMP_NUM_THREADS": "1"}  # the launcher's, not the user's
    assert record_user_threads(worker) is False and USER_THREADS_VAR not in worker
    assert record_user_threads({}) is False


# --- doctor ----------------------------------------------------------------------------------


def check(threads=None, environ=None, load=0.5, online=2, usable=2):
    return cpu_check(threads=threads, environ=environ or {}, load=load, online_cpus=online,
                     usable=UsableCpus(usable, "affinity"))


def test_doctor_is_content_with_threads_that_fit_on_a_quiet_machine():
    result = check(threads=2)
    assert result.status == "ok" and "2 thread(s) x 1 process(es) on 2 usable CPU(s)" \
        in result.detail


def test_doctor_warns_when_threads_times_processes_exceed_the_usable_cpus():
    result = check(threads=4)
    assert result.status == "warn" and result.detail.startswith("oversubscribed")
    assert "at most 2 thread(s)" in result.fix
    worker = check(threads=2, environ=WORKER)  # 2 threads x 2 processes on 2 CPUs
    assert worker.status == "warn" and "at most 1 thread(s)" in worker.fix


def test_doctor_warns_when_the_load_average_exceeds_the_machines_cpus():
    result = check(threads=1, load=6.5)
    assert result.status == "warn" and result.detail.startswith("busy machine")
    assert "load average 6.5 on 2 CPU(s)" in result.detail
    assert check(threads=1, load=6.5, online=64).status == "ok"
    assert "follows their load" in check(environ=WORKER, load=6.5, usable=4).fix
    pinned = check(threads=2, load=6.5)
    assert "threads pinned by the threads setting" in pinned.fix and "pin 1" in pinned.fix
