"""Training steps of filter pruning + layer-wise knowledge transfer, shared by cloud and edge.

Paper: K. Zhao, Y. Chen and M. Zhao, "Enabling Deep Learning on Edge Devices through Filter
Pruning and Knowledge Transfer", 2022, https://arxiv.org/abs/2201.10947 (sections 3-5).

Pure functions on models and tensors, like :mod:`edgekd.training`; the Flower strategy
(:mod:`edgekd.strategies.prune_kt`), its ClientApp handler (:mod:`edgekd.clients.prune_kt`) and
``scripts/reproduce_prune_kt.py`` all call these, so the central experiments and the federated
run share one implementation:

* :func:`edge_specs`: the teacher's activation statistics computed once, then one compressed
  spec per threshold ``P`` (:func:`edgekd.pruning.activation_widths` + depth rule);
* :func:`train_pruned`: a :class:`~edgekd.models.pruned_resnet.PrunedResNet` trained from
  scratch with cross-entropy (the teacher, and the compressed students);
* :func:`expand_classifier`: append output rows for new classes;
* :func:`transfer`: layer-wise KT (:func:`edgekd.losses.layerwise_kt.layerwise_kt_loss`) on the
  last convolution of each group and the classifier, batch norm frozen; without a teacher the
  same steps with ``J3`` alone: the "without KT" fine-tuning;
* :func:`fitnet_transfer`: the FitNet-style baseline (hints: regress the teacher's block maps);
* :func:`split_accuracy`: accuracy on the old and on the new classes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgekd.datasets import BatchLoader
from edgekd.losses.layerwise_kt import (
    freeze_batchnorm,
    label_term,
    layerwise_kt_loss,
    trainable_for_transfer,
)
from edgekd.models.pruned_resnet import PrunedResNet, ResNetSpec, spec_of
from edgekd.progress import stage
from edgekd.pruning import activation_percentages, activation_widths, keep_last_blocks
from edgekd.training import make_lr_scheduler, optimizer_step, predict_logits, train_supervised

__all__ = [
    "Schedule",
    "check_transfer_pair",
    "edge_specs",
    "expand_classifier",
    "fitnet_transfer",
    "split_accuracy",
    "train_dependent",
    "train_pruned",
    "transfer",
]


@dataclass(frozen=True)
class Schedule:
    """SGD schedule (cosine from ``lr``) of one training step; ``augment`` holds
    :class:`~edgekd.datasets.BatchLoader`'s ``augment``, ``padding`` and ``flip``."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    augment: tuple[tuple[str, Any], ...] = ()


def edge_specs(
    teacher: nn.Module,
    images: Tensor,
    thresholds: Iterable[float],
    *,
    min_width: int | None = None,
) -> tuple[dict[float, ResNetSpec], dict[float, str]]:
    """``(specs, errors)``: the compressed spec for each threshold ``P``, from one pass of
    activation statistics over ``images``, or why it cannot be built (a width reaching 0, or
    ``P`` outside ``[0, 1]``)."""
    percentages = activation_percentages(teacher, images)
    base = spec_of(teacher)
    specs: dict[float, ResNetSpec] = {}
    errors: dict[float, str] = {}
    for threshold in sorted(set(thresholds), reverse=True):
        try:
            widths = activation_widths(percentages, threshold, min_width=min_width)
            specs[threshold] = keep_last_blocks(base.with_widths(widths))
        except ValueError as err:
            errors[threshold] = str(err)
    return specs, errors


