"""CIFAR-shaped VGG (single linear head on a 512-d feature), as in kuangliu/pytorch-cifar."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from lbtkit.models.registry import register_model, reject_pretrained

# VGG configuration "A" (Simonyan & Zisserman 2014); "M" is a 2x2 max pool.
_VGG11_CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


@register_model("vgg11_bn")
def vgg11_bn(*, num_classes: int, in_channels: int, image_size: int, pretrained: str) -> nn.Module:
    """VGG11 with BN, CIFAR layout: conv stack of config A, then Linear(512, num_classes).

    Source: Simonyan & Zisserman 2014 (config A) with the CIFAR head of kuangliu/pytorch-cifar.
    """
    reject_pretrained("vgg11_bn", pretrained)
    layers: list[nn.Module] = []
    channels = in_channels
    for item in _VGG11_CFG:
        if item == "M":
            # ceil_mode keeps odd and small maps non-empty: 28 -> 14 -> 7 -> 4 -> 2 -> 1.
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        else:
            assert isinstance(item, int)
            layers += [
                nn.Conv2d(channels, item, kernel_size=3, padding=1),
                nn.BatchNorm2d(item),
                nn.ReLU(inplace=True),
            ]
            channels = item
    return nn.Sequential(
        OrderedDict(
            features=nn.Sequential(*layers),
            # A no-op at 32x32 (already 1x1); lets larger inputs still give 512 features.
            avgpool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            classifier=nn.Linear(channels, num_classes),
        )
    )
