"""Prediction-consensus statistics between a teacher and a student (cloned-distillation paper).

T and S are the sets of test samples the teacher and the student classify correctly. The paper
("Asynchronous Edge Learning using Cloned Knowledge Distillation", Fig. 4 and 6) reports the
mutual area |T∩S|, the union |T∪S|, the prediction consensus |T∩S| / |T∪S|, and the exclusive
areas |T\\S| (teacher-exclusive) and |S\\T| (student-exclusive); distillation helps when
Δmutual + Δexclusive > 0.
"""

from __future__ import annotations

import torch

__all__ = ["consensus_change", "prediction_consensus"]


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