def train_pruned(
    spec: ResNetSpec,
    num_classes: int,
    x: Tensor,
    y: Tensor,
    schedule: Schedule,
    *,
    init_seed: int,
    progress: str = "training",
) -> PrunedResNet:
    """A ``PrunedResNet(spec)`` initialised with ``init_seed`` and trained with cross-entropy
    (``schedule.epochs == 0``: left untrained); returned in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = PrunedResNet(spec, num_classes, int(x.shape[1]))
    if schedule.epochs > 0:
        train_supervised(
            model,
            x,
            y,
            epochs=schedule.epochs,
            batch_size=schedule.batch_size,
            lr=schedule.lr,
            momentum=schedule.momentum,
            weight_decay=schedule.weight_decay,
            seed=schedule.seed,
            lr_schedule="cosine",
            progress=progress,
            **dict(schedule.augment),
        )
    return model.eval()


def train_dependent(
    spec: ResNetSpec,
    num_classes: int,
    x: Tensor,
    y: Tensor,
    schedule: Schedule,
    teacher: nn.Module,
    *,
    init_seed: int,
    lambdas: tuple[float, float, float] = (1.0, 1.0, 1.0),
    progress: str = "dependent student",
) -> PrunedResNet:
    """A ``PrunedResNet(spec)`` trained from scratch with the teacher's help (section 5.2's
    *dependent student*): every layer learns, batch norm updates its statistics, and the loss
    is :func:`~edgekd.losses.layerwise_kt.layerwise_kt_loss` (``lambda1 J1 + lambda2 sum J_b +
    lambda3 J3``, the block mapping chosen per batch) on labelled ``x, y``; returned in eval mode.

    Why it matters: ``J_b`` compares the student's channels with the teacher's one by one
    (zero-padded). A student trained alone has its own channel order, so a later transfer on
    the edge would first have to rebuild its features around the teacher's; a dependent
    student's channels follow the teacher's from the first step.
    """
    check_transfer_pair(spec_of(teacher), spec)
    teacher.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = PrunedResNet(spec, num_classes, int(x.shape[1]))

    def step(xb: Tensor, yb: Tensor) -> Tensor:
        return _kt_loss(model, teacher, xb, yb, lambdas)

    _run_steps(
        model,
        list(model.parameters()),
        _loader(x, y, schedule),
        schedule,
        step,
        progress,
        freeze_bn=False,
    )
    return model


def expand_classifier(model: nn.Module, extra: int, *, seed: int) -> nn.Module:
    """Append ``extra`` output rows to ``model.classifier`` (in place), keeping the old rows;
    the new rows get PyTorch's default initialisation, seeded."""
    old = model.get_submodule("classifier")
    if not isinstance(old, nn.Linear) or extra < 0:
        raise ValueError(f"need an nn.Linear classifier and extra >= 0, got {old!r}, {extra}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = nn.Linear(old.in_features, old.out_features + extra)
    with torch.no_grad():
        new.weight[: old.out_features] = old.weight
        new.bias[: old.out_features] = old.bias
    model.classifier = new
    if hasattr(model, "num_classes"):
        model.num_classes = new.out_features
    return model


def check_transfer_pair(teacher: ResNetSpec, student: ResNetSpec) -> None:
    """``ValueError`` unless the student can learn from the teacher block by block: the same
    number of groups and strides, and no student block wider than a teacher block of its
    group (its maps are zero-padded to the teacher's width)."""
    if len(teacher.groups) != len(student.groups) or teacher.strides != student.strides:
        raise ValueError(
            f"the teacher's stages ({len(teacher.groups)} groups, strides {teacher.strides}) do "
            f"not match the student's ({len(student.groups)} groups, strides {student.strides})"
        )
    for g, (t_group, s_group) in enumerate(zip(teacher.groups, student.groups, strict=True)):
        if max(b[1] for b in s_group) > min(b[1] for b in t_group):
            raise ValueError(
                f"group {g}: a student block ({[b[1] for b in s_group]} channels) is wider than "
                f"a teacher block ({[b[1] for b in t_group]})"
            )


def _loader(x: Tensor, y: Tensor, schedule: Schedule) -> BatchLoader:
    return BatchLoader(
        x, y, schedule.batch_size, shuffle=True, seed=schedule.seed, **dict(schedule.augment)
    )


def _kt_loss(
    student: nn.Module,
    teacher: nn.Module | None,
    xb: Tensor,
    yb: Tensor | None,
    lambdas: tuple[float, float, float],
) -> Tensor:
    if teacher is None:
        if yb is None:
            raise ValueError("training without a teacher needs labels")
        return lambdas[2] * label_term(student(xb), yb)
    with torch.no_grad():
        t_logits, t_blocks = teacher.forward_blocks(xb)
    s_logits, s_blocks = student.forward_blocks(xb)
    return layerwise_kt_loss(t_logits, s_logits, t_blocks, s_blocks, yb, lambdas=lambdas)


def _run_steps(
    student: nn.Module,
    params: Sequence[nn.Parameter],
    loader: BatchLoader,
    schedule: Schedule,
    step: Any,
    name: str,
    *,
    freeze_bn: bool = True,
) -> float:
    """Train ``params`` with ``step(xb, yb) -> loss`` for ``schedule.epochs``; mean last-epoch
    loss. Batch norm keeps its running statistics unless ``freeze_bn`` is False; every
    parameter is trainable after, and ``student`` is left in eval mode."""
    if schedule.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {schedule.epochs}")
    optimizer = torch.optim.SGD(
        params, lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay
    )
    scheduler = make_lr_scheduler(optimizer, "cosine", schedule.epochs * len(loader))
    total, seen = 0.0, 0
    with stage(name, total=schedule.epochs * len(loader), unit="batches") as bar:
        for epoch in range(schedule.epochs):
            student.train()
            if freeze_bn:
                freeze_batchnorm(student)
            total, seen = 0.0, 0
            for xb, yb in loader:
                value = step(xb, yb)
                if not torch.isfinite(value):
                    raise FloatingPointError(
                        f"{name}: the loss became {float(value)} in epoch "
                        f"{epoch + 1} (lower the learning rate)"
                    )
                optimizer_step(optimizer, scheduler, value)
                total, seen = total + float(value.detach()) * len(yb), seen + len(yb)
                bar.advance()
    for p in student.parameters():
        p.requires_grad_(True)
    student.eval()
    return total / max(seen, 1)


def transfer(
    student: nn.Module,
    teacher: nn.Module | None,
    x: Tensor,
    y: Tensor | None,
    schedule: Schedule,
    *,
    lambdas: tuple[float, float, float] = (1.0, 1.0, 1.0),
    progress: str = "layer-wise transfer",
) -> float:
    """Train ``student`` (in place) by layer-wise transfer from ``teacher``; the mean loss of
    the last epoch.

    Only the last convolution of each group and the classifier learn
    (:func:`~edgekd.losses.layerwise_kt.trainable_for_transfer` with ``classifier=True``: new
    classes need output rows); batch norm is frozen. ``y`` None: unlabelled data (section 4.2,
    ``J3`` left out). ``teacher`` None: the same steps with ``lambda3 J3`` only, the "without
    KT" fine-tuning. A teacher whose stages do not fit the student is refused
    (:func:`check_transfer_pair`).
    """
    if teacher is not None:
        check_transfer_pair(spec_of(teacher), spec_of(student))
        teacher.eval()
    params = trainable_for_transfer(student, classifier=True)
    labels = y if y is not None else torch.zeros(len(x), dtype=torch.long)
    loader = _loader(x, labels, schedule)

    def step(xb: Tensor, yb: Tensor) -> Tensor:
        return _kt_loss(student, teacher, xb, yb if y is not None else None, lambdas)

    return _run_steps(student, params, loader, schedule, step, progress)


def fitnet_transfer(
    student: nn.Module,
    teacher: nn.Module,
    x: Tensor,
    schedule: Schedule,
    *,
    progress: str = "FitNet hints",
) -> float:
    """FitNet-style baseline (Romero et al. 2015, hint training) on unlabelled ``x``.

    Each group's last student block regresses the teacher's last block of the group through a
    learned 1x1 convolution (mean squared error); the same layers learn as in :func:`transfer`
    (plus the regressors). No term involves the outputs: the student mimics the teacher's
    intermediate results, the comparison the paper makes for unseen classes (Table 7).
    """
    check_transfer_pair(spec_of(teacher), spec_of(student))
    teacher.eval()
    t_widths = [group[-1][1] for group in spec_of(teacher).groups]
    s_widths = [group[-1][1] for group in spec_of(student).groups]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(schedule.seed)
        regressors = nn.ModuleList(
            nn.Conv2d(s, t, 1, bias=False) for s, t in zip(s_widths, t_widths, strict=True)
        )
    params = [*trainable_for_transfer(student, classifier=True), *regressors.parameters()]
    loader = _loader(x, torch.zeros(len(x), dtype=torch.long), schedule)

    def step(xb: Tensor, _yb: Tensor) -> Tensor:
        with torch.no_grad():
            _, t_blocks = teacher.forward_blocks(xb)
        _, s_blocks = student.forward_blocks(xb)
        terms = [
            F.mse_loss(reg(s[-1]), t[-1])
            for reg, s, t in zip(regressors, s_blocks, t_blocks, strict=True)
        ]
        return torch.stack(terms).sum()

    return _run_steps(student, params, loader, schedule, step, progress)


def split_accuracy(model: nn.Module, x: Tensor, y: Tensor, num_old: int) -> tuple[float, float]:
    """``(old, new)``: accuracy on the images with output label ``< num_old`` and on the
    others (NaN where there are none), over all the model's outputs."""
    if len(x) == 0:
        return float("nan"), float("nan")
    correct = predict_logits(model, x).argmax(1) == y
    old = y < num_old

    def mean(mask: Tensor) -> float:
        return float(correct[mask].float().mean()) if bool(mask.any()) else float("nan")

    return mean(old), mean(~old)
