"""Tests for the width-configurable CIFAR ResNet (edgekd.models.pruned_resnet)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekd.models import build_model, count_parameters
from edgekd.models.pruned_resnet import (
    ChannelPadShortcut,
    PrunedResNet,
    ResNetSpec,
    count_resnet_parameters,
    resnet_spec,
    spec_of,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_full_widths_match_registered_resnet20() -> None:
    """The full-width resnet20 spec has resnet20's parameter count, keys and function.

    Prepare: the registered resnet20 and a PrunedResNet of resnet_spec(20).
    Execute: count parameters, load the registered model's state_dict, run both on 8x8 inputs.
    Assert: equal counts (also by the analytic counter), strict load, identical logits and maps.
    """
    reference = build_model("resnet20", 10)
    model = PrunedResNet(resnet_spec(20), 10)
    assert count_parameters(model) == count_parameters(reference) == 269722
    assert count_resnet_parameters(resnet_spec(20), 10) == 269722
    model.load_state_dict(reference.state_dict(), strict=True)
    reference.eval()
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    ref_logits, ref_maps = reference.forward_stages(x)
    logits, maps = model.forward_stages(x)
    assert torch.equal(logits, ref_logits)
    assert all(torch.equal(a, b) for a, b in zip(maps, ref_maps, strict=True))
    assert spec_of(reference) == resnet_spec(20)


def test_pruned_widths_shapes_shortcuts_and_counter() -> None:
    """Any per-conv widths build; shortcuts pad where widths grow and project where they shrink.

    Prepare: a spec whose second group narrows (12 -> 5) and whose blocks differ in width.
    Execute: build with a representation layer and run forward_blocks on 8x8 grey images.
    Assert: block maps have each conv2 width and the group's size; shortcut kinds; the analytic
    parameter count equals the model's.
    """
    spec = ResNetSpec(3, (((4, 6), (2, 12)), ((7, 5),), ((3, 9),)), (1, 2, 2))
    model = PrunedResNet(spec, 4, 1, representation_dim=6)
    logits, blocks = model.forward_blocks(torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 4)
    shapes = [[tuple(m.shape) for m in group] for group in blocks]
    assert shapes == [[(2, 6, 8, 8), (2, 12, 8, 8)], [(2, 5, 4, 4)], [(2, 9, 2, 2)]]
    backbone = model.backbone
    assert isinstance(backbone.layer1[0].shortcut, ChannelPadShortcut)  # 3 -> 6
    assert isinstance(backbone.layer2[0].shortcut, nn.Sequential)  # 12 -> 5: projection
    assert isinstance(backbone.layer3[0].shortcut, ChannelPadShortcut)  # 5 -> 9, stride 2
    assert count_resnet_parameters(spec, 4, 1, representation_dim=6) == count_parameters(model)
    assert spec_of(model) == spec


def test_spec_conv_names_and_with_widths() -> None:
    """conv_widths names each convolution as in the model; with_widths changes only those named.

    Prepare: resnet_spec(8). Execute: narrow two convolutions. Assert: the names are the
    model's Conv2d names and only the two widths changed.
    """
    spec = resnet_spec(8)
    names = [n for n, m in PrunedResNet(spec, 2).named_modules() if isinstance(m, nn.Conv2d)]
    assert list(spec.conv_widths()) == names
    narrowed = spec.with_widths({"backbone.conv1": 5, "backbone.layer2.0.conv2": 7})
    assert narrowed.stem == 5
    assert narrowed.groups == (((16, 16),), ((32, 7),), ((64, 64),))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ResNetSpec(0, (((4, 4),),), (1,)), r"backbone\.conv1 must .* got 0"),
        (lambda: ResNetSpec(4, (((4, 0),),), (1,)), r"backbone\.layer1\.0\.conv2 .* got 0"),
        (lambda: ResNetSpec(4, ((), ((4, 4),)), (1, 2)), r"group 0 \(backbone\.layer1\)"),
        (lambda: ResNetSpec(4, (((4, 4),),), (1, 2)), r"one stride per group .*\(1, 2\)"),
        (lambda: resnet_spec(9), "got 9"),
        (lambda: resnet_spec(8).with_widths({"conv9": 3}), r"unknown convolutions \['conv9'\]"),
    ],
)
def test_bad_specs_name_the_value(build: object, message: str) -> None:
    """Zero widths, empty groups, wrong strides, bad depths and unknown names raise ValueError
    naming the value (Prepare/Execute: build the spec; Assert: the message)."""
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]
