"""Tests for edgekd.training: hand-checkable steps, the LR schedule, seeds and label noise."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import pytest
import torch
from torch import nn

from edgekd import distillation, training
from edgekd.distillation import distill, make_distill_pool
from edgekd.training import (
    cosine_factor,
    evaluate,
    make_lr_scheduler,
    make_optimizer,
    predict_logits,
    train_supervised,
)

X = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [2.0, 0.0]])
Y = torch.tensor([0, 1, 1, 0])


def _zero_linear() -> nn.Linear:
    model = nn.Linear(2, 2)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    return model


def _old_cosine(base_lr: float, step: int, total_steps: int) -> float:
    """The hand-written schedule edgekd used before torch's LambdaLR (kept as the reference)."""
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * step / max(1, total_steps)))


@contextmanager
def _recorded_lrs(module: object) -> Iterator[list[float]]:
    """Record the learning rate of every optimiser step made by ``module``'s make_optimizer."""
    lrs: list[float] = []

    def recording(*args: object, **kwargs: object) -> torch.optim.SGD:
        optimizer = make_optimizer(*args, **kwargs)  # type: ignore[arg-type]
        optimizer.register_step_pre_hook(lambda opt, a, k: lrs.append(opt.param_groups[0]["lr"]))
        return optimizer

    with mock.patch.object(module, "make_optimizer", side_effect=recording):
        yield lrs


@pytest.mark.parametrize("base_lr", [0.1, 0.05, 0.03, 0.2, 0.017, 1e-3])
@pytest.mark.parametrize("total", [1, 7, 40, 391])
def test_cosine_scheduler_lr_equals_closed_form_exactly(base_lr: float, total: int) -> None:
    """Step k trains at 0.5 * lr * (1 + cos(pi k / total)), bit for bit, for every k."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = make_lr_scheduler(optimizer, "cosine", total)
    for step in range(total):
        assert optimizer.param_groups[0]["lr"] == _old_cosine(base_lr, step, total)
        assert optimizer.param_groups[0]["lr"] == base_lr * cosine_factor(step, total)
        optimizer.step()
        scheduler.step()


def test_constant_scheduler_keeps_lr_and_unknown_is_an_error() -> None:
    """ "constant" never changes the learning rate; other names are errors naming them."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.03)
    scheduler = make_lr_scheduler(optimizer, "constant", 5)
    for _ in range(5):
        assert optimizer.param_groups[0]["lr"] == 0.03
        optimizer.step()
        scheduler.step()
    with pytest.raises(ValueError, match="'step'"):
        make_lr_scheduler(optimizer, "step", 5)


def test_train_supervised_steps_follow_the_cosine_schedule() -> None:
    """train_supervised's per-step lr is the closed form over epochs * batches steps."""
    with _recorded_lrs(training) as lrs:
        train_supervised(
            _zero_linear(), X, Y, epochs=3, batch_size=3, lr=0.1, seed=0, lr_schedule="cosine"
        )
    total = 3 * 2
    assert lrs == [_old_cosine(0.1, k, total) for k in range(total)]


def test_distill_steps_follow_the_cosine_schedule() -> None:
    """distill's per-step lr is the closed form over epochs * ceil(n / batch) steps."""
    pool = make_distill_pool(X, Y)
    teachers = torch.zeros(1, len(X), 2)
    with _recorded_lrs(distillation) as lrs:
        distill(_zero_linear(), pool, teachers, epochs=2, batch_size=3, lr=0.05, temperature=2.0)
    assert lrs == [_old_cosine(0.05, k, 4) for k in range(4)]


def test_one_full_batch_step_matches_hand_gradient() -> None:
    """From a zero linear model, one SGD step moves W by -lr * mean((p - onehot) x^T).

    With zero weights every softmax is (1/2, 1/2), so the loss is ln 2, every prediction is
    class 0 (the first of the tie) and the training accuracy is the share of label 0 (1/2).
    """
    model = _zero_linear()
    result = train_supervised(
        model, X, Y, epochs=1, batch_size=4, lr=0.5, momentum=0.0, weight_decay=0.0, seed=3
    )
    onehot = torch.nn.functional.one_hot(Y, 2).float()
    grad_w = ((0.5 - onehot).T @ X) / len(X)
    grad_b = (0.5 - onehot).mean(0)
    assert torch.allclose(model.weight, -0.5 * grad_w)
    assert torch.allclose(model.bias, -0.5 * grad_b)
    assert result.loss == pytest.approx(math.log(2))
    assert result.accuracy == 0.5 and result.num_examples == 4


def _trained(seed: int, **kwargs: object) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(1))
    y = (x[:, 0] > 0).long()
    train_supervised(model, x, y, epochs=2, batch_size=8, lr=0.1, seed=seed, **kwargs)
    return model.state_dict()


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_model_other_seed_other_model() -> None:
    """Training is deterministic by seed (bit-identical), and the seed changes the batch order."""
    assert _equal(_trained(4), _trained(4))
    assert not _equal(_trained(4), _trained(5))


