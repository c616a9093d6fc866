"""lbtkit.signals.StopPoll: when the processes of a run agree on a stop (no processes needed)."""

from __future__ import annotations

from lbtkit.signals import StopPoll


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def polled_steps(seconds_per_step: float, steps: int, **kwargs) -> list[int]:
    """The steps at which a 2-process poll runs, for a given step duration."""
    clock = FakeClock()
    poll = StopPoll(2, clock=clock, **kwargs)
    polled = []
    for step in range(1, steps + 1):
        clock.now += seconds_per_step
        if poll.due(step):
            polled.append(step)
            assert poll.agreed_stop(step, False) is False
    return polled


def test_one_process_polls_every_step_without_a_collective():
    calls = []
    poll = StopPoll(1, reduce_max=lambda values: calls.append(values) or values)
    assert all(poll.due(step) for step in range(1, 50))
    assert poll.agreed_stop(3, True) is True
    assert poll.agreed_stop(4, False) is False


def test_fast_steps_are_polled_every_ten_steps():
    assert polled_steps(0.01, 45) == [1, 2, 12, 22, 32, 42]


def test_slow_steps_are_polled_every_step():
    """A 40 s step (a real large-batch step can take minutes): a stop is seen after at most
    one more step, within the grace period, not ten steps later."""
    assert polled_steps(40.0, 6) == [1, 2, 3, 4, 5, 6]


def test_the_interval_fits_the_seconds():
    assert polled_steps(1.0, 20, every_seconds=5.0) == [1, 2, 7, 12, 17]


def test_processes_with_different_clocks_agree_on_the_next_poll():
    """Each process's own elapsed time differs; the all-reduced maximum does not."""
    shared_max: list[float] = []

    def reduce_max(values: list[float]) -> list[float]:
        return [values[0], max(values[1], *shared_max)] if shared_max else values

    schedules = []
    for skew in (0.0, 0.7):
        clock = FakeClock()
        poll = StopPoll(2, reduce_max=reduce_max, clock=clock)
        clock.now = 1.0 + skew
        poll.agreed_stop(1, False)
        shared_max[:] = [3.0]  # the slowest process measured 3 s for the last 3 steps
        clock.now = 2.0 + skew
        poll.agreed_stop(4, False)
        shared_max.clear()
        schedules.append(poll.next_step)
    assert schedules == [9, 9]  # 1 s a step, 5 s budget: every 5 steps on both


def test_a_stop_requested_anywhere_stops_everyone():
    poll = StopPoll(2, reduce_max=lambda values: [1.0, values[1]])  # another rank's flag
    assert poll.agreed_stop(1, False) is True
