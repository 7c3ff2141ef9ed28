"""Tests for the AT and FSP baselines (edgekd.losses.feature_kd) against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from edgekd.losses.feature_kd import attention_transfer_loss, fsp_loss, fsp_matrix


def test_attention_transfer_hand_value() -> None:
    """One 1x2 map per side: unit attention maps [1, 0] and [0, 1] differ by 1 per position."""
    student = torch.tensor([[[[1.0, 0.0]]]])  # (1, 1, 1, 2): mean_c F^2 = [1, 0]
    teacher = torch.tensor([[[[0.0, 2.0]], [[0.0, 0.0]]]])  # (1, 2, 1, 2): mean_c F^2 = [0, 2]
    # normalized maps [1, 0] and [0, 1]; mean of squared differences = (1 + 1) / 2 = 1
    got = attention_transfer_loss([student], [teacher], [2.0])
    assert got.item() == pytest.approx(2.0)


def test_attention_transfer_zero_for_scaled_teacher_and_no_teacher_gradient() -> None:
    """AT ignores the feature scale and channel count; the teacher gets no gradient."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(3, 1, 4, 4, generator=g)
    student = base.repeat(1, 2, 1, 1).requires_grad_(True)
    teacher = (3.0 * base.repeat(1, 5, 1, 1)).requires_grad_(True)
    loss = attention_transfer_loss([student], [teacher], [1000.0])
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    attention_transfer_loss([student], [teacher + torch.rand(3, 5, 4, 4)], [1.0]).backward()
    assert teacher.grad is None and student.grad is not None


def test_fsp_hand_value() -> None:
    """FSP of 1x2 maps [1, 2] and [3, 4] is (3 + 8) / 2 = 5.5; a zero teacher gives 5.5^2."""
    first = torch.tensor([[[[1.0, 2.0]]]])
    second = torch.tensor([[[[3.0, 4.0]]]])
    assert fsp_matrix(first, second).item() == pytest.approx(5.5)
    zero = torch.zeros(1, 1, 1, 2)
    assert fsp_loss([first, second], [zero, zero], [1.0]).item() == pytest.approx(30.25)


def test_fsp_pools_the_larger_map() -> None:
    """A 2x2 map of ones is average-pooled to 1x1; G = [[3, -1]] against a zero teacher:
    mean of (9, 1) = 5, times the weight 0.5."""
    first = torch.ones(1, 1, 2, 2)
    second = torch.tensor([3.0, -1.0]).view(1, 2, 1, 1)
    assert fsp_matrix(first, second).tolist() == [[[3.0, -1.0]]]
    teacher = [torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 1, 1)]
    assert fsp_loss([first, second], teacher, [0.5]).item() == pytest.approx(2.5)


def test_errors_name_the_problem() -> None:
    """Mismatched stage counts, channels and negative weights raise a ValueError."""
    a = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match="stage counts differ"):
        attention_transfer_loss([a], [a, a], [1.0])
    with pytest.raises(ValueError, match=r"weights\[0\].*-1"):
        attention_transfer_loss([a], [a], [-1.0])
    with pytest.raises(ValueError, match="channel counts"):
        fsp_loss([a, a], [a, torch.zeros(1, 3, 2, 2)], [1.0])
    with pytest.raises(ValueError, match="one weight per consecutive pair"):
        fsp_loss([a, a], [a, a], [1.0, 1.0])
