"""The gradient noise scale: the estimators, a known answer, the DDP monitor, CLI and report."""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from lbtkit.errors import ConfigError
from lbtkit.noise_scale import (
    NoiseScaleMonitor,
    _unbiased,
    b_simple_std_error,
    estimate_noise_scale,
    last_logged_noise_scale,
    measure_noise_scale,
    noise_factor,
)
from lbtkit.specs import NoiseScaleSpec, parse_batches

from helpers import assert_user_error, invoke_cli, run_cli

# --- the estimators --------------------------------------------------------------------------


@pytest.mark.parametrize(("grad_sq", "trace", "b_small", "b_big"),
                         [(1.5, 40.0, 8, 256), (1e-3, 7.0, 1, 2), (2.0, 0.5, 32, 1024)])
def test_estimator_is_exact_on_expected_norms(grad_sq, trace, b_small, b_big):
    # E|G_B|^2 = |G|^2 + tr(Sigma)/B, so the expectations go back to |G|^2 and tr(Sigma).
    estimate = estimate_noise_scale(b_small, grad_sq + trace / b_small,
                                    b_big, grad_sq + trace / b_big)
    assert estimate.grad_sq == pytest.approx(grad_sq, rel=1e-9)
    assert estimate.trace_sigma == pytest.approx(trace, rel=1e-12)
    assert estimate.b_simple == pytest.approx(trace / grad_sq, rel=1e-9)
    # Distinct samples of N: E|G_B|^2 = |G|^2 + tr(Sigma) (N - B) / (B (N - 1)).
    n = 2 * b_big + 3
    def expected(b):
        return grad_sq + trace * (n - b) / (b * (n - 1))
    finite = estimate_noise_scale(b_small, expected(b_small), b_big, expected(b_big),
                                  population=n)
    assert finite.grad_sq == pytest.approx(grad_sq, rel=1e-9)
    assert finite.trace_sigma == pytest.approx(trace, rel=1e-9)
    # The big batch may be the whole population: its norm is then |G|^2 itself.
    whole = estimate_noise_scale(b_small, expected(b_small), n, grad_sq, population=n)
    assert whole.grad_sq == pytest.approx(grad_sq, rel=1e-9)
    assert whole.trace_sigma == pytest.approx(trace, rel=1e-9)


def test_noise_factor():
    assert noise_factor(8, None) == 1 / 8
    assert noise_factor(10, 10) == 0  # the whole data set: no noise
    assert noise_factor(1, 10) == pytest.approx(1.0)  # one sample: tr(Sigma) itself
    assert noise_factor(4, 10) == pytest.approx((1 / 4 - 1 / 10) * 10 / 9)
    assert noise_factor(32, 10**9) == pytest.approx(1 / 32, rel=1e-7)
    for bad, needle in ((1, "population must be a whole number >= 2, got 1"),
                        (50, "batch size 64 is larger than the population of 50")):
        with pytest.raises(ConfigError, match=needle):
            estimate_noise_scale(8, 1.0, 64, 0.5, population=bad)


def test_estimate_is_not_a_batch_size_when_an_estimate_is_not_positive():
    # Big-batch norm above the small one: tr(Sigma) < 0, and |G|^2 > 0.
    noisy = estimate_noise_scale(8, 1.0, 64, 1.2)
    assert noisy.trace_sigma < 0 and noisy.b_simple is None
    # |G|^2 estimate <= 0: the gradient is below what these batch sizes resolve.
    flat = estimate_noise_scale(8, 10.0, 64, 1.0)
    assert flat.grad_sq < 0 < flat.trace_sigma and flat.b_simple is None
    assert json.dumps(flat.to_dict())  # valid JSON, no inf or nan


