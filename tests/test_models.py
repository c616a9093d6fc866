"""Tests for lbtkit.models: shapes, exact parameter counts, strides and pretrained loading."""

from __future__ import annotations

import os
from urllib.error import URLError

import pytest
import safetensors.torch
import torch
import torchvision
from torch import nn

from lbtkit.errors import ConfigError
from lbtkit.models import build_model, list_models, register_model

ALL_MODELS = ["c1", "c2", "f1", "mobilenet_v2", "mobilenet_v2_cifar", "vgg11_bn"]
# (in_channels, image_size): 8x8 digits, MNIST, CIFAR.
INPUT_SHAPES = [(1, 8), (1, 28), (3, 32)]
IMAGENET_FILE = "mobilenet_v2-b0353104.pth"
TORCHVISION_MOBILENET_V2_PARAMS = 3_504_872


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv(k: int, cin: int, cout: int) -> int:
    return k * k * cin * cout + cout


def bn(c: int) -> int:
    return 2 * c


def linear(fan_in: int, fan_out: int) -> int:
    return fan_in * fan_out + fan_out


def ceil_half(size: int, times: int) -> int:
    for _ in range(times):
        size = -(-size // 2)
    return size


def expected_c1(c: int, s: int, n: int) -> int:
    side = ceil_half(s, 2)  # two 'same' 3x3/2 max pools
    layers = [
        conv(5, c, 64) + bn(64),
        conv(5, 64, 64) + bn(64),
        linear(64 * side * side, 384) + bn(384),
        linear(384, 192) + bn(192),
        linear(192, n),
    ]
    return sum(layers)


def expected_c2(c: int, s: int, n: int) -> int:
    side = ceil_half(s, 5)  # five 2x2/2 ceil max pools
    layers = [
        conv(3, c, 64) + bn(64),
        conv(3, 64, 64) + bn(64),
        conv(3, 64, 128) + bn(128),
        conv(3, 128, 128) + bn(128),
        conv(3, 128, 256) + bn(256),
        2 * (conv(3, 256, 256) + bn(256)),
        conv(3, 256, 512) + bn(512),
        2 * (conv(3, 512, 512) + bn(512)),
        3 * (conv(3, 512, 512) + bn(512)),
        linear(512 * side * side, 512) + bn(512),
        linear(512, n),
    ]
    return sum(layers)


def expected_f1(c: int, s: int, n: int) -> int:
    layers = [
        linear(c * s * s, 512) + bn(512),
        4 * (linear(512, 512) + bn(512)),
        linear(512, n),
    ]
    return sum(layers)


def expected_vgg11_bn(c: int, s: int, n: int) -> int:
    layers = [
        conv(3, c, 64) + bn(64),
        conv(3, 64, 128) + bn(128),
        conv(3, 128, 256) + bn(256),
        conv(3, 256, 256) + bn(256),
        conv(3, 256, 512) + bn(512),
        3 * (conv(3, 512, 512) + bn(512)),
        linear(512, n),  # the adaptive pool makes the feature 512 for every input size
    ]
    return sum(layers)


def expected_mobilenet_v2(c: int, s: int, n: int) -> int:
    head_delta = -linear(1280, 1000) + linear(1280, n)
    stem_delta = 3 * 3 * 32 * (c - 3)  # stem conv has no bias
    return TORCHVISION_MOBILENET_V2_PARAMS + head_delta + stem_delta


EXPECTED_PARAMS = {
    "c1": expected_c1,
    "c2": expected_c2,
    "f1": expected_f1,
    "vgg11_bn": expected_vgg11_bn,
    "mobilenet_v2": expected_mobilenet_v2,
    "mobilenet_v2_cifar": expected_mobilenet_v2,  # only strides differ
}


def random_mobilenet_state(num_classes: int = 1000) -> dict[str, torch.Tensor]:
    """A torchvision MobileNetV2 state dict where every tensor (buffers too) is distinctive."""
    gen = torch.Generator().manual_seed(1234)
    state = torchvision.models.mobilenet_v2(num_classes=num_classes).state_dict()
    out = {}
    for key, value in state.items():
        if value.is_floating_point():
            out[key] = torch.randn(value.shape, generator=gen)
        else:  # num_batches_tracked
            out[key] = torch.full_like(value, 7)
    return out


def assert_loaded(model: nn.Module, saved: dict[str, torch.Tensor], skip: set[str]) -> None:
    own = model.state_dict()
    for key, value in saved.items():
        if key not in skip:
            assert torch.equal(own[key], value), key


HEAD = {"classifier.1.weight", "classifier.1.bias"}


# --- registry -------------------------------------------------------------------------------


def test_list_models_is_sorted_and_complete() -> None:
    assert list_models() == ALL_MODELS


def test_unknown_model_names_bad_value_and_known_models() -> None:
    with pytest.raises(ConfigError) as info:
        build_model("resnet9000", num_classes=10)
    message = str(info.value)
    assert "'resnet9000'" in message
    assert "known models: " + ", ".join(ALL_MODELS) in message


def test_register_model_rejects_duplicate_name() -> None:
    with pytest.raises(ValueError, match="c1"):
        register_model("c1")(lambda **kwargs: nn.Identity())
    assert list_models() == ALL_MODELS


@pytest.mark.parametrize("field", ["num_classes", "in_channels", "image_size"])
def test_non_positive_sizes_are_config_errors(field: str) -> None:
    kwargs = {"num_classes": 10, "in_channels": 3, "image_size": 32, field: 0}
    with pytest.raises(ConfigError, match=field):
        build_model("c1", **kwargs)


# --- shapes and sizes -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize(("in_channels", "image_size"), INPUT_SHAPES)
def test_logits_shape_train_and_eval(name: str, in_channels: int, image_size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_channels=in_channels, image_size=image_size)
    x = torch.randn(2, in_channels, image_size, image_size)
    model.train()
    assert model(x).shape == (2, 7)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


def test_mobilenet_v2_matches_torchvision_parameter_count() -> None:
    assert n_params(torchvision.models.mobilenet_v2()) == TORCHVISION_MOBILENET_V2_PARAMS
    model = build_model("mobilenet_v2", num_classes=1000)
    assert n_params(model) == TORCHVISION_MOBILENET_V2_PARAMS
    ten = build_model("mobilenet_v2", num_classes=10)
    assert n_params(ten) == 3_504_872 - 1280 * 1000 - 1000 + 1280 * 10 + 10


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize(("in_channels", "image_size"), INPUT_SHAPES)
def test_exact_parameter_count(name: str, in_channels: int, image_size: int) -> None:
    model = build_model(name, num_classes=10, in_channels=in_channels, image_size=image_size)
    assert n_params(model) == EXPECTED_PARAMS[name](in_channels, image_size, 10)


@pytest.mark.parametrize(
    ("name", "count"),
    [  # CIFAR-10 (3x32x32, 10 classes), spelled out so a reviewer can eyeball them.
        ("c1", 1_757_834),
        ("c2", 14_991_946),
        ("f1", 2_634_250),
        ("vgg11_bn", 9_231_114),
        ("mobilenet_v2", 2_236_682),
        ("mobilenet_v2_cifar", 2_236_682),
    ],
)
def test_cifar10_parameter_counts(name: str, count: int) -> None:
    assert EXPECTED_PARAMS[name](3, 32, 10) == count
    assert n_params(build_model(name, num_classes=10)) == count


def test_c2_dropout_layout_follows_keskar_deepnet() -> None:
    # network_zoo.deepnet: 0.3 after the first conv, 0.4 after every other non-last conv of a
    # block (1 + 1 + 2 + 2 + 2 convs), then 0.5 before and after the 512-unit layer.
    model = build_model("c2", num_classes=10)
    rates = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert rates == [0.3] + [0.4] * 7 + [0.5, 0.5]


def test_mobilenet_v2_cifar_strides_and_resolution() -> None:
    cifar = build_model("mobilenet_v2_cifar", num_classes=10)
    imagenet = build_model("mobilenet_v2", num_classes=10)
    assert cifar.features[0][0].stride == (1, 1)
    assert cifar.features[2].conv[1][0].stride == (1, 1)
    assert cifar.features[2].conv[1][0].groups == 96  # it is the depthwise conv
    assert imagenet.features[0][0].stride == (2, 2)
    assert imagenet.features[2].conv[1][0].stride == (2, 2)

    def spatial_sizes(model: nn.Module) -> dict[int, tuple[int, int]]:
        sizes: dict[int, tuple[int, int]] = {}
        hooks = [
            model.features[i].register_forward_hook(
                lambda _m, _inp, out, i=i: sizes.__setitem__(i, tuple(out.shape[-2:]))
            )
            for i in (0, 3, 18)
        ]
        model.eval()
        with torch.no_grad():
            model(torch.randn(1, 3, 32, 32))
        for hook in hooks:
            hook.remove()
        return sizes

    # features[3] is the last block of the stage that features[2] opens.
    assert spatial_sizes(cifar) == {0: (32, 32), 3: (32, 32), 18: (4, 4)}
    assert spatial_sizes(imagenet) == {0: (16, 16), 3: (8, 8), 18: (1, 1)}


def test_mobilenet_v2_cifar_has_mobilenet_v2_state_shapes() -> None:
    cifar = build_model("mobilenet_v2_cifar", num_classes=1000).state_dict()
    reference = torchvision.models.mobilenet_v2().state_dict()
    assert {k: v.shape for k, v in cifar.items()} == {k: v.shape for k, v in reference.items()}


def test_mobilenet_v2_stem_adapted_for_one_channel() -> None:
    model = build_model("mobilenet_v2", num_classes=10, in_channels=1, image_size=28)
    assert model.features[0][0].weight.shape == (32, 1, 3, 3)


# --- pretrained weights ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_state() -> dict[str, torch.Tensor]:
    return random_mobilenet_state()


@pytest.fixture
def weight_files(tmp_path, saved_state) -> dict[str, str]:
    files = {
        "safetensors": str(tmp_path / "w.safetensors"),
        "pth": str(tmp_path / "w.pth"),
        "wrapped_state_dict": str(tmp_path / "ckpt.pt"),
        "wrapped_model": str(tmp_path / "ckpt_model.pt"),
    }
    safetensors.torch.save_file(saved_state, files["safetensors"])
    torch.save(saved_state, files["pth"])
    torch.save({"state_dict": saved_state, "epoch": 3}, files["wrapped_state_dict"])
    torch.save({"model": saved_state, "step": 10}, files["wrapped_model"])
    return files


@pytest.mark.parametrize("kind", ["safetensors", "pth", "wrapped_state_dict", "wrapped_model"])
def test_pretrained_file_loads_everything_but_the_head(kind, weight_files, saved_state) -> None:
    model = build_model("mobilenet_v2", num_classes=10, pretrained=weight_files[kind])
    assert_loaded(model, saved_state, skip=HEAD)
    assert model.classifier[1].out_features == 10
    assert model.classifier[1].weight.shape == (10, 1280)


def test_pretrained_file_keeps_matching_head(weight_files, saved_state) -> None:
    model = build_model("mobilenet_v2", num_classes=1000, pretrained=weight_files["pth"])
    assert_loaded(model, saved_state, skip=set())


def test_pretrained_file_into_cifar_variant_and_one_channel_stem(weight_files, saved_state) -> None:
    cifar = build_model("mobilenet_v2_cifar", num_classes=10, pretrained=weight_files["pth"])
    assert_loaded(cifar, saved_state, skip=HEAD)
    gray = build_model(
        "mobilenet_v2",
        num_classes=10,
        in_channels=1,
        image_size=28,
        pretrained=weight_files["safetensors"],
    )
    assert_loaded(gray, saved_state, skip=HEAD | {"features.0.0.weight"})
    assert gray.features[0][0].weight.shape == (32, 1, 3, 3)


def test_pretrained_file_with_wrong_keys(tmp_path) -> None:
    path = tmp_path / "vgg.pth"
    torch.save(build_model("vgg11_bn", num_classes=10).state_dict(), path)
    with pytest.raises(ConfigError) as info:
        build_model("mobilenet_v2", num_classes=10, pretrained=str(path))
    message = str(info.value)
    assert str(path) in message
    assert "not MobileNetV2 weights" in message
    assert "missing keys: " in message and "unexpected keys: " in message
    assert "features.0.weight" in message  # a vgg key that mobilenet does not have


def test_pretrained_file_with_wrong_shapes(tmp_path, saved_state) -> None:
    state = dict(saved_state)
    state["features.1.conv.1.weight"] = torch.zeros(8, 8)
    path = tmp_path / "bad_shape.safetensors"
    safetensors.torch.save_file(state, str(path))
    with pytest.raises(ConfigError, match=r"shape mismatches: features\.1\.conv\.1\.weight"):
        build_model("mobilenet_v2", num_classes=10, pretrained=str(path))


def test_pretrained_missing_path(tmp_path) -> None:
    path = str(tmp_path / "nope.safetensors")
    with pytest.raises(ConfigError, match="not found") as info:
        build_model("mobilenet_v2", num_classes=10, pretrained=path)
    assert path in str(info.value)


def test_pretrained_unreadable_file(tmp_path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read") as info:
        build_model("mobilenet_v2", num_classes=10, pretrained=str(garbage))
    assert str(garbage) in str(info.value)


def test_pretrained_pickled_module_is_not_unpickled(tmp_path) -> None:
    path = tmp_path / "module.pth"
    torch.save(torchvision.models.mobilenet_v2(), path)  # a whole nn.Module, i.e. code
    with pytest.raises(ConfigError, match="never unpickles code"):
        build_model("mobilenet_v2", num_classes=10, pretrained=str(path))


@pytest.mark.parametrize("name", ["c1", "c2", "f1", "vgg11_bn"])
@pytest.mark.parametrize("pretrained", ["imagenet", "/some/weights.pth"])
def test_pretrained_rejected_for_models_without_weights(name: str, pretrained: str) -> None:
    with pytest.raises(ConfigError, match=f"'{name}'"):
        build_model(name, num_classes=10, pretrained=pretrained)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty torch hub dir and a download function that fails like an offline machine."""
    hub = tmp_path / "hub"
    # What torch.hub.set_dir sets, restored to its unset value afterwards: set_dir(previous)
    # would pin the hub to a path and hide a later test's $TORCH_HOME (test_doctor's).
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))
    attempts: list[str] = []

    def offline_download(url, dst, *args, **kwargs):
        attempts.append(url)
        raise URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline_download)
    return hub, attempts


def test_imagenet_without_cache_or_network(empty_hub) -> None:
    hub, attempts = empty_hub
    with pytest.raises(ConfigError) as info:
        build_model("mobilenet_v2", num_classes=10, pretrained="imagenet")
    message = str(info.value)
    assert os.path.join(str(hub), "checkpoints", IMAGENET_FILE) in message
    assert "not in the torch hub cache" in message
    assert "--pretrained PATH" in message
    assert attempts == [torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url]


def test_imagenet_from_cache(empty_hub, saved_state) -> None:
    hub, attempts = empty_hub
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(saved_state, hub / "checkpoints" / IMAGENET_FILE)
    model = build_model("mobilenet_v2_cifar", num_classes=10, pretrained="imagenet")
    assert_loaded(model, saved_state, skip=HEAD)
    assert attempts == []


def test_imagenet_corrupt_cache(empty_hub) -> None:
    hub, _ = empty_hub
    (hub / "checkpoints").mkdir(parents=True)
    cached = hub / "checkpoints" / IMAGENET_FILE
    cached.write_bytes(b"truncated download")
    with pytest.raises(ConfigError, match="cannot be read") as info:
        build_model("mobilenet_v2", num_classes=10, pretrained="imagenet")
    assert str(cached) in str(info.value)
