"""Tests for edgekd.losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edgekd.losses import (
    cloned_distillation_loss,
    consensus_logits,
    fedmd_digest_loss,
    kd_kl_loss,
    latent_distillation_loss,
    prox_term,
)


def _softmax(logits: list[float], t: float) -> list[float]:
    exps = [math.exp(v / t) for v in logits]
    total = sum(exps)
    return [e / total for e in exps]


def _hand_kl(student: list[float], teacher: list[float], t: float) -> float:
    """KL(softmax(teacher/t) || softmax(student/t)) for one sample, with plain math."""
    p = _softmax(teacher, t)
    q = _softmax(student, t)
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def _hand_ce(logits: list[float], label: int) -> float:
    return -math.log(_softmax(logits, 1.0)[label])


def test_kd_kl_two_class_hand_value() -> None:
    """kd_kl_loss on 2-class logits matches KL computed by hand at t = 1."""
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[1.0, 0.0]])
    e = math.e
    p1, p2 = e / (e + 1), 1 / (e + 1)
    expected = p1 * math.log(p1 / 0.5) + p2 * math.log(p2 / 0.5)
    assert kd_kl_loss(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0])
def test_kd_kl_temperature_scaling(t: float) -> None:
    """kd_kl_loss equals t^2 times the KL between temperature-softened distributions."""
    student = [0.3, -1.2, 2.0]
    teacher = [1.5, 0.1, -0.4]
    got = kd_kl_loss(torch.tensor([student]), torch.tensor([teacher]), t).item()
    assert got == pytest.approx(t * t * _hand_kl(student, teacher, t), rel=1e-5)


def test_kd_kl_t_squared_factor_visible() -> None:
    """With t = 2 the loss is 4x the raw softened KL (not just the KL itself)."""
    student = [0.0, 1.0]
    teacher = [2.0, -1.0]
    raw = _hand_kl(student, teacher, 2.0)
    got = kd_kl_loss(torch.tensor([student]), torch.tensor([teacher]), 2.0).item()
    assert got == pytest.approx(4.0 * raw, rel=1e-5)
    assert got != pytest.approx(raw, rel=1e-3)


def test_kd_kl_batchmean() -> None:
    """The loss is the mean over the batch of the per-sample KL (sum over classes)."""
    students = [[0.0, 0.0], [1.0, -1.0]]
    teachers = [[1.0, 0.0], [0.0, 0.5]]
    expected = sum(_hand_kl(s, te, 1.0) for s, te in zip(students, teachers, strict=True)) / 2
    got = kd_kl_loss(torch.tensor(students), torch.tensor(teachers), 1.0).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_kd_kl_zero_when_equal() -> None:
    """kd_kl_loss is zero when the student and the teacher logits are identical."""
    logits = torch.randn(5, 7)
    assert kd_kl_loss(logits, logits.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_kl_errors() -> None:
    """Mismatched shapes and non-positive temperatures raise ValueError naming them."""
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        kd_kl_loss(torch.zeros(2, 4), torch.zeros(2, 3), 1.0)
    with pytest.raises(ValueError, match=r"temperature.*0"):
        kd_kl_loss(torch.zeros(2, 3), torch.zeros(2, 3), 0.0)


def test_kd_kl_gradient_flows_to_student() -> None:
    """The loss is differentiable with respect to the student logits."""
    student = torch.zeros(1, 2, requires_grad=True)
    kd_kl_loss(student, torch.tensor([[1.0, 0.0]]), 2.0).backward()
    assert student.grad is not None
    assert student.grad.abs().sum() > 0


def test_cloned_hand_value() -> None:
    """cloned_distillation_loss on one 2-class sample matches CE + sum of KLs computed by hand."""
    student = [0.5, -0.5]
    teachers = [[1.0, 0.0], [-1.0, 2.0]]
    t = 2.0
    expected = _hand_ce(student, 1) + sum(t * t * _hand_kl(student, te, t) for te in teachers)
    got = cloned_distillation_loss(
        torch.tensor([student]),
        torch.tensor([1]),
        [torch.tensor([te]) for te in teachers],
        t,
    ).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_cloned_equals_ce_plus_sum_of_kd() -> None:
    """The loss equals CE plus the sum of kd_kl_loss over teachers, for lists and stacked input."""
    torch.manual_seed(0)
    student = torch.randn(4, 5)
    labels = torch.tensor([0, 3, 4, 1])
    teachers = [torch.randn(4, 5) for _ in range(3)]
    t = 3.0
    expected = nn.functional.cross_entropy(student, labels) + sum(
        kd_kl_loss(student, te, t) for te in teachers
    )
    got_list = cloned_distillation_loss(student, labels, teachers, t)
    got_stacked = cloned_distillation_loss(student, labels, torch.stack(teachers), t)
    torch.testing.assert_close(got_list, expected)
    torch.testing.assert_close(got_stacked, expected)


def test_cloned_weights_and_ce_weight() -> None:
    """Teacher weights scale each KL term and ce_weight scales the cross-entropy."""
    torch.manual_seed(1)
    student = torch.randn(3, 4)
    labels = torch.tensor([0, 1, 2])
    teachers = [torch.randn(3, 4), torch.randn(3, 4)]
    t = 2.0
    ce = nn.functional.cross_entropy(student, labels)
    kd = [kd_kl_loss(student, te, t) for te in teachers]
    got = cloned_distillation_loss(
        student, labels, teachers, t, teacher_weights=[0.25, 2.0], ce_weight=0.5
    )
    torch.testing.assert_close(got, 0.5 * ce + 0.25 * kd[0] + 2.0 * kd[1])
    got_tensor_w = cloned_distillation_loss(
        student, labels, teachers, t, teacher_weights=torch.tensor([0.0, 1.0])
    )
    torch.testing.assert_close(got_tensor_w, ce + kd[1])


def test_cloned_zero_kd_when_teachers_equal_student() -> None:
    """When every teacher equals the student only the cross-entropy remains."""
    student = torch.randn(2, 3)
    labels = torch.tensor([2, 0])
    got = cloned_distillation_loss(student, labels, [student.clone(), student.clone()], 4.0)
    torch.testing.assert_close(got, nn.functional.cross_entropy(student, labels))


def test_cloned_shape_and_weight_errors() -> None:
    """Mismatched teacher shapes, labels, weights and empty teacher lists raise ValueError."""
    student = torch.zeros(2, 3)
    labels = torch.tensor([0, 1])
    good = [torch.zeros(2, 3)]
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(2, 3\)"):
        cloned_distillation_loss(student, labels, [torch.zeros(2, 3), torch.zeros(2, 4)], 1.0)
    with pytest.raises(ValueError, match=r"\(3, 2, 4\)"):
        cloned_distillation_loss(student, labels, torch.zeros(3, 2, 4), 1.0)
    with pytest.raises(ValueError, match="labels"):
        cloned_distillation_loss(student, torch.tensor([0, 1, 2]), good, 1.0)
    with pytest.raises(ValueError, match="at least one"):
        cloned_distillation_loss(student, labels, [], 1.0)
    with pytest.raises(ValueError, match=r"teacher_weights.*\(2,\)"):
        cloned_distillation_loss(student, labels, good, 1.0, teacher_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="teacher_weights"):
        cloned_distillation_loss(student, labels, good, 1.0, teacher_weights=[-1.0])
    with pytest.raises(ValueError, match="teacher_weights"):
        cloned_distillation_loss(student, labels, good, 1.0, teacher_weights=[math.nan])
    with pytest.raises(ValueError, match="ce_weight"):
        cloned_distillation_loss(student, labels, good, 1.0, ce_weight=-0.1)


def test_consensus_hand_value() -> None:
    """consensus_logits averages client scores with weights normalised to sum 1."""
    scores = torch.tensor([[[1.0, 2.0]], [[3.0, 6.0]]])  # K=2, N=1, C=2
    torch.testing.assert_close(consensus_logits(scores), torch.tensor([[2.0, 4.0]]))
    weighted = consensus_logits(scores, [1.0, 3.0])
    torch.testing.assert_close(weighted, torch.tensor([[0.25 * 1 + 0.75 * 3, 0.25 * 2 + 0.75 * 6]]))
    torch.testing.assert_close(consensus_logits(scores, torch.tensor([2.0, 6.0])), weighted)


def test_consensus_errors() -> None:
    """Bad score shapes and weights raise ValueError naming them."""
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        consensus_logits(torch.zeros(2, 3))
    scores = torch.zeros(2, 4, 3)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        consensus_logits(scores, [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="zero"):
        consensus_logits(scores, [0.0, 0.0])
    with pytest.raises(ValueError, match="-1"):
        consensus_logits(scores, [-1.0, 2.0])


def test_fedmd_digest_modes() -> None:
    """'mse' and 'mae' match hand values and 'kl' matches kd_kl_loss against the consensus."""
    student = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    consensus = torch.tensor([[0.0, 2.0], [2.0, 1.0]])
    assert fedmd_digest_loss(student, consensus, mode="mse").item() == pytest.approx(9.0 / 4)
    assert fedmd_digest_loss(student, consensus, mode="mae").item() == pytest.approx(5.0 / 4)
    torch.testing.assert_close(
        fedmd_digest_loss(student, consensus, temperature=2.0),
        kd_kl_loss(student, consensus, 2.0),
    )


def test_fedmd_digest_errors() -> None:
    """Unknown modes and mismatched shapes raise ValueError naming them."""
    with pytest.raises(ValueError, match="huber"):
        fedmd_digest_loss(torch.zeros(1, 2), torch.zeros(1, 2), mode="huber")
    with pytest.raises(ValueError, match=r"\(1, 3\)"):
        fedmd_digest_loss(torch.zeros(1, 2), torch.zeros(1, 3), mode="mse")


def test_latent_distillation_loss() -> None:
    """The latent loss is zero for identical representations and the MSE otherwise."""
    a = torch.tensor([[1.0, 2.0, 3.0]])
    assert latent_distillation_loss(a, a.clone()).item() == 0.0
    b = torch.tensor([[1.0, 0.0, 4.0]])
    got = latent_distillation_loss(a, b).item()
    assert got > 0
    assert got == pytest.approx((0 + 4 + 1) / 3)
    with pytest.raises(ValueError, match=r"\(1, 2\)"):
        latent_distillation_loss(a, torch.zeros(1, 2))


def test_prox_term_hand_value() -> None:
    """prox_term equals mu/2 * squared distance to the global parameters and is differentiable."""
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.copy_(torch.tensor([0.5]))
    global_params = [torch.tensor([[0.0, 0.0]]), torch.tensor([1.5])]
    term = prox_term(model, global_params, mu=0.1)
    assert term.item() == pytest.approx(0.05 * (1 + 4 + 1))
    term.backward()
    assert model.weight.grad is not None
    torch.testing.assert_close(model.weight.grad, torch.tensor([[0.1, 0.2]]))
    zero = prox_term(model, [p.detach().clone() for p in model.parameters()], mu=0.1)
    assert zero.item() == 0.0


def test_prox_term_errors() -> None:
    """Negative mu and mismatched global parameters raise ValueError naming them."""
    model = nn.Linear(2, 1)
    params = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"mu.*-1"):
        prox_term(model, params, mu=-1.0)
    with pytest.raises(ValueError, match="1 tensors"):
        prox_term(model, params[:1], mu=0.1)
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        prox_term(model, [torch.zeros(2, 2), params[1]], mu=0.1)
