"""Tests for edgekd.metrics: prediction-consensus statistics against hand-computed Venn sets."""

from __future__ import annotations

import re

import pytest
import torch

from edgekd.metrics import consensus_change, prediction_consensus

LABELS = torch.tensor([0, 1, 2, 3, 4])
# Teacher correct on samples {0, 1, 2}; wrong on 3 and 4.
TEACHER = torch.tensor([0, 1, 2, 0, 0])
# Student correct on samples {1, 2, 3}; wrong on 0 and 4.
STUDENT = torch.tensor([1, 1, 2, 3, 0])


def test_prediction_consensus_hand_venn_example() -> None:
    """Venn counts of a hand-made example.

    Prepare: labels 0..4, teacher correct on {0, 1, 2}, student correct on {1, 2, 3}.
    Execute: prediction_consensus.
    Assert: mutual |{1,2}| = 2, union |{0,1,2,3}| = 4, consensus 0.5, teacher-exclusive |{0}| = 1,
    student-exclusive |{3}| = 1.
    """
    stats = prediction_consensus(TEACHER, STUDENT, LABELS)
    assert stats == {
        "mutual": 2.0,
        "union": 4.0,
        "consensus": 0.5,
        "teacher-exclusive": 1.0,
        "student-exclusive": 1.0,
    }


def test_prediction_consensus_is_not_symmetric_in_exclusive_areas() -> None:
    """Swapping teacher and student swaps the exclusive areas.

    Prepare: teacher correct on {0, 1, 2, 4}, student correct on {1} (labels 0..4).
    Execute: prediction_consensus with both argument orders.
    Assert: teacher-exclusive 3 / student-exclusive 0, and the reverse after the swap; mutual 1,
    union 4, consensus 0.25 in both orders.
    """
    teacher = torch.tensor([0, 1, 2, 0, 4])
    student = torch.tensor([4, 1, 0, 0, 0])
    forward = prediction_consensus(teacher, student, LABELS)
    backward = prediction_consensus(student, teacher, LABELS)
    assert forward["teacher-exclusive"] == 3.0 and forward["student-exclusive"] == 0.0
    assert backward["teacher-exclusive"] == 0.0 and backward["student-exclusive"] == 3.0
    for stats in (forward, backward):
        assert stats["mutual"] == 1.0 and stats["union"] == 4.0
        assert stats["consensus"] == pytest.approx(0.25)


def test_prediction_consensus_nobody_correct_is_full_consensus() -> None:
    """An empty union (both always wrong) gives consensus 1.0, not a division by zero.

    Prepare: teacher and student predictions that are all wrong.
    Execute: prediction_consensus.
    Assert: mutual 0, union 0, consensus 1.0, exclusive areas 0.
    """
    wrong = (LABELS + 1) % 5
    stats = prediction_consensus(wrong, torch.full_like(LABELS, 9), LABELS)
    assert stats == {
        "mutual": 0.0,
        "union": 0.0,
        "consensus": 1.0,
        "teacher-exclusive": 0.0,
        "student-exclusive": 0.0,
    }


def test_consensus_change_hand_deltas() -> None:
    """Δmutual and Δexclusive between two hand-computed Venn diagrams.

    Prepare: before = the hand example (student correct on {1,2,3}); after = student correct on
    {0, 1, 2, 4} (mutual {0,1,2} = 3, student-exclusive {4} = 1).
    Execute: consensus_change(before, after).
    Assert: delta-mutual = 3 - 2 = 1, delta-exclusive = 1 - 1 = 0, delta-sum 1; and the reverse
    direction gives the negated deltas.
    """
    before = prediction_consensus(TEACHER, STUDENT, LABELS)
    after = prediction_consensus(TEACHER, torch.tensor([0, 1, 2, 0, 4]), LABELS)
    assert after["mutual"] == 3.0 and after["student-exclusive"] == 1.0
    assert consensus_change(before, after) == {
        "delta-mutual": 1.0,
        "delta-exclusive": 0.0,
        "delta-sum": 1.0,
    }
    worse = prediction_consensus(TEACHER, torch.tensor([4, 4, 2, 3, 4]), LABELS)
    # worse: student correct on {2, 3, 4}: mutual {2} = 1, student-exclusive {3, 4} = 2.
    assert consensus_change(before, worse) == {
        "delta-mutual": -1.0,
        "delta-exclusive": 1.0,
        "delta-sum": 0.0,
    }
    assert consensus_change(worse, before) == {
        "delta-mutual": 1.0,
        "delta-exclusive": -1.0,
        "delta-sum": 0.0,
    }


@pytest.mark.parametrize(
    ("teacher", "student", "labels"),
    [
        (torch.zeros(4, dtype=torch.long), torch.zeros(5, dtype=torch.long), LABELS),
        (TEACHER, STUDENT, torch.zeros(4, dtype=torch.long)),
        (TEACHER.view(5, 1), STUDENT, LABELS),
    ],
)
def test_prediction_consensus_shape_mismatch_raises(
    teacher: torch.Tensor, student: torch.Tensor, labels: torch.Tensor
) -> None:
    """Predictions and labels of different shapes are rejected, naming all three shapes.

    Prepare: one of teacher/student/labels with a different shape.
    Execute: prediction_consensus.
    Assert: ValueError whose message lists the teacher, student and label shapes.
    """
    expected = (
        f"teacher {tuple(teacher.shape)}, student {tuple(student.shape)}, "
        f"labels {tuple(labels.shape)}"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        prediction_consensus(teacher, student, labels)
