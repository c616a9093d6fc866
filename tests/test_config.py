"""RunConfig: layering, validation, round trip, and the batch/LR arithmetic (known answers)."""

from __future__ import annotations

import json

import pytest

from lbtkit.config import (
    RunConfig,
    build_config,
    list_presets,
    plan_batches,
    preset_values,
    scale_lr,
)
from lbtkit.errors import ConfigError

# The seed's table: batch size on 4 GPUs -> initial (scaled) learning rate.
SEED_TABLE = {32: 3e-4, 64: 6e-4, 128: 1.2e-3, 256: 2.4e-3, 512: 4.8e-3, 1024: 9.6e-3}


@pytest.mark.parametrize("batch,expected", sorted(SEED_TABLE.items()))
def test_linear_scaling_reproduces_seed_table(batch, expected):
    assert scale_lr(3e-4, 32, batch, "linear") == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("batch,expected", sorted(SEED_TABLE.items()))
def test_seed_preset_resolves_to_seed_table_lr(batch, expected):
    config = build_config(preset="seed-mobilenetv2-finetune", overrides={"batch_size": batch})
    assert config.lr == pytest.approx(expected, rel=1e-12)
    assert (config.model, config.dataset, config.optimizer) == ("mobilenet_v2", "cifar10", "sgd")
    assert (config.momentum, config.weight_decay, config.epochs) == (0.9, 1e-4, 200)
    assert config.scheduler == "cosine" and config.pretrained == "imagenet"


def test_sqrt_and_none_scaling():
    assert scale_lr(0.1, 256, 1024, "sqrt") == pytest.approx(0.2)
    assert scale_lr(0.1, 256, 64, "sqrt") == pytest.approx(0.05)
    assert scale_lr(0.1, 256, 1024, "none") == 0.1


def test_scratch_preset_scales_point_one_per_256():
    config = build_config(preset="seed-mobilenetv2-scratch", overrides={"batch_size": 512})
    assert config.lr == pytest.approx(0.2)
    assert config.model == "mobilenet_v2_cifar" and config.warmup_epochs > 0


def test_explicit_lr_wins_over_scaling():
    assert build_config(overrides={"lr": 0.5, "batch_size": 1024}).lr == 0.5


def test_layering_order_defaults_preset_file_flags(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('epochs = 7\nbatch_size = 32\noptimizer = "adam"\n')
    config = build_config(preset="smoke", config_file=path, overrides={"batch_size": 16})
    assert config.model == "f1"  # from the preset
    assert config.epochs == 7  # file over preset
    assert config.optimizer == "adam"
    assert config.batch_size == 16  # flag over file


def test_resolved_fills_dataset_shape_and_paths():
    config = build_config(overrides={"dataset": "cifar10", "model": "c1", "batch_size": 64})
    assert (config.num_classes, config.image_size) == (10, 32)
    assert config.name == "c1-cifar10-b64-s0"
    assert config.output_dir.endswith("runs/c1-cifar10-b64-s0")


def test_round_trip_through_json(tmp_path):
    config = build_config(preset="seed-mobilenetv2-finetune", overrides={"batch_size": 256})
    text = json.dumps(config.to_dict())
    again = RunConfig.from_dict(json.loads(text))
    assert again == config
    assert again.resolved() == config  # resolution is idempotent


def test_config_json_file_repeats_a_run(tmp_path):
    config = build_config(overrides={"epochs": 3, "seed": 5})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    assert build_config(config_file=path) == config


@pytest.mark.parametrize(
    "world,accum,limit,expected",
    [
        (1, None, None, (1, 1024)),
        (4, None, None, (1, 256)),
        (4, None, 64, (4, 64)),  # 1024 / 4 processes = 256 -> 4 steps of 64
        (4, None, 100, (4, 64)),  # smallest accumulation that fits: 256/3 is not whole
        (2, 8, None, (8, 64)),
    ],
)
def test_batch_plan_arithmetic(world, accum, limit, expected):
    config = RunConfig(batch_size=1024, grad_accum_steps=accum, max_per_device_batch=limit)
    plan = plan_batches(config, world)
    assert (plan.grad_accum_steps, plan.per_device_batch_size) == expected
    assert plan.world_size * plan.grad_accum_steps * plan.per_device_batch_size == 1024


@pytest.mark.parametrize(
    "batch,world,accum,needle",
    [(100, 3, None, "100"), (96, 2, 5, "96"), (64, 1, 128, "64")],
)
def test_batch_plan_rejects_indivisible(batch, world, accum, needle):
    with pytest.raises(ConfigError, match=needle):
        plan_batches(RunConfig(batch_size=batch, grad_accum_steps=accum), world)


@pytest.mark.parametrize(
    "overrides,needle",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"lr": -0.1}, "-0.1"),
        ({"model": "resnet9000"}, "resnet9000"),
        ({"dataset": "imagenet22k"}, "imagenet22k"),
        ({"optimizer": "lion"}, "lion"),
        ({"scheduler": "onecycle"}, "onecycle"),
        ({"lr_scaling": "cubic"}, "cubic"),
        ({"mixed_precision": "fp8"}, "fp8"),
        ({"pretrained": "/no/such/weights.pth"}, "/no/such/weights.pth"),
        ({"epochs": 5, "warmup_epochs": 5}, "warmup_epochs"),
    ],
)
def test_validation_names_the_bad_value(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        build_config(overrides=overrides)


def test_unknown_key_in_file_is_refused(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("batch_sise = 64\n")
    with pytest.raises(ConfigError, match="batch_sise"):
        build_config(config_file=path)


def test_wrong_type_in_file_is_refused(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('epochs = "ten"\n')
    with pytest.raises(ConfigError, match="epochs"):
        build_config(config_file=path)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError, match="seed-mobilenetv2-finetune"):
        build_config(preset="nope")


def test_every_preset_resolves():
    for name in list_presets():
        assert preset_values(name)
        build_config(preset=name)


def test_keskar_f1_fashion_is_the_papers_f1_protocol():
    from lbtkit.data import dataset_info

    for batch in (256, 6000):  # SB and LB = 10% of the 60,000 training images
        config = build_config(preset="keskar-f1-fashion", overrides={"batch_size": batch})
        assert (config.model, config.dataset, config.optimizer) == ("f1", "fashion-mnist", "adam")
        assert config.lr == 1e-3 and config.scheduler == "constant"  # Adam 1e-3 at any batch
        assert config.weight_decay == 0 and config.warmup_epochs == 0
    assert preset_values("keskar-f1-fashion")["batch_size"] == 256
    # No augmentation: the data set's entry (there is no config switch) has no crop, no flip.
    info = dataset_info("fashion-mnist")
    assert info.crop_padding == 0 and info.flip is False


def test_fashion_batch_sweep_scales_linearly_with_warmup_at_a_fixed_budget():
    from lbtkit.config import sweep_settings

    sweep = sweep_settings(preset="fashion-batch-sweep")
    assert sweep["batch_size"] == [2**k for k in range(5, 14)]  # 32 .. 8192
    for batch in sweep["batch_size"]:
        config = build_config(preset="fashion-batch-sweep", overrides={"batch_size": batch})
        assert config.lr == pytest.approx(0.1 * batch / 256, rel=1e-12)
        assert config.epochs == 10 and config.warmup_epochs == 2  # the same budget everywhere
        assert config.dataset == "fashion-mnist" and config.model == "f1"
        assert config.val_split == 5000  # validation held out of the training set
