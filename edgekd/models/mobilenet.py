"""MobileNetV2 for CIFAR-sized images.

M. Sandler, A. Howard, M. Zhu, A. Zhmoginov and L.-C. Chen, "MobileNetV2: Inverted Residuals
and Linear Bottlenecks", CVPR 2018.

The CIFAR variant keeps the stem and the first two bottleneck stages at stride 1 (total stride 8
instead of 32), so 32x32 inputs end at 4x4 and 8x8 inputs at 1x1 before global average pooling.
``mobilenetv2`` uses width multiplier 0.5 (channels rounded to multiples of 8); unlike the paper,
the width multiplier also scales the final 1x1 convolution (1280 -> 640 channels) to keep the
model small (~0.59M parameters for 10 classes).
"""

from __future__ import annotations

from typing import Final

from torch import Tensor, nn

from edgekd.models.base import EdgeKDModel, check_positive_int, init_weights
from edgekd.models.registry import register_variant

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenetv2"]

#: (expansion t, output channels c, repeats n, stride s) of the bottleneck stages, CIFAR strides.
_CIFAR_SETTINGS: Final[tuple[tuple[int, int, int, int], ...]] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without losing more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _conv_bn_relu6(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 bottleneck: 1x1 expansion, 3x3 depthwise, linear 1x1 projection.

    Parameters
    ----------
    in_channels : int
        Number of input channels.
    out_channels : int
        Number of output channels.
    stride : int
        Stride of the depthwise convolution (1 or 2).
    expansion : int
        Expansion factor ``t`` of the hidden layer.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(_conv_bn_relu6(in_channels, hidden, 1, 1, 1))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the bottleneck to ``x`` of shape ``(B, in_channels, H, W)``."""
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(EdgeKDModel):
    """CIFAR MobileNetV2 with a width multiplier.

    Parameters
    ----------
    num_classes, in_channels, representation_dim
        Output classes (>= 2), input channels (default 3) and the optional representation
        layer's size, as for every :class:`~edgekd.models.base.EdgeKDModel`.
    width_mult : float, optional
        Width multiplier applied to every layer, including the last 1x1 convolution. Default 0.5.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width_mult: float = 0.5,
        *,
        representation_dim: int | None = None,
    ) -> None:
        in_channels = check_positive_int("in_channels", in_channels, 1)
        if not isinstance(width_mult, int | float) or not 0.0 < width_mult <= 4.0:
            raise ValueError(f"width_mult must be in (0, 4], got {width_mult!r}")
        channels = _make_divisible(32 * width_mult)
        layers: list[nn.Module] = [_conv_bn_relu6(in_channels, channels, 3, 1, 1)]
        for expansion, c, repeats, stride in _CIFAR_SETTINGS:
            out_channels = _make_divisible(c * width_mult)
            for i in range(repeats):
                layers.append(
                    InvertedResidual(channels, out_channels, stride if i == 0 else 1, expansion)
                )
                channels = out_channels
        last_channels = _make_divisible(1280 * width_mult)
        layers += [
            _conv_bn_relu6(channels, last_channels, 1, 1, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        ]
        backbone = nn.Sequential(*layers)
        init_weights(backbone)
        super().__init__(backbone, last_channels, num_classes, representation_dim)
        self.width_mult: float = float(width_mult)


mobilenetv2 = register_variant(
    "mobilenetv2",
    MobileNetV2,
    width_mult=0.5,
    doc="The CIFAR MobileNetV2 at width multiplier 0.5 (~0.59M parameters).",
)
