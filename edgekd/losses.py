"""Loss functions of the knowledge-distillation federated-learning methods.

One small function per method:

* :func:`kd_kl_loss` -- temperature-scaled KL distillation loss (Hinton et al. 2015);
* :func:`cloned_distillation_loss` -- cross-entropy plus the sum of KL terms to several
  teachers (cloned knowledge distillation, Eq. 1-2);
* :func:`consensus_logits` and :func:`fedmd_digest_loss` -- FedMD consensus and "digest" loss
  (Li and Wang 2019);
* :func:`latent_distillation_loss` -- MSE between representations (FedMD on latent features);
* :func:`prox_term` -- FedProx proximal term (Li et al. 2020).

All KL terms use ``reduction="batchmean"`` (sum over classes, mean over the batch) and are
multiplied by ``t**2`` so that gradient magnitudes do not depend on the temperature.

Targets (teacher logits, consensus scores, target representations) are used as given: gradients
flow into them if they require grad, so pass detached tensors for frozen teachers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "cloned_distillation_loss",
    "consensus_logits",
    "fedmd_digest_loss",
    "kd_kl_loss",
    "latent_distillation_loss",
    "prox_term",
]

_FEDMD_DIGEST_MODES: tuple[str, ...] = ("kl", "mae", "mse")


def _is_finite_real(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(float(value))


def _check_temperature(temperature: float) -> float:
    if not _is_finite_real(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def _check_logits(name: str, logits: Tensor) -> None:
    if not isinstance(logits, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"{name} must have shape (B, C), got {tuple(logits.shape)}")


def _weights_tensor(
    name: str,
    weights: Tensor | Sequence[float],
    expected: int,
    like: Tensor,
) -> Tensor:
    """Convert ``weights`` to a 1-D finite non-negative tensor of length ``expected``."""
    w = torch.as_tensor(weights, dtype=like.dtype, device=like.device)
    if w.dim() != 1 or w.shape[0] != expected:
        raise ValueError(
            f"{name} must have shape ({expected},) to match the number of score sets, "
            f"got {tuple(w.shape)}"
        )
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"{name} must be finite and >= 0, got {w.tolist()}")
    return w


def kd_kl_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Temperature-scaled knowledge-distillation loss.

    Computes ``t**2 * KL(softmax(teacher / t) || softmax(student / t))``, averaged over the
    batch (Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015).

    Parameters
    ----------
    student_logits : Tensor
        Student logits of shape ``(B, C)``.
    teacher_logits : Tensor
        Teacher logits of the same shape ``(B, C)``.
    temperature : float
        Softmax temperature ``t > 0``.

    Returns
    -------
    Tensor
        Scalar loss.

    Raises
    ------
    ValueError
        If the logits are not 2-D tensors of equal shape or ``temperature`` is not a finite
        positive number.
    """
    t = _check_temperature(temperature)
    _check_logits("student_logits", student_logits)
    _check_logits("teacher_logits", teacher_logits)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits shape {tuple(teacher_logits.shape)} does not match "
            f"student_logits shape {tuple(student_logits.shape)}"
        )
    return (
        F.kl_div(
            F.log_softmax(student_logits / t, dim=-1),
            F.log_softmax(teacher_logits / t, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        * t
        * t
    )


def cloned_distillation_loss(
    student_logits: Tensor,
    labels: Tensor,
    teacher_logits: Sequence[Tensor] | Tensor,
    temperature: float,
    *,
    teacher_weights: Tensor | Sequence[float] | None = None,
    ce_weight: float = 1.0,
) -> Tensor:
    """Cross-entropy plus weighted KL distillation to several teachers.

    Implements Eq. 1-2 of "Asynchronous Edge Learning using Cloned Knowledge Distillation":

    ``L = ce_weight * CE(F(x), y) + sum_m w_m * t**2 * KL(softmax(f_m(x)/t) || softmax(F(x)/t))``

    where ``F`` is the student and ``f_m`` the ``M`` teachers (clones). With the default weights
    (all 1) the KL terms are simply summed, as in the paper. The KL terms are computed for all
    teachers at once; each equals :func:`kd_kl_loss` of the student against that teacher.

    Parameters
    ----------
    student_logits : Tensor
        Student logits of shape ``(B, C)``.
    labels : Tensor
        Integer class labels of shape ``(B,)``.
    teacher_logits : sequence of Tensor or Tensor
        ``M >= 1`` teacher logits, each of shape ``(B, C)``, or one tensor of shape ``(M, B, C)``.
    temperature : float
        Softmax temperature ``t > 0`` of the KL terms (the cross-entropy uses ``t = 1``).
    teacher_weights : Tensor or sequence of float, optional
        Weights ``w_m`` of the KL terms, shape ``(M,)``, finite and non-negative. They are not
        normalised. Default: all ones.
    ce_weight : float, optional
        Weight of the cross-entropy term, finite and non-negative. Default 1.

    Returns
    -------
    Tensor
        Scalar loss.

    Raises
    ------
    ValueError
        If a teacher's logits do not match the student's ``(B, C)`` shape, ``labels`` is not of
        shape ``(B,)``, there are no teachers, the weights do not have shape ``(M,)`` or are
        negative or non-finite, or ``temperature`` / ``ce_weight`` is invalid.
    """
    t = _check_temperature(temperature)
    _check_logits("student_logits", student_logits)
    if not _is_finite_real(ce_weight) or ce_weight < 0:
        raise ValueError(f"ce_weight must be a finite number >= 0, got {ce_weight!r}")
    batch = student_logits.shape[0]
    if not isinstance(labels, Tensor) or labels.shape != (batch,):
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must have shape ({batch},), got {shape}")

    if isinstance(teacher_logits, Tensor):
        teachers = teacher_logits
    else:
        teacher_list = list(teacher_logits)
        if not teacher_list:
            raise ValueError("teacher_logits must contain at least one teacher, got 0")
        for m, logits in enumerate(teacher_list):
            if not isinstance(logits, Tensor) or logits.shape != student_logits.shape:
                shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits)
                raise ValueError(
                    f"teacher_logits[{m}] has shape {shape}, expected the student shape "
                    f"{tuple(student_logits.shape)}"
                )
        teachers = torch.stack(teacher_list)
    if teachers.dim() != 3 or teachers.shape[1:] != student_logits.shape or teachers.shape[0] < 1:
        raise ValueError(
            f"teacher_logits must have shape (M, {batch}, {student_logits.shape[1]}) with M >= 1 "
            f"to match student_logits shape {tuple(student_logits.shape)}, "
            f"got {tuple(teachers.shape)}"
        )
    num_teachers = teachers.shape[0]

    log_p_student = F.log_softmax(student_logits / t, dim=-1).unsqueeze(0)  # (1, B, C)
    log_p_teachers = F.log_softmax(teachers / t, dim=-1)  # (M, B, C)
    pointwise = F.kl_div(
        log_p_student.expand_as(log_p_teachers), log_p_teachers, log_target=True, reduction="none"
    )
    kl_per_teacher = pointwise.sum(dim=(1, 2)) / batch * (t * t)  # (M,)

    if teacher_weights is None:
        kd = kl_per_teacher.sum()
    else:
        w = _weights_tensor("teacher_weights", teacher_weights, num_teachers, kl_per_teacher)
        kd = (w * kl_per_teacher).sum()
    return ce_weight * F.cross_entropy(student_logits, labels) + kd


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
    w = _weights_tensor("weights", weights, scores.shape[0], scores)
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
        Scalar loss.

    Raises
    ------
    ValueError
        If ``mode`` is unknown, the shapes differ, or ``temperature`` is invalid.
    """
    if mode not in _FEDMD_DIGEST_MODES:
        raise ValueError(f"mode must be one of {list(_FEDMD_DIGEST_MODES)}, got {mode!r}")
    _check_logits("student_logits", student_logits)
    _check_logits("consensus", consensus)
    if consensus.shape != student_logits.shape:
        raise ValueError(
            f"consensus shape {tuple(consensus.shape)} does not match "
            f"student_logits shape {tuple(student_logits.shape)}"
        )
    if mode == "kl":
        return kd_kl_loss(student_logits, consensus, temperature)
    _check_temperature(temperature)
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


def prox_term(model: nn.Module, global_params: Sequence[Tensor], mu: float) -> Tensor:
    """FedProx proximal term ``mu / 2 * sum ||w - w_g||^2``.

    Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020.

    Parameters
    ----------
    model : nn.Module
        Local model; all of ``model.parameters()`` are used, in order.
    global_params : sequence of Tensor
        Global parameters ``w_g`` in the same order and shapes as ``model.parameters()``. They
        are treated as constants (detached).
    mu : float
        Proximal coefficient, finite and ``>= 0``.

    Returns
    -------
    Tensor
        Scalar term, differentiable with respect to the model parameters.

    Raises
    ------
    ValueError
        If ``mu`` is negative or non-finite, or ``global_params`` does not match the model's
        parameters in number or shape.
    """
    if not _is_finite_real(mu) or mu < 0:
        raise ValueError(f"mu must be a finite number >= 0, got {mu!r}")
    params = list(model.parameters())
    global_list = list(global_params)
    if len(global_list) != len(params):
        raise ValueError(
            f"global_params has {len(global_list)} tensors but the model has {len(params)} "
            "parameters"
        )
    if not params:
        return torch.zeros(())
    total = torch.zeros((), dtype=params[0].dtype, device=params[0].device)
    for i, (w, w_g) in enumerate(zip(params, global_list, strict=True)):
        w_g_t = torch.as_tensor(w_g)
        if w_g_t.shape != w.shape:
            raise ValueError(
                f"global_params[{i}] has shape {tuple(w_g_t.shape)}, expected {tuple(w.shape)}"
            )
        diff = w - w_g_t.detach().to(device=w.device, dtype=w.dtype)
        total = total + diff.pow(2).sum()
    return 0.5 * mu * total
