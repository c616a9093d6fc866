"""Learning-rate schedules in optimizer steps: values at known points."""

from __future__ import annotations

import math

import pytest

from lbtkit.schedule import Schedule, lr_multiplier


def test_cosine_known_points():
    s = Schedule(peak_lr=0.4, total_steps=100, kind="cosine")
    assert s.lr_at_step(0) == pytest.approx(0.4)
    assert s.lr_at_step(50) == pytest.approx(0.2)
    assert s.lr_at_step(25) == pytest.approx(0.2 * (1 + math.cos(math.pi / 4)))
    assert s.lr_at_step(100) == pytest.approx(0.0, abs=1e-15)


def test_cosine_matches_torch_cosine_annealing():
    import torch

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    torch_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=37)
    for step in range(37):
        assert opt.param_groups[0]["lr"] == pytest.approx(
            0.1 * lr_multiplier(step, total_steps=37), rel=1e-9, abs=1e-12
        )
        opt.step()
        torch_sched.step()


def test_warmup_then_cosine():
    s = Schedule(peak_lr=1.0, total_steps=110, warmup_steps=10, kind="cosine")
    assert [s.lr_at_step(i) for i in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert s.lr_at_step(9) == pytest.approx(1.0)
    assert s.lr_at_step(10) == pytest.approx(1.0)
    assert s.lr_at_step(60) == pytest.approx(0.5)


def test_step_decay_and_constant():
    s = Schedule(peak_lr=1.0, total_steps=100, kind="step", step_every=30, gamma=0.1)
    assert [s.lr_at_step(i) for i in (0, 29, 30, 59, 60, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.001]
    )
    c = Schedule(peak_lr=0.3, total_steps=10, warmup_steps=2, kind="constant")
    assert [c.lr_at_step(i) for i in range(4)] == pytest.approx([0.15, 0.3, 0.3, 0.3])
