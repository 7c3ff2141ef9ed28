"""Training of the cloud's student (cloud-edge paper): loss by name and ECE checkpoint choice.

Paper: "An Efficient and Robust Cloud-Based Deep Learning With Knowledge Distillation",
https://doi.org/10.1109/TCC.2022.3160129 (Eq. 3 and 30, Algorithm 1 lines 1-2).

Pure functions on models and tensors, like :mod:`edgekd.training`: :func:`student_objective`
computes the student's loss for one batch under one of the losses of :data:`STUDENT_LOSSES`,
:func:`distil_student` trains the student and keeps the checkpoint that
:func:`select_checkpoint` picks: the lowest validation ECE among the epochs whose validation
accuracy is within ``tolerance`` of the best.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgekd.datasets import BatchLoader
from edgekd.losses.cloud_edge import nmd_loss, soft_target_loss
from edgekd.losses.feature_kd import attention_transfer_loss, fsp_loss
from edgekd.metrics import expected_calibration_error
from edgekd.training import make_lr_scheduler, make_optimizer, optimizer_step, predict_logits

__all__ = [
    "FEATURE_LOSSES",
    "STUDENT_LOSSES",
    "DistillOutcome",
    "StudentLoss",
    "distil_student",
    "forward_stages",
    "select_checkpoint",
    "student_objective",
]

STUDENT_LOSSES = ("ce", "st", "at", "fsp", "nmd")
FEATURE_LOSSES = ("at", "fsp", "nmd")


@dataclass(frozen=True)
class StudentLoss:
    """Which loss trains the student, and its weights (see ``CloudEdgeConfig``).

    ``"ce"``: cross-entropy; ``"st"``: ``alpha CE + beta t^2 KL``; ``"at"``/``"fsp"``: ST plus
    ``at_weight`` x AT per stage / ``fsp_weight`` x FSP per stage pair; ``"nmd"``: ST plus
    ``nmd_weights[j]`` x the manifold distance of stage ``j`` (Eq. 3).
    """

    name: str = "nmd"
    alpha: float = 1.0
    beta: float = 1.0
    temperature: float = 4.0
    manifold: str = "linear"
    dim: int = 8
    neighbors: int = 10
    nmd_weights: tuple[float, ...] = (4.0, 2.0, 1.0)
    at_weight: float = 1000.0
    fsp_weight: float = 50.0

    def __post_init__(self) -> None:
        """Refuse an unknown loss name, listing the valid ones."""
        if self.name not in STUDENT_LOSSES:
            raise ValueError(f"loss must be one of {STUDENT_LOSSES}, got {self.name!r}")


def forward_stages(model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """``model.forward_stages(x)``: (logits, one feature map per residual stage); a named
    ``ValueError`` for a model without it."""
    forward_stages = getattr(model, "forward_stages", None)
    if forward_stages is None:
        raise ValueError(
            f"{type(model).__name__} has no forward_stages: feature losses need per-stage "
            "features (use a CIFAR ResNet)"
        )
    return forward_stages(x)


def student_objective(
    loss: StudentLoss, student: nn.Module, teacher: nn.Module | None, x: Tensor, y: Tensor
) -> tuple[Tensor, Tensor]:
    """``(loss, student logits)`` of one batch; the teacher runs without gradient."""
    if loss.name == "ce":
        logits = student(x)
        return F.cross_entropy(logits, y), logits
    if teacher is None:
        raise ValueError(f"loss {loss.name!r} needs a teacher")
    kd = {"alpha": loss.alpha, "beta": loss.beta, "temperature": loss.temperature}
    if loss.name == "st":
        logits = student(x)
        with torch.no_grad():
            t_logits = teacher(x)
        return soft_target_loss(logits, t_logits, y, **kd), logits
    logits, s_maps = forward_stages(student, x)
    with torch.no_grad():
        t_logits, t_maps = forward_stages(teacher, x)
    if loss.name == "nmd":
        value = nmd_loss(
            logits,
            t_logits,
            y,
            s_maps,
            t_maps,
            stage_weights=loss.nmd_weights,
            manifold=loss.manifold,
            dim=loss.dim,
            neighbors=loss.neighbors,
            **kd,
        )
        return value, logits
    st = soft_target_loss(logits, t_logits, y, **kd)
    if loss.name == "at":
        weights = [loss.at_weight] * len(s_maps)
        return st + attention_transfer_loss(s_maps, t_maps, weights), logits
    weights = [loss.fsp_weight] * (len(s_maps) - 1)
    return st + fsp_loss(s_maps, t_maps, weights), logits


def select_checkpoint(val_acc: Sequence[float], val_ece: Sequence[float], tolerance: float) -> int:
    """Index of the checkpoint kept: lowest ECE among accuracies ``>= best - tolerance``.

    Ties in ECE go to the later checkpoint. ``tolerance`` is absolute, in ``[0, 1]``; with 0
    only the most accurate checkpoints compete.
    """
    if len(val_acc) == 0 or len(val_acc) != len(val_ece):
        raise ValueError(
            f"need equally many accuracies and ECEs, got {len(val_acc)}, {len(val_ece)}"
        )
    if not 0 <= tolerance <= 1:
        raise ValueError(f"tolerance must be in [0, 1], got {tolerance!r}")
    best = max(val_acc)
    # 1e-12: accuracies exactly at best - tolerance count despite float rounding (0.8 - 0.1)
    close = [i for i, acc in enumerate(val_acc) if acc >= best - tolerance - 1e-12]
    return min(close, key=lambda i: (val_ece[i], -i))


@dataclass(frozen=True)
class DistillOutcome:
    """What :func:`distil_student` did: per-epoch validation figures and the kept epoch.

    ``history[i]`` has ``epoch`` (1-based), ``train-loss``, ``val-acc`` and ``val-ece``;
    ``selected`` is the kept entry's index; ``seconds_per_epoch`` the mean training time;
    ``last_state`` the student's state after the last epoch.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    selected: int = 0
    seconds_per_epoch: float = 0.0
    last_state: dict[str, Tensor] = field(default_factory=dict)

    @property
    def selected_epoch(self) -> dict[str, float]:
        """The kept epoch's entry of ``history``."""
        return self.history[self.selected]


