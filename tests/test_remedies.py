"""The large-batch remedies against hand computations: ghost BN, global (synchronised) BN,
SAM; and each of them (plus LARS/LAMB) selected from the config in a real run."""

from __future__ import annotations

import json
import socket
import time
import traceback
from queue import Empty

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from lbtkit import sam
from lbtkit.config import build_config, plan_batches
from lbtkit.errors import ConfigError
from lbtkit.models import register_model
from lbtkit.models.norm import (
    GhostBatchNorm1d,
    GhostBatchNorm2d,
    GlobalBatchNorm,
    convert_batchnorm,
    frozen_running_stats,
)
from lbtkit.rundir import RunDir
from lbtkit.train import run

from helpers import run_cli, scaled_timeout


def _bn_mlp(*, num_classes, in_channels, image_size, pretrained):
    # BatchNorm but no dropout: a training step is a deterministic function of the batch.
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, 16),
                         nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, num_classes))


@pytest.fixture
def bn_mlp_registered():
    """``_test_bn_mlp`` in the model registry for one test only (others list the models)."""
    from lbtkit.models import registry

    register_model("_test_bn_mlp")(_bn_mlp)
    yield "_test_bn_mlp"
    del registry._REGISTRY["_test_bn_mlp"]


def _smoke(tmp_path, name="run", **overrides):
    values = {"epochs": 1, "output_dir": str(tmp_path / name), **overrides}
    return build_config(preset="smoke", overrides=values)


# --- ghost batch normalisation -----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(32, 5), (32, 3, 4, 4)])
def test_ghost_bn_with_the_whole_batch_is_plain_bn(shape):
    torch.manual_seed(0)
    x = torch.randn(shape) * 3 + 1
    plain = nn.BatchNorm1d(shape[1]) if len(shape) == 2 else nn.BatchNorm2d(shape[1])
    ghost = convert_batchnorm(nn.Sequential(plain), ghost_batch_size=32)[0]
    reference = nn.BatchNorm1d(shape[1]) if len(shape) == 2 else nn.BatchNorm2d(shape[1])
    assert isinstance(ghost, (GhostBatchNorm1d, GhostBatchNorm2d))
    assert torch.equal(ghost(x), reference(x))
    assert torch.equal(ghost.running_mean, reference.running_mean)
    assert torch.equal(ghost.running_var, reference.running_var)


def test_ghost_bn_normalises_each_ghost_batch_by_its_own_statistics():
    torch.manual_seed(0)
    x = torch.randn(12, 3) * torch.tensor([1.0, 2.0, 5.0]) + torch.arange(12.0)[:, None]
    bn = GhostBatchNorm1d(3, momentum=0.1)
    bn.ghost_batch_size = 4
    out = bn(x)
    running_mean, running_var = torch.zeros(3), torch.ones(3)
    for chunk, got in zip(x.split(4), out.split(4), strict=True):
        mean = chunk.mean(0)
        var = ((chunk - mean) ** 2).mean(0)
        torch.testing.assert_close(got, (chunk - mean) / torch.sqrt(var + bn.eps))
        # Algorithm 1 of Hoffer et al.: the running statistics see every ghost batch in turn.
        running_mean = 0.9 * running_mean + 0.1 * mean
        running_var = 0.9 * running_var + 0.1 * var * 4 / 3
    torch.testing.assert_close(bn.running_mean, running_mean)
    torch.testing.assert_close(bn.running_var, running_var)
    assert int(bn.num_batches_tracked) == 3
    bn.eval()  # evaluation: the running statistics, as plain BatchNorm
    torch.testing.assert_close(bn(x), (x - running_mean) / torch.sqrt(running_var + bn.eps))


def test_converting_keeps_the_state_dict_and_the_eval_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 6), nn.BatchNorm1d(6))
    model.train()
    model(torch.randn(8, 3, 6, 6))  # non-trivial running statistics
    model.eval()
    x = torch.randn(5, 3, 6, 6)
    before, expected = {k: v.clone() for k, v in model.state_dict().items()}, model(x)
    for converted in (convert_batchnorm(model, ghost_batch_size=2),
                      convert_batchnorm(model, sync=True)):
        assert converted.state_dict().keys() == before.keys()
        for key, value in converted.state_dict().items():
            assert torch.equal(value, before[key]), key
        assert not converted.training
        assert torch.equal(converted(x), expected)
    assert isinstance(model[1], (GlobalBatchNorm, nn.SyncBatchNorm))


def test_ghost_and_sync_exclude_each_other():
    with pytest.raises(ConfigError, match="exclude"):
        convert_batchnorm(nn.BatchNorm1d(3), ghost_batch_size=2, sync=True)


def test_ghost_size_must_divide_the_per_device_batch(tmp_path):
    config = _smoke(tmp_path, batch_size=64, ghost_batch_size=24)
    with pytest.raises(ConfigError, match=r"ghost_batch_size 24 does not divide.*64"):
        plan_batches(config, 1)
    with pytest.raises(ConfigError, match=r"ghost_batch_size 16 does not divide.*8"):
        plan_batches(config.updated({"ghost_batch_size": 16, "grad_accum_steps": 8}), 1)
    assert plan_batches(config.updated({"ghost_batch_size": 16}), 2).per_device_batch_size == 32


