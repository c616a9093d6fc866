"""Models beyond the registry: torchvision's zoo, a user's module, installed plug-ins."""

from __future__ import annotations

import json
import os
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from lbtkit.errors import ConfigError
from lbtkit.models import build_model, list_models
from lbtkit.models.external import replace_head

from helpers import assert_user_error, invoke_cli, run_cli

TINY_MODULE = """
    from torch import nn

    def tiny(*, num_classes, in_channels, image_size, pretrained):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, num_classes))

    not_callable = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(textwrap.dedent(TINY_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_torchvision_zoo_model_gets_a_head_for_the_classes():
    model = build_model("torchvision:resnet18", num_classes=10, in_channels=3, image_size=32)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_torchvision_pretrained_file_fills_the_body_and_replaces_the_head(tmp_path):
    import torchvision

    torch.manual_seed(1)
    imagenet_shaped = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.safetensors"
    save_file(imagenet_shaped.state_dict(), str(path))
    model = build_model("torchvision:resnet18", num_classes=7, in_channels=3, image_size=32,
                        pretrained=str(path))
    assert torch.equal(model.conv1.weight, imagenet_shaped.conv1.weight)
    assert torch.equal(model.layer4[1].conv2.weight, imagenet_shaped.layer4[1].conv2.weight)
    assert model.fc.out_features == 7 and model.fc.in_features == 512


def test_replace_head_finds_the_last_linear_layer():
    import torchvision

    model = torchvision.models.mobilenet_v3_small(weights=None)
    replace_head(model, 5)
    assert model.classifier[-1].out_features == 5
    assert model.classifier[0].out_features == 1024  # the hidden layer stays


@pytest.mark.parametrize("name,needle", [
    ("torchvision:resnet9000", "resnet9000"),
    ("no_such_module_xyz:build", "no_such_module_xyz"),
    ("my_models:missing", "'missing'"),
    ("my_models:not_callable", "not callable"),
    ("nonsense", "nonsense"),
])
def test_bad_model_names_are_config_errors(user_module, name, needle):
    with pytest.raises(ConfigError, match=needle):
        build_model(name, num_classes=10)


def test_torchvision_model_refuses_grayscale_input():
    with pytest.raises(ConfigError, match="3-channel"):
        build_model("torchvision:resnet18", num_classes=10, in_channels=1, image_size=28)


def test_user_module_builder_trains_through_the_cli(user_module, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    # The worker imports the user's module as any Python would: from PYTHONPATH.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(user_module), os.environ.get("PYTHONPATH", "")]))
    result = run_cli("run", "--preset", "smoke", "--model", "my_models:tiny", "--epochs", "1",
                     "--no-progress", "--output", run_dir, tmp_path=tmp_path, check=0)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed", result.stdout
    assert results["config"]["model"] == "my_models:tiny"
    from lbtkit import load_run

    model, config = load_run(run_dir)
    assert isinstance(model, torch.nn.Sequential) and config.model == "my_models:tiny"


def test_unknown_module_is_one_line_through_the_cli(tmp_path):
    assert_user_error(invoke_cli("run", "--preset", "smoke", "--model", "nowhere_xyz:net",
                                 "--output", tmp_path / "run", tmp_path=tmp_path),
                      "nowhere_xyz")


def test_installed_plugin_is_listed_and_built(user_module, monkeypatch):
    dist = user_module / "my_models_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-models-plugin\n"
                                   "Version: 1.0\n")
    (dist / "entry_points.txt").write_text("[lbtkit.models]\nplugged_tiny = my_models:tiny\n")
    assert "plugged_tiny" in list_models()
    model = build_model("plugged_tiny", num_classes=3, in_channels=1, image_size=8)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
