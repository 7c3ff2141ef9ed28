"""Wide residual networks for CIFAR-sized images.

S. Zagoruyko and N. Komodakis, "Wide Residual Networks", BMVC 2016.

WRN-d-k has a 3x3 stem convolution with 16 filters and three stages of ``(d - 4) / 6``
pre-activation basic blocks with ``16k``, ``32k`` and ``64k`` filters (1x1 convolution shortcuts
where the shape changes), followed by BN-ReLU and global average pooling. Registered variants:
``wrn16_1`` (~0.18M parameters) and ``wrn16_2`` (~0.69M parameters) for 10 classes.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from edgekd.models.base import EdgeKDModel, check_positive_int, init_weights
from edgekd.models.registry import register_variant

__all__ = ["WideBasicBlock", "WideResNet", "wrn16_1", "wrn16_2"]


class WideBasicBlock(nn.Module):
    """Pre-activation basic block (BN-ReLU-conv3x3 twice) with optional dropout.

    Parameters
    ----------
    in_planes : int
        Number of input channels.
    planes : int
        Number of output channels.
    stride : int
        Stride of the first convolution.
    drop_rate : float, optional
        Dropout probability between the two convolutions. Default 0.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.shortcut: nn.Module | None = (
            nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            if stride != 1 or in_planes != planes
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x`` of shape ``(B, in_planes, H, W)``."""
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = F.relu(self.bn2(out))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        identity = x if self.shortcut is None else self.shortcut(pre)
        return out + identity


class _WRNBackbone(nn.Module):
    def __init__(self, depth: int, widen: int, in_channels: int, drop_rate: float) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        in_planes = 16
        stages: list[nn.Sequential] = []
        for planes, stride in zip(widths, (1, 2, 2), strict=True):
            blocks: list[nn.Module] = []
            for i in range(n):
                blocks.append(WideBasicBlock(in_planes, planes, stride if i == 0 else 1, drop_rate))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.pool(F.relu(self.bn(out))).flatten(1)


class WideResNet(EdgeKDModel):
    """Wide residual network WRN-depth-widen (Zagoruyko and Komodakis 2016).

    Parameters
    ----------
    depth : int
        Network depth, of the form ``6n + 4`` with ``n >= 1`` (10, 16, 22, 28, 40...).
    widen : int
        Widening factor ``k`` (at least 1).
    num_classes, in_channels, representation_dim
        Output classes (>= 2), input channels (default 3) and the optional representation
        layer's size, as for every :class:`~edgekd.models.base.EdgeKDModel`.
    drop_rate : float, optional
        Dropout probability inside the blocks, in ``[0, 1)``. Default 0.

    Raises
    ------
    ValueError
        If ``depth`` is not ``6n + 4``, ``widen < 1`` or ``drop_rate`` is outside ``[0, 1)``.
    """

    def __init__(
        self,
        depth: int,
        widen: int,
        num_classes: int,
        in_channels: int = 3,
        drop_rate: float = 0.0,
        *,
        representation_dim: int | None = None,
    ) -> None:
        depth = check_positive_int("depth", depth, 10)
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 with n >= 1, got {depth!r}")
        widen = check_positive_int("widen", widen, 1)
        in_channels = check_positive_int("in_channels", in_channels, 1)
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        backbone = _WRNBackbone(depth, widen, in_channels, drop_rate)
        init_weights(backbone)
        super().__init__(backbone, 64 * widen, num_classes, representation_dim)
        self.depth: int = depth
        self.widen: int = widen


wrn16_1 = register_variant("wrn16_1", WideResNet, 16, 1, doc="WRN-16-1 (~0.18M parameters).")
wrn16_2 = register_variant("wrn16_2", WideResNet, 16, 2, doc="WRN-16-2 (~0.69M parameters).")
