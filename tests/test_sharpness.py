"""Sharpness measures against known answers: quadratics, and a tiny network's dense Hessian."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from lbtkit.config import RunConfig, preset_values
from lbtkit.errors import ConfigError
from lbtkit.landscape import (
    gradient_norm,
    hessian_top_eigenvalues,
    hutchinson_trace,
    keskar_sharpness,
    network_loss,
    run_sharpness,
)
from lbtkit.landscape.sharpness import pinv_apply
from lbtkit.specs import SharpnessSpec, parse_subspace

DIAG = torch.tensor([13.0, 8.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.1], dtype=torch.float64)


def quadratic(H: torch.Tensor):
    return lambda x: 0.5 * x @ H @ x


def random_spd(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q @ torch.diag(torch.linspace(1.0, 10.0, n, dtype=torch.float64)) @ q.T


# --- Hessian spectrum and trace --------------------------------------------------------------


@pytest.mark.parametrize("H", [torch.diag(DIAG), random_spd(20, seed=1)], ids=["diag", "spd"])
def test_top_eigenvalues_match_eigvalsh(H):
    x0 = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    top = hessian_top_eigenvalues(quadratic(H), x0, k=3, iters=H.shape[0] + 5, seed=0)
    expected = np.linalg.eigvalsh(H.numpy())[::-1][:3]
    np.testing.assert_allclose(top, expected, rtol=1e-3)


def test_gradient_norm_of_a_quadratic_and_of_a_sum_of_terms():
    # f(x) = 0.5 x^T H x + b^T x: grad = H x + b; at x = (1, ..., 1) with H = diag(DIAG),
    # b = -DIAG + (3, 4, 0, ..., 0) the gradient is (3, 4, 0, ...): norm 5.
    H = torch.diag(DIAG)
    b = -DIAG + torch.tensor([3.0, 4.0] + [0.0] * 6, dtype=torch.float64)
    ones = torch.ones(8, dtype=torch.float64)
    assert gradient_norm(lambda x: 0.5 * x @ H @ x + b @ x, ones) == pytest.approx(5.0)
    # the same f split into two terms (two chunks of a sample) has the same gradient
    terms = [lambda x: 0.5 * x @ H @ x, lambda x: b @ x]
    assert gradient_norm(terms, ones) == pytest.approx(5.0)
    assert gradient_norm(terms, -H.inverse() @ b) == pytest.approx(0.0, abs=1e-12)  # minimum


def test_hutchinson_trace_of_quadratics():
    # Rademacher probes measure a diagonal Hessian's trace exactly.
    zero = torch.zeros(8, dtype=torch.float64)
    mean, stderr = hutchinson_trace(quadratic(torch.diag(DIAG)), zero, samples=4, seed=0)
    assert mean == pytest.approx(float(DIAG.sum()), rel=1e-12) and stderr < 1e-9
    H = random_spd(20, seed=3)
    x0 = torch.zeros(20, dtype=torch.float64)
    mean, stderr = hutchinson_trace(quadratic(H), x0, samples=50, seed=0)
    assert abs(mean - float(H.trace())) <= 3 * stderr
    mean, _ = hutchinson_trace(quadratic(H), x0, samples=2000, seed=1)
    assert mean == pytest.approx(float(H.trace()), rel=0.02)


def tiny_network() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()  # 26 parameters
    x = torch.randn(10, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (10,))
    return model, x, y


def test_tiny_network_matches_dense_hessian():
    model, x, y = tiny_network()
    # batch_size 4: f is a sum of three chunks, as for a real training sample
    x0, terms = network_loss(model, x, y, lambda images: images, batch_size=4)
    assert x0.numel() == 26 and len(terms) == 3

    def f(v):
        return sum(term(v) for term in terms)

    dense = torch.autograd.functional.hessian(f, x0)
    eigenvalues = np.linalg.eigvalsh(dense.numpy())
    top = hessian_top_eigenvalues(terms, x0, k=2, iters=26, seed=0)
    np.testing.assert_allclose(top, eigenvalues[::-1][:2], rtol=1e-6)
    mean, stderr = hutchinson_trace(terms, x0, samples=200, seed=0)
    assert abs(mean - float(dense.trace())) <= 3 * stderr
    # Keskar's metric in the full space of a network: non-negative, growing with eps
    phis = [keskar_sharpness(terms, x0, eps=eps, iters=5) for eps in (1e-4, 1e-3, 1e-2)]
    assert 0 <= phis[0] <= phis[1] <= phis[2]
    # f itself is the mean cross-entropy over all samples
    expected = nn.functional.cross_entropy(model(x), y)
    assert float(f(x0).detach()) == pytest.approx(float(expected.detach()), rel=1e-12)


# --- Keskar's sharpness ----------------------------------------------------------------------


def test_sharpness_at_a_minimum_of_a_diagonal_quadratic_is_known():
    # At x0 = 0 the box is |y_i| <= eps and the maximum is at a corner: 0.5 * sum(h) * eps^2.
    x0 = torch.zeros(8, dtype=torch.float64)
    for eps in (1e-4, 1e-3, 1e-2):
        phi = keskar_sharpness(quadratic(torch.diag(DIAG)), x0, eps=eps, iters=10, seed=0)
        assert phi == pytest.approx(100 * 0.5 * float(DIAG.sum()) * eps**2, rel=1e-6)


def test_sharpness_vanishes_with_eps_grows_with_eps_and_with_curvature():
    H = random_spd(12, seed=4)
    x0 = torch.randn(12, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    f = quadratic(H)
    for eps in (0.0, 1e-12):
        assert keskar_sharpness(f, x0, eps=eps, iters=10) == pytest.approx(0.0, abs=1e-9)
    values = [keskar_sharpness(f, x0, eps=eps, iters=10) for eps in (1e-4, 1e-3, 1e-2)]
    assert 0 < values[0] <= values[1] <= values[2]
    sharper = quadratic(10 * H)
    for eps in (1e-4, 1e-3):
        assert keskar_sharpness(sharper, x0, eps=eps) > keskar_sharpness(f, x0, eps=eps)


def test_sharpness_in_a_subspace():
    # A = the first 3 coordinate axes: the box is on those coordinates only.
    n, p, eps = 8, 3, 1e-3
    A = torch.eye(n, dtype=torch.float64)[:, :p]
    phi = keskar_sharpness(quadratic(torch.diag(DIAG)), torch.zeros(n, dtype=torch.float64),
                           eps=eps, A=A, iters=10)
    assert phi == pytest.approx(100 * 0.5 * float(DIAG[:p].sum()) * eps**2, rel=1e-6)
    B = torch.randn(50, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.randn(50, dtype=torch.float64)
    np.testing.assert_allclose(pinv_apply(B, x).numpy(), np.linalg.pinv(B.numpy()) @ x.numpy())


def test_parse_subspace():
    assert parse_subspace("full") is None
    assert parse_subspace("random:100") == 100
    for bad in ("random", "random:0", "random:x", "half"):
        with pytest.raises(ConfigError, match="subspace"):
            parse_subspace(bad)


def test_batch_statistics_loss_normalises_each_batch_by_itself():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    model = model.double()
    with torch.no_grad():  # running statistics far from any batch's: the conventions differ
        model[1].running_mean.fill_(5.0)
        model[1].running_var.fill_(0.01)
    x = torch.randn(10, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (10,))
    kept = {k: v.clone() for k, v in model.state_dict().items()}

    def mean_ce(bn: str) -> float:
        x0, terms = network_loss(model, x, y, lambda images: images, batch_size=4, bn=bn)
        return float(sum(term(x0) for term in terms))

    # batch: near-equal batches of at most 4 (4, 3, 3), each normalised by its own statistics
    model.train()
    with torch.no_grad():
        expected = sum(nn.functional.cross_entropy(model(x[s]), y[s], reduction="sum")
                       for s in (slice(0, 3), slice(3, 6), slice(6, 10))) / 10
    model.load_state_dict(kept)
    assert mean_ce("batch") == pytest.approx(float(expected), rel=1e-12)
    model.eval()
    with torch.no_grad():
        running = nn.functional.cross_entropy(model(x), y)
    assert mean_ce("running") == pytest.approx(float(running), rel=1e-12)
    assert abs(mean_ce("batch") - mean_ce("running")) > 0.01
    # neither convention writes the running statistics, and the model is left in eval mode
    assert all(torch.equal(v, kept[k]) for k, v in model.state_dict().items())
    assert not model.training and not model[1].training
    with pytest.raises(ConfigError, match="BatchNorm convention 'train'"):
        network_loss(model, x, y, lambda images: images, bn="train")


# --- on a trained run ------------------------------------------------------------------------


def test_run_sharpness_writes_every_setting(tmp_path):
    from lbtkit.train import run

    run_dir = tmp_path / "run"
    config = RunConfig().updated(preset_values("smoke")).updated(
        {"epochs": 1, "batch_size": 256, "output_dir": str(run_dir)})
    run(config, progress=False)
    spec = SharpnessSpec(eps=(1e-3, 1e-4), subspaces="random:3", iters=2, hessian=True,
                         top_k=1, hessian_iters=3, trace=True, trace_samples=2, samples=64,
                         batch_size=32, seed=7)
    result = run_sharpness(spec, run_dir)
    stored = json.loads((run_dir / "sharpness.json").read_text())
    assert stored["settings"] == result["settings"]
    assert SharpnessSpec.from_dict(stored["spec"]) == spec
    settings = stored["settings"]
    assert (settings["samples"], settings["seed"], settings["eps"], settings["subspaces"],
            settings["iters"]) == (64, 7, [1e-3, 1e-4], ["random:3"], 2)
    assert stored["samples_used"] == 64
    assert [(m["subspace"], m["eps"]) for m in stored["sharpness"]] == \
        [("random:3", 1e-3), ("random:3", 1e-4)]
    assert all(m["phi"] >= 0 for m in stored["sharpness"])
    assert len(stored["hessian"]["top_eigenvalues"]) == 1
    assert np.isfinite(stored["trace"]["mean"]) and np.isfinite(stored["train_loss"])
    assert stored["gradient_norm"] > 0 and set(stored["by_bn"]) == {"running"}


def test_run_sharpness_under_both_batchnorm_conventions(tmp_path):
    from helpers import train_smoke

    run_dir = tmp_path / "run"
    train_smoke(run_dir, batch_size=256)
    spec = SharpnessSpec(eps=(1e-3,), subspaces="full", iters=1, hessian=True, hessian_iters=2,
                         samples=64, batch_size=32, bn="batch,running")
    stored = run_sharpness(spec, run_dir, progress=False)
    assert [(m["bn"], m["subspace"]) for m in stored["sharpness"]] == \
        [("batch", "full"), ("running", "full")]
    assert list(stored["by_bn"]) == ["batch", "running"]
    for bn, measured in stored["by_bn"].items():
        assert measured["gradient_norm"] > 0 and measured["train_loss"] > 0, bn
        assert len(measured["hessian"]["top_eigenvalues"]) == 1
    # the top level is the first convention's; the two conventions are different functions
    assert stored["gradient_norm"] == stored["by_bn"]["batch"]["gradient_norm"]
    assert stored["by_bn"]["batch"]["train_loss"] != stored["by_bn"]["running"]["train_loss"]
    assert "mode=2" in stored["settings"]["bn"]["batch"]


def test_sharpness_command_shows_each_stage_and_its_progress(tmp_path):
    from helpers import invoke_cli, train_smoke

    run_dir = tmp_path / "run"
    train_smoke(run_dir, batch_size=256)
    result = invoke_cli("sharpness", run_dir, "--eps", "1e-3", "--iters", "2", "--hessian",
                        "--hessian-iters", "3", "--trace", "--trace-samples", "2", "--samples",
                        "64", tmp_path=tmp_path, check=0)
    lines = result.stdout.splitlines()
    assert "sharpness: full space, eps 0.001 (2 L-BFGS-B iterations)" in lines
    assert "sharpness: top 1 Hessian eigenvalues (3 Lanczos products)" in lines
    assert "sharpness: Hessian trace (2 Hutchinson probes)" in lines
    # Not a terminal: plain periodic lines up to the total of 2 + 3 + 2 units of work.
    counts = [line.split()[1] for line in lines if line.startswith("evaluation ")]
    assert counts and counts[-1] == "7/7", lines
