"""FedMD: the consensus of the clients' scores and the "digest" loss towards it.

Li and Wang, "FedMD: Heterogenous Federated Learning via Model Distillation", 2019,
https://arxiv.org/abs/1910.03581; the latent variant distils a shared representation layer with
an MSE (:func:`latent_distillation_loss`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from edgekd.losses.checks import (
    check_logits,
    check_matching_logits,
    check_temperature,
    weights_tensor,
)
from edgekd.losses.kd import kd_kl_loss

__all__ = ["DIGEST_MODES", "consensus_logits", "fedmd_digest_loss", "latent_distillation_loss"]

DIGEST_MODES: tuple[str, ...] = ("kl", "mae", "mse")


def consensus_logits(scores: Tensor, weights: Sequence[float] | Tensor | None = None) -> Tensor:
    """FedMD consensus: weighted mean of the clients' class scores.

    Parameters
    ----------
    scores : Tensor
        Class scores of ``K`` clients on ``N`` public samples, shape ``(K, N, C)``.
    weights : sequence of float or Tensor, optional
        Client weights of shape ``(K,)``, finite, non-negative and not all zero; they are
        normalised to sum to 1. Default: uniform weights (plain mean).

    Returns
    -------
    Tensor
        Consensus scores of shape ``(N, C)``.

    Raises
    ------
    ValueError
        If ``scores`` is not a non-empty 3-D tensor or the weights are invalid.
    """
    if not isinstance(scores, Tensor) or scores.dim() != 3 or scores.shape[0] < 1:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must have shape (K, N, C) with K >= 1, got {shape}")
    if not scores.is_floating_point():
        scores = scores.float()
    if weights is None:
        return scores.mean(dim=0)
    w = weights_tensor("weights", weights, scores.shape[0], scores)
    total = w.sum()
    if float(total) <= 0:
        raise ValueError(f"weights must not all be zero, got {w.tolist()}")
    return torch.einsum("k,knc->nc", w / total, scores)


def fedmd_digest_loss(
    student_logits: Tensor, consensus: Tensor, *, mode: str = "kl", temperature: float = 1.0
) -> Tensor:
    """FedMD "digest" loss: train a client model towards the consensus scores.

    Li and Wang, "FedMD: Heterogenous Federated Learning via Model Distillation", 2019.

    Parameters
    ----------
    student_logits : Tensor
        Client logits on the public batch, shape ``(B, C)``.
    consensus : Tensor
        Consensus scores of the same shape, e.g. from :func:`consensus_logits`.
    mode : {"kl", "mse", "mae"}, optional
        ``"kl"``: :func:`kd_kl_loss` against the consensus logits at ``temperature``;
        ``"mse"``: mean squared error between the logits and the consensus (as in FedMD);
        ``"mae"``: mean absolute error. Default ``"kl"``.
    temperature : float, optional
        Temperature of the ``"kl"`` mode, ``> 0``. Default 1. Ignored by the other modes.

    Returns
    -------
    Tensor
        Scalar loss between the client logits and the consensus.

    Raises
    ------
    ValueError
        If ``mode`` is unknown, the shapes differ, or ``temperature`` is invalid.
    """
    if mode not in DIGEST_MODES:
        raise ValueError(f"mode must be one of {list(DIGEST_MODES)}, got {mode!r}")
    check_logits("student_logits", student_logits)
    check_matching_logits("consensus", consensus, student_logits)
    if mode == "kl":
        return kd_kl_loss(student_logits, consensus, temperature)
    check_temperature(temperature)
    if mode == "mse":
        return F.mse_loss(student_logits, consensus)
    return F.l1_loss(student_logits, consensus)


def latent_distillation_loss(student_repr: Tensor, target_repr: Tensor) -> Tensor:
    """Mean squared error between a student representation and a target representation.

    Used for FedMD-style distillation on the representation layer instead of the output scores.

    Parameters
    ----------
    student_repr : Tensor
        Student representations, e.g. ``model.features(x)`` of shape ``(B, r)``.
    target_repr : Tensor
        Target (e.g. consensus) representations of the same shape.

    Returns
    -------
    Tensor
        Scalar loss, zero iff the representations are identical.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    if not isinstance(student_repr, Tensor) or not isinstance(target_repr, Tensor):
        raise ValueError(
            "student_repr and target_repr must be torch.Tensor, got "
            f"{type(student_repr).__name__} and {type(target_repr).__name__}"
        )
    if student_repr.shape != target_repr.shape:
        raise ValueError(
            f"target_repr shape {tuple(target_repr.shape)} does not match "
            f"student_repr shape {tuple(student_repr.shape)}"
        )
    return F.mse_loss(student_repr, target_repr)
