"""Models from outside lbtkit's registry: torchvision's zoo, a user's own builder, plug-ins.

``--model`` accepts, besides the registered names:

- ``torchvision:ARCH`` — any classification builder of ``torchvision.models`` (``resnet18``,
  ``convnext_tiny``, ...), new head for ``num_classes``; ``--pretrained imagenet`` loads
  torchvision's default ImageNet weights (from the torch hub cache) before the head is replaced;
- ``package.module:function`` — a builder in the user's own importable module, called like the
  registered ones (keyword-only ``num_classes, in_channels, image_size, pretrained``);
- a name that an installed package registers in the ``lbtkit.models`` entry-point group.

Under ``--num-processes`` or a sweep the module must be importable in every worker (installed,
or on ``PYTHONPATH``), just as it must be for ``python -c 'import package.module'``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points

from torch import nn

from lbtkit.errors import ConfigError

ENTRY_POINT_GROUP = "lbtkit.models"
TORCHVISION_PREFIX = "torchvision:"

ModelBuilder = Callable[..., nn.Module]


def plugin_names() -> list[str]:
    """Model names registered by installed packages (entry-point group ``lbtkit.models``)."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def external_builder(name: str) -> ModelBuilder | None:
    """The builder that ``name`` designates outside the registry, or None if it names none.

    What it builds is checked once, as it is built: a failing builder, something that is not
    a module, or a model that fails on one batch (wrong input size, wrong number of outputs)
    is a ConfigError naming the builder, not a traceback from inside the training loop."""
    if name.startswith(TORCHVISION_PREFIX):
        return verified(torchvision_builder(name[len(TORCHVISION_PREFIX):]), f"model {name!r}")
    if ":" in name:
        return verified(imported_builder(name), f"model {name!r}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            label = f"entry point {name!r} ({ep.value})"
            try:
                loaded = ep.load()
            except Exception as exc:  # the plug-in's own import failed: its author's bug
                raise ConfigError(f"cannot load {label}: {one_line(exc)}") from None
            return verified(_checked(loaded, label), label)
    return None


def verified(builder: ModelBuilder, label: str) -> ModelBuilder:
    """``builder``, with what it returns checked: an nn.Module that maps a batch of the
    run's images to one logit per class (see ``check_on_one_batch``)."""
    def build(*, num_classes: int, in_channels: int, image_size: int,
              pretrained: str) -> nn.Module:
        try:
            model = builder(num_classes=num_classes, in_channels=in_channels,
                            image_size=image_size, pretrained=pretrained)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"{label}: the builder failed: {one_line(exc)} (it is called with the keyword "
                f"arguments num_classes, in_channels, image_size, pretrained)") from None
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{label}: the builder returned a {type(model).__name__}, "
                              f"not a torch.nn.Module")
        check_on_one_batch(model, label, num_classes=num_classes, in_channels=in_channels,
                           image_size=image_size)
        return model

    build.__doc__ = builder.__doc__
    return build


def check_on_one_batch(model: nn.Module, label: str, *, num_classes: int, in_channels: int,
                       image_size: int) -> None:
    """Run a copy of ``model`` in training mode on a batch of 2 blank images; ConfigError
    unless it gives a (2, num_classes) tensor. A copy, with the RNG forked: the model's
    buffers (BatchNorm statistics) and the run's random draws stay as they were."""
    import copy

    import torch

    batch = torch.zeros(2, in_channels, image_size, image_size)
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            output = copy.deepcopy(model).train()(batch)
    except Exception as exc:
        raise ConfigError(
            f"{label} fails on a batch of shape {tuple(batch.shape)} (images, channels, height, "
            f"width) of this dataset: {one_line(exc)}") from None
    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
    if shape != (2, num_classes):
        raise ConfigError(
            f"{label} gives {shape} for a batch of 2 images; a classifier of this dataset "
            f"gives one logit per class: (2, {num_classes})")


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (the first of a long message)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def imported_builder(spec: str) -> ModelBuilder:
    """``package.module:function`` -> that function."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"model {spec!r} is not of the form package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for model {spec!r}: {exc}") from None
    except Exception as exc:  # the module raised as it ran, or does not parse (SyntaxError)
        where = f" ({exc.filename}, line {exc.lineno})" if isinstance(exc, SyntaxError) else ""
        raise ConfigError(f"cannot import {module_name!r} for model {spec!r}: "
                          f"{one_line(exc)}{where}") from None
    builder = getattr(module, attribute, None)
    if builder is None:
        raise ConfigError(f"module {module_name!r} has no {attribute!r} (model {spec!r})")
    return _checked(builder, f"model {spec!r}")


def _checked(builder: object, label: str) -> ModelBuilder:
    if not callable(builder):
        raise ConfigError(f"{label} is not callable")
    return builder  # type: ignore[return-value]


def torchvision_builder(arch: str) -> ModelBuilder:
    """A registry-style builder for ``torchvision.models`` classification model ``arch``."""
    import torchvision  # deferred, as in lbtkit.models.mobilenet: only runs that use it pay

    known = torchvision.models.list_models(module=torchvision.models)
    if arch not in known:
        raise ConfigError(
            f"unknown torchvision model {arch!r}; torchvision's classification models: "
            f"{', '.join(known)}"
        )

    def build(*, num_classes: int, in_channels: int, image_size: int,
              pretrained: str) -> nn.Module:
        if in_channels != 3:
            raise ConfigError(
                f"torchvision:{arch} takes 3-channel images; this dataset has {in_channels}"
            )
        if pretrained == "none":
            return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
        model = torchvision.models.get_model(arch, weights=None)  # ImageNet-shaped
        model.load_state_dict(_pretrained_state(arch, pretrained))
        replace_head(model, num_classes)
        return model

    build.__doc__ = f"torchvision.models.{arch} with a new {arch} head for num_classes."
    return build


def _pretrained_state(arch: str, pretrained: str) -> dict:
    # One reader of weights for every model: the hub cache or a local file, weights only.
    from lbtkit.models.weights import as_state_dict, describe_error, read_weights_file

    if pretrained != "imagenet":
        return as_state_dict(read_weights_file(pretrained), f"weights file {pretrained!r}")
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        state = weights.get_state_dict(progress=False, check_hash=True, map_location="cpu",
                                       weights_only=True)
    except Exception as exc:  # no network, no cache, or a corrupt cached file
        raise ConfigError(
            f"the ImageNet weights of torchvision:{arch} are not usable ({describe_error(exc)}); "
            f"fetch {weights.url} into the torch hub cache on a machine with internet, or "
            "pass a local weights file with --pretrained PATH"
        ) from exc
    return as_state_dict(state, f"the ImageNet weights of torchvision:{arch}")


def replace_head(model: nn.Module, num_classes: int) -> None:
    """Replace the last ``nn.Linear`` (the classifier of every torchvision classifier) with a
    fresh one of ``num_classes`` outputs; nothing changes when it already has that many."""
    linears = [(name, module) for name, module in model.named_modules()
               if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear head to replace")
    name, head = linears[-1]
    if head.out_features == num_classes:
        return
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Linear(head.in_features, num_classes, bias=head.bias is not None))
