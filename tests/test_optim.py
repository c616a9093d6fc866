"""LARS and LAMB against their papers' update rules, worked out by hand in each test.

Expected values come from the formulas in plain tensor arithmetic (or literal numbers),
never from the optimizers' own code, so a wrong sign, a misplaced weight decay or a
missing bias correction shows up as a number mismatch.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from lbtkit.optim import LAMB, LARS

F64 = torch.float64


def param(values) -> nn.Parameter:
    return nn.Parameter(torch.tensor(values, dtype=F64))


def norm(t: torch.Tensor) -> torch.Tensor:
    return t.pow(2).sum().sqrt()


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    # As the training loop does: the schedule writes the global lr before each step.
    for group in optimizer.param_groups:
        group["lr"] = lr


W0 = [[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]]
B0 = [0.3, -0.2]
GW = ([[0.1, 0.2, -0.3], [0.05, -0.4, 0.2]], [[-0.2, 0.1, 0.05], [0.3, 0.1, -0.1]])
GB = ([0.5, -1.0], [0.25, 0.75])
LRS = (0.5, 0.2)


# --- LARS ----------------------------------------------------------------------------

def test_lars_one_step_literal_numbers():
    w = param([[3.0, 0.0], [0.0, 4.0]])  # |w| = 5
    w.grad = torch.tensor([[0.0, 0.0], [0.0, 2.0]], dtype=F64)  # |g| = 2
    # local_lr = 0.03 * 5 / (2 + 0.2 * 5) = 0.05; lr * local_lr = 0.1
    # v = 0.1 * (g + 0.2 w) = 0.1 * [[0.6, 0], [0, 2.8]]
    LARS([w], lr=2.0, momentum=0.9, weight_decay=0.2, trust_coefficient=0.03).step()
    assert_close(w.detach(), torch.tensor([[2.94, 0.0], [0.0, 3.72]], dtype=F64))


def test_lars_two_steps_match_formula_and_bias_is_plain_sgd_momentum():
    m, wd, eta = 0.9, 0.01, 0.02
    w, b = param(W0), param(B0)
    opt = LARS([w, b], momentum=m, weight_decay=wd, trust_coefficient=eta)

    w_ref, b_ref = torch.tensor(W0, dtype=F64), torch.tensor(B0, dtype=F64)
    v_w, v_b = torch.zeros_like(w_ref), torch.zeros_like(b_ref)
    for lr, gw, gb in zip(LRS, GW, GB, strict=True):
        gw, gb = torch.tensor(gw, dtype=F64), torch.tensor(gb, dtype=F64)
        w.grad, b.grad = gw.clone(), gb.clone()
        set_lr(opt, lr)
        opt.step()

        local_lr = eta * norm(w_ref) / (norm(gw) + wd * norm(w_ref))
        v_w = m * v_w + lr * local_lr * (gw + wd * w_ref)
        w_ref = w_ref - v_w
        v_b = m * v_b + lr * gb  # 1-D: no trust ratio, no weight decay
        b_ref = b_ref - v_b
        assert_close(w.detach(), w_ref)
        assert_close(b.detach(), b_ref)


def test_lars_exclude_1d_false_gives_the_bias_the_trust_ratio_and_decay():
    lr, wd, eta = 0.5, 0.1, 0.02
    b = param(B0)
    b.grad = torch.tensor(GB[0], dtype=F64)
    LARS([b], lr=lr, momentum=0.9, weight_decay=wd, trust_coefficient=eta,
         exclude_1d=False).step()
    b0, g = torch.tensor(B0, dtype=F64), torch.tensor(GB[0], dtype=F64)
    local_lr = eta * norm(b0) / (norm(g) + wd * norm(b0))
    assert_close(b.detach(), b0 - lr * local_lr * (g + wd * b0))


def test_lars_zero_weight_or_zero_grad_uses_trust_one():
    lr, wd = 0.5, 0.1
    zero_w = param([[0.0, 0.0], [0.0, 0.0]])
    zero_w.grad = torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=F64)
    zero_g = param([[1.0, 2.0], [3.0, 4.0]])
    zero_g.grad = torch.zeros(2, 2, dtype=F64)
    LARS([zero_w, zero_g], lr=lr, weight_decay=wd, trust_coefficient=0.001).step()
    # Trust 1: a plain lr * (g + wd * w) step, no NaN/inf from 0/0 or x/0.
    assert_close(zero_w.detach(), -lr * torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=F64))
    assert_close(zero_g.detach(), (1 - lr * wd) * torch.tensor([[1.0, 2.0], [3.0, 4.0]],
                                                                dtype=F64))


def test_lars_without_momentum_keeps_no_buffer_and_skips_params_without_grad():
    lr, wd, eta = 0.5, 0.01, 0.02
    w, frozen = param(W0), param([[1.0, 2.0]])
    w.grad = torch.tensor(GW[0], dtype=F64)
    opt = LARS([w, frozen], lr=lr, momentum=0.0, weight_decay=wd, trust_coefficient=eta)
    opt.step()
    w0, g = torch.tensor(W0, dtype=F64), torch.tensor(GW[0], dtype=F64)
    local_lr = eta * norm(w0) / (norm(g) + wd * norm(w0))
    assert_close(w.detach(), w0 - lr * local_lr * (g + wd * w0))
    assert_close(frozen.detach(), torch.tensor([[1.0, 2.0]], dtype=F64))
    assert len(opt.state) == 0


@pytest.mark.parametrize("seed", range(4))
def test_lars_first_update_norm_is_lr_eta_w_times_decayed_over_plain_grad_norm(seed):
    gen = torch.Generator().manual_seed(seed)
    shape = [(4, 5), (3, 2, 3, 3), (7, 1)][seed % 3]
    lr, wd, eta = 3.0, [0.0, 1e-4, 0.05, 1.0][seed], 0.001
    w0 = torch.randn(shape, generator=gen, dtype=F64) * (seed + 1)
    g = torch.randn(shape, generator=gen, dtype=F64) / (seed + 1)
    w = nn.Parameter(w0.clone())
    w.grad = g.clone()
    LARS([w], lr=lr, momentum=0.9, weight_decay=wd, trust_coefficient=eta).step()
    expected = lr * eta * norm(w0) * norm(g + wd * w0) / (norm(g) + wd * norm(w0))
    assert_close(norm(w0 - w.detach()), expected)


def test_lars_closure_on_a_linear_model():
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, 3.0]], dtype=F64)
    y = torch.tensor([[1.0, 0.0], [-1.0, 2.0]], dtype=F64)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    lr, wd, eta = 1.0, 0.01, 0.01
    opt = LARS(model.parameters(), lr=lr, weight_decay=wd, trust_coefficient=eta)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    # The gradient of the mean squared error, by hand.
    err = x @ w0.T + b0 - y
    gw, gb = 2 * err.T @ x / err.numel(), 2 * err.sum(0) / err.numel()
    assert_close(loss, (err**2).mean())
    local_lr = eta * norm(w0) / (norm(gw) + wd * norm(w0))
    assert_close(model.weight.detach(), w0 - lr * local_lr * (gw + wd * w0))
    assert_close(model.bias.detach(), b0 - lr * gb)


# --- LAMB ----------------------------------------------------------------------------

def test_lamb_first_step_literal_numbers():
    w = param([[3.0, 4.0]])  # |w| = 5
    w.grad = torch.tensor([[2.0, -3.0]], dtype=F64)
    LAMB([w], lr=0.1, eps=1e-12).step()
    # t = 1: m_hat = g, v_hat = g^2, so r = sign(g) = [1, -1]; trust = 5 / sqrt(2).
    step = 0.1 * 5 / math.sqrt(2)
    assert_close(w.detach(), torch.tensor([[3.0 - step, 4.0 + step]], dtype=F64))


def test_lamb_two_steps_match_formula_with_bias_correction_and_1d_adam_step():
    b1, b2, eps, wd = 0.9, 0.999, 1e-6, 0.01
    w, b = param(W0), param(B0)
    opt = LAMB([w, b], betas=(b1, b2), eps=eps, weight_decay=wd)

    ref = {"w": torch.tensor(W0, dtype=F64), "b": torch.tensor(B0, dtype=F64)}
    mom = {k: torch.zeros_like(v) for k, v in ref.items()}
    sq = {k: torch.zeros_like(v) for k, v in ref.items()}
    for t, (lr, gw, gb) in enumerate(zip(LRS, GW, GB, strict=True), start=1):
        grads = {"w": torch.tensor(gw, dtype=F64), "b": torch.tensor(gb, dtype=F64)}
        w.grad, b.grad = grads["w"].clone(), grads["b"].clone()
        set_lr(opt, lr)
        opt.step()

        for k, g in grads.items():
            mom[k] = b1 * mom[k] + (1 - b1) * g
            sq[k] = b2 * sq[k] + (1 - b2) * g * g
            adam = (mom[k] / (1 - b1**t)) / ((sq[k] / (1 - b2**t)).sqrt() + eps)
            if k == "w":
                r = adam + wd * ref[k]
                ref[k] = ref[k] - lr * (norm(ref[k]) / norm(r)) * r
            else:  # 1-D: trust 1, no weight decay
                ref[k] = ref[k] - lr * adam
        assert_close(w.detach(), ref["w"])
        assert_close(b.detach(), ref["b"])
    assert opt.state[w]["step"].item() == 2 and isinstance(opt.state[w]["step"], torch.Tensor)


@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0])
def test_lamb_step_norm_is_lr_times_weight_norm(scale):
    # The point of the trust ratio: every layer moves by lr * |w| whatever its gradient.
    gen = torch.Generator().manual_seed(1)
    w0 = torch.randn(6, 4, generator=gen, dtype=F64) * scale
    w = nn.Parameter(w0.clone())
    opt = LAMB([w], lr=0.05, weight_decay=0.1)
    for _ in range(3):
        before = w.detach().clone()
        w.grad = torch.randn(6, 4, generator=gen, dtype=F64) * 1e3
        opt.step()
        assert_close(norm(w.detach() - before), 0.05 * norm(before))


def test_lamb_zero_weight_uses_trust_one_and_exclude_1d_false_decays_bias():
    lr, wd = 0.1, 0.5
    zero_w = param([[0.0, 0.0]])
    zero_w.grad = torch.tensor([[2.0, -3.0]], dtype=F64)
    b = param(B0)
    b.grad = torch.tensor(GB[0], dtype=F64)
    LAMB([zero_w, b], lr=lr, eps=1e-12, weight_decay=wd, exclude_1d=False).step()
    # t = 1: Adam direction is sign(g); |w| = 0 so trust 1.
    assert_close(zero_w.detach(), torch.tensor([[-lr, lr]], dtype=F64))
    b0 = torch.tensor(B0, dtype=F64)
    r = torch.sign(torch.tensor(GB[0], dtype=F64)) + wd * b0
    assert_close(b.detach(), b0 - lr * norm(b0) / norm(r) * r)


# --- both ----------------------------------------------------------------------------

def _opt(name: str, params) -> torch.optim.Optimizer:
    if name == "lars":
        return LARS(params, lr=0.5, momentum=0.9, weight_decay=1e-3, trust_coefficient=0.01)
    return LAMB(params, lr=0.01, betas=(0.8, 0.99), weight_decay=1e-2)


def _grads(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_state_dict_round_trip_resumes_identically(name):
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    opt = _opt(name, model.parameters())
    for seed in range(2):
        _grads(model, seed)
        opt.step()
    set_lr(opt, 0.123)
    # As checkpoint.py does: through bytes, mapped to the CPU, weights_only.
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, map_location="cpu", weights_only=True)

    twin = copy.deepcopy(model)
    twin_opt = _opt(name, twin.parameters())
    twin_opt.load_state_dict(saved)
    assert twin_opt.param_groups[0]["lr"] == 0.123
    for seed in (2, 3):
        _grads(model, seed)
        _grads(twin, seed)
        opt.step()
        twin_opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_step_needs_no_tensor_values_on_the_host(name):
    # Meta tensors have no data: any .item(), bool(tensor) or float(tensor) in step()
    # raises, so this catches a host sync a GPU user would pay for every step.
    model = nn.Linear(3, 2, device="meta")
    opt = _opt(name, model.parameters())
    for p in model.parameters():
        p.grad = torch.empty_like(p)
    opt.step()
    opt.step()


def test_lamb_step_count_resumed_from_a_cpu_checkpoint_returns_to_the_param_device():
    # load_state_dict leaves "step" on the CPU the checkpoint was mapped to; the meta
    # device stands in for a GPU.
    cpu_model = nn.Linear(3, 2)
    cpu_opt = _opt("lamb", cpu_model.parameters())
    _grads(cpu_model, 0)
    cpu_opt.step()
    model = nn.Linear(3, 2, device="meta")
    opt = _opt("lamb", model.parameters())
    opt.load_state_dict(cpu_opt.state_dict())
    for p in model.parameters():
        p.grad = torch.empty_like(p)
    opt.step()
    assert {state["step"].device.type for state in opt.state.values()} == {"meta"}


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (LARS, {"lr": -0.1}, "lr must be >= 0, got -0.1"),
        (LARS, {"lr": float("nan")}, "lr must be finite, got nan"),
        (LARS, {"momentum": 1.0}, "momentum must be in [0, 1), got 1.0"),
        (LARS, {"weight_decay": -1e-4}, "weight_decay must be >= 0, got -0.0001"),
        (LARS, {"trust_coefficient": 0.0}, "trust_coefficient must be > 0, got 0.0"),
        (LARS, {"exclude_1d": "yes"}, "exclude_1d must be True or False, got 'yes'"),
        (LAMB, {"betas": (1.0, 0.999)}, "betas[0] must be in [0, 1), got 1.0"),
        (LAMB, {"betas": (0.9, -0.5)}, "betas[1] must be in [0, 1), got -0.5"),
        (LAMB, {"betas": 0.9}, "betas must be a pair (beta1, beta2), got 0.9"),
        (LAMB, {"eps": 0.0}, "eps must be > 0, got 0.0"),
        (LAMB, {"weight_decay": float("inf")}, "weight_decay must be finite, got inf"),
    ],
)
def test_bad_hyper_parameters_raise_naming_the_value(cls, kwargs, message):
    with pytest.raises(ValueError) as caught:
        cls([param([[1.0]])], **kwargs)
    assert message in str(caught.value)


def test_bad_value_in_a_param_group_is_caught_too():
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got -0.5"):
        LARS([{"params": [param([[1.0]])], "momentum": -0.5}], lr=0.1)
