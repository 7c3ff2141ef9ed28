"""Width- and depth-configurable CIFAR ResNet: the teacher and the compressed edge model.

Paper: K. Zhao, Y. Chen and M. Zhao, "Enabling Deep Learning on Edge Devices through Filter
Pruning and Knowledge Transfer", 2022, https://arxiv.org/abs/2201.10947 (section 3).

The compressed model keeps the teacher's groups but fewer blocks per group, and every
convolution has its own width. A :class:`ResNetSpec` says the stem width, the ``(conv1, conv2)``
widths of every block of every group, and each group's stride (applied by its first block).
:class:`PrunedResNet` builds it with the module names of
:class:`~edgekd.models.resnet.CifarResNet` (``backbone.conv1``, ``backbone.layer{g}.{b}.conv1``
and ``.conv2``, ``classifier``), so a full-width spec (:func:`resnet_spec`) has the same
parameters, the same ``state_dict`` keys and the same function as the registered
``resnet{6n+2}``: a trained ``CifarResNet`` loads into it unchanged.

Shortcuts, where a block's input and output widths or sizes differ: where the output is at least
as wide as the input, option A of He et al. (stride-2 subsampling and zero-padding of the extra
channels, no parameters), as in ``CifarResNet``; where pruning made the output *narrower* than
the input there are no channels to pad, so a 1x1 convolution with batch norm projects the input
(option B). Pruned networks therefore may have a few projection parameters, which
:func:`count_resnet_parameters` includes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral

import torch.nn.functional as F
from torch import Tensor, nn

from edgekd.models.base import EdgeKDModel, check_positive_int, init_weights
from edgekd.models.resnet import ChannelPadShortcut

__all__ = [
    "ChannelPadShortcut",
    "PrunedBlock",
    "PrunedResNet",
    "ResNetSpec",
    "count_resnet_parameters",
    "resnet_spec",
    "spec_of",
]

BlockWidths = tuple[int, int]


def _width(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < 1:
        raise ValueError(f"width of {name} must be an integer >= 1, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class ResNetSpec:
    """Widths and depth of a CIFAR ResNet.

    Parameters
    ----------
    stem : int
        Width of the stem convolution ``backbone.conv1``.
    groups : sequence of sequences of (int, int)
        Per group, per block: the widths of ``conv1`` and ``conv2``. Group ``g`` (from 0) is the
        module ``backbone.layer{g + 1}``. Each group needs at least one block.
    strides : sequence of int
        Stride of each group (of its first block's ``conv1``), one per group, each >= 1.

    Raises
    ------
    ValueError
        If a width is not an integer >= 1 (the message names the convolution, e.g.
        ``backbone.layer2.0.conv1``), a group is empty, or the strides do not fit the groups.
    """

    stem: int
    groups: tuple[tuple[BlockWidths, ...], ...]
    strides: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "stem", _width("backbone.conv1", self.stem))
        if not isinstance(self.groups, Sequence) or len(self.groups) == 0:
            raise ValueError(f"groups must be a non-empty sequence, got {self.groups!r}")
        groups = []
        for g, group in enumerate(self.groups):
            if not isinstance(group, Sequence) or len(group) == 0:
                raise ValueError(f"group {g} (backbone.layer{g + 1}) has no blocks: {group!r}")
            blocks = []
            for b, block in enumerate(group):
                prefix = f"backbone.layer{g + 1}.{b}"
                if not isinstance(block, Sequence) or len(block) != 2:
                    raise ValueError(f"{prefix} needs (conv1, conv2) widths, got {block!r}")
                blocks.append(
                    (_width(f"{prefix}.conv1", block[0]), _width(f"{prefix}.conv2", block[1]))
                )
            groups.append(tuple(blocks))
        object.__setattr__(self, "groups", tuple(groups))
        if not isinstance(self.strides, Sequence) or len(self.strides) != len(groups):
            raise ValueError(
                f"strides must give one stride per group ({len(groups)}), got {self.strides!r}"
            )
        strides = tuple(
            check_positive_int(f"strides[{g}]", s, 1) for g, s in enumerate(self.strides)
        )
        object.__setattr__(self, "strides", strides)

    @property
    def blocks_per_group(self) -> tuple[int, ...]:
        """Number of blocks of each group."""
        return tuple(len(group) for group in self.groups)

    @property
    def out_width(self) -> int:
        """Width of the last block's output (the input of the classifier)."""
        return self.groups[-1][-1][1]

    def conv_widths(self) -> dict[str, int]:
        """Width of every convolution, by module name, in forward order."""
        widths = {"backbone.conv1": self.stem}
        for g, group in enumerate(self.groups):
            for b, (mid, out) in enumerate(group):
                widths[f"backbone.layer{g + 1}.{b}.conv1"] = mid
                widths[f"backbone.layer{g + 1}.{b}.conv2"] = out
        return widths

    def with_widths(self, widths: Mapping[str, int]) -> ResNetSpec:
        """This spec with the convolutions named in ``widths`` set to new widths.

        Raises
        ------
        ValueError
            If a name is not a convolution of this spec (the message lists the valid names) or a
            width is not an integer >= 1.
        """
        current = self.conv_widths()
        unknown = sorted(set(widths) - set(current))
        if unknown:
            raise ValueError(f"unknown convolutions {unknown}; valid names are: {list(current)}")
        new = {**current, **widths}
        groups = tuple(
            tuple(
                (new[f"backbone.layer{g + 1}.{b}.conv1"], new[f"backbone.layer{g + 1}.{b}.conv2"])
                for b in range(len(group))
            )
            for g, group in enumerate(self.groups)
        )
        return ResNetSpec(new["backbone.conv1"], groups, self.strides)


def resnet_spec(depth: int, *, widths: Sequence[int] = (16, 32, 64), stem: int = 16) -> ResNetSpec:
    """Spec of the CIFAR ResNet of depth ``6n + 2`` (He et al. 2016): ``n`` blocks per group.

    Parameters
    ----------
    depth : int
        ``6n + 2`` with ``n >= 1`` (8, 20, 32, 56, 110...).
    widths : sequence of int, optional
        Width of each group; the first group has stride 1, the others 2. Default (16, 32, 64).
    stem : int, optional
        Width of the stem convolution. Default 16.

    Raises
    ------
    ValueError
        If ``depth`` is not ``6n + 2`` for some ``n >= 1`` or a width is not >= 1.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 with n >= 1, got {depth!r}")
    n = (depth - 2) // 6
    groups = tuple(((w, w),) * n for w in widths)
    return ResNetSpec(stem, groups, tuple(1 if g == 0 else 2 for g in range(len(groups))))


class PrunedBlock(nn.Module):
    """Basic block (two 3x3 conv-BN layers) whose two convolutions have their own widths.

    Parameters
    ----------
    in_planes, mid_planes, out_planes : int
        Input channels, width of ``conv1`` and width of ``conv2`` (the block's output).
    stride : int, optional
        Stride of ``conv1``. Default 1.

    The shortcut is the identity when shapes agree, :class:`ChannelPadShortcut` when
    ``out_planes >= in_planes`` and a 1x1 conv-BN projection when ``out_planes < in_planes``.
    """

    def __init__(self, in_planes: int, mid_planes: int, out_planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(mid_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module
        if stride == 1 and in_planes == out_planes:
            self.shortcut = nn.Identity()
        elif out_planes >= in_planes:
            self.shortcut = ChannelPadShortcut(in_planes, out_planes, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x`` of shape ``(B, in_planes, H, W)``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _PrunedBackbone(nn.Module):
    def __init__(self, spec: ResNetSpec, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, spec.stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(spec.stem)
        in_planes = spec.stem
        self.num_groups = len(spec.groups)
        for g, (group, stride) in enumerate(zip(spec.groups, spec.strides, strict=True)):
            blocks: list[nn.Module] = []
            for b, (mid, out) in enumerate(group):
                blocks.append(PrunedBlock(in_planes, mid, out, stride if b == 0 else 1))
                in_planes = out
            self.add_module(f"layer{g + 1}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def blocks(self, x: Tensor) -> list[list[Tensor]]:
        out = F.relu(self.bn1(self.conv1(x)))
        maps: list[list[Tensor]] = []
        for g in range(self.num_groups):
            group: list[Tensor] = []
            for block in self.get_submodule(f"layer{g + 1}"):
                out = block(out)
                group.append(out)
            maps.append(group)
        return maps

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.blocks(x)[-1][-1]).flatten(1)


class PrunedResNet(EdgeKDModel):
    """CIFAR ResNet built from a :class:`ResNetSpec` (any widths, any blocks per group).

    Parameters
    ----------
    spec : ResNetSpec
        Widths, blocks and strides; :func:`resnet_spec` gives the full CIFAR ResNets.
    num_classes, in_channels, representation_dim
        Output classes (>= 2), input channels (default 3) and the optional representation
        layer's size, as for every :class:`~edgekd.models.base.EdgeKDModel`.

    Attributes
    ----------
    spec : ResNetSpec
        The spec the model was built from.
    """

    def __init__(
        self,
        spec: ResNetSpec,
        num_classes: int,
        in_channels: int = 3,
        *,
        representation_dim: int | None = None,
    ) -> None:
        if not isinstance(spec, ResNetSpec):
            raise ValueError(f"spec must be a ResNetSpec, got {type(spec).__name__}")
        in_channels = check_positive_int("in_channels", in_channels, 1)
        backbone = _PrunedBackbone(spec, in_channels)
        init_weights(backbone)
        super().__init__(backbone, spec.out_width, num_classes, representation_dim)
        self.spec: ResNetSpec = spec

    def forward_blocks(self, x: Tensor) -> tuple[Tensor, list[list[Tensor]]]:
        """Compute ``(logits, block_maps)``: ``block_maps[g][b]`` is block ``b`` of group ``g``'s
        output (after its ReLU), of shape ``(B, width, H_g, W_g)``."""
        maps = self.backbone.blocks(x)
        feats = self.representation(self.backbone.pool(maps[-1][-1]).flatten(1))
        return self.classifier(feats), maps

    def forward_stages(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Compute ``(logits, stage_maps)``: the output of each group, shallow first, as
        :meth:`edgekd.models.resnet.CifarResNet.forward_stages`."""
        logits, maps = self.forward_blocks(x)
        return logits, [group[-1] for group in maps]


def spec_of(model: nn.Module) -> ResNetSpec:
    """Read the :class:`ResNetSpec` of a :class:`PrunedResNet` or a ``CifarResNet``.

    Raises
    ------
    ValueError
        If ``model`` has no ``backbone.conv1`` and ``backbone.layer1``.
    """
    spec = getattr(model, "spec", None)
    if isinstance(spec, ResNetSpec):
        return spec
    backbone = getattr(model, "backbone", None)
    if not hasattr(backbone, "conv1") or not hasattr(backbone, "layer1"):
        raise ValueError(f"{type(model).__name__} is not a CIFAR ResNet (no backbone.layer1)")
    groups, strides = [], []
    g = 1
    while hasattr(backbone, f"layer{g}"):
        blocks = list(getattr(backbone, f"layer{g}"))
        groups.append(tuple((b.conv1.out_channels, b.conv2.out_channels) for b in blocks))
        strides.append(blocks[0].conv1.stride[0])
        g += 1
    return ResNetSpec(backbone.conv1.out_channels, tuple(groups), tuple(strides))


def count_resnet_parameters(
    spec: ResNetSpec,
    num_classes: int,
    in_channels: int = 3,
    *,
    representation_dim: int | None = None,
) -> int:
    """Number of parameters of ``PrunedResNet(spec, num_classes, in_channels, ...)``, without
    building it: convolutions, batch-norm scales and shifts, projections, linear layers."""
    total = in_channels * spec.stem * 9 + 2 * spec.stem
    in_planes = spec.stem
    for group in spec.groups:
        for mid, out in group:
            total += in_planes * mid * 9 + 2 * mid + mid * out * 9 + 2 * out
            if out < in_planes:
                total += in_planes * out + 2 * out
            in_planes = out
    if representation_dim is not None:
        total += in_planes * representation_dim + representation_dim
        in_planes = representation_dim
    return total + in_planes * num_classes + num_classes
