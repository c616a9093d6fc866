"""``lbtkit doctor`` and ``lbtkit fetch``: what a user sees before a run, and offline fetching.

Everything runs in-process against temporary directories; "no network" is simulated by making
urlopen fail, so the tests do not depend on this machine's connectivity.
"""

from __future__ import annotations

import hashlib
import io
import os
import urllib.error
import urllib.request

import pytest
import torch
from rich.console import Console

import lbtkit.doctor
from lbtkit.doctor import (
    accelerate_default_config_paths,
    collect_checks,
    doctor_settings,
    imagenet_weights_path,
    run_doctor,
    weights_hash_ok,
)
from lbtkit.errors import ConfigError, UserError
from lbtkit.fetch import fetch
from lbtkit.models.mobilenet import imagenet_weights_path as mobilenet_weights_path


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No SLURM job, no Accelerate variables, HF_HOME and TORCH_HOME in empty temp dirs, and
    not in a container (CI itself may run in one)."""
    for key in list(os.environ):
        if key.startswith(("SLURM_", "ACCELERATE_")):
            monkeypatch.delenv(key)
    monkeypatch.setattr(lbtkit.doctor, "_container", lambda: None)
    monkeypatch.setattr(lbtkit.doctor, "_in_lbtkit_image", lambda: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def doctor(capsys, tmp_path, **kwargs):
    args = {"data_dir": tmp_path / "data", "dataset": "digits", "pretrained": "none",
            "output_dir": tmp_path / "runs" / "x", **kwargs}
    code = run_doctor(**args)
    return code, capsys.readouterr().out


def line(out: str, name: str) -> str:
    """The plain-form line of one check: 'STATUS  NAME  detail'."""
    for text in out.splitlines():
        parts = text.split(None, 1)
        if len(parts) == 2 and parts[1].startswith(name + " "):
            return text
    raise AssertionError(f"no {name!r} line in:\n{out}")


def no_gpu() -> bool:
    return torch.cuda.device_count() == 0


def test_present_data_and_writable_dir_pass_with_a_gpu_warning(clean_env, capsys):
    code, out = doctor(capsys, clean_env)
    assert code == 0, out
    for name in ("lbtkit", "python", "torch", "torchvision", "accelerate", "SLURM"):
        assert line(out, name).startswith("ok"), out
    assert line(out, "dataset digits").startswith("ok")
    assert line(out, "output dir").startswith("ok") and "will be created" in out
    if no_gpu():
        assert line(out, "GPUs").startswith("warn") and "runs on CPU" in line(out, "GPUs")
    assert "doctor:" in out.splitlines()[-1] and "0 failed" in out.splitlines()[-1]
    assert not (clean_env / "runs").exists()  # the check leaves nothing behind


@pytest.mark.parametrize("dataset", ["cifar10", "mnist"])
def test_missing_dataset_fails_and_names_the_fetch_command(clean_env, capsys, dataset):
    data_dir = clean_env / "empty"
    data_dir.mkdir()
    code, out = doctor(capsys, clean_env, dataset=dataset, data_dir=data_dir)
    assert code != 0
    assert line(out, f"dataset {dataset}").startswith("fail")
    assert f"lbtkit fetch {dataset} --data-dir {data_dir}" in out
    assert f"failed (dataset {dataset})" in out.splitlines()[-1]


def test_present_cifar_files_are_found(clean_env, capsys):
    folder = clean_env / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(b"x")
    code, out = doctor(capsys, clean_env, dataset="cifar10")
    assert code == 0, out
    assert "6 files" in line(out, "dataset cifar10")


def test_missing_imagenet_weights_fail_and_name_the_fetch_command(clean_env, capsys):
    code, out = doctor(capsys, clean_env, pretrained="imagenet")
    assert code != 0
    weights = line(out, "weights")
    assert weights.startswith("fail") and str(clean_env / "torch" / "hub" / "checkpoints") in out
    assert f"TORCH_HOME={clean_env / 'torch'} lbtkit fetch weights" in out


def test_in_the_image_the_fixes_say_how_to_get_things_in(clean_env, capsys, monkeypatch):
    monkeypatch.setattr(lbtkit.doctor, "_container", lambda: "apptainer: /images/lbtkit.sif")
    monkeypatch.setattr(lbtkit.doctor, "_in_lbtkit_image", lambda: True)
    code, out = doctor(capsys, clean_env, dataset="cifar10", pretrained="imagenet")
    assert code != 0
    assert "apptainer: /images/lbtkit.sif" in line(out, "container")
    assert "BAKE_WEIGHTS=1" in out and "bind it in" in out


def test_corrupt_weights_are_reported(clean_env, capsys):
    path = imagenet_weights_path()
    assert path.parent == clean_env / "torch" / "hub" / "checkpoints"
    assert str(path) == mobilenet_weights_path()  # the model module owns the answer
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not the weights")
    code, out = doctor(capsys, clean_env, pretrained="imagenet")
    assert code != 0 and "corrupt" in line(out, "weights")
    with pytest.raises(UserError, match="corrupt"):
        fetch("weights")


def test_stray_accelerate_config_is_warned_with_its_path(clean_env, capsys):
    config = clean_env / "hf" / "accelerate" / "default_config.yaml"
    assert accelerate_default_config_paths()[0] == config
    config.parent.mkdir(parents=True)
    config.write_text("compute_environment: LOCAL_MACHINE\nnum_processes: 8\n")
    code, out = doctor(capsys, clean_env)
    assert code == 0  # a warning, not a failure
    assert line(out, "accelerate config").startswith("warn")
    assert str(config) in out


def test_slurm_job_is_shown(clean_env, capsys, monkeypatch):
    for key, value in {"SLURM_JOB_ID": "4242", "SLURM_ARRAY_JOB_ID": "4240",
                       "SLURM_ARRAY_TASK_ID": "2", "SLURM_JOB_NUM_NODES": "2",
                       "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_JOB_PARTITION": "a100"}.items():
        monkeypatch.setenv(key, value)
    code, out = doctor(capsys, clean_env)
    assert code == 0, out
    slurm = line(out, "SLURM")
    for text in ("job 4242", "array task 4240_2", "nodes 2", "gpu[01-02]", "partition a100"):
        assert text in slurm


@pytest.mark.skipif(not no_gpu(), reason="this machine has a GPU")
def test_gpus_allocated_but_invisible_fail(clean_env, capsys, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "4")
    code, out = doctor(capsys, clean_env)
    assert code != 0
    assert line(out, "GPUs").startswith("fail") and "--nv" in out


@pytest.mark.skipif(not no_gpu(), reason="this machine has a GPU")
def test_require_gpu_turns_the_warning_into_a_failure(clean_env):
    checks = {c.name: c for c in collect_checks(
        data_dir=clean_env, dataset="digits", pretrained="none", output_dir=clean_env,
        require_gpu=True)}
    assert checks["GPUs"].status == "fail"


def test_unwritable_output_dir_fails(clean_env, capsys):
    blocker = clean_env / "a-file"
    blocker.write_text("")
    code, out = doctor(capsys, clean_env, output_dir=blocker / "run")
    assert code != 0 and line(out, "output dir").startswith("fail")


def test_weights_hash_check(tmp_path):
    data = b"some weights"
    good = tmp_path / f"w-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    good.write_bytes(data)
    bad = tmp_path / "w-00000000.pth"
    bad.write_bytes(data)
    assert weights_hash_ok(good) and not weights_hash_ok(bad)


# --- fetch -----------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "urlopen", refuse)


def test_fetch_unknown_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="cifar10, cifar100, mnist, fashion-mnist, weights"):
        fetch("imagenet")


@pytest.mark.parametrize("what", ["cifar10", "weights"])
def test_fetch_without_network_is_one_clear_line(clean_env, offline, what):
    with pytest.raises(UserError) as info:
        fetch(what, data_dir=clean_env / "data")
    message = str(info.value)
    assert "\n" not in message and "login node" in message and "name resolution" in message


def _idx(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return header + payload


def test_fetch_of_a_present_dataset_needs_no_network(clean_env, offline, capsys):
    raw = clean_env / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 3), ("t10k", 2)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            _idx(0x803, (n, 28, 28), bytes(n * 28 * 28)))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(0x801, (n,), bytes(range(n))))
    assert fetch("mnist", data_dir=clean_env / "data") == raw
    code, out = doctor(capsys, clean_env, dataset="mnist")
    assert code == 0 and line(out, "dataset mnist").startswith("ok")
    assert f"found in {raw}: train-images-idx3-ubyte 2.3 KiB" in line(out, "dataset mnist")


def test_settings_follow_the_run_config_even_when_it_does_not_validate(tmp_path):
    settings = doctor_settings(preset="seed-mobilenetv2-finetune",
                               overrides={"data_dir": str(tmp_path), "output_dir": None})
    assert settings["dataset"] == "cifar10" and settings["pretrained"] == "imagenet"
    assert settings["data_dir"] == str(tmp_path)
    assert settings["output_dir"].startswith("runs/mobilenet_v2-cifar10")
    missing = str(tmp_path / "nope.pth")
    assert doctor_settings(overrides={"pretrained": missing})["pretrained"] == missing
    with pytest.raises(ConfigError, match="no-such-preset"):
        doctor_settings(preset="no-such-preset")


def test_a_terminal_gets_a_table(clean_env):
    console = Console(file=io.StringIO(), force_terminal=True, width=160)
    code = run_doctor(data_dir=clean_env, dataset="cifar10", pretrained="none",
                      output_dir=clean_env, console=console)
    text = console.file.getvalue()
    assert code == 1 and "┃" in text and "fix:" in text and "lbtkit fetch cifar10" in text