# --- global BatchNorm across processes ---------------------------------------------------------


def _global_bn_worker(rank: int, world: int, port: int, x, weight, bias, queue) -> None:
    try:
        # As numpy arrays: tensors would travel as shared memory that vanishes with the worker.
        queue.put((rank, *(t.numpy() for t in _global_bn_pass(rank, world, port, x, weight,
                                                              bias))))
    except BaseException:
        queue.put((rank, "error", traceback.format_exc()))
        raise


def _global_bn_pass(rank: int, world: int, port: int, x, weight, bias) -> tuple:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        bn = GlobalBatchNorm(x.shape[1], momentum=0.1)
        with torch.no_grad():
            bn.weight.copy_(weight)
            bn.bias.copy_(bias)
        part = x.chunk(world)[rank].clone().requires_grad_(True)
        out = bn(part)
        # A loss over the whole batch (sum over processes), so the input gradient of each
        # part must include the path through the other process's statistics.
        (out * torch.arange(out.numel()).view_as(out).float()).sum().backward()
        result = (out.detach(), part.grad, bn.weight.grad, bn.running_mean.clone(),
                  bn.running_var.clone())
        dist.barrier()  # neither process tears the group down while the other still uses it
        return result
    finally:
        dist.destroy_process_group()


def _collect(queue, processes, timeout: float) -> dict[int, tuple]:
    """Each worker's result; a worker error or a timeout fails with what every worker did."""
    results: dict[int, tuple] = {}
    deadline = time.monotonic() + timeout
    while len(results) < len(processes):
        try:
            rank, *rest = queue.get(timeout=1.0)
        except Empty:
            dead = [p for p in processes if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                states = ", ".join(f"rank {i}: alive={p.is_alive()} exit={p.exitcode}"
                                   for i, p in enumerate(processes))
                for process in processes:
                    process.kill()
                what = "a worker died" if dead else f"timed out after {timeout:.3g} s"
                raise AssertionError(f"{what}; got ranks {sorted(results)}; {states} "
                                     f"(worker output is in the captured stderr)") from None
            continue
        if isinstance(rest[0], str):  # ("error", traceback)
            for process in processes:
                process.kill()
            raise AssertionError(f"rank {rank} failed:\n{rest[1]}")
        results[rank] = tuple(torch.from_numpy(array) for array in rest)
    return results


def test_global_bn_over_two_processes_equals_bn_over_the_whole_batch():
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    x = torch.randn(8, 3, 2, 2) * 2 + 1
    weight, bias = torch.tensor([1.0, 0.5, 2.0]), torch.tensor([0.0, 1.0, -1.0])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_global_bn_worker,
                                 args=(rank, 2, port, x, weight, bias, queue))
                 for rank in range(2)]
    for process in processes:
        process.start()
    results = _collect(queue, processes, timeout=scaled_timeout(120))
    for rank, process in enumerate(processes):
        process.join(timeout=scaled_timeout(60))
        assert process.exitcode == 0, f"rank {rank}: exit {process.exitcode}"

    reference = nn.BatchNorm2d(3, momentum=0.1)
    with torch.no_grad():
        reference.weight.copy_(weight)
        reference.bias.copy_(bias)
    whole = x.clone().requires_grad_(True)
    out = reference(whole)
    halves = [torch.arange(out.numel() // 2).view_as(out.chunk(2)[0]).float()] * 2
    (out * torch.cat(halves)).sum().backward()
    torch.testing.assert_close(torch.cat([results[0][0], results[1][0]]), out.detach())
    torch.testing.assert_close(torch.cat([results[0][1], results[1][1]]), whole.grad)
    # The weight gradient is per process (DDP averages it); together they make the whole one.
    torch.testing.assert_close(results[0][2] + results[1][2], reference.weight.grad)
    for rank in (0, 1):
        torch.testing.assert_close(results[rank][3], reference.running_mean)
        torch.testing.assert_close(results[rank][4], reference.running_var)


def test_global_bn_in_one_process_is_plain_bn():
    torch.manual_seed(0)
    x = torch.randn(6, 4)
    bn, plain = GlobalBatchNorm(4), nn.BatchNorm1d(4)
    torch.testing.assert_close(bn(x), plain(x))
    torch.testing.assert_close(bn.running_var, plain.running_var)


@pytest.mark.slow
def test_sync_bn_trains_under_two_processes(tmp_path):
    result = run_cli("run", "--preset", "smoke", "--model", "c1", "--epochs", "1",
                     "--sync-bn", "--num-processes", "2", "--no-progress",
                     "--output", tmp_path / "run", tmp_path=tmp_path, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "completed" and results["config"]["sync_bn"] is True
    assert results["final"]["val_acc"] > 0.5


# --- SAM ---------------------------------------------------------------------------------------


def test_sam_ascend_and_descend_by_hand():
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    b = torch.tensor([[0.5]], requires_grad=True)
    c = torch.tensor([3.0], requires_grad=True)  # no gradient: left alone
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])
    perturbation = sam.ascend([a, b, c], rho=0.5)
    # |g| = 5, e = 0.5 * g / 5
    torch.testing.assert_close(a.detach(), torch.tensor([1.3, 2.0]))
    torch.testing.assert_close(b.detach(), torch.tensor([[0.9]]))
    assert torch.equal(c.detach(), torch.tensor([3.0]))
    sam.descend(perturbation)
    torch.testing.assert_close(a.detach(), torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(b.detach(), torch.tensor([[0.5]]))


def test_sam_does_not_move_along_a_non_finite_gradient():
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    a.grad = torch.tensor([float("inf"), 1.0])  # an fp16 overflow step
    perturbation = sam.ascend([a], rho=0.5)
    assert torch.equal(a.detach(), torch.tensor([1.0, 2.0]))
    sam.descend(perturbation)
    assert torch.equal(a.detach(), torch.tensor([1.0, 2.0]))


def test_frozen_running_stats_leave_bn_buffers_alone():
    bn = nn.BatchNorm1d(3)
    bn(torch.randn(8, 3))
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    with frozen_running_stats(bn):
        bn(torch.randn(8, 3) + 5)
    for key, value in bn.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert bn.momentum == 0.1
    bn(torch.randn(8, 3) + 5)  # and afterwards they move again
    assert not torch.equal(bn.running_mean, before["running_mean"])


def _first_batch(config):
    """The first global batch of epoch 0, as the loop draws and augments it."""
    from lbtkit.data import augment, draw_epoch, load_dataset
    from lbtkit.evaluate import InputSpec

    data = load_dataset(config.dataset, config.data_dir)
    info = data.info
    draw = draw_epoch(data.train_labels.shape[0], seed=config.seed, epoch=0,
                      padding=info.crop_padding, flip=info.flip, device=torch.device("cpu"))
    idx = draw.order[:config.batch_size]
    x = InputSpec(info, config.image_size)(augment(
        data.train_images[idx], draw.shifts[idx], draw.flips[idx], padding=info.crop_padding))
    return x, data.train_labels[idx]


def test_one_sam_step_in_the_loop_equals_the_hand_computation(tmp_path, bn_mlp_registered):
    rho, lr = 0.5, 0.2
    # 1437 training digits, batch 1024: one optimizer step per epoch. Plain SGD, so the step
    # is w - lr * g(w + e).
    config = _smoke(tmp_path, model=bn_mlp_registered, batch_size=1024, sam_rho=rho, lr=lr,
                    momentum=0.0, weight_decay=0.0, scheduler="constant",
                    eval_every=1, checkpoint_every=0)
    run(config, progress=False)
    trained = load_file(str(RunDir(config.output_dir).model_path))

    torch.manual_seed(config.seed)
    model = _bn_mlp(num_classes=10, in_channels=1, image_size=8, pretrained="none")
    x, y = _first_batch(config)
    model.train()
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    norm = torch.sqrt(sum((g * g).sum() for g in grads))
    statistics = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads, strict=True):
            p.add_(rho * g / norm)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads, strict=True):
            p.sub_(rho * g / norm)
            p.sub_(lr * p.grad)
    for name, value in model.named_parameters():
        torch.testing.assert_close(trained[name], value.detach(), rtol=1e-5, atol=1e-6)
    # The second pass did not count as another look at the data.
    for name, value in statistics.items():
        torch.testing.assert_close(trained[name], value)
    # ... and SAM is not plain SGD: without the ascent the weights would differ.
    plain = _smoke(tmp_path, name="plain", model=bn_mlp_registered, batch_size=1024, lr=lr,
                   momentum=0.0, weight_decay=0.0, scheduler="constant", checkpoint_every=0)
    run(plain, progress=False)
    plain_weights = load_file(str(RunDir(plain.output_dir).model_path))
    assert not torch.allclose(plain_weights["1.weight"], trained["1.weight"], atol=1e-4)


# --- every remedy selectable from the config ---------------------------------------------------


@pytest.mark.parametrize("overrides", [
    {"optimizer": "lars", "lr": 2.0},
    {"optimizer": "lamb", "lr": 0.01},
    {"ghost_batch_size": 16, "model": "c1"},
    {"sam_rho": 0.05},
    {"lr_scaling": "sqrt", "warmup_epochs": 1, "epochs": 2},
], ids=["lars", "lamb", "ghost-bn", "sam", "sqrt-warmup"])
def test_each_remedy_trains_from_the_config(tmp_path, overrides):
    config = _smoke(tmp_path, epochs=overrides.pop("epochs", 2), **overrides)
    results = run(config, progress=False)
    assert results["status"] == "completed"
    stored = json.loads(RunDir(config.output_dir).config_path.read_text())
    for key, value in overrides.items():
        assert stored[key] == value
    assert results["final"]["val_acc"] > 0.6
