"""Image classifiers for heterogeneous federated knowledge-distillation clients.

All models are :class:`EdgeKDModel` instances (``features`` + linear ``classifier``) that accept
32x32 RGB as well as tiny 8x8 grey inputs, and are created by name with :func:`build_model`.
Registered names: ``cnn``, ``mobilenetv2``, ``resnet8``, ``resnet20``, ``resnet32``,
``resnet56``, ``resnet110``, ``vgg8``, ``vgg11``, ``wrn16_1`` and ``wrn16_2``. The per-name
builder functions live in the architecture modules (e.g. :func:`edgekd.models.resnet.resnet20`).
:class:`PrunedResNet` (not registered) builds a CIFAR ResNet of any per-convolution widths.
"""

from edgekd.models.base import EdgeKDModel, SafeMaxPool2d, init_weights
from edgekd.models.cnn import SmallCNN
from edgekd.models.mobilenet import InvertedResidual, MobileNetV2
from edgekd.models.pruned_resnet import PrunedResNet, ResNetSpec
from edgekd.models.registry import (
    ModelBuilder,
    build_model,
    count_parameters,
    list_models,
    register_model,
)
from edgekd.models.resnet import BasicBlock, CifarResNet
from edgekd.models.vgg import VGGNet
from edgekd.models.wrn import WideBasicBlock, WideResNet

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "EdgeKDModel",
    "InvertedResidual",
    "MobileNetV2",
    "ModelBuilder",
    "PrunedResNet",
    "ResNetSpec",
    "SafeMaxPool2d",
    "SmallCNN",
    "VGGNet",
    "WideBasicBlock",
    "WideResNet",
    "build_model",
    "count_parameters",
    "init_weights",
    "list_models",
    "register_model",
]
