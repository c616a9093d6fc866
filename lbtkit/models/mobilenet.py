"""torchvision MobileNetV2 (ImageNet or CIFAR strides) and loading of pretrained weights into it."""

from __future__ import annotations

import os
from urllib.parse import urlparse

import torch
from torch import nn

from lbtkit.errors import ConfigError
from lbtkit.models.registry import register_model
from lbtkit.models.weights import as_state_dict, describe_error, read_weights_file

_STEM_KEY = "features.0.0.weight"
_HEAD_KEYS = ("classifier.1.weight", "classifier.1.bias")
_MAX_KEYS_IN_MESSAGE = 5


@register_model("mobilenet_v2")
def mobilenet_v2(
    *, num_classes: int, in_channels: int, image_size: int, pretrained: str
) -> nn.Module:
    """MobileNetV2 (Sandler et al. 2018) exactly as torchvision.models.mobilenet_v2, new head.

    Source: torchvision.models.mobilenet_v2 (ImageNet strides, total stride 32).
    """
    model = _build(num_classes=num_classes, in_channels=in_channels, cifar_strides=False)
    _load_pretrained(model, pretrained, model_name="mobilenet_v2")
    return model


@register_model("mobilenet_v2_cifar")
def mobilenet_v2_cifar(
    *, num_classes: int, in_channels: int, image_size: int, pretrained: str
) -> nn.Module:
    """torchvision MobileNetV2 with CIFAR strides: stem and features[2] at stride 1 (total 8).

    Source: torchvision.models.mobilenet_v2 with the stride changes of kuangliu/pytorch-cifar.
    """
    model = _build(num_classes=num_classes, in_channels=in_channels, cifar_strides=True)
    _load_pretrained(model, pretrained, model_name="mobilenet_v2_cifar")
    return model


def _build(*, num_classes: int, in_channels: int, cifar_strides: bool) -> nn.Module:
    import torchvision  # deferred: ~0.4 s of every process, and most runs do not need it

    model = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)
    stem = model.features[0][0]
    if in_channels != 3:
        new_stem = nn.Conv2d(
            in_channels,
            stem.out_channels,
            kernel_size=stem.kernel_size,
            stride=stem.stride,
            padding=stem.padding,
            bias=False,
        )
        # Same init torchvision's MobileNetV2 applies to every conv.
        nn.init.kaiming_normal_(new_stem.weight, mode="fan_out")
        model.features[0][0] = new_stem
    if cifar_strides:
        # Only strides change, so parameter shapes (and hence ImageNet weights) stay compatible.
        model.features[0][0].stride = (1, 1)
        downsampling_block = model.features[2]
        downsampling_block.conv[1][0].stride = (1, 1)  # its depthwise 3x3 conv
        # Informational only (the residual decision was made at init and 16 != 24 channels
        # rules it out anyway), but keep it truthful for anyone inspecting the block.
        downsampling_block.stride = 1
    return model


def _load_pretrained(model: nn.Module, pretrained: str, *, model_name: str) -> None:
    if pretrained == "none":
        return
    if pretrained == "imagenet":
        state, source = _imagenet_state_dict(), "the torchvision ImageNet MobileNetV2 weights"
    else:
        state, source = read_weights_file(pretrained), f"weights file {pretrained!r}"
    state = as_state_dict(state, source)

    own = model.state_dict()
    # The stem (if in_channels != 3) and the head (if num_classes differs) were replaced, so the
    # file's versions cannot fit; those layers keep their fresh init.
    dropped: set[str] = set()
    for keys in ((_STEM_KEY,), _HEAD_KEYS):
        if any(k in state and k in own and state[k].shape != own[k].shape for k in keys):
            dropped.update(keys)
    state = {k: v for k, v in state.items() if k not in dropped}

    unexpected = sorted(state.keys() - own.keys())
    # BatchNorm fills in num_batches_tracked itself when a (pre-1.0 style) file lacks it.
    missing = sorted(
        k for k in own.keys() - state.keys() - dropped if not k.endswith("num_batches_tracked")
    )
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own.keys() & state.keys()
        if state[k].shape != own[k].shape
    )
    problems = [
        f"{label}: {_first_few(keys)}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if keys
    ]
    if problems:
        raise ConfigError(
            f"cannot load {source} into {model_name!r}: they are not MobileNetV2 weights "
            f"({'; '.join(problems)})"
        )
    model.load_state_dict(state, strict=False)


def _first_few(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_KEYS_IN_MESSAGE])
    extra = len(items) - _MAX_KEYS_IN_MESSAGE
    return f"{shown}, ... ({extra} more)" if extra > 0 else shown


def _imagenet_weights():  # -> torchvision.models.WeightsEnum, imported only when asked for
    from torchvision.models import MobileNet_V2_Weights

    return MobileNet_V2_Weights.IMAGENET1K_V1


def imagenet_weights_url() -> str:
    """The URL torchvision downloads the ImageNet MobileNetV2 weights from."""
    return _imagenet_weights().url


def imagenet_weights_path() -> str:
    """Where ``--pretrained imagenet`` reads the weights: torchvision's file name in the torch
    hub cache (``$TORCH_HOME/hub/checkpoints``), computed now (TORCH_HOME may have changed)."""
    file_name = os.path.basename(urlparse(imagenet_weights_url()).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", file_name)


def _imagenet_state_dict() -> object:
    cache_path = imagenet_weights_path()
    try:
        # weights_only: the cached file is only trusted to hold tensors, never code.
        return _imagenet_weights().get_state_dict(
            progress=False, check_hash=True, map_location="cpu", weights_only=True
        )
    # URLError/OSError: no network or no write access; RuntimeError: hash mismatch. A corrupt
    # cached file can make the weights-only unpickler fail with almost any exception type.
    except Exception as exc:
        if os.path.exists(cache_path):
            raise ConfigError(
                f"the ImageNet MobileNetV2 weights in the torch hub cache ({cache_path}) cannot "
                f"be read ({describe_error(exc)}); delete that file and fetch it again on a "
                "machine with internet, or pass a local weights file with --pretrained PATH"
            ) from exc
        raise ConfigError(
            f"the ImageNet MobileNetV2 weights are not in the torch hub cache (expected "
            f"{cache_path}) and could not be downloaded ({describe_error(exc)}); fetch them on a "
            f"machine with internet ({imagenet_weights_url()} into that path), or pass a local "
            "weights file with --pretrained PATH"
        ) from exc
