"""Feature-map distillation baselines of the cloud-edge paper's Table 1, one function per paper.

* :func:`attention_transfer_loss`: AT, Zagoruyko and Komodakis, "Paying More Attention to
  Attention", ICLR 2017, https://arxiv.org/abs/1612.03928;
* :func:`fsp_loss`: FSP ("Gram" in the cloud-edge paper), Yim et al., "A Gift from Knowledge
  Distillation", CVPR 2017, https://doi.org/10.1109/CVPR.2017.754.

ST (Hinton et al.) is :func:`edgekd.losses.cloud_edge.soft_target_loss`. The reference
implementations are ``HobbitLong/RepDistiller`` (``distiller_zoo/AT.py``, ``FSP.py``) and
``yoshitomo-matsubara/torchdistill`` (``losses/mid_level.py``); the forms followed are named in
each function. Teacher features are detached here: no gradient reaches the teacher.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from edgekd.losses.checks import is_finite_real

__all__ = ["attention_map", "attention_transfer_loss", "fsp_loss", "fsp_matrix"]


def _check_maps(name: str, maps: Sequence[Tensor]) -> None:
    for j, fmap in enumerate(maps):
        if not isinstance(fmap, Tensor) or fmap.dim() != 4:
            shape = tuple(fmap.shape) if isinstance(fmap, Tensor) else type(fmap).__name__
            raise ValueError(f"{name}[{j}] must be a (B, C, H, W) tensor, got {shape}")


def _check_pairs(
    student: Sequence[Tensor], teacher: Sequence[Tensor], weights: Sequence[float]
) -> None:
    _check_maps("student_features", student)
    _check_maps("teacher_features", teacher)
    if not len(student) == len(teacher) == len(weights):
        raise ValueError(
            f"stage counts differ: {len(student)} student, {len(teacher)} teacher features, "
            f"{len(weights)} weights"
        )
    for j, w in enumerate(weights):
        if not is_finite_real(w) or w < 0:
            raise ValueError(f"weights[{j}] must be a finite number >= 0, got {w!r}")


def attention_map(features: Tensor, p: int = 2) -> Tensor:
    """``normalize(mean_c |F_c|^p)``: a ``(B, H*W)`` spatial attention map of unit L2 norm."""
    return F.normalize(features.pow(p).mean(dim=1).flatten(1), dim=1)


def attention_transfer_loss(
    student_features: Sequence[Tensor],
    teacher_features: Sequence[Tensor],
    weights: Sequence[float],
    *,
    p: int = 2,
) -> Tensor:
    """AT: ``sum_j w_j * mean_{b, x} (Q_s(b, x) - Q_t(b, x))^2`` over stage pairs.

    The authors' code form (``attention-transfer`` ``utils.at_loss``, RepDistiller ``AT``,
    torchdistill ``ATLoss(mode="code")``): squared differences of unit-norm attention maps
    averaged over batch and positions; the paper's Eq. 2 uses the unsquared norm instead (see
    ``szagoruyko/attention-transfer`` issue #34). The paper's weight ``beta = 1000`` goes into
    ``weights``. Student and teacher maps of a pair must have the same spatial size.
    """
    _check_pairs(student_features, teacher_features, weights)
    loss = student_features[0].new_zeros(())
    for s, t, w in zip(student_features, teacher_features, weights, strict=True):
        if s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
            raise ValueError(
                f"attention maps differ in shape: {tuple(s.shape)} vs {tuple(t.shape)}"
            )
        diff = attention_map(s, p) - attention_map(t.detach(), p)
        loss = loss + w * diff.pow(2).mean()
    return loss


def fsp_matrix(first: Tensor, second: Tensor) -> Tensor:
    """``G = F1 F2^T / (h w)``, ``(B, C1, C2)``; the larger map is average-pooled to the smaller."""
    h, w = min(first.shape[2], second.shape[2]), min(first.shape[3], second.shape[3])
    if first.shape[2:] != (h, w):
        first = F.adaptive_avg_pool2d(first, (h, w))
    if second.shape[2:] != (h, w):
        second = F.adaptive_avg_pool2d(second, (h, w))
    return torch.bmm(first.flatten(2), second.flatten(2).transpose(1, 2)) / (h * w)


def fsp_loss(
    student_features: Sequence[Tensor],
    teacher_features: Sequence[Tensor],
    weights: Sequence[float],
) -> Tensor:
    """FSP: ``sum_j w_j * mean_{b, c1, c2} (G_s^j - G_t^j)^2`` over consecutive feature pairs.

    The FSP matrix of pair ``j`` is :func:`fsp_matrix` of features ``j`` and ``j + 1`` (so
    ``len(weights) == len(features) - 1``); the larger map is average-pooled to the smaller.
    RepDistiller's form (``FSP``: mean over batch and matrix entries, weight 50); Yim et al.'s
    Eq. 2 sums the entries instead, which only rescales the weight (by ``C1 * C2``; with a
    sum, weight 50 diverges at once for CIFAR ResNets). Teacher and student must have the
    same channel counts at each feature (true for the CIFAR ResNets: 16, 32, 64).
    """
    _check_maps("student_features", student_features)
    _check_maps("teacher_features", teacher_features)
    if len(student_features) != len(teacher_features) or len(weights) != len(student_features) - 1:
        raise ValueError(
            f"fsp_loss needs equally many student ({len(student_features)}) and teacher "
            f"({len(teacher_features)}) features and one weight per consecutive pair, "
            f"got {len(weights)} weights"
        )
    loss = student_features[0].new_zeros(())
    for j, w in enumerate(weights):
        if not is_finite_real(w) or w < 0:
            raise ValueError(f"weights[{j}] must be a finite number >= 0, got {w!r}")
        g_s = fsp_matrix(student_features[j], student_features[j + 1])
        g_t = fsp_matrix(teacher_features[j].detach(), teacher_features[j + 1].detach())
        if g_s.shape != g_t.shape:
            raise ValueError(
                f"FSP matrices of pair {j} differ: student {tuple(g_s.shape)}, "
                f"teacher {tuple(g_t.shape)} (the channel counts must match)"
            )
        loss = loss + w * (g_s - g_t).pow(2).mean()
    return loss
