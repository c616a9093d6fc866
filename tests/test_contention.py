"""lbtkit.contention: others' CPU load from /proc/stat, the threads it leaves, and the governor
that follows it during a run (results.json records every change)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from lbtkit import contention
from lbtkit.config import RunConfig
from lbtkit.contention import (
    MAX_RECORDED_CHANGES,
    CpuSample,
    ThreadGovernor,
    others_busy,
    read_sample,
    threads_for,
)

STAT = """cpu  900 0 300 5000 10 0 0 0 0 0
cpu0 100 5 50 2000 7 1 2 3 0 0
cpu1 400 0 100 3000 3 0 0 0 0 0
cpu2 1000 0 0 0 0 0 0 0 0 0
intr 12345
"""


def test_a_sample_adds_the_busy_ticks_of_the_given_cpus_only(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(STAT)
    # cpu0: user 100 + nice 5 + system 50 + irq 1 + softirq 2 + steal 3 (idle, iowait are not)
    assert read_sample([0], stat).busy_ticks == 161
    assert read_sample([0, 1], stat).busy_ticks == 161 + 500
    assert read_sample([7], stat).busy_ticks == 0
    assert read_sample([0], tmp_path / "missing") is None


def test_others_busy_is_the_cpu_time_not_ours_per_wall_second():
    before = CpuSample(busy_ticks=1000, own_seconds=10.0, wall=100.0)
    after = CpuSample(busy_ticks=1000 + 300, own_seconds=11.0, wall=102.0)  # 3 s busy, 1 ours
    assert others_busy(before, after, ticks_per_second=100) == pytest.approx(1.0)
    assert others_busy(before, CpuSample(1100, 12.0, 102.0), 100) == 0.0  # never below 0
    assert others_busy(before, CpuSample(2000, 10.0, 100.0), 100) == 0.0  # no time passed


@pytest.mark.parametrize(("others", "usable", "cap", "threads"), [
    (0.0, 2, 2, 2), (0.3, 2, 2, 2), (0.35, 2, 2, 1), (1.0, 2, 2, 1), (1.9, 2, 2, 1),
    (5.0, 2, 2, 1), (1.0, 8, 4, 4), (4.5, 8, 4, 3), (1.3, 4, 4, 3), (1.31, 4, 4, 2),
])
def test_threads_leave_the_cpus_others_keep_busy(others, usable, cap, threads):
    assert threads_for(others, usable=usable, cap=cap) == threads


class FakeMachine:
    """Busy ticks and a clock the test moves: ``others`` CPUs busy besides us, 100 ticks/s."""

    def __init__(self):
        self.now, self.ticks, self.others = 0.0, 0, 0.0
        self.threads_set: list[int] = []

    def advance(self, seconds):
        self.now += seconds
        self.ticks += round(self.others * seconds * 100)

    def read(self, cpus):
        return CpuSample(self.ticks, 0.0, self.now)

    def governor(self, cap=2, usable=2):
        return ThreadGovernor(cap=cap, usable=usable, cpus=frozenset({0, 1}),
                              set_threads=self.threads_set.append, read=self.read,
                              clock=lambda: self.now, ticks_per_second=100)


def test_the_governor_decides_at_the_first_step_then_follows_the_load_every_check():
    machine = FakeMachine()
    governor = machine.governor()
    machine.advance(0.1)
    governor.check(1)  # the first window is not long enough yet
    assert governor.changes == []
    machine.advance(0.2)
    governor.check(2)  # idle: the start is recorded, nothing set
    assert governor.changes == [{"step": 2, "threads": 2, "others_busy_cpus": 0.0}]
    machine.others = 1.0  # a competing busy process arrives
    machine.advance(1.0)
    governor.check(3)  # not yet time for the next check
    machine.advance(1.5)
    governor.check(4)
    assert machine.threads_set == [1] and governor.threads == 1
    machine.advance(CHECK := contention.CHECK_SECONDS)
    governor.check(5)  # still busy: no change, nothing recorded
    machine.others = 0.0
    machine.advance(CHECK)
    governor.check(6)
    assert machine.threads_set == [1, 2]
    assert [(c["step"], c["threads"]) for c in governor.changes] == [(2, 2), (4, 1), (6, 2)]
    assert governor.changes[1]["others_busy_cpus"] == 1.0
    assert governor.record()["thread_changes_not_listed"] == 0


def test_the_record_lists_the_first_changes_and_counts_the_rest():
    machine = FakeMachine()
    governor = machine.governor()
    for step in range(MAX_RECORDED_CHANGES + 10):
        machine.others = 1.0 if step % 2 else 0.0
        machine.advance(contention.CHECK_SECONDS)
        governor.check(step)
    record = governor.record()
    assert len(record["thread_changes"]) == MAX_RECORDED_CHANGES
    assert record["thread_changes_not_listed"] == 10


def test_without_proc_stat_the_governor_does_nothing():
    governor = ThreadGovernor(cap=2, usable=2, cpus=frozenset({0}), set_threads=pytest.fail,
                              read=lambda cpus: None)
    governor.check(1)
    assert governor.record() == {"thread_changes": [], "thread_changes_not_listed": 0}


def test_a_competing_busy_process_shows_in_a_real_sample():
    cpus = [0, 1]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        before = read_sample(cpus)
        time.sleep(0.5)  # a measurement window, not a deadline
        after = read_sample(cpus)
    finally:
        busy.kill()
        busy.wait()
    assert before is not None and after is not None
    assert others_busy(before, after, contention.os.sysconf("SC_CLK_TCK")) > 0.3


@pytest.mark.skipif(len(contention.os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_a_run_whose_threads_lbtkit_chose_follows_the_load_and_gives_them_back(tmp_path,
                                                                              monkeypatch):
    from lbtkit.train import run

    # As if another process kept a CPU busy at every check.
    monkeypatch.setattr(contention, "threads_for", lambda others, *, usable, cap: 1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the suite pins 1 thread; lbtkit's own choice here is 2
    try:
        results = run(RunConfig(model="f1", dataset="digits", batch_size=64, epochs=2,
                                output_dir=str(tmp_path / "run"), checkpoint_every=0),
                      progress=False)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    cpu = results["cpu"]
    assert cpu["adaptive"] is True and cpu["threads"] == 2
    assert cpu["thread_changes"], cpu  # the setup is about as long as the first window
    first = cpu["thread_changes"][0]
    assert first["step"] >= 1 and first["threads"] == 1
    assert after == 2  # the next run of this process starts from the policy's count again
    pinned = run(RunConfig(model="f1", dataset="digits", batch_size=64, epochs=1,
                           output_dir=str(tmp_path / "pinned"), checkpoint_every=0, threads=1),
                 progress=False)
    assert pinned["cpu"]["adaptive"] is False and "thread_changes" not in pinned["cpu"]


@pytest.mark.skipif(len(contention.os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_an_analysis_leaves_busy_cpus_to_others_for_its_duration(monkeypatch):
    from lbtkit import cpu

    monkeypatch.setattr(cpu, "measure_others", lambda cpus, seconds: 1.0)  # one busy CPU
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # lbtkit's own choice on 2 CPUs (the suite pins 1)
    try:
        with cpu.threads_for_the_load({}) as threads:
            inside = torch.get_num_threads()
        after = torch.get_num_threads()
        monkeypatch.setattr(cpu, "measure_others", lambda cpus, seconds: None)  # no /proc/stat
        with cpu.threads_for_the_load({}) as unmeasured:
            pass
    finally:
        torch.set_num_threads(before)
    assert (threads, inside, after, unmeasured) == (1, 1, 2, 2)


def test_a_pinned_thread_count_is_not_measured_or_changed(monkeypatch):
    from lbtkit import cpu

    monkeypatch.setattr(cpu, "measure_others", pytest.fail)
    before = torch.get_num_threads()
    with cpu.threads_for_the_load({"OMP_NUM_THREADS": "1"}) as threads:
        assert threads == torch.get_num_threads() == before
    assert torch.get_num_threads() == before
