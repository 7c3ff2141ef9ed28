"""Evaluation metrics beyond accuracy: prediction consensus and calibration.

Prediction consensus between a teacher and a student (cloned-distillation paper):

T and S are the sets of test samples the teacher and the student classify correctly. The paper
("Asynchronous Edge Learning using Cloned Knowledge Distillation", Fig. 4 and 6) reports the
mutual area |T∩S|, the union |T∪S|, the prediction consensus |T∩S| / |T∪S|, and the exclusive
areas |T\\S| (teacher-exclusive) and |S\\T| (student-exclusive); distillation helps when
Δmutual + Δexclusive > 0.

Calibration: :func:`expected_calibration_error` (Guo et al., "On Calibration of Modern Neural
Networks", ICML 2017, https://arxiv.org/abs/1706.04599), the gap between a model's confidence
and its accuracy, for methods that offload or weight predictions by their confidence.

Confidence offloading (cloud-edge paper, "An Efficient and Robust Cloud-Based Deep Learning
With Knowledge Distillation", Eq. 33-34 and Algorithm 1): :func:`top2_margin`,
:func:`offload_mask` and :func:`offload_summary`.
"""

from __future__ import annotations

import torch

__all__ = [
    "consensus_change",
    "expected_calibration_error",
    "offload_mask",
    "offload_summary",
    "prediction_consensus",
    "top2_margin",
]


def prediction_consensus(
    teacher_pred: torch.Tensor, student_pred: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    """Venn statistics of correct predictions (counts, and consensus as a fraction).

    Parameters
    ----------
    teacher_pred, student_pred, labels : torch.Tensor
        (N,) predicted and true class indices.
    """
    if not teacher_pred.shape == student_pred.shape == labels.shape:
        raise ValueError(
            f"shapes differ: teacher {tuple(teacher_pred.shape)}, "
            f"student {tuple(student_pred.shape)}, labels {tuple(labels.shape)}"
        )
    t = teacher_pred == labels
    s = student_pred == labels
    mutual = int((t & s).sum())
    union = int((t | s).sum())
    return {
        "mutual": float(mutual),
        "union": float(union),
        "consensus": mutual / union if union else 1.0,
        "teacher-exclusive": float((t & ~s).sum()),
        "student-exclusive": float((s & ~t).sum()),
    }


def consensus_change(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Δmutual and Δexclusive (student-exclusive) from ``before`` to ``after`` distillation."""
    d_mutual = after["mutual"] - before["mutual"]
    d_exclusive = after["student-exclusive"] - before["student-exclusive"]
    return {
        "delta-mutual": d_mutual,
        "delta-exclusive": d_exclusive,
        "delta-sum": d_mutual + d_exclusive,
    }


def expected_calibration_error(
    probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15
) -> float:
    """Expected calibration error with ``n_bins`` equal-width confidence bins.

    ``ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|``, where a sample's confidence is its
    largest class probability, its prediction that class (the first on ties), and bin ``b``
    holds the confidences in ``[b / M, (b + 1) / M)`` (the last bin also holds 1.0) -- the
    binning of torchmetrics' ``MulticlassCalibrationError(norm="l1")``.

    Parameters
    ----------
    probs : torch.Tensor
        (N, C) class probabilities (softmax outputs), N >= 1.
    labels : torch.Tensor
        (N,) true class indices.
    n_bins : int
        M >= 1, the number of bins. Default 15.

    Returns
    -------
    float
        The ECE, in ``[0, 1]``.
    """
    if probs.dim() != 2 or len(probs) == 0 or labels.shape != probs.shape[:1]:
        raise ValueError(
            f"probs must be (N, C) with N >= 1 and labels (N,), got {tuple(probs.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    confidences, predictions = probs.float().max(dim=1)
    correct = (predictions == labels).float()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=confidences.dtype)
    bins = (torch.bucketize(confidences, edges, right=True) - 1).clamp(0, n_bins - 1)
    acc_sum = torch.zeros(n_bins).scatter_add_(0, bins, correct)
    conf_sum = torch.zeros(n_bins).scatter_add_(0, bins, confidences)
    # |B_b|/n * |acc(B_b) - conf(B_b)| = |sum of correct - sum of confidences in B_b| / n
    return float((acc_sum - conf_sum).abs().sum() / len(probs))


def top2_margin(probs: torch.Tensor) -> torch.Tensor:
    """``p_(1) - p_(2)``, the largest minus the second-largest class probability, ``(N,)``.

    ``probs`` is ``(N, C)`` with ``C >= 2`` (softmax outputs).
    """
    if probs.dim() != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must be (N, C) with C >= 2, got {tuple(probs.shape)}")
    top = probs.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def offload_mask(probs: torch.Tensor, sigma: float) -> torch.Tensor:
    """Which samples the edge sends to the cloud: ``top2_margin < sigma`` (Eq. 34, ``s = 1``).

    ``sigma`` is in ``[0, 1]``: 0 never offloads (a margin is never negative) and 1 always
    does, including saturated softmax outputs whose margin is exactly 1. Eq. 34's scale
    constant ``s`` is not given by the paper; ``sigma`` is compared with the probability
    margin directly.
    """
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 <= sigma <= 1:
        raise ValueError(f"sigma must be a number in [0, 1], got {sigma!r}")
    margin = top2_margin(probs)
    if sigma >= 1:
        return torch.ones_like(margin, dtype=torch.bool)
    return margin < sigma


def offload_summary(
    edge_pred: torch.Tensor,
    cloud_pred: torch.Tensor,
    labels: torch.Tensor,
    offloaded: torch.Tensor,
) -> dict[str, float]:
    """Offload rate and edge-only, cloud-only and system accuracy of one sample stream.

    The system answers a sample with ``cloud_pred`` where ``offloaded`` and ``edge_pred``
    elsewhere. Eq. 35's "recall rate" is ``1 - offload-rate`` (the confident fraction).

    Parameters
    ----------
    edge_pred, cloud_pred, labels : torch.Tensor
        ``(N,)`` class indices, ``N >= 1``.
    offloaded : torch.Tensor
        ``(N,)`` bool, :func:`offload_mask`.

    Returns
    -------
    dict[str, float]
        ``offloaded`` (count), ``offload-rate``, ``edge-acc``, ``cloud-acc``, ``system-acc``.
    """
    if len(labels) == 0 or not (
        edge_pred.shape == cloud_pred.shape == labels.shape == offloaded.shape
    ):
        raise ValueError(
            f"need equal non-empty (N,) shapes: edge {tuple(edge_pred.shape)}, cloud "
            f"{tuple(cloud_pred.shape)}, labels {tuple(labels.shape)}, "
            f"offloaded {tuple(offloaded.shape)}"
        )
    offloaded = offloaded.bool()
    system = torch.where(offloaded, cloud_pred, edge_pred)
    n = len(labels)
    return {
        "offloaded": float(offloaded.sum()),
        "offload-rate": float(offloaded.sum()) / n,
        "edge-acc": float((edge_pred == labels).sum()) / n,
        "cloud-acc": float((cloud_pred == labels).sum()) / n,
        "system-acc": float((system == labels).sum()) / n,
    }