def test_zero_epochs_evaluates_without_training() -> None:
    """epochs=0 leaves the model unchanged and reports its current loss and accuracy."""
    model = _zero_linear()
    result = train_supervised(model, X, Y, epochs=0, batch_size=2, lr=0.1)
    assert torch.count_nonzero(model.weight) == 0
    assert result.loss == pytest.approx(math.log(2)) and result.accuracy == 0.5


def test_label_noise_flip_always_changes_every_label() -> None:
    """flip with p=1 gives every sample another class: the zero model (always 0) scores 0."""
    y = torch.zeros(4, dtype=torch.long)
    clean = train_supervised(_zero_linear(), X, y, epochs=1, batch_size=4, lr=0.1)
    flipped = train_supervised(
        _zero_linear(), X, y, epochs=1, batch_size=4, lr=0.1, label_noise="flip", label_noise_p=1.0
    )
    assert clean.accuracy == 1.0 and flipped.accuracy == 0.0


def test_label_noise_pair_maps_every_label_to_the_next_class() -> None:
    """pair with p=1 trains class 1 as class 0 (c + 1 mod 2): the zero model (always 0), wrong
    on every clean label 1, is right on every corrupted one; p=0 changes nothing."""
    y = torch.ones(4, dtype=torch.long)
    paired = train_supervised(
        _zero_linear(), X, y, epochs=1, batch_size=4, lr=0.0, label_noise="pair", label_noise_p=1.0
    )
    never = train_supervised(
        _zero_linear(), X, y, epochs=1, batch_size=4, lr=0.0, label_noise="pair", label_noise_p=0.0
    )
    assert paired.accuracy == 1.0 and never.accuracy == 0.0
    with pytest.raises(ValueError, match="'pairs'"):
        train_supervised(_zero_linear(), X, y, epochs=1, batch_size=4, lr=0.1, label_noise="pairs")


def test_label_noise_shuffle_permutes_within_the_batch() -> None:
    """shuffle keeps the batch's labels (a permutation): with equal labels nothing changes."""
    y = torch.zeros(4, dtype=torch.long)
    shuffled = train_supervised(
        _zero_linear(),
        X,
        y,
        epochs=1,
        batch_size=4,
        lr=0.1,
        label_noise="shuffle",
        label_noise_p=1.0,
    )
    assert shuffled.accuracy == 1.0


def test_label_noise_with_p_zero_changes_nothing() -> None:
    """Noise draws come from their own generator: p=0 trains bit-identically to no noise."""
    assert _equal(_trained(2), _trained(2, label_noise="flip", label_noise_p=0.0))
    assert not _equal(_trained(2), _trained(2, label_noise="shuffle", label_noise_p=1.0))


def test_proximal_term_has_no_gradient_at_the_global_model() -> None:
    """One step from the global model is the same with and without FedProx's term."""
    plain, prox = _zero_linear(), _zero_linear()
    global_params = [p.detach().clone() for p in prox.parameters()]
    train_supervised(plain, X, Y, epochs=1, batch_size=4, lr=0.1)
    train_supervised(
        prox, X, Y, epochs=1, batch_size=4, lr=0.1, proximal_mu=1.0, global_params=global_params
    )
    assert _equal(plain.state_dict(), prox.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"proximal_mu": 0.1}, "global_params"),
        ({"label_noise": "swap"}, "label_noise"),
        ({"label_noise_p": 1.5}, "label_noise_p"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, object], match: str) -> None:
    """Each invalid argument is a ValueError naming it."""
    with pytest.raises(ValueError, match=match):
        train_supervised(_zero_linear(), X, Y, epochs=1, batch_size=2, lr=0.1, **kwargs)


def test_empty_data_is_an_error() -> None:
    """Training or evaluating on 0 examples is an error."""
    empty_x, empty_y = torch.empty(0, 2), torch.empty(0, dtype=torch.long)
    with pytest.raises(ValueError, match="empty"):
        train_supervised(_zero_linear(), empty_x, empty_y, epochs=1, batch_size=2, lr=0.1)
    with pytest.raises(ValueError, match="empty"):
        evaluate(_zero_linear(), empty_x, empty_y)


def test_predict_logits_in_eval_mode_batched_and_restores_mode() -> None:
    """Logits equal one eval-mode forward whatever the batch size; the mode is restored."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.Dropout(0.5), nn.Linear(4, 3))
    model.train()
    full = predict_logits(model, X, batch_size=100)
    assert torch.allclose(predict_logits(model, X, batch_size=3), full)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(X), full)
    model.train()
    predict_logits(model, X)
    assert model.training
    assert predict_logits(model, X[:0]).numel() == 0


def test_evaluate_zero_model_by_hand() -> None:
    """A zero model has loss ln(C) and predicts class 0 everywhere."""
    result = evaluate(_zero_linear(), X, Y)
    assert result.loss == pytest.approx(math.log(2))
    assert result.accuracy == 0.5 and result.num_examples == 4
