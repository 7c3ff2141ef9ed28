"""Tests for edgekd.losses.ktg: gates, edge losses, graph losses and the gate-matrix grammar."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edgekd.losses import kd_kl_loss
from edgekd.losses.ktg import (
    Gate,
    GateMatrix,
    GateMatrixError,
    edge_weights,
    gated_kl_loss,
    graph_losses,
    kl_per_sample,
    linear_weight,
)


def _logits(nodes: int, batch: int = 6, classes: int = 4, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, classes, generator=g).requires_grad_() for _ in range(nodes)]


def _labels(batch: int = 6, classes: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, classes, (batch,), generator=torch.Generator().manual_seed(seed))


def _hand_kl(source: list[float], target: list[float], t: float) -> float:
    """sum_c p_s log(p_s / p_t), p = softmax(z / t), with plain math (the official formula)."""

    def softmax(z: list[float]) -> list[float]:
        exps = [math.exp(v / t) for v in z]
        return [e / sum(exps) for e in exps]

    p_s, p_t = softmax(source), softmax(target)
    return sum(a * math.log(a / b) for a, b in zip(p_s, p_t, strict=True))


def test_kl_direction_is_source_over_target() -> None:
    """The edge s -> t computes KL(p_s || p_t) (official order), not KL(p_t || p_s)."""
    source, target = [2.0, 0.0, -1.0], [0.0, 0.5, 0.5]
    got = kl_per_sample(torch.tensor([target]), torch.tensor([source]), 1.0).item()
    assert got == pytest.approx(_hand_kl(source, target, 1.0), rel=1e-6)
    assert got != pytest.approx(_hand_kl(target, source, 1.0), rel=1e-2)


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0])
def test_edge_loss_scaled_by_t_squared(t: float) -> None:
    """A Through edge is T^2 times the mean KL of the softened distributions (= kd_kl_loss)."""
    target = torch.tensor([[0.3, -1.2, 2.0], [1.0, 0.0, 0.0]])
    source = torch.tensor([[1.5, 0.1, -0.4], [0.0, 2.0, 1.0]])
    raw = sum(_hand_kl(s, z, t) for s, z in zip(source.tolist(), target.tolist(), strict=True))
    got = gated_kl_loss(target, source, t).item()
    assert got == pytest.approx(t * t * raw / 2, rel=1e-5)
    assert got == pytest.approx(kd_kl_loss(target, source, t).item(), rel=1e-5)


def test_edge_loss_detaches_the_source() -> None:
    """An edge's loss sends gradient into the target's logits only, never into the source's."""
    target, source = _logits(2)
    gated_kl_loss(target, source, 2.0).backward()
    assert source.grad is None
    assert target.grad is not None and target.grad.abs().sum() > 0


def test_through_gate_weights_every_sample_one() -> None:
    """Through gives weight 1 to every sample of its edge."""
    gates = GateMatrix.parse("T,T;T,T")
    weights = edge_weights(_logits(2), _labels(), gates, 3, 10)
    assert torch.equal(weights, torch.ones(2, 2, 6))


def test_cutoff_gate_passes_no_gradient() -> None:
    """A Cutoff edge adds nothing: the target's loss and gradient are those of its CE alone."""
    logits, labels = _logits(2), _labels()
    gates = GateMatrix.parse("T,T;X,T")
    loss = graph_losses(logits, labels, gates, 1, 10)[1]
    loss.backward()
    ce_logits = logits[1].detach().clone().requires_grad_()
    F.cross_entropy(ce_logits, labels).backward()
    assert loss.item() == pytest.approx(F.cross_entropy(logits[1], labels).item(), rel=1e-6)
    assert torch.allclose(logits[1].grad, ce_logits.grad)
    assert logits[0].grad is None
    assert edge_weights(logits, labels, gates, 1, 10)[1, 0].abs().sum() == 0


