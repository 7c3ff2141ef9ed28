"""Narrow VGG networks with batch norm for CIFAR-sized images.

Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015, with batch normalisation after every convolution (Ioffe and Szegedy 2015). As is usual
for CIFAR, the three fully connected layers are replaced by global average pooling and a single
linear output layer. The networks here are at a quarter of the original width (16 to 128
filters) so they train on a CPU:

* ``vgg8``: 7 convolutions + 1 linear layer (~0.43M parameters),
* ``vgg11``: the 8 convolutions of VGG configuration A + 1 linear layer (~0.58M parameters).

Max pooling is skipped once the feature map is 1 pixel wide, so 8x8 inputs work as well.
"""

from __future__ import annotations

from typing import Final

from torch import nn

from edgekd.models.base import EdgeKDModel, SafeMaxPool2d, check_positive_int, init_weights
from edgekd.models.registry import register_variant

__all__ = ["VGG_CONFIGS", "VGGNet", "vgg8", "vgg11"]

#: Layer configurations: an int is a 3x3 conv-BN-ReLU with that many filters, "M" a max pool.
VGG_CONFIGS: Final[dict[str, tuple[int | str, ...]]] = {
    "vgg8": (16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, "M"),
    "vgg11": (16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M"),
}


class VGGNet(EdgeKDModel):
    """VGG-style network with batch norm, global average pooling and one linear layer.

    Parameters
    ----------
    config : sequence of int or str
        Layer configuration: an int adds a 3x3 conv-BN-ReLU with that many filters, ``"M"`` a
        2x2 max pool (skipped on 1-pixel feature maps). Must contain at least one convolution.
    num_classes, in_channels, representation_dim
        Output classes (>= 2), input channels (default 3) and the optional representation
        layer's size, as for every :class:`~edgekd.models.base.EdgeKDModel`.
    """

    def __init__(
        self,
        config: tuple[int | str, ...] | list[int | str],
        num_classes: int,
        in_channels: int = 3,
        *,
        representation_dim: int | None = None,
    ) -> None:
        channels = check_positive_int("in_channels", in_channels, 1)
        layers: list[nn.Module] = []
        for item in config:
            if item == "M":
                layers.append(SafeMaxPool2d())
                continue
            width = check_positive_int("VGG config entry", item, 1)
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        if not any(isinstance(m, nn.Conv2d) for m in layers):
            raise ValueError(f"VGG config must contain at least one convolution, got {config!r}")
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
        backbone = nn.Sequential(*layers)
        init_weights(backbone)
        super().__init__(backbone, channels, num_classes, representation_dim)


vgg8 = register_variant(
    "vgg8", VGGNet, VGG_CONFIGS["vgg8"], doc="Narrow VGG-8 (7 conv layers, ~0.43M parameters)."
)
vgg11 = register_variant(
    "vgg11",
    VGGNet,
    VGG_CONFIGS["vgg11"],
    doc="Narrow VGG-11 (8 conv layers, ~0.58M parameters).",
)
