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
"""

from __future__ import annotations

import torch

__all__ = ["consensus_change", "expected_calibration_error", "prediction_consensus"]


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
