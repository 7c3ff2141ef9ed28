"""Tests for the edgekd model zoo and registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import edgekd.models as models_pkg
from edgekd.models import (
    BasicBlock,
    CifarResNet,
    EdgeKDModel,
    SafeMaxPool2d,
    build_model,
    count_parameters,
    list_models,
    register_model,
)

EXPECTED_NAMES = {
    "cnn",
    "mobilenetv2",
    "resnet8",
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet110",
    "vgg8",
    "vgg11",
    "wrn16_1",
    "wrn16_2",
}
# resnet110 is exercised separately with a single tiny forward pass to keep the suite fast.
FAST_NAMES = sorted(EXPECTED_NAMES - {"resnet110"})


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_list_models_sorted_and_complete() -> None:
    """list_models returns every expected architecture, sorted."""
    names = list_models()
    assert names == sorted(names)
    assert set(names) >= EXPECTED_NAMES


def test_package_all_sorted() -> None:
    """The package __all__ is sorted and every entry exists."""
    assert models_pkg.__all__ == sorted(models_pkg.__all__)
    for name in models_pkg.__all__:
        assert hasattr(models_pkg, name)


@pytest.mark.parametrize("name", FAST_NAMES)
@pytest.mark.parametrize(("in_channels", "size"), [(3, 32), (1, 8)])
def test_output_and_feature_shapes(name: str, in_channels: int, size: int) -> None:
    """Every model maps (B, C, H, W) to (B, num_classes) logits and (B, feature_dim) features."""
    model = build_model(name, num_classes=10, in_channels=in_channels)
    model.eval()
    assert isinstance(model, EdgeKDModel)
    assert model.num_classes == 10
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.in_features == model.feature_dim
    assert model.classifier.out_features == 10
    x = torch.randn(2, in_channels, size, size)
    with torch.no_grad():
        logits = model(x)
        logits2, feats = model.forward_with_features(x)
        feats_only = model.features(x)
    assert logits.shape == (2, 10)
    assert feats.shape == (2, model.feature_dim)
    torch.testing.assert_close(model.classifier(feats), logits)
    torch.testing.assert_close(logits2, logits)
    torch.testing.assert_close(feats_only, feats)


@pytest.mark.parametrize("name", FAST_NAMES)
def test_train_step_on_tiny_input(name: str) -> None:
    """A training-mode forward/backward on 8x8 grey digits yields finite gradients everywhere."""
    model = build_model(name, num_classes=10, in_channels=1)
    model.train()
    x = torch.randn(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    for p in model.parameters():
        assert p.grad is not None
        assert torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", ["cnn", "resnet8", "vgg8", "mobilenetv2", "wrn16_1"])
def test_representation_dim_sets_feature_dim(name: str) -> None:
    """representation_dim adds a Linear(backbone_dim, r) layer and makes feature_dim == r."""
    plain = build_model(name, num_classes=5, in_channels=1)
    model = build_model(name, num_classes=5, in_channels=1, representation_dim=7)
    assert plain.representation_dim is None
    assert plain.feature_dim == plain.backbone_dim
    assert model.feature_dim == 7
    assert model.representation_dim == 7
    assert isinstance(model.representation, nn.Linear)
    assert model.representation.in_features == model.backbone_dim
    assert model.representation.out_features == 7
    assert model.classifier.in_features == 7
    extra = model.backbone_dim * 7 + 7 + (7 - plain.feature_dim) * 5
    assert count_parameters(model) == count_parameters(plain) + extra
    model.eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        logits, feats = model.forward_with_features(x)
    assert feats.shape == (2, 7)
    assert logits.shape == (2, 5)
    torch.testing.assert_close(model.classifier(feats), logits)


def test_resnet_parameter_counts() -> None:
    """resnet20 and resnet32 (option-A shortcuts, 10 classes) match He et al.: 0.27M and 0.46M."""
    n20 = count_parameters(build_model("resnet20", 10))
    n32 = count_parameters(build_model("resnet32", 10))
    assert 260_000 <= n20 <= 280_000
    assert 450_000 <= n32 <= 480_000


@pytest.mark.parametrize(("name", "depth"), [("resnet8", 8), ("resnet56", 56), ("resnet110", 110)])
def test_resnet_depth_pattern(name: str, depth: int) -> None:
    """A CIFAR ResNet of depth 6n+2 has 3n BasicBlocks, 6n+1 convolutions and one linear layer."""
    model = build_model(name, 10)
    assert isinstance(model, CifarResNet)
    n = (depth - 2) // 6
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(blocks) == 3 * n
    assert len(convs) + len(linears) == depth
    assert model.depth == depth


def test_resnet_shortcuts_are_parameter_free() -> None:
    """Option-A shortcuts add no parameters: all convolutions are 3x3."""
    model = build_model("resnet20", 10)
    assert all(m.kernel_size == (3, 3) for m in model.modules() if isinstance(m, nn.Conv2d))


def test_resnet110_tiny_forward() -> None:
    """resnet110 runs a forward pass on a batch of two 8x8 grey images."""
    model = build_model("resnet110", 10, in_channels=1)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 10)


def test_cifar_resnet_bad_depth() -> None:
    """CifarResNet rejects a depth that is not 6n+2."""
    with pytest.raises(ValueError, match="21"):
        CifarResNet(21, 10)


def test_small_cnn_parameter_budget() -> None:
    """The small CNN stays within the 50k-200k parameter budget for CPU experiments."""
    assert 50_000 <= count_parameters(build_model("cnn", 10)) <= 200_000


def test_safe_max_pool_keeps_one_pixel_maps() -> None:
    """SafeMaxPool2d halves 4x4 maps and leaves 1x1 maps untouched."""
    pool = SafeMaxPool2d()
    assert pool(torch.randn(1, 2, 4, 4)).shape == (1, 2, 2, 2)
    x = torch.randn(1, 2, 1, 1)
    assert torch.equal(pool(x), x)


def test_unknown_name_lists_valid_names() -> None:
    """An unknown model name raises ValueError listing the valid names."""
    with pytest.raises(ValueError, match="not_a_model") as excinfo:
        build_model("not_a_model", 10)
    for name in list_models():
        assert name in str(excinfo.value)


@pytest.mark.parametrize("num_classes", [1, 0, -3])
def test_bad_num_classes(num_classes: int) -> None:
    """num_classes < 2 raises ValueError naming the value."""
    with pytest.raises(ValueError, match=rf"num_classes.*{num_classes}"):
        build_model("cnn", num_classes)


def test_bad_in_channels_and_representation_dim() -> None:
    """in_channels < 1 and representation_dim < 1 raise ValueError naming the value."""
    with pytest.raises(ValueError, match=r"in_channels.*0"):
        build_model("cnn", 10, in_channels=0)
    with pytest.raises(ValueError, match=r"representation_dim.*-1"):
        build_model("cnn", 10, representation_dim=-1)


def test_register_model_rejects_duplicates() -> None:
    """Registering an existing name raises ValueError naming it."""
    with pytest.raises(ValueError, match="resnet20"):
        register_model("resnet20")


def test_count_parameters_simple() -> None:
    """count_parameters counts weights and biases of a plain linear layer."""
    assert count_parameters(nn.Linear(3, 4)) == 16


def test_build_model_is_deterministic_under_seed() -> None:
    """Two models built under the same seed have identical weights."""
    torch.manual_seed(1)
    a = build_model("resnet8", 10)
    torch.manual_seed(1)
    b = build_model("resnet8", 10)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("representation_dim", [None, 5])
def test_resnet_forward_stages_keeps_logits(representation_dim: int | None) -> None:
    """forward_stages returns forward's logits exactly and the three stage maps."""
    torch.manual_seed(0)
    model = build_model("resnet8", 10, representation_dim=representation_dim)
    model.eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        logits, maps = model.forward_stages(x)
        assert torch.equal(logits, model(x))
    assert [tuple(m.shape) for m in maps] == [(3, 16, 16, 16), (3, 32, 8, 8), (3, 64, 4, 4)]
