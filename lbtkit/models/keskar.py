"""The networks of Keskar et al. 2016, "On Large-Batch Training for Deep Learning".

Layouts follow ``network_zoo.py`` of github.com/keskarnitish/large-batch-training (Keras):
C1 = ``shallownet``, C2 = ``deepnet``; F1 is the MNIST MLP described in the paper.
Keras 'same' pooling yields ceil(H/2), which is also what keeps 8x8 inputs from shrinking to 0.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from lbtkit.models.registry import register_model, reject_pretrained


def _ceil_half(size: int) -> int:
    return -(-size // 2)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    # Keras Convolution2D has a bias by default, and Keskar's layers keep it despite the BN.
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def _linear_bn_relu(in_features: int, out_features: int) -> list[nn.Module]:
    return [
        nn.Linear(in_features, out_features),
        nn.BatchNorm1d(out_features),
        nn.ReLU(inplace=True),
    ]


@register_model("c1")
def c1(*, num_classes: int, in_channels: int, image_size: int, pretrained: str) -> nn.Module:
    """Keskar C1: two 64-filter 5x5 conv/BN/ReLU/maxpool(3, stride 2) blocks, FC 384-192.

    Source: Keskar et al. 2016, Table 1 / ``shallownet`` in keskarnitish/large-batch-training.
    """
    reject_pretrained("c1", pretrained)
    features: list[nn.Module] = []
    channels, size = in_channels, image_size
    for _ in range(2):
        features += _conv_bn_relu(channels, 64, 5)
        # padding=1 reproduces Keras 'same' output size ceil(H/2) for every H.
        features.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        channels, size = 64, _ceil_half(size)
    classifier = [
        *_linear_bn_relu(channels * size * size, 384),
        nn.Dropout(0.5),
        *_linear_bn_relu(384, 192),
        nn.Dropout(0.5),
        nn.Linear(192, num_classes),
    ]
    return nn.Sequential(
        OrderedDict(
            features=nn.Sequential(*features),
            flatten=nn.Flatten(),
            classifier=nn.Sequential(*classifier),
        )
    )


# VGG-16 blocks: (channels, number of convs); each block ends with a 2x2 max pool.
_C2_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


@register_model("c2")
def c2(*, num_classes: int, in_channels: int, image_size: int, pretrained: str) -> nn.Module:
    """Keskar C2: VGG-16 conv stack with BN and dropout, then FC 512 (the Keras cifar10-vgg16).

    Source: Keskar et al. 2016, Table 1 / ``deepnet`` in keskarnitish/large-batch-training.
    """
    reject_pretrained("c2", pretrained)
    features: list[nn.Module] = []
    channels, size = in_channels, image_size
    for block_index, (width, n_convs) in enumerate(_C2_BLOCKS):
        for conv_index in range(n_convs):
            features += _conv_bn_relu(channels, width, 3)
            channels = width
            # deepnet puts dropout after every conv except a block's last (which feeds the pool):
            # 0.3 after the network's very first conv, 0.4 everywhere else.
            if conv_index < n_convs - 1:
                first_conv_of_network = block_index == 0 and conv_index == 0
                features.append(nn.Dropout(0.3 if first_conv_of_network else 0.4))
        # ceil_mode is Keras 'same' pooling; it keeps a 1x1 map at 1x1 for small inputs.
        features.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        size = _ceil_half(size)
    classifier = [
        nn.Dropout(0.5),
        *_linear_bn_relu(channels * size * size, 512),
        nn.Dropout(0.5),
        nn.Linear(512, num_classes),
    ]
    return nn.Sequential(
        OrderedDict(
            features=nn.Sequential(*features),
            flatten=nn.Flatten(),
            classifier=nn.Sequential(*classifier),
        )
    )


@register_model("f1")
def f1(*, num_classes: int, in_channels: int, image_size: int, pretrained: str) -> nn.Module:
    """Keskar F1: MLP with 5 hidden layers of 512 units, each Linear/BN/ReLU.

    Source: Keskar et al. 2016, Table 1 (F1, the MNIST network).
    """
    reject_pretrained("f1", pretrained)
    layers: list[nn.Module] = []
    width = in_channels * image_size * image_size
    for _ in range(5):
        layers += _linear_bn_relu(width, 512)
        width = 512
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(OrderedDict(flatten=nn.Flatten(), classifier=nn.Sequential(*layers)))
