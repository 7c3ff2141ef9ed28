"""Tests for activation-based filter pruning and the L1-norm baseline (edgekd.pruning)."""

from __future__ import annotations

import re

import pytest
import torch

from edgekd.models.pruned_resnet import (
    PrunedResNet,
    ResNetSpec,
    count_resnet_parameters,
    resnet_spec,
)
from edgekd.pruning import (
    activation_percentages,
    activation_widths,
    avgc,
    compress_resnet,
    keep_last_blocks,
    l1_norm_scores,
    l1_norm_spec,
    perc,
)

TINY = resnet_spec(20, widths=(4, 8, 16), stem=4)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_perc_and_avgc_hand_values() -> None:
    """Eq. 2 and avgc on a hand-made 2-image, 3-filter, 2x2 activation.

    Prepare: image 0: filter 0 has 2 zeros of 4, filter 1 is all zero, filter 2 has none;
    image 1: filter 0 has 3 zeros, filters 1 and 2 none.
    Execute: perc, then avgc at P = 0.5, 0.75 and 1.0.
    Assert: perc = [[0.5, 1, 0], [0.75, 0, 0]]; safe counts (2, 1), (1, 1), (1, 0) average to
    1.5, 1.0 and 0.5.
    """
    a = torch.ones(2, 3, 2, 2)
    a[0, 0, 0] = 0.0
    a[0, 1] = 0.0
    a[1, 0].view(-1)[:3] = 0.0
    p = perc(a)
    assert p.tolist() == [[0.5, 1.0, 0.0], [0.75, 0.0, 0.0]]
    assert avgc(p, 0.5) == 1.5
    assert avgc(p, 0.75) == 1.0
    assert avgc(p, 1.0) == 0.5


@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.7, 0.9, 1.0])
def test_all_zero_filter_counts_as_safe(threshold: float) -> None:
    """A filter whose activation is all zero is safe to remove at every P in [0, 1].

    Prepare: one image, filter 1 all zero, filter 0 all positive. Execute: perc, avgc.
    Assert: perc of filter 1 is 1 and it is counted (avgc >= 1).
    """
    a = torch.zeros(1, 2, 4, 4)
    a[0, 0] = 0.3
    p = perc(a)
    assert p[0, 1].item() == 1.0
    assert avgc(p[:, 1:], threshold) == 1.0
    assert avgc(p, threshold) >= 1.0


def test_p_one_counts_only_all_zero_maps() -> None:
    """At P = 1.0 a map with 15 of 16 zeros is not safe, an all-zero map is.

    Prepare: filter 0 with a single non-zero entry, filter 1 all zero. Execute: avgc at 1.0.
    Assert: exactly one safe filter, and the rule removes one filter of the two.
    """
    a = torch.zeros(1, 2, 4, 4)
    a[0, 0, 2, 3] = 1e-6
    p = perc(a)
    assert p[0, 0].item() == pytest.approx(15 / 16)
    assert avgc(p, 1.0) == 1.0
    assert activation_widths({"conv": p}, 1.0) == {"conv": 1}


def test_width_rounds_avgc_and_halves_keep_the_filter() -> None:
    """``w = n - round(avgc)``: avgc 1.5 removes one filter, 1.75 removes two.

    Prepare: 4 images of 4 filters with 1, 2, 1, 2 (avgc 1.5) or 1, 2, 2, 2 (1.75) all-zero
    maps. Execute: activation_widths at P = 1. Assert: widths 3 and 2.
    """

    def stats(counts: list[int]) -> torch.Tensor:
        return torch.tensor([[1.0] * c + [0.0] * (4 - c) for c in counts])

    widths = activation_widths({"a": stats([1, 2, 1, 2]), "b": stats([1, 2, 2, 2])}, 1.0)
    assert widths == {"a": 3, "b": 2}


def test_widths_never_grow_as_p_falls() -> None:
    """Widths from a real model's statistics shrink or stay as P goes from 1.0 down to 0.

    Prepare: a tiny resnet20 and the percentages of 6 random 8x8 images.
    Execute: activation_widths for P = 1.0, 0.95, ..., 0.0 (floor 1).
    Assert: every width is <= its value at the previous, larger P; at P = 0 all are 1.
    """
    percentages = activation_percentages(PrunedResNet(TINY, 3), torch.randn(6, 3, 8, 8))
    previous = {name: p.shape[1] for name, p in percentages.items()}
    for step in range(20, -1, -1):
        widths = activation_widths(percentages, step / 20, min_width=1)
        assert all(widths[name] <= previous[name] for name in widths)
        previous = widths
    assert set(previous.values()) == {1}


def test_activation_percentages_sees_a_dead_filter_and_restores_mode() -> None:
    """Hooks record every conv's post-ReLU zero fraction; a zero-weight filter gives perc 1.

    Prepare: a tiny model in training mode whose stem filter 2 has zero weights.
    Execute: activation_percentages on 5 images in batches of 2.
    Assert: one (5, n) entry per conv (stem, conv1, conv2 of each block), filter 2 of the stem
    has perc 1 everywhere, and the model is back in training mode.
    """
    model = PrunedResNet(TINY, 3)
    with torch.no_grad():
        model.backbone.conv1.weight[2] = 0.0
    model.train()
    percentages = activation_percentages(model, torch.randn(5, 3, 8, 8), batch_size=2)
    assert list(percentages) == list(TINY.conv_widths())
    assert all(p.shape == (5, TINY.conv_widths()[n]) for n, p in percentages.items())
    assert percentages["backbone.conv1"][:, 2].tolist() == [1.0] * 5
    assert model.training