def test_all_cutoff_node_has_constant_zero_loss() -> None:
    """A fixed node (all incoming edges Cutoff) gets a constant 0 without gradient."""
    losses = graph_losses(_logits(2), _labels(), GateMatrix.parse("X,X;T,T"), 1, 10)
    assert losses[0].item() == 0.0
    assert not losses[0].requires_grad


def test_linear_weight_at_start_and_end() -> None:
    """Linear's weight is k / k_end: 0 at k = 0, 1/2 halfway, 1 at k = k_end."""
    assert linear_weight(0, 10) == 0.0
    assert linear_weight(5, 10) == 0.5
    assert linear_weight(10, 10) == 1.0
    with pytest.raises(ValueError, match="iteration"):
        linear_weight(11, 10)
    with pytest.raises(ValueError, match="total_iterations"):
        linear_weight(0, 0)


def test_linear_gate_scales_the_edge_loss() -> None:
    """With a Linear edge, node 1's loss is CE at k = 0, CE + KL at k_end, CE + KL/4 at k_end/4."""
    logits, labels = _logits(2), _labels()
    gates = GateMatrix.parse("T,T;L,T")
    ce = F.cross_entropy(logits[1], labels).item()
    kl = gated_kl_loss(logits[1], logits[0]).item()
    at = {k: graph_losses(logits, labels, gates, k, 8)[1].item() for k in (0, 2, 8)}
    assert at[0] == pytest.approx(ce, rel=1e-6)
    assert at[2] == pytest.approx(ce + kl / 4, rel=1e-6)
    assert at[8] == pytest.approx(ce + kl, rel=1e-6)


def test_correct_gate_masks_exactly_the_misclassified_samples() -> None:
    """Correct keeps the samples the source classifies right and divides by the whole batch."""
    source = torch.tensor([[3.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 3.0, 0.0]])
    target = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    labels = torch.tensor([0, 1, 2, 0])
    gates = GateMatrix.parse("T,X;C,X")
    weights = edge_weights([source, target], labels, gates, 1, 10)
    kl = [_hand_kl(s, z, 1.0) for s, z in zip(source.tolist(), target.tolist(), strict=True)]
    loss = graph_losses([source, target], labels, gates, 1, 10)[1]
    assert weights[1, 0].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert loss.item() == pytest.approx((kl[0] + kl[2]) / 4, rel=1e-5)


def test_correct_gate_on_the_self_edge_acts_as_through() -> None:
    """On the self edge the source is the label, always right: C equals T there."""
    logits, labels = _logits(2), _labels()
    correct = graph_losses(logits, labels, GateMatrix.parse("C,T;T,C"), 1, 10)
    through = graph_losses(logits, labels, GateMatrix.parse("T,T;T,T"), 1, 10)
    assert [v.item() for v in correct] == pytest.approx([v.item() for v in through])


def test_two_node_all_through_graph_equals_dml() -> None:
    """A 2-node all-Through graph gives each node DML's loss CE + KL(p_other || p_self)."""
    logits, labels = _logits(2), _labels()
    z0, z1 = logits
    losses = graph_losses(logits, labels, GateMatrix.parse("T,T;T,T"), 1, 10)
    dml0 = F.cross_entropy(z0, labels) + kd_kl_loss(z0, z1.detach(), 1.0)
    dml1 = F.cross_entropy(z1, labels) + kd_kl_loss(z1, z0.detach(), 1.0)
    assert losses[0].item() == pytest.approx(dml0.item(), rel=1e-6)
    assert losses[1].item() == pytest.approx(dml1.item(), rel=1e-6)
    grad = torch.autograd.grad(losses[0], z0)[0]
    assert torch.allclose(grad, torch.autograd.grad(dml0, z0)[0], atol=1e-7)


def test_kd_graph_equals_hinton_kd() -> None:
    """Fixed teacher 0 -> student 1 at T = 2 gives the student CE + kd_kl_loss, the teacher 0."""
    logits, labels = _logits(2), _labels()
    teacher, student = logits
    losses = graph_losses(logits, labels, GateMatrix.parse("X,X;T,T"), 1, 10, temperature=2.0)
    kd = F.cross_entropy(student, labels) + kd_kl_loss(student, teacher.detach(), 2.0)
    assert losses[1].item() == pytest.approx(kd.item(), rel=1e-6)
    assert losses[0].item() == 0.0