def _val_figures(model: nn.Module, x: Tensor, y: Tensor, bins: int) -> tuple[float, float]:
    probs = torch.softmax(predict_logits(model, x), dim=1)
    accuracy = float((probs.argmax(1) == y).float().mean())
    return accuracy, expected_calibration_error(probs, y, bins)


def distil_student(
    student: nn.Module,
    teacher: nn.Module | None,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    *,
    loss: StudentLoss,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    seed: int = 0,
    augment: dict[str, Any] | None = None,
    ece_bins: int = 15,
    tolerance: float = 0.01,
) -> DistillOutcome:
    """Train ``student`` (in place) for ``epochs``, then load the checkpoint Algorithm 1 keeps.

    Parameters
    ----------
    student, teacher : nn.Module
        The student (trained) and the frozen teacher (eval mode; None for ``"ce"``).
    train, val : tuple[Tensor, Tensor]
        Normalised inputs and labels to train on and to select the checkpoint with.
    loss : StudentLoss
        The objective (:func:`student_objective`).
    epochs, batch_size, lr, momentum, weight_decay, seed : schedule (cosine from ``lr``)
        ``epochs >= 1``.
    augment : dict, optional
        ``augment``, ``padding`` and ``flip`` for :class:`edgekd.datasets.BatchLoader`.
    ece_bins, tolerance : int, float
        ECE bins (Eq. 30) and the "close to the best accuracy" margin (:func:`select_checkpoint`).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    loader = BatchLoader(*train, batch_size, shuffle=True, seed=seed, **(augment or {}))
    optimizer = make_optimizer(student, lr, momentum, weight_decay)
    scheduler = make_lr_scheduler(optimizer, "cosine", epochs * len(loader))
    if teacher is not None:
        teacher.eval()
    history: list[dict[str, float]] = []
    states: list[dict[str, Tensor]] = []
    seconds = 0.0
    for epoch in range(1, epochs + 1):
        student.train()
        started, loss_sum, seen = time.perf_counter(), 0.0, 0
        for xb, yb in loader:
            value, _ = student_objective(loss, student, teacher, xb, yb)
            if not torch.isfinite(value):
                raise FloatingPointError(
                    f"the {loss.name!r} student loss became {float(value)} in epoch {epoch}: "
                    "training diverged (lower the learning rate or the loss weights)"
                )
            optimizer_step(optimizer, scheduler, value)
            loss_sum, seen = loss_sum + float(value.detach()) * len(yb), seen + len(yb)
        seconds += time.perf_counter() - started
        val_acc, val_ece = _val_figures(student, *val, ece_bins)
        history.append(
            {"epoch": epoch, "train-loss": loss_sum / seen, "val-acc": val_acc, "val-ece": val_ece}
        )
        states.append(copy.deepcopy(student.state_dict()))
    selected = select_checkpoint(
        [h["val-acc"] for h in history], [h["val-ece"] for h in history], tolerance
    )
    student.load_state_dict(states[selected])
    return DistillOutcome(history, selected, seconds / epochs, states[-1])
