"""The model registry: names -> builders, and ``build_model`` to build one by name.

Builders follow the torchvision.models style: a plain function taking keyword-only
``num_classes, in_channels, image_size, pretrained`` and returning an ``nn.Module`` that maps
normalised images (N, in_channels, image_size, image_size) to logits (N, num_classes).
lbtkit's own register themselves with ``register_model`` when ``lbtkit.models`` imports their
modules (keskar, mobilenet, vgg), which it does before anything can reach this module.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lbtkit.errors import ConfigError

__all__ = ["build_model", "list_models", "register_model", "resolve_builder"]

ModelBuilder = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator registering ``fn`` as the builder for model ``name``."""

    def decorator(fn: ModelBuilder) -> ModelBuilder:
        # A clash is a programming error in lbtkit itself, so it is not a user-facing ConfigError.
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """Names of all registered models and of installed plug-ins, sorted (``torchvision:ARCH``
    and ``package.module:function`` are accepted too, see lbtkit.models.external)."""
    from lbtkit.models.external import plugin_names

    return sorted({*_REGISTRY, *plugin_names()})


def is_registered(name: str) -> bool:
    """True for lbtkit's own models (not torchvision:ARCH, pkg.mod:fn or plug-ins)."""
    return name in _REGISTRY


def resolve_builder(name: str) -> ModelBuilder:
    """The builder for model ``name``; ConfigError naming it when there is none."""
    from lbtkit.models.external import external_builder

    builder = _REGISTRY.get(name) or external_builder(name)
    if builder is None:
        raise ConfigError(
            f"unknown model {name!r}; known models: {', '.join(list_models())} "
            "(or torchvision:ARCH, or package.module:function)"
        )
    return builder


def build_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    pretrained: str = "none",
) -> nn.Module:
    """Build model ``name``; ``pretrained`` is "none", "imagenet" or a path to a weights file."""
    builder = resolve_builder(name)
    for label, value in (
        ("num_classes", num_classes),
        ("in_channels", in_channels),
        ("image_size", image_size),
    ):
        # bool is an int subclass; True as a class count is certainly a config mistake.
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{label} must be a positive integer, got {value!r}")
    return builder(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        pretrained=pretrained,
    )


def reject_pretrained(model_name: str, pretrained: str) -> None:
    """Raise ConfigError unless ``pretrained`` is "none" (for models without published weights)."""
    if pretrained != "none":
        raise ConfigError(
            f"model {model_name!r} has no pretrained weights (got pretrained={pretrained!r}); "
            "only mobilenet_v2 and mobilenet_v2_cifar accept 'imagenet' or a weights file"
        )
