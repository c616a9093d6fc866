"""The models: a registry of builders (``lbtkit.models.registry``) and lbtkit's own networks.

Builders follow the torchvision.models style: a plain function taking keyword-only
``num_classes, in_channels, image_size, pretrained`` and returning an ``nn.Module`` that maps
normalised images (N, in_channels, image_size, image_size) to logits (N, num_classes).
``lbtkit.run_model.build_model_for`` builds the one a RunConfig names.
"""

from __future__ import annotations

# Importing the builders' modules registers them (each calls register_model).
from lbtkit.models import keskar, mobilenet, vgg  # noqa: F401
from lbtkit.models.registry import (
    ModelBuilder,
    build_model,
    is_registered,
    list_models,
    register_model,
    reject_pretrained,
    resolve_builder,
)

__all__ = ["ModelBuilder", "build_model", "is_registered", "list_models", "register_model",
           "reject_pretrained", "resolve_builder"]