def test_depth_rule_keeps_the_last_block_of_each_group() -> None:
    """keep_last_blocks keeps each group's last block with the group's stride.

    Prepare: a 3-group spec whose blocks all have different widths.
    Execute: keep_last_blocks, build the student, run it on 8x8 images.
    Assert: one block per group with the last block's widths, the strides kept, and group
    outputs of the teacher's spatial sizes.
    """
    spec = ResNetSpec(
        4, (((4, 5), (6, 7), (8, 9)), ((10, 11), (12, 13)), ((14, 15), (16, 17))), (1, 2, 2)
    )
    student = keep_last_blocks(spec)
    assert student.groups == (((8, 9),), ((12, 13),), ((16, 17),))
    assert student.strides == (1, 2, 2) and student.stem == 4
    x = torch.randn(2, 3, 8, 8)
    _, maps = PrunedResNet(student, 3).forward_stages(x)
    _, teacher_maps = PrunedResNet(spec, 3).forward_stages(x)
    assert [m.shape[1:] for m in maps] == [(9, 8, 8), (13, 4, 4), (17, 2, 2)]
    assert [m.shape[2:] for m in maps] == [m.shape[2:] for m in teacher_maps]


def test_compress_resnet_end_to_end() -> None:
    """compress_resnet = width rule on the teacher's statistics, then the depth rule.

    Prepare: a tiny resnet20 with a dead stem filter. Execute: compress at P = 1.0.
    Assert: one block per group, each width <= the teacher's, the stem loses its dead filter.
    """
    teacher = PrunedResNet(TINY, 3)
    with torch.no_grad():
        teacher.backbone.conv1.weight[0] = 0.0
    spec = compress_resnet(teacher, torch.randn(4, 3, 8, 8), 1.0)
    assert spec.blocks_per_group == (1, 1, 1)
    assert spec.stem == 3
    assert all(a <= b for (a, b) in zip(spec.groups[2][0], (16, 16), strict=True))


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan"), True, "0.9"])
def test_bad_threshold_names_the_value(threshold: object) -> None:
    """P outside [0, 1] (or not a number) raises a ValueError naming the value.

    Prepare: valid percentages. Execute: avgc and activation_widths with the bad P.
    Assert: both raise, the message contains repr(P).
    """
    p = torch.zeros(1, 2)
    message = re.escape(repr(threshold))
    with pytest.raises(ValueError, match=f"threshold P .*{message}"):
        avgc(p, threshold)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        activation_widths({"c": p}, threshold)  # type: ignore[arg-type]


def test_width_reaching_zero_names_the_layer() -> None:
    """A layer whose filters are all safe raises naming it, unless a floor is given.

    Prepare: 2 images where all 3 filters of "backbone.layer1.0.conv1" are all zero.
    Execute: activation_widths at P = 0.9 without and with min_width=1.
    Assert: the error names the layer, n, avgc and P; the floor gives width 1.
    """
    p = {"backbone.layer1.0.conv1": torch.ones(2, 3)}
    with pytest.raises(ValueError, match=r"backbone\.layer1\.0\.conv1 would have width 0.*3 .*"):
        activation_widths(p, 0.9)
    with pytest.raises(ValueError, match=r"avgc=3\.00\) at P=0\.9"):
        activation_widths(p, 0.9)
    assert activation_widths(p, 0.9, min_width=1) == {"backbone.layer1.0.conv1": 1}
    with pytest.raises(ValueError, match=r"min_width .* got 0"):
        activation_widths(p, 0.9, min_width=0)


def test_l1_norm_scores_and_spec_fit_the_budget() -> None:
    """L1 scores are norms over the layer mean; the baseline spec fits the parameter budget.

    Prepare: a tiny resnet20 whose stem filters have L1 norms in ratio 1:1:1:5.
    Execute: l1_norm_scores; l1_norm_spec for the budget of a compressed model, for the full
    shallow model's budget and for a budget of 10.
    Assert: scores 0.5, 0.5, 0.5, 2.5; the spec fits its budget; the full budget keeps all
    widths; 10 parameters is an error naming 10.
    """
    teacher = PrunedResNet(TINY, 3)
    with torch.no_grad():
        teacher.backbone.conv1.weight.fill_(0.1)
        teacher.backbone.conv1.weight[3] = 0.5
    scores = l1_norm_scores(teacher)
    assert scores["backbone.conv1"].tolist() == pytest.approx([0.5, 0.5, 0.5, 2.5])
    target = count_resnet_parameters(ResNetSpec(3, (((3, 3),), ((6, 6),), ((9, 9),)), (1, 2, 2)), 3)
    spec = l1_norm_spec(teacher, target, num_classes=3)
    assert spec.blocks_per_group == (1, 1, 1)
    assert count_resnet_parameters(spec, 3) <= target
    full = keep_last_blocks(TINY)
    assert l1_norm_spec(teacher, count_resnet_parameters(full, 3), num_classes=3) == full
    with pytest.raises(ValueError, match="target_parameters=10 "):
        l1_norm_spec(teacher, 10, num_classes=3)
