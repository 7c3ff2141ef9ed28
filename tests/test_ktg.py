"""Tests for edgekd.ktg.train_graph: fixed nodes stay fixed, nodes step together, seeds."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekd.ktg import GateMatrix, train_graph
from edgekd.losses import kd_kl_loss

CLASSES = 3


def _data(n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def _linear(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(5, CLASSES))


def _with_batchnorm(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, CLASSES))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_all_cutoff_node_does_not_change() -> None:
    """After real optimizer steps, the fixed teacher's weights and BN buffers are unchanged."""
    teacher, student = _with_batchnorm(0), _with_batchnorm(1)
    before_teacher, before_student = _state(teacher), _state(student)
    x, y = _data()
    train_graph([teacher, student], x, y, GateMatrix.parse("X,X;T,T"), epochs=2, batch_size=8)
    after_teacher, after_student = teacher.state_dict(), student.state_dict()
    assert all(torch.equal(before_teacher[k], after_teacher[k]) for k in before_teacher)
    assert not torch.equal(before_student["0.weight"], after_student["0.weight"])


def test_nodes_step_together_on_the_same_batch() -> None:
    """One full-batch step of a DML graph equals one SGD step of each node on its DML loss."""
    models = [_linear(0), _linear(1)]
    manual = copy.deepcopy(models)
    x, y = _data(n=8)
    train_graph(
        models,
        x,
        y,
        GateMatrix.parse("T,T;T,T"),
        epochs=1,
        batch_size=8,
        lr=0.5,
        momentum=0.0,
        weight_decay=0.0,
    )
    z0, z1 = manual[0](x), manual[1](x)
    losses = [
        F.cross_entropy(z0, y) + kd_kl_loss(z0, z1.detach(), 1.0),
        F.cross_entropy(z1, y) + kd_kl_loss(z1, z0.detach(), 1.0),
    ]
    for model, loss in zip(manual, losses, strict=True):
        grads = torch.autograd.grad(loss, list(model.parameters()))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads, strict=True):
                p -= 0.5 * g
    for trained, expected in zip(models, manual, strict=True):
        for p, q in zip(trained.parameters(), expected.parameters(), strict=True):
            assert torch.allclose(p, q, atol=1e-6)


def test_train_graph_is_reproducible_for_a_seed() -> None:
    """Same models, data and seed give identical histories and weights; another seed differs."""
    x, y = _data()
    gates = GateMatrix.parse("T,C;L,T")

    def run(seed: int) -> tuple[list, list[torch.Tensor]]:
        models = [_linear(0), _with_batchnorm(1)]
        history = train_graph(models, x, y, gates, epochs=2, batch_size=8, seed=seed)
        return history, [p.detach() for m in models for p in m.parameters()]

    (h1, w1), (h2, w2), (h3, _) = run(3), run(3), run(4)
    assert h1 == h2
    assert all(torch.equal(a, b) for a, b in zip(w1, w2, strict=True))
    assert h1 != h3


def test_history_has_one_entry_per_epoch_and_node() -> None:
    """Each epoch records every node's train loss and accuracy, and validation accuracy."""
    x, y = _data()
    xv, yv = _data(n=10, seed=5)
    models = [_linear(0), _linear(1), _linear(2)]
    gates = GateMatrix.parse("X,X,X;T,T,T;T,T,T")
    history = train_graph(models, x, y, gates, epochs=3, batch_size=8, x_val=xv, y_val=yv)
    assert len(history) == 3
    assert all(len(e.train_loss) == len(e.train_accuracy) == 3 for e in history)
    assert all(e.val_accuracy is not None and len(e.val_accuracy) == 3 for e in history)
    assert all(e.train_loss[0] == 0.0 and e.train_loss[1] > 0 for e in history)
    no_val = train_graph(models, x, y, gates, epochs=1, batch_size=8)
    assert no_val[0].val_accuracy is None


def test_train_graph_needs_one_model_per_node() -> None:
    """Two models for a 3-node gate matrix raise a ValueError naming both counts."""
    x, y = _data()
    with pytest.raises(ValueError, match="2 models for gate matrix 'T,T,T;T,T,T;T,T,T' of 3"):
        train_graph(
            [_linear(0), _linear(1)],
            x,
            y,
            GateMatrix.parse("T,T,T;T,T,T;T,T,T"),
            epochs=1,
            batch_size=8,
        )


def test_on_epoch_sees_every_epoch_and_can_stop_the_training() -> None:
    """The callback gets (epoch from 1, its record); raising in it stops between epochs."""
    seen: list[tuple[int, tuple[float, ...] | None]] = []
    x, y = _data()
    history = train_graph(
        [_linear(0), _linear(1)],
        x,
        y,
        GateMatrix.parse("T,T;T,T"),
        epochs=3,
        batch_size=8,
        x_val=x,
        y_val=y,
        on_epoch=lambda epoch, record: seen.append((epoch, record.val_accuracy)),
    )
    assert seen == [(i + 1, h.val_accuracy) for i, h in enumerate(history)] and len(seen) == 3

    class StopError(Exception):
        pass

    def stop_after_two(epoch: int, record: object) -> None:
        if epoch == 2:
            raise StopError

    calls: list[int] = []
    with pytest.raises(StopError):
        train_graph(
            [_linear(0)],
            x,
            y,
            GateMatrix.parse("T"),
            epochs=5,
            batch_size=8,
            on_epoch=lambda epoch, record: (calls.append(epoch), stop_after_two(epoch, record)),
        )
    assert calls == [1, 2]
