"""Tests for one node's side of a federated knowledge transfer graph (``edgekd.ktg.train_node``)."""

from __future__ import annotations

import math

import pytest
import torch

from edgekd.ktg import EdgeTargets, train_node
from edgekd.losses.ktg import kl_per_sample
from edgekd.models import build_model
from edgekd.training import predict_logits, train_supervised

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def _model(seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("cnn", 4, 3)


SCHEDULE = {
    "epochs": 2,
    "batch_size": 16,
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "seed": 5,
    "augment": True,
    "padding": 2,
    "flip": False,
    "lr_schedule": "cosine",
}


def test_without_targets_it_is_train_supervised_bit_for_bit() -> None:
    """Prepare: two identical models and data. Execute: train_node without targets (self
    weight 1) on one, train_supervised with the same schedule on the other.
    Assert: identical weights, and the same last-epoch loss and accuracy."""
    x, y = _data()
    node, plain = _model(), _model()

    found = train_node(node, x, y, None, **SCHEDULE)
    reference = train_supervised(plain, x, y, **SCHEDULE)

    for (key, a), b in zip(node.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    assert found.ce_loss == reference.loss and found.loss == pytest.approx(reference.loss)
    assert found.accuracy == reference.accuracy and math.isnan(found.kd_loss)


def test_incoming_edges_alone_pull_the_node_to_its_targets() -> None:
    """Prepare: a node with its self edge cut (weight 0) and one Through target on 32
    public images. Execute: train_node. Assert: the KL to the target falls, no CE is
    computed, and a target with weights 0 trains nothing at all."""
    x, y = _data()
    public, _ = _data(32, seed=3)
    target = torch.randn(1, 32, 4, generator=torch.Generator().manual_seed(4)) * 3
    model = _model()
    before = float(kl_per_sample(predict_logits(model, public), target[0], 1.0).mean())

    found = train_node(
        model, x, y, EdgeTargets(public, target, torch.ones(1, 32)), self_weight=0.0, **SCHEDULE
    )

    after = float(kl_per_sample(predict_logits(model, public), target[0], 1.0).mean())
    assert after < before and math.isnan(found.ce_loss) and found.kd_loss > 0
    untouched = _model()
    reference = {k: v.clone() for k, v in untouched.state_dict().items()}
    empty = EdgeTargets(public, target[:0], torch.ones(0, 32))
    train_node(untouched, x, y, empty, self_weight=0.0, **SCHEDULE)
    assert all(torch.equal(reference[k], v) for k, v in untouched.state_dict().items())


def test_targets_of_mismatched_shapes_are_refused() -> None:
    """EdgeTargets names the shapes when logits, weights and images disagree."""
    with pytest.raises(ValueError, match=r"logits \(2, 5, 4\), weights \(2, 6\)"):
        EdgeTargets(torch.zeros(5, 3, 8, 8), torch.zeros(2, 5, 4), torch.ones(2, 6))
