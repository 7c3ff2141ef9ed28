"""Tests for edgekd.distillation: the distillation pool, cached teacher logits and ``distill``."""

from __future__ import annotations

import copy
import functools
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekd.distillation import (
    DistillPool,
    FeatureTeachers,
    distill,
    make_distill_pool,
    pool_logits,
)
from edgekd.losses import cloned_distillation_loss, manifold_term
from edgekd.models import build_model

NUM_CLASSES = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, 8, 8) images whose class is the brightest quadrant (as the tiny_npz fixture)."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    x = torch.randn(n, 3, 8, 8, generator=generator) * 0.3
    for i, label in enumerate(y.tolist()):
        r, c = divmod(label, 2)
        x[i, :, r * 4 : r * 4 + 4, c * 4 : c * 4 + 4] += 1.0
    return x, y


def _linear(seed: int = 0) -> nn.Module:
    """A linear classifier: no batch norm, so train and eval mode give the same logits."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, NUM_CLASSES))


def _ce(model: nn.Module, pool: DistillPool) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(pool.x), pool.y))


# ----------------------------------------------------------------------------- make_distill_pool
def test_pool_without_augment_is_the_data_once() -> None:
    """Without augmentation the pool is the core data itself and ``views`` is forced to 1.

    Prepare: 48 images and labels.
    Execute: make_distill_pool(views=5, augment=False).
    Assert: views 1, n 48, x and y equal the inputs, view(3) covers all 48 rows.
    """
    x, y = _data()
    pool = make_distill_pool(x, y, views=5, augment=False)
    assert (pool.views, pool.n) == (1, 48)
    assert torch.equal(pool.x, x) and torch.equal(pool.y, y)
    assert pool.view(3) == slice(0, 48)


def test_pool_with_augment_has_views_copies_deterministic_per_seed() -> None:
    """With augmentation the pool stacks ``views`` different augmented copies, reproducibly.

    Prepare: 48 images and labels.
    Execute: make_distill_pool(views=3, augment=True) twice with seed 5 and once with seed 6.
    Assert: x is (3*48, 3, 8, 8), y is the labels repeated 3 times, view(i) selects rows
    [i*48, (i+1)*48) (modulo views), the views differ from each other and from the raw data,
    the same seed gives the identical pool and another seed a different one.
    """
    x, y = _data()
    pool = make_distill_pool(x, y, views=3, augment=True, padding=2, flip=True, seed=5)
    again = make_distill_pool(x, y, views=3, augment=True, padding=2, flip=True, seed=5)
    other = make_distill_pool(x, y, views=3, augment=True, padding=2, flip=True, seed=6)
    assert (pool.views, pool.n) == (3, 48)
    assert pool.x.shape == (144, 3, 8, 8)
    assert torch.equal(pool.y, torch.cat([y, y, y]))
    assert pool.view(1) == slice(48, 96) and pool.view(5) == slice(96, 144)
    views = [pool.x[pool.view(i)] for i in range(3)]
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[1], views[2])
    assert not any(torch.equal(v, x) for v in views)
    assert torch.equal(pool.x, again.x)
    assert not torch.equal(pool.x, other.x)


def test_pool_rejects_bad_views_and_empty_data() -> None:
    """views < 1 and an empty core set are rejected with the value named.

    Prepare: 48 images; an empty slice of them.
    Execute: make_distill_pool(views=0) and make_distill_pool on 0 examples.
    Assert: ValueError "views must be >= 1, got 0" and one naming the 0 examples.
    """
    x, y = _data()
    with pytest.raises(ValueError, match="views must be >= 1, got 0"):
        make_distill_pool(x, y, views=0)
    with pytest.raises(ValueError, match="got 0 examples"):
        make_distill_pool(x[:0], y[:0])


# ----------------------------------------------------------------------------- pool_logits
def test_pool_logits_shape_and_eval_mode_values() -> None:
    """pool_logits returns (M, V*n, C) equal to each model's eval-mode output on the pool.

    Prepare: an augmented pool with 2 views of 48 images; two batch-norm CNNs in train mode.
    Execute: pool_logits([a, b], pool).
    Assert: shape (2, 96, 4); row m equals model m's eval-mode logits on pool.x (which differ
    from its train-mode logits, so the mode matters); the models are back in train mode.
    """
    x, y = _data()
    pool = make_distill_pool(x, y, views=2, augment=True, padding=2, seed=1)
    models = [build_model("cnn", NUM_CLASSES, 3) for _ in range(2)]
    for model in models:
        model.train()
    logits = pool_logits(models, pool)
    assert logits.shape == (2, 96, NUM_CLASSES)
    for m, model in enumerate(models):
        with torch.no_grad():
            model.eval()
            eval_mode = model(pool.x)
            model.train()
            train_mode = model(pool.x)  # batch statistics (and updates the running ones)
        assert torch.allclose(logits[m], eval_mode, atol=1e-5)
        assert not torch.allclose(logits[m], train_mode, atol=1e-3)
        assert model.training
    assert not torch.allclose(logits[0], logits[1])


# ----------------------------------------------------------------------------- distill
def test_distill_without_teachers_reduces_cross_entropy() -> None:
    """With a (0, N, C) teacher tensor, distill is plain supervised training on the pool.

    Prepare: a linear classifier and a pool of 48 learnable images.
    Execute: distill for 8 epochs with no teachers.
    Assert: the cross-entropy on the pool drops to below 70% of its initial value and the
    result reports the 48 pool examples.
    """
    x, y = _data()
    pool = make_distill_pool(x, y)
    student = _linear()
    before = _ce(student, pool)
    result = distill(
        student,
        pool,
        torch.empty(0, 48, NUM_CLASSES),
        epochs=8,
        batch_size=16,
        lr=0.1,
        temperature=4.0,
    )
    after = _ce(student, pool)
    assert after < 0.7 * before
    assert result.num_examples == 48
    assert 0.0 <= result.accuracy <= 1.0


def test_distill_loss_is_ce_plus_t2_sum_kl() -> None:
    """The first-step loss equals CE + t² Σ_m KL(teacher_m ‖ student), computed directly.

    Prepare: a linear student, a pool of 48 images, two random teachers' logits, t = 3.
    Execute: distill for one epoch with one full batch (the loss is taken before the step).
    Assert: the reported loss equals cloned_distillation_loss on the whole pool and exceeds the
    plain cross-entropy by the KL terms.
    """
    x, y = _data()
    pool = make_distill_pool(x, y)
    student = _linear()
    teachers = torch.randn(2, 48, NUM_CLASSES, generator=torch.Generator().manual_seed(3)) * 2
    with torch.no_grad():
        logits = student(pool.x)
        expected = float(cloned_distillation_loss(logits, pool.y, teachers, 3.0))
        ce = float(F.cross_entropy(logits, pool.y))
    result = distill(
        student, pool, teachers, epochs=1, batch_size=48, lr=1e-3, temperature=3.0, seed=4
    )
    assert result.loss == pytest.approx(expected, rel=1e-5)
    assert result.loss > ce + 0.1


def test_distill_kl_term_vanishes_for_teachers_equal_to_the_student() -> None:
    """Teachers whose logits are the student's own give a zero KL term: loss = CE.

    Prepare: a linear student and, as two teachers, its own logits on the pool.
    Execute: distill for one epoch with one full batch.
    Assert: the reported loss equals the student's cross-entropy on the pool.
    """
    x, y = _data()
    pool = make_distill_pool(x, y)
    student = _linear()
    with torch.no_grad():
        own = student(pool.x)
    ce = float(F.cross_entropy(own, pool.y))
    teachers = torch.stack([own, own])
    result = distill(student, pool, teachers, epochs=1, batch_size=48, lr=1e-3, temperature=2.0)
    assert result.loss == pytest.approx(ce, rel=1e-5, abs=1e-6)


def test_distill_copied_teachers_equal_one_weighted_teacher() -> None:
    """M identical teachers count as one teacher with weight M (the KL terms are summed).

    Prepare: one random teacher's logits; two identical linear students.
    Execute: distill student A from the teacher copied 3 times and student B from the single
    teacher with teacher_weights [3.0], same seed and schedule (3 epochs, batches of 16); and a
    third student C from the single teacher with weight 1.
    Assert: A and B report the same loss and end with the same weights; C differs from A.
    """
    x, y = _data()
    pool = make_distill_pool(x, y)
    teacher = torch.randn(1, 48, NUM_CLASSES, generator=torch.Generator().manual_seed(7)) * 3
    a, b, c = _linear(), _linear(), _linear()
    kwargs = {"epochs": 3, "batch_size": 16, "lr": 0.05, "temperature": 2.0, "seed": 11}
    ra = distill(a, pool, teacher.repeat(3, 1, 1), **kwargs)
    rb = distill(b, pool, teacher, teacher_weights=torch.tensor([3.0]), **kwargs)
    rc = distill(c, pool, teacher, **kwargs)
    assert ra.loss == pytest.approx(rb.loss, rel=1e-5)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-5)
    assert ra.loss != pytest.approx(rc.loss, rel=1e-3)
    assert not torch.allclose(a[1].weight, c[1].weight, atol=1e-4)


def test_distill_uses_every_view_of_an_augmented_pool() -> None:
    """With V views the teacher tensor covers V*n rows; epoch e distils on view e % V.

    Prepare: a 2-view augmented pool of 48 images; teacher logits that are the student's own on
    view 0 but random on view 1.
    Execute: distill for 1 epoch (view 0 only) and, from a copy, for 2 epochs (views 0, 1),
    one full batch per epoch with a negligible learning rate.
    Assert: the 1-epoch loss is the plain CE on view 0 (zero KL); the 2-epoch loss (last epoch,
    view 1) equals cloned_distillation_loss on view 1 and is larger.
    """
    x, y = _data()
    pool = make_distill_pool(x, y, views=2, augment=True, padding=2, seed=2)
    student = _linear()
    with torch.no_grad():
        own = student(pool.x)
    teachers = own.clone()
    teachers[48:] = torch.randn(48, NUM_CLASSES, generator=torch.Generator().manual_seed(9)) * 3
    teachers = teachers.unsqueeze(0)
    with torch.no_grad():
        view1 = float(cloned_distillation_loss(own[48:], pool.y[48:], teachers[:, 48:], 2.0))
    ce0 = float(F.cross_entropy(own[:48], pool.y[:48]))
    kwargs = {"batch_size": 48, "lr": 1e-7, "temperature": 2.0, "momentum": 0.0}
    one = distill(copy.deepcopy(student), pool, teachers, epochs=1, **kwargs)
    two = distill(copy.deepcopy(student), pool, teachers, epochs=2, **kwargs)
    assert one.loss == pytest.approx(ce0, rel=1e-4)
    assert two.loss == pytest.approx(view1, rel=1e-4)
    assert two.loss > one.loss + 0.1


@pytest.mark.parametrize(
    "shape",
    [(1, 47, NUM_CLASSES), (2, 96, NUM_CLASSES), (48, NUM_CLASSES), (1, 2, 48, NUM_CLASSES)],
)
def test_distill_rejects_bad_teacher_shape(shape: tuple[int, ...]) -> None:
    """A teacher tensor that is not (M, V*n, C) raises ValueError naming both shapes.

    Prepare: a 1-view pool of 48 images; teacher logits of a wrong shape.
    Execute: distill.
    Assert: ValueError naming the expected (M, 48, C) and the given shape; the student is
    untouched.
    """
    x, y = _data()
    pool = make_distill_pool(x, y)
    student = _linear()
    before = [p.detach().clone() for p in student.parameters()]
    message = re.escape(f"(M, 48, C), got {shape}")
    with pytest.raises(ValueError, match=message):
        distill(student, pool, torch.zeros(shape), epochs=1, batch_size=16, lr=0.1, temperature=2)
    assert all(torch.equal(p, q) for p, q in zip(before, student.parameters(), strict=True))


def test_distill_rejects_view_count_mismatch() -> None:
    """Teacher logits computed on one view do not fit a 2-view pool.

    Prepare: a 2-view augmented pool of 48 images; teacher logits for 48 rows only.
    Execute: distill.
    Assert: ValueError naming the expected 96 rows and the given (1, 48, 4).
    """
    x, y = _data()
    pool = make_distill_pool(x, y, views=2, augment=True, padding=2)
    with pytest.raises(ValueError, match=re.escape("(M, 96, C), got (1, 48, 4)")):
        distill(
            _linear(), pool, torch.zeros(1, 48, 4), epochs=1, batch_size=16, lr=0.1, temperature=2
        )


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_distill_rejects_non_positive_temperature(temperature: float) -> None:
    """temperature <= 0 raises ValueError naming the value, before any training.

    Prepare: a pool of 48 images and one teacher.
    Execute: distill with temperature 0 or -1.
    Assert: ValueError "temperature must be > 0, got <value>".
    """
    x, y = _data()
    pool = make_distill_pool(x, y)
    with pytest.raises(ValueError, match=rf"temperature must be > 0, got {temperature}"):
        distill(
            _linear(),
            pool,
            torch.zeros(1, 48, NUM_CLASSES),
            epochs=1,
            batch_size=16,
            lr=0.1,
            temperature=temperature,
        )


def test_distill_rejects_unknown_lr_schedule() -> None:
    """An unknown lr_schedule name raises ValueError naming it.

    Prepare: a pool of 48 images.
    Execute: distill with lr_schedule="step".
    Assert: ValueError mentioning 'step'.
    """
    x, y = _data()
    pool = make_distill_pool(x, y)
    with pytest.raises(ValueError, match="'step'"):
        distill(
            _linear(),
            pool,
            torch.zeros(0, 48, NUM_CLASSES),
            epochs=1,
            batch_size=16,
            lr=0.1,
            temperature=2.0,
            lr_schedule="step",
        )


# ----------------------------------------------------------------------------- feature teachers
def _resnets(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """A resnet8 student and a differently initialised resnet8 teacher (4 classes, 8x8)."""
    torch.manual_seed(seed)
    student = build_model("resnet8", num_classes=NUM_CLASSES)
    torch.manual_seed(seed + 1)
    teacher = build_model("resnet8", num_classes=NUM_CLASSES).eval()
    return student, teacher


def _squared_maps(
    student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor]
) -> torch.Tensor:
    """A hand-checkable feature term: the sum over stages of the mean squared difference."""
    return sum(((s - t) ** 2).mean() for s, t in zip(student_maps, teacher_maps, strict=True))


def test_feature_teachers_loss_is_the_weighted_sum_of_the_term() -> None:
    """FeatureTeachers.loss = sum_m w_m * term(student maps, teacher_m maps), teachers in eval.

    Prepare: a resnet8 student, two resnet8 teachers (put in train mode), weights 0.25 and 2.
    Execute: FeatureTeachers(...).loss on one batch.
    Assert: equals the same sum computed by hand from each model's forward_stages; the teachers
    were switched to eval mode; no gradient reaches the teachers.
    """
    student, first = _resnets(0)
    _, second = _resnets(5)
    first.train()
    second.train()
    x, _ = _data(16)
    teachers = FeatureTeachers([first, second], [0.25, 2.0], _squared_maps)
    assert not first.training and not second.training
    _, student_maps = student.forward_stages(x)
    got = teachers.loss(student_maps, x)
    with torch.no_grad():
        expected = 0.25 * _squared_maps(student_maps, first.forward_stages(x)[1]) + 2.0 * (
            _squared_maps(student_maps, second.forward_stages(x)[1])
        )
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    got.backward()
    assert all(p.grad is None for p in [*first.parameters(), *second.parameters()])
    assert any(p.grad is not None for p in student.parameters())


def test_feature_teachers_refuse_a_weight_count_that_does_not_match() -> None:
    """One model with two weights is refused with both counts in the message."""
    _, teacher = _resnets()
    with pytest.raises(ValueError, match="1 models but 2 weights"):
        FeatureTeachers([teacher], [1.0, 1.0], _squared_maps)


def test_distill_with_zero_feature_weight_equals_plain_distillation() -> None:
    """A feature teacher of weight 0 changes nothing: the student ends bit-identical.

    Prepare: a resnet8 student (two copies), a teacher, its stored logits on the pool.
    Execute: distill one copy plainly and the other with FeatureTeachers([teacher], [0]).
    Assert: identical state dicts (forward_stages' logits equal forward's).
    """
    student, teacher = _resnets()
    x, y = _data()
    pool = make_distill_pool(x, y)
    logits = pool_logits([teacher], pool)
    options = {"epochs": 2, "batch_size": 16, "lr": 0.05, "temperature": 4.0, "seed": 3}
    plain, featured = copy.deepcopy(student), copy.deepcopy(student)
    distill(plain, pool, logits, **options)
    distill(
        featured,
        pool,
        logits,
        **options,
        feature_teachers=FeatureTeachers([teacher], [0.0], _squared_maps),
    )
    a, b = plain.state_dict(), featured.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_distill_with_a_manifold_term_moves_the_student_not_the_teacher() -> None:
    """NMD's manifold term in Phase 2 changes the student's training and never the teacher.

    Prepare: a resnet8 student (two copies), a teacher, its stored logits on the pool.
    Execute: distill plainly and with FeatureTeachers([teacher], [1], manifold_term(4, 2, 1)).
    Assert: the students differ; the loss is finite; the teacher's state is bit-identical.
    """
    student, teacher = _resnets()
    before = copy.deepcopy(teacher.state_dict())
    x, y = _data()
    pool = make_distill_pool(x, y)
    logits = pool_logits([teacher], pool)
    options = {"epochs": 2, "batch_size": 16, "lr": 0.05, "temperature": 4.0, "seed": 3}
    plain, featured = copy.deepcopy(student), copy.deepcopy(student)
    distill(plain, pool, logits, **options)
    term = functools.partial(manifold_term, stage_weights=(4.0, 2.0, 1.0), dim=4)
    result = distill(
        featured, pool, logits, **options, feature_teachers=FeatureTeachers([teacher], [1.0], term)
    )
    assert math.isfinite(result.loss)
    a, b = plain.state_dict(), featured.state_dict()
    assert not all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
