"""Server-side distillation from returned edge models into the core model (Phase 2).

Teachers never change once they are returned, and the core data never changes either. So a
teacher's logits are computed once, when it arrives, on a fixed *distillation pool* (the core
data, or ``views`` augmented copies of it), and stored. Distilling from a temporal memory of M
edge models then costs one student forward/backward per batch plus a gather of stored logits,
whatever M is: no teacher forward happens inside the distillation loop.

Epoch ``e`` of a distillation uses view ``e % views`` of the pool, in a seeded batch order.

A feature term (:class:`FeatureTeachers`, e.g. the cloud-edge paper's neuron manifold
distances) cannot be cached that way: it compares the student's residual-stage features with
each teacher's on the same batch, so it runs one teacher forward pass per feature teacher and
batch, on the pool rows whose logits were stored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from edgekd.cloud_edge_training import forward_stages
from edgekd.datasets import augment_batch
from edgekd.losses import cloned_distillation_loss
from edgekd.progress import stage
from edgekd.training import (
    LR_SCHEDULES,
    EpochStats,
    TrainResult,
    make_lr_scheduler,
    make_optimizer,
    optimizer_step,
    predict_logits,
)

__all__ = ["DistillPool", "FeatureTeachers", "distill", "make_distill_pool", "pool_logits"]


@dataclass(frozen=True)
class DistillPool:
    """``views`` copies of the core data, stacked: ``x`` is (views * n, C, H, W)."""

    x: torch.Tensor
    y: torch.Tensor
    views: int
    n: int

    def view(self, index: int) -> slice:
        """Rows of view ``index`` (taken modulo ``views``)."""
        start = (index % self.views) * self.n
        return slice(start, start + self.n)


@dataclass(frozen=True)
class FeatureTeachers:
    """Teachers whose residual-stage features enter Phase 2's loss.

    ``term(student_maps, teacher_maps)`` is a scalar loss of the two models' stage feature maps
    on one batch (e.g. :func:`edgekd.losses.manifold_term` with its weights bound); teacher
    ``m`` contributes ``weights[m] * term(...)``. The teachers' features are computed without
    gradient, in eval mode, so their weights never change.
    """

    models: Sequence[nn.Module]
    weights: Sequence[float]
    term: Callable[[list[Tensor], list[Tensor]], Tensor]

    def __post_init__(self) -> None:
        """Refuse a weight count that does not match the models."""
        if len(self.models) != len(self.weights):
            raise ValueError(
                f"FeatureTeachers: {len(self.models)} models but {len(self.weights)} weights"
            )
        for model in self.models:
            model.eval()

    def loss(self, student_maps: list[Tensor], x: Tensor) -> Tensor:
        """``sum_m weights[m] * term(student_maps, teacher_m's maps on x)``."""
        total = torch.zeros((), device=x.device)
        for model, weight in zip(self.models, self.weights, strict=True):
            if weight:
                with torch.no_grad():
                    _, teacher_maps = forward_stages(model, x)
                total = total + weight * self.term(student_maps, teacher_maps)
        return total


def make_distill_pool(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    views: int = 1,
    augment: bool = False,
    padding: int = 4,
    flip: bool = True,
    seed: int = 0,
) -> DistillPool:
    """Build the pool: ``views`` augmented copies of ``(x, y)``, or ``x`` itself once.

    With ``augment=False`` the pool is the core data (``views`` is forced to 1, since every
    view would be identical).
    """
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    if len(x) == 0:
        raise ValueError("the distillation pool needs core data, got 0 examples")
    if not augment:
        return DistillPool(x, y, 1, len(x))
    generator = torch.Generator().manual_seed(seed)
    copies = [augment_batch(x, generator, padding=padding, flip=flip) for _ in range(views)]
    return DistillPool(torch.cat(copies), y.repeat(views), views, len(x))


def pool_logits(models: Sequence[nn.Module], pool: DistillPool) -> torch.Tensor:
    """Logits of each model on the whole pool (eval mode, no grad): (len(models), V*n, C)."""
    return torch.stack([predict_logits(model, pool.x) for model in models])


def distill(
    student: nn.Module,
    pool: DistillPool,
    teacher_logits: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    temperature: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    teacher_weights: torch.Tensor | None = None,
    ce_weight: float = 1.0,
    seed: int = 0,
    lr_schedule: str = "cosine",
    progress: str = "distillation",
    feature_teachers: FeatureTeachers | None = None,
) -> TrainResult:
    """Train ``student`` in place with L = CE(core) + t² Σ_m w_m KL(teacher_m ‖ student).

    Parameters
    ----------
    student : nn.Module
        The core model.
    pool : DistillPool
        The core data views the teachers' logits were computed on.
    teacher_logits : torch.Tensor
        (M, V*n, C) stored teacher logits on ``pool`` (:func:`pool_logits`). ``M == 0`` trains
        with cross-entropy only.
    epochs, batch_size, lr, momentum, weight_decay : schedule
        The learning rate restarts at ``lr`` (the schedule's initial high value) and follows
        ``lr_schedule`` ("cosine" or "constant") over all steps.
    temperature : float
        Softmax temperature t (> 0).
    teacher_weights : torch.Tensor, optional
        (M,) non-negative weights; default all ones (the paper's plain sum, Eq. 2).
    ce_weight : float
        Weight of the cross-entropy term.
    seed : int
        Seeds the batch order.
    progress : str
        Name of the stage shown by :func:`edgekd.progress.stage`, by default
        ``"distillation"``.
    feature_teachers : FeatureTeachers, optional
        Adds ``feature_teachers.loss`` (the student's stage features against each teacher's on
        the batch) to every step; the student then needs ``forward_stages``. Default: none.

    Returns
    -------
    TrainResult
        Mean total loss and the student's training accuracy on the core data over the last
        epoch (the signal that jumps when a corrupted teacher is distilled).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
    if teacher_logits.dim() != 3 or teacher_logits.shape[1] != len(pool.x):
        raise ValueError(
            f"teacher_logits must be (M, {len(pool.x)}, C), got {tuple(teacher_logits.shape)}"
        )
    num_teachers = teacher_logits.shape[0]
    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(student, lr, momentum, weight_decay)
    scheduler = make_lr_scheduler(optimizer, lr_schedule, epochs * math.ceil(pool.n / batch_size))
    stats = EpochStats()
    student.train()
    batches = math.ceil(pool.n / batch_size)
    with stage(progress, total=epochs * batches, unit="batches") as bar:
        for epoch in range(epochs):
            offset = pool.view(epoch).start
            order = torch.randperm(pool.n, generator=generator) + offset
            stats = EpochStats()
            for start in range(0, pool.n, batch_size):
                rows = order[start : start + batch_size]
                xb, yb = pool.x[rows], pool.y[rows]
                if feature_teachers is not None:
                    logits, student_maps = forward_stages(student, xb)
                else:
                    logits = student(xb)
                if num_teachers:
                    loss = cloned_distillation_loss(
                        logits,
                        yb,
                        teacher_logits[:, rows],
                        temperature,
                        teacher_weights=teacher_weights,
                        ce_weight=ce_weight,
                    )
                else:
                    loss = ce_weight * nn.functional.cross_entropy(logits, yb)
                if feature_teachers is not None:
                    loss = loss + feature_teachers.loss(student_maps, xb)
                optimizer_step(optimizer, scheduler, loss)
                stats.add(loss, logits, yb)
                bar.advance()
    return stats.result(pool.n)
