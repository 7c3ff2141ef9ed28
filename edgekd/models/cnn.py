"""A small convolutional network for fast CPU experiments.

Three 3x3 conv-BN-ReLU layers with 32, 64 and 128 filters, 2x2 max pooling after the first two
(skipped when the feature map is already 1 pixel wide) and global average pooling, giving a
128-dimensional feature vector (about 94k parameters for RGB input and 10 classes).
"""

from __future__ import annotations

from torch import nn

from edgekd.models.base import EdgeKDModel, SafeMaxPool2d, check_positive_int, init_weights
from edgekd.models.registry import register_variant

__all__ = ["SmallCNN", "cnn"]


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(EdgeKDModel):
    """Small three-layer CNN with batch norm and global average pooling.

    Parameters
    ----------
    widths : tuple of int, optional
        Number of filters of the three convolutions. Default ``(32, 64, 128)``.
    num_classes, in_channels, representation_dim
        Output classes (>= 2), input channels (default 3) and the optional representation
        layer's size, as for every :class:`~edgekd.models.base.EdgeKDModel`.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (32, 64, 128),
        *,
        representation_dim: int | None = None,
    ) -> None:
        in_channels = check_positive_int("in_channels", in_channels, 1)
        if len(widths) != 3:
            raise ValueError(f"widths must have 3 entries, got {widths!r}")
        w1, w2, w3 = (check_positive_int("widths", w, 1) for w in widths)
        backbone = nn.Sequential(
            *_conv_bn_relu(in_channels, w1),
            SafeMaxPool2d(),
            *_conv_bn_relu(w1, w2),
            SafeMaxPool2d(),
            *_conv_bn_relu(w2, w3),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        )
        init_weights(backbone)
        super().__init__(backbone, w3, num_classes, representation_dim)


cnn = register_variant("cnn", SmallCNN, doc="The small CNN (32/64/128 filters, ~94k parameters).")
