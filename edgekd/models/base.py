"""Common base class and building blocks for the edgekd classifiers.

Every architecture in :mod:`edgekd.models` is an :class:`EdgeKDModel`: a backbone that maps an
image batch to a flat vector of ``backbone_dim`` values, an optional linear *representation layer*
(the size-``r`` latent layer used by FedMD-style latent distillation) and a linear output layer
``classifier``.
"""

from __future__ import annotations

from numbers import Integral

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EdgeKDModel", "SafeMaxPool2d", "check_positive_int", "init_weights"]


def check_positive_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` as ``int`` or raise ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class SafeMaxPool2d(nn.Module):
    """2x2 max pooling that never reduces a spatial dimension below 1.

    When the height or the width of the input is already 1 the input is returned unchanged, so
    that deep stacks of pooling layers also work on tiny (e.g. 8x8) images. Otherwise it behaves
    like ``nn.MaxPool2d(2, 2, ceil_mode=True)``.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Pool ``x`` of shape ``(B, C, H, W)`` by a factor of two where possible."""
        if x.shape[-1] < 2 or x.shape[-2] < 2:
            return x
        return F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)


def init_weights(module: nn.Module) -> None:
    """Initialise a module tree in place.

    Convolutions get Kaiming-normal weights (He et al. 2015, ``fan_out``, ReLU gain) and zero
    biases and batch-norm layers get unit scale and zero shift. Linear layers keep PyTorch's
    default initialisation.

    Parameters
    ----------
    module : nn.Module
        Root of the module tree to initialise.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class EdgeKDModel(nn.Module):
    """Image classifier split into a feature extractor and a linear output layer.

    Parameters
    ----------
    backbone : nn.Module
        Module mapping an image batch ``(B, C_in, H, W)`` to features of shape
        ``(B, backbone_dim)`` (or anything that flattens to that shape).
    backbone_dim : int
        Size of the backbone output.
    num_classes : int
        Number of output classes, at least 2.
    representation_dim : int or None, optional
        If given, an extra ``nn.Linear(backbone_dim, representation_dim)`` representation layer
        is appended to the feature extractor (the FedMD-latent layer of size ``r`` placed before
        the output layer) and ``feature_dim == representation_dim``. By default there is no such
        layer and ``feature_dim == backbone_dim``.

    Attributes
    ----------
    backbone : nn.Module
        The convolutional feature extractor.
    representation : nn.Module
        The representation layer, or ``nn.Identity`` when ``representation_dim`` is None.
    classifier : nn.Linear
        The output layer, ``nn.Linear(feature_dim, num_classes)``.
    backbone_dim : int
        Size of the backbone output.
    feature_dim : int
        Size of the penultimate representation returned by :meth:`features`.
    num_classes : int
        Number of output classes.
    representation_dim : int or None
        Size of the representation layer, or None when there is none.
    """

    def __init__(
        self,
        backbone: nn.Module,
        backbone_dim: int,
        num_classes: int,
        representation_dim: int | None = None,
    ) -> None:
        super().__init__()
        backbone_dim = check_positive_int("backbone_dim", backbone_dim, 1)
        num_classes = check_positive_int("num_classes", num_classes, 2)
        if representation_dim is not None:
            representation_dim = check_positive_int("representation_dim", representation_dim, 1)
        self.backbone = backbone
        self.backbone_dim: int = backbone_dim
        self.num_classes: int = num_classes
        self.representation_dim: int | None = representation_dim
        self.feature_dim: int = backbone_dim if representation_dim is None else representation_dim
        self.representation: nn.Module = (
            nn.Identity()
            if representation_dim is None
            else nn.Linear(backbone_dim, representation_dim)
        )
        self.classifier: nn.Module = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Compute the penultimate representation.

        Parameters
        ----------
        x : Tensor
            Image batch of shape ``(B, C_in, H, W)``.

        Returns
        -------
        Tensor
            Features of shape ``(B, feature_dim)``.
        """
        h = torch.flatten(self.backbone(x), 1)
        return self.representation(h)

    def forward(self, x: Tensor) -> Tensor:
        """Compute class logits ``classifier(features(x))`` of shape ``(B, num_classes)``."""
        return self.classifier(self.features(x))

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Compute ``(logits, features)`` of an image batch in a single pass.

        The shapes are those of :meth:`forward` and :meth:`features`: ``(B, num_classes)`` and
        ``(B, feature_dim)``.
        """
        feats = self.features(x)
        return self.classifier(feats), feats
