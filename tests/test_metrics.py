"""Tests for edgekd.metrics: prediction-consensus statistics against hand-computed Venn sets."""

from __future__ import annotations

import re

import pytest
import torch

from edgekd.metrics import (
    consensus_change,
    expected_calibration_error,
    offload_mask,
    offload_summary,
    prediction_consensus,
    top2_margin,
)

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


# Four samples, three classes, M = 2 bins [0, 0.5) and [0.5, 1]:
# bin 1 holds confidences 0.9 (right) and 0.7 (wrong): acc 0.5, conf 0.8, weight 2/4;
# bin 0 holds 0.4 (right) and 0.4 (wrong, argmax is class 2): acc 0.5, conf 0.4, weight 2/4.
# ECE = 0.5 * 0.3 + 0.5 * 0.1 = 0.2.
CAL_PROBS = torch.tensor(
    [[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.4, 0.3, 0.3], [0.3, 0.3, 0.4]], dtype=torch.float64
)
CAL_LABELS = torch.tensor([0, 0, 0, 0])


def test_ece_hand_computed_two_bins() -> None:
    """ECE of a hand-made example with two bins is 0.2 (see the comment above)."""
    assert expected_calibration_error(CAL_PROBS, CAL_LABELS, n_bins=2) == pytest.approx(0.2)


def test_ece_one_bin_is_gap_between_mean_confidence_and_accuracy() -> None:
    """With one bin the ECE is |accuracy - mean confidence| = |0.5 - 0.6| = 0.1."""
    assert expected_calibration_error(CAL_PROBS, CAL_LABELS, n_bins=1) == pytest.approx(0.1)


def test_ece_perfectly_calibrated_and_confident_is_zero() -> None:
    """One-hot probabilities that are always right have ECE 0; always wrong, ECE 1."""
    probs = torch.eye(3)
    assert expected_calibration_error(probs, torch.tensor([0, 1, 2])) == 0.0
    assert expected_calibration_error(probs, torch.tensor([1, 2, 0])) == 1.0


def test_ece_rejects_bad_shapes_and_bins() -> None:
    """Mismatched shapes and n_bins < 1 are errors that name the problem."""
    with pytest.raises(ValueError, match="probs must be"):
        expected_calibration_error(CAL_PROBS, torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(CAL_PROBS, CAL_LABELS, n_bins=0)


@pytest.mark.parametrize("n_bins", [1, 5, 15])
def test_ece_matches_torchmetrics(n_bins: int) -> None:
    """Random softmax outputs give torchmetrics' MulticlassCalibrationError(norm="l1")."""
    torchmetrics = pytest.importorskip("torchmetrics")
    generator = torch.Generator().manual_seed(n_bins)
    probs = torch.softmax(3 * torch.randn(500, 10, generator=generator), dim=1)
    labels = torch.randint(0, 10, (500,), generator=generator)
    reference = torchmetrics.classification.MulticlassCalibrationError(
        num_classes=10, n_bins=n_bins, norm="l1"
    )
    expected = float(reference(probs, labels))
    assert expected_calibration_error(probs, labels, n_bins) == pytest.approx(expected, abs=1e-6)


# Confidence offloading (cloud-edge paper, Eq. 33-35).
OFF_PROBS = torch.tensor(
    [
        [0.90, 0.05, 0.05],  # margin 0.85
        [0.50, 0.40, 0.10],  # margin 0.10
        [0.34, 0.33, 0.33],  # margin 0.01
        [1.00, 0.00, 0.00],  # margin 1.00 (saturated)
    ]
)


def test_top2_margin_and_offload_mask_hand_count() -> None:
    """Margins are p1 - p2; sigma = 0.2 offloads exactly the two low-margin samples."""
    torch.testing.assert_close(top2_margin(OFF_PROBS), torch.tensor([0.85, 0.10, 0.01, 1.0]))
    assert offload_mask(OFF_PROBS, 0.2).tolist() == [False, True, True, False]
    assert offload_mask(OFF_PROBS, 0.05).tolist() == [False, False, True, False]


def test_offload_extremes_give_edge_and_cloud_accuracy() -> None:
    """sigma = 0 never offloads (system = edge), sigma = 1 always does (system = cloud)."""
    g = torch.Generator().manual_seed(0)
    probs = torch.cat([OFF_PROBS, torch.softmax(5 * torch.randn(200, 3, generator=g), 1)])
    labels = torch.randint(0, 3, (len(probs),), generator=g)
    edge = probs.argmax(1)
    cloud = torch.randint(0, 3, (len(probs),), generator=g)
    never = offload_summary(edge, cloud, labels, offload_mask(probs, 0.0))
    always = offload_summary(edge, cloud, labels, offload_mask(probs, 1.0))
    assert never["offload-rate"] == 0.0 and always["offload-rate"] == 1.0
    assert never["system-acc"] == never["edge-acc"]
    assert always["system-acc"] == always["cloud-acc"]
    assert never["edge-acc"] != never["cloud-acc"]  # the two extremes are distinguishable


def test_offload_summary_hand_count() -> None:
    """Two of four offloaded; the system takes the cloud's answer only for those two."""
    edge = torch.tensor([0, 1, 2, 0])
    cloud = torch.tensor([1, 0, 0, 0])
    labels = torch.tensor([0, 0, 0, 1])
    got = offload_summary(edge, cloud, labels, torch.tensor([False, True, True, False]))
    assert got == {
        "offloaded": 2.0,
        "offload-rate": 0.5,
        "edge-acc": 0.25,
        "cloud-acc": 0.5,
        "system-acc": 0.75,
    }


def test_offload_errors() -> None:
    """sigma outside [0, 1] and mismatched shapes are refused, naming the value."""
    with pytest.raises(ValueError, match=r"sigma.*1\.5"):
        offload_mask(OFF_PROBS, 1.5)
    with pytest.raises(ValueError, match="C >= 2"):
        top2_margin(torch.ones(3, 1))
    with pytest.raises(ValueError, match="equal non-empty"):
        offload_summary(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2))
