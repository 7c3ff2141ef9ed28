"""Tests for selective layer-wise knowledge transfer (edgekd.losses.layerwise_kt)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from edgekd.losses.layerwise_kt import (
    block_similarity,
    block_term,
    fc_term,
    freeze_batchnorm,
    label_term,
    layerwise_kt_loss,
    map_blocks,
    normalized_map,
    trainable_for_transfer,
)
from edgekd.models.pruned_resnet import PrunedResNet, ResNetSpec, resnet_spec

TINY = resnet_spec(20, widths=(4, 8, 16), stem=4)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_normalized_map_pads_then_normalises() -> None:
    """A 1-channel map [3, 4] padded to 2 channels and normalised is [0.6, 0.8, 0, 0].

    Prepare: a (1, 1, 1, 2) map. Execute: normalized_map to width 2. Assert: the hand value.
    """
    fmap = torch.tensor([[[[3.0, 4.0]]]])
    assert normalized_map(fmap, 2)[0].tolist() == pytest.approx([0.6, 0.8, 0.0, 0.0])


def test_block_similarity_hand_values() -> None:
    """Eq. 3: cosine of the padded student map with each teacher map of the group.

    Prepare: student [1, 0] (1 channel, 1x2), teachers [[1, 0], [0, 0]] and [[1, 1], [0, 0]]
    (2 channels). Execute: block_similarity. Assert: [[1, 1/sqrt(2)]].
    """
    student = [torch.tensor([[[[1.0, 0.0]]]])]
    teacher = [
        torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]]]]),
        torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]]),
    ]
    sim = block_similarity(teacher, student)
    assert sim.shape == (1, 2)
    assert sim[0].tolist() == pytest.approx([1.0, 1 / math.sqrt(2)])


def test_mapping_pairs_identical_blocks_for_a_copy() -> None:
    """A student that is a copy of the teacher maps each block to the same teacher block.

    Prepare: a tiny resnet20 teacher and its deep copy. Execute: forward_blocks of both on 8x8
    images, map_blocks. Assert: [[0, 1, 2]] for each of the three groups.
    """
    teacher = PrunedResNet(TINY, 3).eval()
    student = copy.deepcopy(teacher)
    x = torch.randn(4, 3, 8, 8)
    _, t_blocks = teacher.forward_blocks(x)
    _, s_blocks = student.forward_blocks(x)
    assert map_blocks(t_blocks, s_blocks) == [[0, 1, 2]] * 3


def test_mapping_finds_the_block_a_narrow_student_reproduces() -> None:
    """A narrower student map equal to teacher block 1's first channels maps to block 1.

    Prepare: random teacher maps of 3 blocks in 2 groups; in each group block 1's last
    channels are zero and the student's one block is its first channels.
    Execute: map_blocks. Assert: [[1], [1]]; the cosine of that pair is 1.
    """
    teacher = [[torch.rand(2, 6, 4, 4) for _ in range(3)] for _ in range(2)]
    student = []
    for group in teacher:
        group[1][:, 4:] = 0.0
        student.append([group[1][:, :4].clone()])
    assert map_blocks(teacher, student) == [[1], [1]]
    assert block_similarity(teacher[0], student[0])[0, 1].item() == pytest.approx(1.0)


def test_terms_hand_values() -> None:
    """J1, J_b and J3 on hand inputs.

    Prepare: teacher logits [3, 4] and a zero student (3 classes: the third is new); equal
    maps; zero logits of 2 classes with label 0.
    Execute: fc_term, block_term, label_term.
    Assert: J1 = 5 (first two outputs), J_b = 0, J3 = -(log 0.5 + log 0.5) = 2 ln 2 > 0.
    """
    assert fc_term(torch.tensor([[3.0, 4.0]]), torch.zeros(1, 3)).item() == pytest.approx(5.0)
    fmap = torch.rand(2, 3, 2, 2)
    assert block_term(fmap, fmap.clone()).item() == pytest.approx(0.0, abs=1e-6)
    j3 = label_term(torch.zeros(1, 2), torch.tensor([0]))
    assert j3.item() == pytest.approx(2 * math.log(2))


def test_j3_is_minimised_by_the_true_class() -> None:
    """J3's sign: raising the true class's logit lowers the loss (it is a cross-entropy).

    Prepare: zero logits of 3 classes, label 1. Execute: backward through label_term.
    Assert: the gradient of the true logit is negative, the others positive.
    """
    logits = torch.zeros(1, 3, requires_grad=True)
    label_term(logits, torch.tensor([1])).backward()
    assert logits.grad is not None
    assert logits.grad[0, 1] < 0 and logits.grad[0, 0] > 0 and logits.grad[0, 2] > 0


def test_total_loss_combines_the_terms() -> None:
    """l = lambda1 J1 + lambda2 sum_g J_b(mapped) + lambda3 J3; no labels leaves J3 out; no
    gradient reaches the teacher, and a student equal to the teacher has finite gradients.

    Prepare: a teacher with two groups of two blocks, a student with one block per group.
    Execute: the loss with and without labels, and with the student equal to the teacher.
    Assert: equal to the terms composed by hand; teacher grads None; student grads finite.
    """
    t_logits = torch.randn(3, 4, requires_grad=True)
    s_logits = torch.randn(3, 4, requires_grad=True)
    teacher = [[torch.rand(3, 4, 4, 4, requires_grad=True) for _ in range(2)] for _ in range(2)]
    student = [[torch.rand(3, 2, 4, 4, requires_grad=True)] for _ in range(2)]
    labels = torch.tensor([0, 3, 1])
    mapping = map_blocks(teacher, student)
    blocks = sum(
        block_term(t[m[0]], s[0]) for t, s, m in zip(teacher, student, mapping, strict=True)
    )
    expected = 0.5 * fc_term(t_logits, s_logits) + 2.0 * blocks
    got = layerwise_kt_loss(t_logits, s_logits, teacher, student, lambdas=(0.5, 2.0, 3.0))
    assert got.item() == pytest.approx(expected.item())
    with_labels = layerwise_kt_loss(
        t_logits, s_logits, teacher, student, labels, lambdas=(0.5, 2.0, 3.0)
    )
    assert with_labels.item() == pytest.approx(
        (expected + 3.0 * label_term(s_logits, labels)).item()
    )
    with_labels.backward()
    assert t_logits.grad is None and all(m.grad is None for g in teacher for m in g)
    same = [[m.detach().clone().requires_grad_(True) for m in g] for g in teacher]
    layerwise_kt_loss(t_logits, t_logits.detach().clone(), teacher, same).backward()
    assert all(torch.isfinite(m.grad).all() for g in same for m in g if m.grad is not None)


def test_mismatched_teacher_and_bad_input_name_the_value() -> None:
    """Group counts, map sizes, widths, lambdas and labels that do not fit raise ValueError.

    Prepare: valid (2, 4, 4, 4) teacher maps. Execute: each bad call. Assert: each message
    names what is wrong.
    """
    t = torch.rand(2, 4, 4, 4)
    with pytest.raises(ValueError, match="teacher has 2 groups and the student 1"):
        map_blocks([[t], [t]], [[t]])
    with pytest.raises(ValueError, match=r"group 1: .*\(2, 4, 2, 2\)"):
        map_blocks([[t], [t]], [[t], [torch.rand(2, 4, 2, 2)]])
    with pytest.raises(ValueError, match=r"group 0: .*\(2, 5, 4, 4\).*wider"):
        map_blocks([[t]], [[torch.rand(2, 5, 4, 4)]])
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"lambdas .*-1\.0"):
        layerwise_kt_loss(logits, logits, [[t]], [[t]], lambdas=(1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got \[0, 3\]"):
        label_term(logits, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"student_logits \(2, 2\)"):
        fc_term(logits, torch.zeros(2, 2))


@pytest.mark.parametrize("classifier", [False, True])
def test_untrained_layers_are_bit_identical_after_a_step(classifier: bool) -> None:
    """Only the last conv of each student group (and the classifier when asked) changes.

    Prepare: a tiny teacher, a compressed student, trainable_for_transfer and
    freeze_batchnorm; SGD with momentum and weight decay over *all* student parameters.
    Execute: one layer-wise transfer step with labels.
    Assert: every other parameter and buffer is bit-identical; the trained ones changed.
    """
    teacher = PrunedResNet(TINY, 3).eval()
    student = PrunedResNet(ResNetSpec(3, (((3, 3),), ((5, 6),), ((7, 9),)), (1, 2, 2)), 3)
    trained = trainable_for_transfer(student, classifier=classifier)
    student.train()
    freeze_batchnorm(student)
    names = {"backbone.layer1.0.conv2.weight", "backbone.layer2.0.conv2.weight"}
    names |= {"backbone.layer3.0.conv2.weight"}
    if classifier:
        names |= {"classifier.weight", "classifier.bias"}
    params = dict(student.named_parameters())
    assert {id(p) for p in trained} == {id(params[n]) for n in names}
    before = {k: v.clone() for k, v in student.state_dict().items()}
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        t_logits, t_blocks = teacher.forward_blocks(x)
    s_logits, s_blocks = student.forward_blocks(x)
    layerwise_kt_loss(t_logits, s_logits, t_blocks, s_blocks, torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    after = student.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == names
