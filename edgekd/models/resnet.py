"""CIFAR ResNets of He et al. (2016), section 4.2.

K. He, X. Zhang, S. Ren and J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.

The network is a 3x3 convolution with 16 filters followed by three stages of ``n`` basic blocks
with 16, 32 and 64 filters (the first block of stages 2 and 3 downsamples with stride 2), global
average pooling and a linear output layer, for a depth of ``6n + 2``. Shortcuts are identities;
where the shape changes they use option A of the paper (stride-2 subsampling and zero-padding of
the extra channels), so the shortcuts add no parameters: resnet20 has about 0.27M and resnet32
about 0.46M parameters for 10 classes. Pooling is adaptive, so 8x8 inputs work as well.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from edgekd.models.base import EdgeKDModel, check_positive_int, init_weights
from edgekd.models.registry import register_variant

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "resnet8",
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet110",
]


class ChannelPadShortcut(nn.Module):
    """Parameter-free option-A shortcut: stride subsampling, then zero channels split before
    and after (``planes >= in_planes``)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        if planes < in_planes:
            raise ValueError(f"cannot pad {in_planes} channels to fewer ({planes})")
        self.stride = stride
        extra = planes - in_planes
        self.pad_front = extra // 2
        self.pad_back = extra - extra // 2

    def forward(self, x: Tensor) -> Tensor:
        """Subsample ``x`` by the stride and zero-pad its channels to ``planes``."""
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (option A) shortcut.

    Parameters
    ----------
    in_planes : int
        Number of input channels.
    planes : int
        Number of output channels (``>= in_planes``).
    stride : int, optional
        Stride of the first convolution, 1 or 2. Default 1.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            ChannelPadShortcut(in_planes, planes, stride)
            if stride != 1 or in_planes != planes
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x`` of shape ``(B, in_planes, H, W)``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _ResNetBackbone(nn.Module):
    def __init__(self, blocks_per_stage: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        stages: list[nn.Sequential] = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks: list[nn.Module] = []
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)

    def stages(self, x: Tensor) -> list[Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        maps = []
        for stage in (self.layer1, self.layer2, self.layer3):
            out = stage(out)
            maps.append(out)
        return maps

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.stages(x)[-1]).flatten(1)


class CifarResNet(EdgeKDModel):
    """CIFAR ResNet of depth ``6n + 2`` (He et al. 2016, section 4.2).

    Parameters
    ----------
    depth : int
        Network depth; must be of the form ``6n + 2`` with ``n >= 1`` (8, 20, 32, 44, 56, 110...).
    num_classes, in_channels, representation_dim
        Output classes (>= 2), input channels (default 3) and the optional representation
        layer's size, as for every :class:`~edgekd.models.base.EdgeKDModel`.

    Raises
    ------
    ValueError
        If ``depth`` is not ``6n + 2`` for some ``n >= 1``.
    """

    def __init__(
        self,
        depth: int,
        num_classes: int,
        in_channels: int = 3,
        *,
        representation_dim: int | None = None,
    ) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1, got {depth!r}")
        in_channels = check_positive_int("in_channels", in_channels, 1)
        backbone = _ResNetBackbone((depth - 2) // 6, in_channels)
        init_weights(backbone)
        super().__init__(backbone, 64, num_classes, representation_dim)
        self.depth: int = depth

    def forward_stages(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Compute ``(logits, stage_maps)`` in one pass.

        ``stage_maps`` holds the output of each of the three residual stages, shallow first:
        ``(B, 16, H, W)``, ``(B, 32, H/2, W/2)``, ``(B, 64, H/4, W/4)``. The logits equal
        :meth:`forward`'s.
        """
        maps = self.backbone.stages(x)
        feats = self.representation(self.backbone.pool(maps[-1]).flatten(1))
        return self.classifier(feats), maps


resnet8 = register_variant("resnet8", CifarResNet, 8, doc="CIFAR ResNet-8 (~0.08M parameters).")
resnet20 = register_variant("resnet20", CifarResNet, 20, doc="CIFAR ResNet-20 (~0.27M parameters).")
resnet32 = register_variant("resnet32", CifarResNet, 32, doc="CIFAR ResNet-32 (~0.46M parameters).")
resnet56 = register_variant("resnet56", CifarResNet, 56, doc="CIFAR ResNet-56 (~0.85M parameters).")
resnet110 = register_variant(
    "resnet110", CifarResNet, 110, doc="CIFAR ResNet-110 (~1.7M parameters)."
)