@pytest.mark.parametrize(("args", "needle"), [
    ((64, 1.0, 64, 0.5), "b_small 64 and b_big 64"),
    ((128, 1.0, 64, 0.5), "b_small 128 and b_big 64"),
    ((0, 1.0, 64, 0.5), "got 0"),
    ((8, -1.0, 64, 0.5), "grad_sq_small must be a finite squared norm >= 0, got -1.0"),
    ((8, 1.0, 64, math.nan), "grad_sq_big"),
])
def test_estimator_rejects_bad_input(args, needle):
    with pytest.raises(ConfigError) as info:
        estimate_noise_scale(*args)
    assert needle in str(info.value)


@pytest.mark.parametrize(("text", "needle"), [
    ("32", "exactly two"), ("32,32", "must differ"), ("-4,32", "-4 is not positive"),
    ("a,1", "'a,1'"), ("8,16,32", "exactly two"),
])
def test_parse_batches_rejects(text, needle):
    with pytest.raises(ConfigError) as info:
        parse_batches(text)
    assert needle in str(info.value)


def test_parse_batches_sorts():
    assert parse_batches("1024, 32") == (32, 1024)


# --- a known answer: linear regression with Gaussian noise ------------------------------------


def test_linear_regression_known_answer():
    """x ~ N(0, I_D), y = x.w* + eps, eps ~ N(0, s^2); loss 0.5 (x.w - y)^2 at w = w* + d.

    Per-sample gradient g = (x.d - eps) x: G = d, Sigma = (|d|^2 + s^2) I + d d^T, so
    |G|^2 = |d|^2 = 1 and tr(Sigma) = D (|d|^2 + s^2) + |d|^2 = 21, B_simple = 21.

    Batches are drawn without replacement from a finite data set of N samples, whose own mean
    G_N and covariance Sigma_N (1/N) we know exactly. Then E|G_B|^2 = |G_N|^2 + c (1/B - 1/N)
    with c = tr(Sigma_N) N/(N-1), and the finite-population estimators' expectations are
    exactly |G_N|^2 and tr(Sigma_N). The measured estimates must be within 4 of their own
    standard errors
    (propagated from the sample variances of |G_B|^2; P(|z| > 4) ~ 6e-5 per check) of those,
    and the data set's G_N, Sigma_N within 4 CLT standard errors of the population values.
    With B = 8 and 128 and 1000 batches each, the standard errors are ~1.3% of |G|^2 and ~3.5%
    of tr(Sigma) (the Gaussian approximation Var|G_B|^2 ~ 4 G'Sigma G/B + 2 tr(Sigma^2)/B^2
    says 1.1% and 2.2%; the per-sample gradients' heavier tails add the rest at B = 8), and
    are asserted to stay below 3% and 5%: sharp enough to catch a wrong factor anywhere.
    """
    dim, noise_std, n, draws = 10, 1.0, 1 << 16, 1000
    gen = torch.Generator().manual_seed(0)
    w_star = torch.randn(dim, generator=gen, dtype=torch.float64)
    d = torch.randn(dim, generator=gen, dtype=torch.float64)
    d /= d.norm()  # |d| = 1
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    y = x @ w_star + noise_std * torch.randn(n, generator=gen, dtype=torch.float64)
    model = torch.nn.Linear(dim, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_((w_star + d)[None])

    def loss_fn(net, inputs, targets):
        return 0.5 * (net(inputs).squeeze(1) - targets).square().mean()

    result = measure_noise_scale(model, x, y, batch_sizes=(8, 128), draws=draws,
                                 loss_fn=loss_fn, seed=1)

    # The finite data set's exact answers.
    per_sample = (x @ (w_star + d) - y)[:, None] * x
    g_n = per_sample.mean(0)
    trace_n = (per_sample - g_n).square().sum(1).mean().item()
    expected_grad_sq, expected_trace = g_n.square().sum().item(), trace_n
    est = result.estimate
    assert result.population == n
    assert result.grad_sq_std_error < 0.03 and result.trace_sigma_std_error < 0.05 * 21
    assert abs(est.grad_sq - expected_grad_sq) < 4 * result.grad_sq_std_error
    assert abs(est.trace_sigma - expected_trace) < 4 * result.trace_sigma_std_error

    # The population answers, and the data set's distance from them.
    sigma = (1 + noise_std**2) * torch.eye(dim, dtype=torch.float64) + torch.outer(d, d)
    grad_sq, trace = 1.0, dim * (1 + noise_std**2) + 1.0
    se_grad_sq = 2 * math.sqrt((d @ sigma @ d).item() / n)  # delta method on |G_N|^2
    se_trace = (per_sample - g_n).square().sum(1).std().item() / math.sqrt(n)
    assert abs(g_n.square().sum().item() - grad_sq) < 4 * se_grad_sq
    assert abs(trace_n - trace) < 4 * se_trace
    # B_simple: the interval the two bounds above imply, around the population value.
    a = (4 * result.grad_sq_std_error + 4 * se_grad_sq) / grad_sq
    b = (4 * result.trace_sigma_std_error + 4 * se_trace) / trace
    assert trace * (1 - b) / (grad_sq * (1 + a)) < est.b_simple < \
        trace * (1 + b) / (grad_sq * (1 - a))
    assert a < 0.2 and b < 0.25


def _least_squares(n: int, seed: int):
    """A small least-squares problem away from its optimum, and its EXACT per-example
    gradients: loss 0.5 (x.w - y)^2 per sample, gradient (x.w - y) x."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + torch.randn(
        n, generator=gen, dtype=torch.float64)
    w = torch.tensor([1.4, -1.7, 0.9], dtype=torch.float64)
    model = torch.nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w[None])
    per_example = (x @ w - y)[:, None] * x
    g = per_example.mean(0)
    grad_sq = g.square().sum().item()  # |G|^2 of the N samples' full-data gradient
    trace = (per_example - g).square().sum(1).mean().item()  # tr(Sigma), divisor N
    return model, x, y, per_example, grad_sq, trace


def _half_squared_error(net, inputs, targets):
    return 0.5 * (net(inputs).squeeze(1) - targets).square().mean()


def test_estimator_is_unbiased_against_exact_per_example_gradients():
    """N = 40 samples, batches of 2 and 20 distinct samples (half the data: where the
    finite-population correction matters most), 1000 batches per size.

    From the exact per-example gradients: the mean |G_B|^2 must match |G|^2 + tr(Sigma) c(B),
    and the estimates |G|^2, tr(Sigma) and B_simple the exact ones, each within 4 standard
    errors (the sample std of |G_B|^2 over sqrt(1000), propagated; P(|z| > 4) ~ 6e-5). The
    paper's 1/B formulas on the same draws are off by their derived bias, -tr(Sigma)/(N-1) in
    |G|^2 and the factor N/(N-1) in tr(Sigma): the test checks that this bias is many standard
    errors wide (so it can tell the two apart) and that the old estimates sit on it.
    """
    n, b_small, b_big, draws = 40, 2, 20, 1000
    model, x, y, _, grad_sq, trace = _least_squares(n, seed=5)
    result = measure_noise_scale(model, x, y, batch_sizes=(b_small, b_big), draws=draws,
                                 loss_fn=_half_squared_error, seed=2)
    for measured in (result.small, result.big):
        expected = grad_sq + trace * noise_factor(measured.batch_size, n)
        assert abs(measured.mean - expected) < 4 * measured.std_error, measured
    est = result.estimate
    assert abs(est.grad_sq - grad_sq) < 4 * result.grad_sq_std_error
    assert abs(est.trace_sigma - trace) < 4 * result.trace_sigma_std_error
    assert abs(est.b_simple - trace / grad_sq) < 4 * result.b_simple_std_error

    old = estimate_noise_scale(b_small, result.small.mean, b_big, result.big.mean)
    bias = trace / (n - 1)
    assert bias > 6 * result.grad_sq_std_error  # the draws resolve the old bias
    assert abs(old.grad_sq - (grad_sq - bias)) < 4 * result.grad_sq_std_error
    assert abs(est.grad_sq - grad_sq) < abs(old.grad_sq - grad_sq) / 2
    old_trace_error = math.hypot(result.small.std_error, result.big.std_error) / (
        1 / b_small - 1 / b_big)
    assert abs(old.trace_sigma - trace * n / (n - 1)) < 4 * old_trace_error
    # Without sampling noise: the old formulas on the exact expectations overestimate B_simple
    # by the factor the module docstring states.
    exact = [grad_sq + trace * noise_factor(b, n) for b in (b_small, b_big)]
    old_exact = estimate_noise_scale(b_small, exact[0], b_big, exact[1])
    b_true = trace / grad_sq
    assert old_exact.b_simple == pytest.approx(
        b_true * (n / (n - 1)) / (1 - b_true / (n - 1)), rel=1e-9)
    assert estimate_noise_scale(b_small, exact[0], b_big, exact[1],
                                population=n).b_simple == pytest.approx(b_true, rel=1e-9)


def test_monitor_batches_need_the_finite_population_factor():
    """What NoiseScaleMonitor sees, from exact per-example gradients: each step's global batch
    is a slice of the epoch's permutation of N samples, and each process's batch the
    micro-batches at offsets (micro * world + rank) * per_device of it (lbtkit.train). Fed to
    the estimator the monitor uses (``_unbiased``) with the population, the per-step estimates
    average to the exact |G|^2 and tr(Sigma) within 4 standard errors (over epochs, which are
    independent); without it, |G|^2 is off by its derived bias tr(Sigma)/(N-1)."""
    n, world, per_device, accum, epochs = 48, 2, 3, 2, 1500
    _, _, _, grads, grad_sq, trace = _least_squares(n, seed=7)
    b_small, b_big = per_device * accum, per_device * accum * world
    steps = n // b_big
    gen = torch.Generator().manual_seed(0)
    order = torch.stack([torch.randperm(n, generator=gen) for _ in range(epochs)])
    batches = grads[order[:, :steps * b_big]].reshape(epochs, steps, b_big, 3)
    big = batches.mean(2).square().sum(-1)  # (epochs, steps)
    offsets = torch.tensor([(m * world + r) * per_device for r in range(world)
                            for m in range(accum)]).reshape(world, accum)
    rows = (offsets[:, :, None] + torch.arange(per_device)).reshape(world, b_small)
    small = batches[:, :, rows].mean(3).square().sum(-1)  # (epochs, steps, world)
    for population, expected_grad_sq in ((n, grad_sq), (None, grad_sq - trace / (n - 1))):
        g, t = _unbiased(b_small, small, b_big, big[..., None], population)
        per_epoch_g, per_epoch_t = g.mean((1, 2)), t.mean((1, 2))
        se_g = per_epoch_g.std().item() / math.sqrt(epochs)
        se_t = per_epoch_t.std().item() / math.sqrt(epochs)
        assert abs(per_epoch_g.mean().item() - expected_grad_sq) < 4 * se_g, population
        if population is not None:
            assert abs(per_epoch_t.mean().item() - trace) < 4 * se_t
            assert trace / (n - 1) > 10 * se_g  # the correction is resolved


def test_measuring_leaves_the_model_and_the_global_rng_alone():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16),
                                torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 3))
    model.eval()
    before = copy.deepcopy(model.state_dict())
    x, y = torch.randn(200, 6), torch.randint(0, 3, (200,))
    rng = torch.get_rng_state()

    def loss_fn(net, inputs, targets):
        return torch.nn.functional.cross_entropy(net(inputs), targets)

    first = measure_noise_scale(model, x, y, batch_sizes=(8, 64), draws=4, loss_fn=loss_fn)
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    again = measure_noise_scale(model, x, y, batch_sizes=(8, 64), draws=4, loss_fn=loss_fn)
    assert again == first  # seeded: batches and dropout masks
    with pytest.raises(ConfigError, match="batch size 256 is larger than the data"):
        measure_noise_scale(model, x, y, batch_sizes=(8, 256), draws=4, loss_fn=loss_fn)


def test_last_logged_noise_scale_skips_missing_values():
    rows = [{"noise_scale": 5.0}, {"noise_scale": None}, {"epoch": 3}]
    assert last_logged_noise_scale(rows) == 5.0
    assert last_logged_noise_scale([{"noise_scale": None}]) is None


# --- the monitor under real 2-process DDP (gloo) ----------------------------------------------


def _monitor_worker(rank: int, world: int, store: str) -> None:
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        reference = copy.deepcopy(net)  # the same weights, no DDP: this process's own gradient
        # A tiny first bucket puts every parameter in a bucket of its own (several hook calls).
        ddp = DistributedDataParallel(net, bucket_cap_mb=1e-5)
        per_device, accum, decay = 4, 2, 0.5
        b_small, b_big = per_device * accum, per_device * accum * world
        population = 100  # the training set size the train loop passes
        monitor = NoiseScaleMonitor(ddp, b_small=b_small, b_big=b_big, decay=decay,
                                    population=population)
        gen = torch.Generator().manual_seed(100 + rank)
        ema = torch.zeros(2, dtype=torch.float64)
        weight = 0.0
        for _ in range(3):
            for micro in range(accum):
                x, y = torch.randn(per_device, 5, generator=gen), torch.randn(per_device, 3,
                                                                             generator=gen)
                sync = ddp.no_sync() if micro < accum - 1 else contextlib.nullcontext()
                with sync:
                    (F.mse_loss(ddp(x), y) / accum).backward()
                (F.mse_loss(reference(x), y) / accum).backward()
            local = torch.cat([p.grad.flatten() for p in reference.parameters()]).double()
            local_sq = local.square().sum()
            recorded = monitor._local_parts.sum()
            assert recorded.item() == pytest.approx(local_sq.item(), rel=1e-6), (rank, recorded)
            # The hook leaves DDP's averaging as it was.
            average = local.clone()
            dist.all_reduce(average)
            average /= world
            synced = torch.cat([p.grad.flatten() for p in net.parameters()]).double()
            assert torch.allclose(synced, average, rtol=1e-5, atol=1e-7)
            monitor.step()
            # The same smoothing by hand, from every process's local norm.
            smalls = [torch.zeros((), dtype=torch.float64) for _ in range(world)]
            dist.all_gather(smalls, local_sq)
            big = average.square().sum()
            c_s, c_b = ((1 / b - 1 / population) * population / (population - 1)
                        for b in (b_small, b_big))
            per_rank = [torch.stack(((c_s * big - c_b * s) / (c_s - c_b),
                                     (s - big) / (c_s - c_b))) for s in smalls]
            ema = decay * ema + (1 - decay) * torch.stack(per_rank).mean(0)
            weight = decay * weight + (1 - decay)
            with torch.no_grad():
                for p, q in zip(net.parameters(), reference.parameters(), strict=True):
                    p -= 0.1 * p.grad
                    q.copy_(p)
                    p.grad, q.grad = None, None
        estimate = monitor.estimate()
        assert estimate.grad_sq == pytest.approx((ema[0] / weight).item(), rel=1e-6)
        assert estimate.trace_sigma == pytest.approx((ema[1] / weight).item(), rel=1e-6)
        # A checkpoint's state gives a new monitor the same numbers, bit for bit.
        state = json.loads(json.dumps(monitor.state_dict()))
        again = NoiseScaleMonitor(DistributedDataParallel(copy.deepcopy(reference)),
                                  b_small=b_small, b_big=b_big, decay=decay,
                                  population=population, state=state)
        assert again.estimate() == estimate
        # Both processes done, and no DDP reducer left holding gloo work, before the group goes:
        # a peer that tears down early, or a reducer freed after it, aborts the other process
        # ("terminate called without an active exception", seen once in CI).
        dist.barrier()
        del ddp, again, monitor
        gc.collect()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_monitor_records_each_process_gradient_under_ddp(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_monitor_worker, args=(2, str(tmp_path / "store")), nprocs=2, join=True)


def test_monitor_needs_ddp():
    with pytest.raises(ConfigError, match="DistributedDataParallel"):
        NoiseScaleMonitor(torch.nn.Linear(2, 2), b_small=4, b_big=8, decay=0.9)


# --- logging in a real 2-process run, and resuming it ------------------------------------------

DDP_ARGS = ["run", "--preset", "smoke", "--epochs", "3", "--batch-size", "64",
            "--log-noise-scale", "--checkpoint-every", "1", "--no-progress",
            "--num-processes", "2"]
NOISE_KEYS = ("noise_scale", "noise_grad_sq", "noise_trace_sigma")


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("logged")
    run_cli(*DDP_ARGS, "--output", tmp / "run", tmp_path=tmp, timeout=400, check=0)
    return tmp / "run"


@pytest.mark.slow
def test_two_process_run_logs_the_noise_scale(logged_run):
    rows = _metrics(logged_run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for row in rows:
        values = [row[k] for k in NOISE_KEYS]
        assert all(isinstance(v, float) and math.isfinite(v) for v in values), row
        assert row["noise_grad_sq"] > 0 and row["noise_trace_sigma"] > 0
        assert row["noise_scale"] == pytest.approx(row["noise_trace_sigma"] / row["noise_grad_sq"])
    results = json.loads((logged_run / "results.json").read_text())
    assert results["noise_scale"] == rows[-1]["noise_scale"]


@pytest.mark.slow
def test_resumed_run_logs_identical_noise_scale(logged_run, tmp_path):
    # The run checkpointed after epoch 2 (every epoch but the last); remove what the last
    # epoch wrote and run again: it resumes there and must log the same values, bit for bit.
    resumed = tmp_path / "run"
    shutil.copytree(logged_run, resumed)
    (resumed / "results.json").unlink()
    (resumed / "model.safetensors").unlink()
    [checkpoint] = (resumed / "checkpoints").iterdir()
    assert json.loads((checkpoint / "state.json").read_text())["state"]["noise_scale"]
    result = run_cli(*DDP_ARGS, "--output", resumed, tmp_path=tmp_path, timeout=400, check=0)
    assert "resuming" in result.stdout
    old, new = _metrics(logged_run), _metrics(resumed)
    assert [{k: r[k] for k in NOISE_KEYS} for r in new] == \
        [{k: r[k] for k in NOISE_KEYS} for r in old]
    a, b = load_file(str(logged_run / "model.safetensors")), load_file(
        str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_one_process_cannot_log_it(tmp_path):
    result = invoke_cli("run", "--preset", "smoke", "--log-noise-scale", "--output",
                        tmp_path / "r", "--dry-run")
    assert_user_error(result, "log_noise_scale needs 2 or more processes")


# --- the CLI ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from lbtkit.config import build_config
    from lbtkit.train import run

    root = tmp_path_factory.mktemp("trained")
    # Two epochs, a checkpoint after the first: weights to measure at besides the final ones.
    config = build_config(preset="smoke", overrides={"epochs": 2, "checkpoint_every": 1,
                                                     "output_dir": str(root / "run")})
    assert run(config, progress=False)["status"] == "completed"
    return root / "run"


def test_noise_scale_cli_writes_json(trained_run, tmp_path):
    result = invoke_cli("noise-scale", trained_run, "--batches", "16,256", "--draws", "6",
                        tmp_path=tmp_path, check=0)
    assert "B_simple" in result.stdout
    stored = json.loads((trained_run / "noise_scale.json").read_text())
    assert stored["settings"]["batch_sizes"] == [16, 256]
    assert stored["settings"]["draws"] == 6 and stored["settings"]["seed"] == 0
    assert stored["batches"]["small"]["batch_size"] == 16
    assert stored["batches"]["big"]["draws"] == 6
    assert stored["grad_sq"] > 0 and stored["trace_sigma"] > 0
    assert stored["b_simple"] == pytest.approx(stored["trace_sigma"] / stored["grad_sq"])
    assert len(stored["weights_sha256"]) == 64
    # The same settings give the same numbers; --output goes elsewhere.
    out = tmp_path / "again.json"
    assert invoke_cli("noise-scale", trained_run, "--batches", "256,16", "--draws", "6",
                   "--output", out).returncode == 0
    assert json.loads(out.read_text())["b_simple"] == stored["b_simple"]
    assert NoiseScaleSpec.from_dict(stored["spec"]) == NoiseScaleSpec(batch_sizes=(16, 256),
                                                                       draws=6)


@pytest.mark.parametrize(("args", "needle"), [
    (["--batches", "32"], "'32'"),
    (["--batches", "64,64"], "'64,64'"),
    (["--batches", "0,64"], "batch size 0"),
    (["--batches", "32,5000"], "batch size 5000 is larger than the training set (1437"),
    (["--draws", "1"], "draws must be at least 2 (for a standard error), got 1"),
    (["--samples", "8"], "noise-scale --samples is now --draws"),
    (["--num-processes", "0"], "--num-processes must be >= 1, got 0"),
])
def test_noise_scale_cli_rejects_bad_input(trained_run, args, needle):
    assert_user_error(invoke_cli("noise-scale", trained_run, *args), needle)


@pytest.mark.slow
def test_noise_scale_split_over_two_processes_equals_one(trained_run, tmp_path):
    """Each process takes every other batch; every batch has its own dropout seed and its
    indices come from the one seeded sequence, so the numbers are one process's, exactly
    (at a checkpoint's weights: the workers measure at the weights they are handed)."""
    args = ["--batches", "16,256", "--draws", "5", "--seed", "3", "--weights",
            _checkpoint_weights(trained_run)]
    assert invoke_cli("noise-scale", trained_run, *args, "--output", tmp_path / "one.json"
                   ).returncode == 0
    run_cli("noise-scale", trained_run, *args, "--num-processes", "2", "--output",
            tmp_path / "two.json", tmp_path=tmp_path, check=0, timeout=300)
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert (one["settings"]["processes"], two["settings"]["processes"]) == (1, 2)
    for key in ("grad_sq", "trace_sigma", "b_simple", "b_simple_std_error"):
        assert two[key] == one[key], key
    assert two["batches"] == one["batches"]


def _checkpoint_weights(run_dir):
    (checkpoint,) = (run_dir / "checkpoints").iterdir()
    return checkpoint / "model.safetensors"


def test_noise_scale_at_a_checkpoints_weights(trained_run, tmp_path):
    """--weights measures elsewhere on the training path, into a file of its own."""
    from lbtkit.noise_scale import default_output, run_noise_scale

    weights = _checkpoint_weights(trained_run)
    args = ["--batches", "16,256", "--draws", "4"]
    result = invoke_cli("noise-scale", trained_run, *args, "--weights", weights)
    assert result.returncode == 0, result.stderr
    written = trained_run / f"noise_scale-{weights.parent.name}.json"
    assert f"written: {written}" in result.stdout
    stored = json.loads(written.read_text())
    assert stored["weights"] == str(weights)
    spec = NoiseScaleSpec(batch_sizes=(16, 256), draws=4)
    direct = run_noise_scale(spec, trained_run, output=tmp_path / "direct.json", weights=weights)
    final = run_noise_scale(spec, trained_run, output=tmp_path / "final.json")
    assert stored["b_simple"] == direct["b_simple"] != final["b_simple"]
    assert stored["weights_sha256"] != final["weights_sha256"]
    assert_user_error(invoke_cli("noise-scale", trained_run, "--weights", tmp_path / "none.st"),
                      "none.st: no such file")
    assert_user_error(invoke_cli("noise-scale", trained_run, "--weights", tmp_path),
                      "a directory, not a weights file")
    # The final weights named as --weights are the final weights: RUN/noise_scale.json.
    assert default_output(trained_run, trained_run / "model.safetensors") == \
        default_output(trained_run) == trained_run / "noise_scale.json"


def test_noise_scale_cli_needs_final_weights(trained_run, tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(trained_run / "config.json", unfinished / "config.json")
    assert_user_error(invoke_cli("noise-scale", unfinished), "has no final weights")
    assert_user_error(invoke_cli("noise-scale", tmp_path / "missing"), "missing")


# --- the report --------------------------------------------------------------------------------


def test_report_marks_the_noise_scale(tmp_path, monkeypatch):
    import lbtkit.report as report
    from lbtkit.config import RunConfig, preset_values
    from lbtkit.fileio import write_json
    from lbtkit.rundir import RunDir
    from lbtkit.sweep import load_sweep, plan_sweep

    base = RunConfig().updated(preset_values("smoke")).updated({"epochs": 1})
    plan_sweep(base, {"batch_size": [32, 64, 128]}, tmp_path)
    runs = load_sweep(tmp_path)["runs"]
    for entry, logged in zip(runs, [None, 300.0, None], strict=True):
        run = RunDir(entry["run_dir"])
        run.create()
        write_json(run.config_path, entry["config"])
        run.append_metrics({"epoch": 1, "train_loss": 1.0, "val_acc": 0.9,
                            "noise_scale": logged})
        write_json(run.results_path, {"status": "completed", **entry["batch_plan"],
                                      "epochs_completed": 1, "best_val_acc": 0.9})
    write_json(RunDir(runs[0]["run_dir"]).root / "noise_scale.json", {"b_simple": 500.0})
    figures = {}
    save = report._save
    monkeypatch.setattr(report, "_save", lambda fig, path: (figures.setdefault(path.name, fig),
                                                            save(fig, path)))
    paths = report.write_report(tmp_path)

    text = paths["report"].read_text()
    assert "## Gradient noise scale" in text and "B_simple ~ 400 (median of 2 runs)" in text
    assert "| 32 | 0 | 500 | noise_scale.json |" in text
    assert "| 64 | 0 | 300 | last value logged in training |" in text
    ax = figures["accuracy_vs_batch.png"].axes[0]
    [line] = [ln for ln in ax.lines if ln.get_label() == "B_simple ~ 400"]
    assert list(line.get_xdata()) == [400.0, 400.0]
    low, high = ax.get_xlim()
    assert low <= 400 <= high
    # an estimate within two standard errors of zero is listed, not drawn
    write_json(RunDir(runs[0]["run_dir"]).root / "noise_scale.json",
               {"b_simple": 99183.0, "b_simple_std_error": 922797.0})
    figures.clear()
    text = report.write_report(tmp_path)["report"].read_text()
    assert "B_simple ~ 300, the dashed line" in text
    assert "| 32 | 0 | 99,183 ± 922,797 (not resolved) | noise_scale.json |" in text
    ax = figures["accuracy_vs_batch.png"].axes[0]
    assert [ln.get_label() for ln in ax.lines if "B_simple" in ln.get_label()] == \
        ["B_simple ~ 300"]


@pytest.mark.parametrize("population", [None, 200])
def test_b_simple_standard_error_matches_finite_differences(population):
    # Delta method: the analytic derivatives against central differences of the estimator.
    b_small, b_big, small, big, e_small, e_big = 8, 128, 3.0, 1.2, 0.05, 0.01
    estimate = estimate_noise_scale(b_small, small, b_big, big, population=population)
    got = b_simple_std_error(b_small, e_small, b_big, e_big, estimate, population=population)
    h = 1e-6

    def ratio(s, b):
        return estimate_noise_scale(b_small, s, b_big, b, population=population).b_simple

    d_small = (ratio(small + h, big) - ratio(small - h, big)) / (2 * h)
    d_big = (ratio(small, big + h) - ratio(small, big - h)) / (2 * h)
    assert got == pytest.approx(math.hypot(d_small * e_small, d_big * e_big), rel=1e-5)
    unmeasurable = estimate_noise_scale(b_small, 1.0, b_big, 1.5)  # tr(Sigma) < 0
    assert b_simple_std_error(b_small, e_small, b_big, e_big, unmeasurable) is None
