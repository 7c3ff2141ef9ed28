"""Cloned knowledge distillation: cross-entropy plus KL terms to several teachers (clones).

"Asynchronous Edge Learning using Cloned Knowledge Distillation", Eq. 1-2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from edgekd.losses.checks import check_logits, check_temperature, is_finite_real, weights_tensor

__all__ = ["cloned_distillation_loss"]


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
        Scalar loss: weighted cross-entropy plus the weighted KL terms.

    Raises
    ------
    ValueError
        If a teacher's logits do not match the student's ``(B, C)`` shape, ``labels`` is not of
        shape ``(B,)``, there are no teachers, the weights do not have shape ``(M,)`` or are
        negative or non-finite, or ``temperature`` / ``ce_weight`` is invalid.
    """
    t = check_temperature(temperature)
    check_logits("student_logits", student_logits)
    if not is_finite_real(ce_weight) or ce_weight < 0:
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
        w = weights_tensor("teacher_weights", teacher_weights, num_teachers, kl_per_teacher)
        kd = (w * kl_per_teacher).sum()
    return ce_weight * F.cross_entropy(student_logits, labels) + kd
