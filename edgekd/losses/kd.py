"""The Hinton knowledge-distillation term, the building block of every KD loss here.

Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015,
https://arxiv.org/abs/1503.02531. KL with ``reduction="batchmean"`` (sum over classes, mean over
the batch), multiplied by ``t**2`` so that gradient magnitudes do not depend on the temperature.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from edgekd.losses.checks import check_logits, check_matching_logits, check_temperature

__all__ = ["kd_kl_loss"]


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
        Scalar loss, ``t**2`` times the batch-mean KL divergence.

    Raises
    ------
    ValueError
        If the logits are not 2-D tensors of equal shape or ``temperature`` is not a finite
        positive number.
    """
    t = check_temperature(temperature)
    check_logits("student_logits", student_logits)
    check_matching_logits("teacher_logits", teacher_logits, student_logits)
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