def test_node_loss_sums_its_incoming_edges() -> None:
    """A node's loss is the sum of its gated edges: here CE + KL from node 1 + KL from node 2."""
    logits, labels = _logits(3), _labels()
    z0, z1, z2 = logits
    losses = graph_losses(logits, labels, GateMatrix.parse("T,T,T;X,T,X;X,X,T"), 1, 10)
    expected = F.cross_entropy(z0, labels) + kd_kl_loss(z0, z1, 1.0) + kd_kl_loss(z0, z2, 1.0)
    assert losses[0].item() == pytest.approx(expected.item(), rel=1e-6)


def test_graph_losses_need_one_logit_set_per_node() -> None:
    """Logits of 2 nodes for a 3-node matrix raise a ValueError naming both counts."""
    with pytest.raises(ValueError, match="2 nodes for a 3-node"):
        graph_losses(_logits(2), _labels(), GateMatrix.parse("T,T,T;T,T,T;T,T,T"), 1, 10)


@pytest.mark.parametrize("text", ["T", "T,C;L,X", "X,X,X;T,T,L;C,T,T", "T,X;X,T"])
def test_gate_matrix_string_round_trip(text: str) -> None:
    """str(GateMatrix.parse(s)) == s for canonical strings."""
    assert str(GateMatrix.parse(text)) == text


def test_gate_matrix_reads_spaces_and_lower_case() -> None:
    """Spaces and lower-case letters parse to the canonical form; row = target, column = source."""
    gates = GateMatrix.parse(" t, c ; l ,x ")
    assert str(gates) == "T,C;L,X"
    assert gates.gate(target=0, source=1) is Gate.CORRECT
    assert gates.gate(target=1, source=0) is Gate.LINEAR


def test_fixed_nodes_are_those_with_all_incoming_cutoff() -> None:
    """fixed_nodes lists the rows made only of X, and nothing else."""
    assert GateMatrix.parse("X,X,X;T,T,L;C,T,T").fixed_nodes == (0,)
    assert GateMatrix.parse("T,T;T,T").fixed_nodes == ()


@pytest.mark.parametrize(
    ("text", "num_nodes", "message"),
    [
        ("T,T;T", None, "'T,T;T' is not square: row 1 has 1 gates, expected 2"),
        ("T,T,T;T,T,T", None, "row 0 has 3 gates, expected 2"),
        ("T,T;T,T", 3, "'T,T;T,T' has 2 nodes, expected 3"),
        ("T,Q;T,T", None, "unknown gate 'Q' at row 0, column 1"),
        ("T,T;T,TT", None, "unknown gate 'TT' at row 1, column 1"),
        ("", None, "unknown gate '' at row 0, column 0"),
        ("T,X,X;X,T,X;X,X,X", None, "node 2 .* has no path to anything"),
        ("X", None, "node 0 .* has no path to anything"),
    ],
)
def test_gate_matrix_errors_name_the_bad_value(
    text: str, num_nodes: int | None, message: str
) -> None:
    """Bad size, unknown letters and isolated nodes raise GateMatrixError naming the value."""
    with pytest.raises(GateMatrixError, match=message):
        GateMatrix.parse(text, num_nodes=num_nodes)


def test_gate_matrix_allows_independent_learners_and_teaching_fixed_nodes() -> None:
    """A node that only learns from labels, or a fixed node that teaches, has a path."""
    assert GateMatrix.parse("T,X;X,T").num_nodes == 2
    assert GateMatrix.parse("X,X;T,X").fixed_nodes == (0,)


def test_gate_matrix_error_is_a_value_error() -> None:
    """GateMatrixError is a ValueError, like every other config error of edgekd."""
    assert issubclass(GateMatrixError, ValueError)
