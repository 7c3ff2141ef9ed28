"""Compressing a cloud ResNet into an edge ResNet by activation-based filter pruning.

Paper: K. Zhao, Y. Chen and M. Zhao, "Enabling Deep Learning on Edge Devices through Filter
Pruning and Knowledge Transfer", 2022, https://arxiv.org/abs/2201.10947 (section 3).

* Depth (:func:`keep_last_blocks`): the edge model keeps the teacher's groups, each with only
  its last block (which takes over the group's stride).
* Width (:func:`activation_widths`): for filter ``j`` of convolution ``i`` and image ``m``,
  Eq. 2 ``perc(a_ij^m) = 1 - ||a_ij^m||_0 / (h w)`` (:func:`perc`) on the post-ReLU activation
  map; the filter is *safe to remove* when ``perc >= P``; ``avgc_i`` (:func:`avgc`) is the number
  of safe filters averaged over the ``M`` images; the new width is ``w_i = n_i - avgc_i``,
  rounded to the nearest integer (halves keep the filter).
* :func:`compress_resnet` applies both to a trained teacher. The paper retrains the compressed
  model from scratch, so only widths are needed: no weight surgery.
* Baseline (:func:`l1_norm_spec`): Li et al., "Pruning Filters for Efficient ConvNets", ICLR
  2017: filters with the smallest L1 weight norm go, until the edge model is no larger than a
  parameter budget (the activation-pruned model's, for a comparison at equal size).

Where the activation is taken: for the stem and every block's ``conv1`` it is the network's own
``relu(bn(conv(x)))``. A block's ``conv2`` is followed by the shortcut sum and only then the ReLU;
its filters are judged on ``relu(bn2(conv2(x)))``, their own contribution before the sum (the
sum also carries the shortcut's channels, which no filter of ``conv2`` produces). Statistics are
collected in eval mode (batch norm with its running statistics) and without gradients.

A width that would reach 0 (every filter safe on average, e.g. with ``P = 0``) raises a
``ValueError`` naming the convolution, unless ``min_width`` asks for a floor instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgekd.losses.checks import is_finite_real
from edgekd.models.base import check_positive_int
from edgekd.models.pruned_resnet import ResNetSpec, count_resnet_parameters, spec_of

__all__ = [
    "activation_percentages",
    "activation_widths",
    "avgc",
    "check_threshold",
    "compress_resnet",
    "keep_last_blocks",
    "l1_norm_scores",
    "l1_norm_spec",
    "perc",
    "pruning_sites",
]


def check_threshold(threshold: float) -> float:
    """The filter pruning threshold ``P`` as a float; ``ValueError`` unless ``0 <= P <= 1``."""
    if not is_finite_real(threshold) or not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"pruning threshold P must be a number in [0, 1], got {threshold!r}")
    return float(threshold)


def perc(activation: Tensor) -> Tensor:
    """Eq. 2: the fraction of zero entries of each filter's activation map.

    Parameters
    ----------
    activation : Tensor
        Post-ReLU activations of shape ``(M, n, h, w)``.

    Returns
    -------
    Tensor
        ``(M, n)`` float tensor, ``1 - ||a_j^m||_0 / (h w)``.
    """
    if not isinstance(activation, Tensor) or activation.dim() != 4:
        shape = tuple(activation.shape) if isinstance(activation, Tensor) else activation
        raise ValueError(f"activation must be a (M, n, h, w) tensor, got {shape!r}")
    h, w = activation.shape[2:]
    return 1.0 - (activation != 0).sum(dim=(2, 3)).double() / (h * w)


def avgc(percentages: Tensor, threshold: float) -> float:
    """``avgc_i``: the number of filters with ``perc >= P``, averaged over the ``M`` images.

    Parameters
    ----------
    percentages : Tensor
        ``(M, n)`` zero fractions of one convolution (:func:`perc`), ``M >= 1``.
    threshold : float
        Filter pruning threshold ``P`` in [0, 1].
    """
    threshold = check_threshold(threshold)
    if not isinstance(percentages, Tensor) or percentages.dim() != 2 or len(percentages) == 0:
        shape = tuple(percentages.shape) if isinstance(percentages, Tensor) else percentages
        raise ValueError(f"percentages must be a (M, n) tensor with M >= 1, got {shape!r}")
    return float((percentages >= threshold).sum(dim=1).double().mean())


def pruning_sites(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    """The convolutions the width rule prunes, by name, each with the batch norm after it.

    Every child ``conv<k>`` with a sibling ``bn<k>`` (``nn.BatchNorm2d``): the stem and each
    block's ``conv1`` and ``conv2`` of a CIFAR ResNet; projection shortcuts are not included
    (their width follows the block's output).
    """
    sites: dict[str, nn.BatchNorm2d] = {}
    for prefix, module in model.named_modules():
        for name, child in module.named_children():
            norm = getattr(module, "bn" + name[4:], None) if name.startswith("conv") else None
            if isinstance(child, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                sites[f"{prefix}.{name}" if prefix else name] = norm
    return sites


@torch.no_grad()
def activation_percentages(
    model: nn.Module, images: Tensor, *, batch_size: int = 128
) -> dict[str, Tensor]:
    """:func:`perc` of every pruning site's filters on each of ``M`` images.

    Parameters
    ----------
    model : nn.Module
        The trained teacher (a CIFAR ResNet); run in eval mode, its mode is restored after.
    images : Tensor
        ``(M, C, H, W)`` input batch, ``M >= 1`` (the paper uses one batch).
    batch_size : int, optional
        Images per forward pass. Default 128.

    Returns
    -------
    dict of str to Tensor
        Convolution name (see :func:`pruning_sites`) to a ``(M, n_i)`` float64 tensor.
    """
    batch_size = check_positive_int("batch_size", batch_size, 1)
    if not isinstance(images, Tensor) or images.dim() != 4 or len(images) == 0:
        shape = tuple(images.shape) if isinstance(images, Tensor) else images
        raise ValueError(f"images must be a (M, C, H, W) tensor with M >= 1, got {shape!r}")
    sites = pruning_sites(model)
    if not sites:
        raise ValueError(f"{type(model).__name__} has no conv<k>/bn<k> pairs to prune")
    found: dict[str, list[Tensor]] = {name: [] for name in sites}
    hooks = [
        norm.register_forward_hook(
            lambda _m, _i, out, name=name: found[name].append(perc(F.relu(out)).cpu())
        )
        for name, norm in sites.items()
    ]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size])
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return {name: torch.cat(parts) for name, parts in found.items()}


def activation_widths(
    percentages: Mapping[str, Tensor], threshold: float, *, min_width: int | None = None
) -> dict[str, int]:
    """The width rule ``w_i = n_i - avgc_i`` for every convolution.

    Parameters
    ----------
    percentages : mapping of str to Tensor
        ``(M, n_i)`` zero fractions per convolution (:func:`activation_percentages`).
    threshold : float
        Filter pruning threshold ``P`` in [0, 1]; the paper uses 0.7 to 1.0. Lower ``P``
        removes more filters: widths never grow as ``P`` falls.
    min_width : int or None, optional
        Floor for the widths. Default None: a width below 1 is an error.

    Returns
    -------
    dict of str to int
        New width per convolution; ``avgc_i`` is rounded to the nearest integer, a half keeps
        the filter.

    Raises
    ------
    ValueError
        If ``P`` is outside [0, 1], ``min_width < 1``, or (without ``min_width``) a width would
        be 0; the message names the convolution, ``n_i``, ``avgc_i`` and ``P``.
    """
    threshold = check_threshold(threshold)
    if min_width is not None:
        min_width = check_positive_int("min_width", min_width, 1)
    widths = {}
    for name, values in percentages.items():
        count = avgc(values, threshold)
        n = int(values.shape[1])
        width = n - math.ceil(count - 0.5)
        if min_width is not None:
            width = max(width, min(min_width, n))
        elif width < 1:
            raise ValueError(
                f"{name} would have width {width}: all {n} filters are safe to remove on "
                f"average (avgc={count:.2f}) at P={threshold}; raise P or pass min_width"
            )
        widths[name] = width
    return widths


def keep_last_blocks(spec: ResNetSpec) -> ResNetSpec:
    """The depth rule: each group keeps only its last block, with the group's stride."""
    return ResNetSpec(spec.stem, tuple(group[-1:] for group in spec.groups), spec.strides)


def compress_resnet(
    teacher: nn.Module,
    images: Tensor,
    threshold: float,
    *,
    min_width: int | None = None,
    batch_size: int = 128,
) -> ResNetSpec:
    """The edge model's spec: the teacher's widths by :func:`activation_widths` on ``images``,
    then :func:`keep_last_blocks`. Build it with
    ``PrunedResNet(spec, num_classes, in_channels)`` and train it from scratch.

    Parameters
    ----------
    teacher : nn.Module
        Trained ``PrunedResNet`` or ``CifarResNet``.
    images : Tensor
        ``(M, C, H, W)`` images (the paper: one batch).
    threshold : float
        Filter pruning threshold ``P`` in [0, 1].
    min_width, batch_size
        As for :func:`activation_widths` and :func:`activation_percentages`.
    """
    threshold = check_threshold(threshold)
    percentages = activation_percentages(teacher, images, batch_size=batch_size)
    widths = activation_widths(percentages, threshold, min_width=min_width)
    return keep_last_blocks(spec_of(teacher).with_widths(widths))


def l1_norm_scores(model: nn.Module) -> dict[str, Tensor]:
    """Per pruning site, each filter's L1 weight norm divided by the mean over its layer.

    The division makes layers of different fan-in and scale comparable, so one global
    threshold can rank all filters (Li et al. choose per-layer ratios by hand instead).
    """
    scores = {}
    convs = dict(model.named_modules())
    for name in pruning_sites(model):
        norms = convs[name].weight.detach().abs().flatten(1).sum(dim=1).double()
        scores[name] = norms / norms.mean().clamp_min(torch.finfo(torch.float64).tiny)
    return scores


def l1_norm_spec(
    teacher: nn.Module,
    target_parameters: int,
    *,
    num_classes: int,
    in_channels: int = 3,
    shallow: bool = True,
) -> ResNetSpec:
    """L1-norm baseline: the widest spec whose parameter count is at most ``target_parameters``.

    Filters whose :func:`l1_norm_scores` fall below a global threshold are removed (every
    layer keeps at least one); the threshold is the smallest of the scores for which the model
    (after :func:`keep_last_blocks` when ``shallow``) fits the budget. As for the activation
    rule, every convolution (stem, ``conv1`` and ``conv2`` of each block) may be narrowed; Li et
    al. narrow only each block's ``conv1`` in their CIFAR ResNets.

    Parameters
    ----------
    teacher : nn.Module
        Trained ``PrunedResNet`` or ``CifarResNet``.
    target_parameters : int
        Parameter budget, e.g. ``count_parameters`` of the activation-pruned model.
    num_classes, in_channels : int
        Of the edge model, for :func:`~edgekd.models.pruned_resnet.count_resnet_parameters`.
    shallow : bool, optional
        Apply the depth rule too (the comparison the paper makes). Default True.

    Raises
    ------
    ValueError
        If even one filter per layer exceeds the budget (the message names both counts).
    """
    target_parameters = check_positive_int("target_parameters", target_parameters, 1)
    scores = l1_norm_scores(teacher)
    spec = spec_of(teacher)
    smallest = None
    for threshold in torch.cat(list(scores.values())).unique().tolist():
        widths = {name: max(1, int((s >= threshold).sum())) for name, s in scores.items()}
        candidate = spec.with_widths(widths)
        candidate = keep_last_blocks(candidate) if shallow else candidate
        size = count_resnet_parameters(candidate, num_classes, in_channels)
        if size <= target_parameters:
            return candidate
        smallest = size
    raise ValueError(
        f"target_parameters={target_parameters} is below the smallest L1-pruned model "
        f"({smallest} parameters)"
    )
