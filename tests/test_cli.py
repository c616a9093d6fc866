"""The CLI as a user meets it: dry runs, listings, and every user mistake as one clean line."""

from __future__ import annotations

import json

import pytest

from helpers import assert_user_error


def test_dry_run_prints_resolved_config_with_batch_plan(cli):
    result = cli("run", "--preset", "seed-mobilenetv2-finetune", "--batch-size", "1024",
                 "--num-processes", "4", "--max-per-device-batch", "64", "--dry-run", check=0)
    shown = json.loads(result.stdout)
    assert shown["lr"] == pytest.approx(9.6e-3)
    assert shown["world_size"] == 4
    assert shown["grad_accum_steps"] == 4
    assert shown["per_device_batch_size"] == 64
    assert shown["model"] == "mobilenet_v2" and shown["num_classes"] == 10


def test_presets_and_models_are_listed(cli):
    out = cli("presets", check=0).stdout
    assert "seed-mobilenetv2-finetune" in out and "seed-mobilenetv2-scratch" in out
    names = cli("models", check=0).stdout.split()
    assert {"mobilenet_v2", "mobilenet_v2_cifar", "vgg11_bn", "c1", "c2", "f1"} <= set(names)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--batch-size", "0"], "batch_size"),
        (["--batch-size", "100", "--num-processes", "3"], "100"),
        (["--lr", "-0.5"], "-0.5"),
        (["--model", "resnet9000"], "resnet9000"),
        (["--dataset", "imagenet22k"], "imagenet22k"),
        (["--preset", "no-such-preset"], "no-such-preset"),
        (["--optimizer", "lion"], "lion"),
        (["--num-processes", "0"], "--num-processes"),
    ],
)
def test_bad_values_exit_2_with_one_line(cli, args, needle):
    assert_user_error(cli("run", *args, "--dry-run"), needle)


def test_config_file_with_unknown_key(cli, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("batch_size = 64\nlearning_rate = 0.1\n")
    assert_user_error(cli("run", "--config", path, "--dry-run"), "learning_rate")


def test_missing_config_file(cli, tmp_path):
    assert_user_error(cli("run", "--config", tmp_path / "nope.toml"), "nope.toml")


def test_missing_dataset_says_where_and_how(cli, tmp_path):
    result = cli("run", "--dataset", "cifar10", "--model", "c1", "--data-dir", tmp_path / "d",
                 "--output", tmp_path / "run")
    assert_user_error(result, str(tmp_path / "d"))
    assert "--download" in result.stderr


def test_batch_larger_than_dataset(cli, tmp_path):
    result = cli("run", "--preset", "smoke", "--batch-size", "4096", "--output", tmp_path / "r")
    assert_user_error(result, "4096")


def test_unreadable_checkpoint(cli, tmp_path):
    run_dir = tmp_path / "run"
    cli("run", "--preset", "smoke", "--epochs", "3", "--output", run_dir, check=0)
    (run_dir / "results.json").unlink()  # pretend it was killed before the end
    (run_dir / "model.safetensors").unlink()
    (ckpt,) = (run_dir / "checkpoints").iterdir()
    (ckpt / "model.safetensors").write_bytes(b"not a safetensors file")
    assert_user_error(cli("run", "--preset", "smoke", "--epochs", "3", "--output", run_dir),
                       str(ckpt))


def test_reusing_a_run_dir_with_other_settings(cli, tmp_path):
    run_dir = tmp_path / "run"
    cli("run", "--preset", "smoke", "--epochs", "1", "--output", run_dir, check=0)
    result = cli("run", "--preset", "smoke", "--epochs", "1", "--batch-size", "32",
                 "--output", run_dir)
    assert_user_error(result, "batch_size")


def test_fp16_without_cuda_is_a_user_error(cli, tmp_path):
    result = cli("run", "--preset", "smoke", "--mixed-precision", "fp16",
                 "--output", tmp_path / "r")
    assert_user_error(result, "fp16")
