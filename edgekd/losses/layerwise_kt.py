"""Selective layer-wise knowledge transfer from a cloud teacher to a pruned edge student.

Paper: K. Zhao, Y. Chen and M. Zhao, "Enabling Deep Learning on Edge Devices through Filter
Pruning and Knowledge Transfer", 2022, https://arxiv.org/abs/2201.10947 (section 4, Eq. 3-4
and the loss below them).

Per batch and per group, every student block ``j`` learns from the teacher block ``k*`` of the
same group whose feature map is most similar (Eq. 3, :func:`block_similarity`,
:func:`map_blocks`); the student's maps are zero-padded to the teacher's width (the extra
channels at the end) and each map is L2-normalised (Eq. 4). The loss
(:func:`layerwise_kt_loss`) is ``l = lambda1 J1 + lambda2 sum_g J_b + lambda3 J3``:

* ``J1 = ||FC^t - FC^s||``, the Euclidean distance of the last fully-connected outputs
  (:func:`fc_term`);
* ``J_b = ||Q^t_k* - Q^s_j||`` per mapped pair (:func:`block_term`); the paper's students have one
  block per group, so the sum over groups has one term each; a student with several blocks in a
  group gets one term per block;
* ``J3``, the cross-entropy with the true labels (:func:`label_term`). The extraction prints
  ``J3 = sum_i [Y_i log Yhat_i + (1 - Y_i) log(1 - Yhat_i)]``, which is ``<= 0`` (a
  log-likelihood): minimising ``l`` with it would drive the true class's probability to 0. The
  text calls ``J3`` "the cross entropy loss with true labels" and says the loss is minimised,
  so the cross-entropy's minus sign was lost: here ``J3 = -sum_i [...]``, the binary
  cross-entropy of the student's softmax output, ``>= 0``.

Norms are taken per sample and averaged over the batch (Eq. 4 normalises "one batch of data";
for one image the two agree), so the terms do not grow with the batch size. Without labels
(learning unseen categories, section 4.2) ``J3`` is left out. A student with more classes than
the teacher (new categories appended after the teacher's) compares its first ``c_t`` outputs in
``J1``. Teacher tensors are detached: no gradient reaches the teacher.

Only the last convolution of each student group is trained (:func:`trainable_for_transfer`),
plus the output layer when asked: the paper freezes it, which a student learning *new* classes
cannot afford, since its output rows for them would stay untrained. Frozen layers stay
bit-identical only if batch norm keeps its running statistics: call :func:`freeze_batchnorm`
after ``model.train()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgekd.losses.checks import check_logits, is_finite_real

__all__ = [
    "block_similarity",
    "block_term",
    "fc_term",
    "freeze_batchnorm",
    "label_term",
    "layerwise_kt_loss",
    "map_blocks",
    "normalized_map",
    "trainable_for_transfer",
]

Blocks = Sequence[Sequence[Tensor]]


def normalized_map(fmap: Tensor, width: int) -> Tensor:
    """Eq. 4: ``fmap`` zero-padded to ``width`` channels, flattened per sample, unit L2 norm.

    Parameters
    ----------
    fmap : Tensor
        ``(B, C, H, W)`` block output, ``C <= width``.
    width : int
        The teacher block's channel count.

    Returns
    -------
    Tensor
        ``(B, width * H * W)``; an all-zero map stays zero.
    """
    if not isinstance(fmap, Tensor) or fmap.dim() != 4:
        shape = tuple(fmap.shape) if isinstance(fmap, Tensor) else type(fmap).__name__
        raise ValueError(f"feature map must be a (B, C, H, W) tensor, got {shape}")
    if fmap.shape[1] > width:
        raise ValueError(
            f"student map has {fmap.shape[1]} channels, more than the teacher's {width}"
        )
    padded = F.pad(fmap, (0, 0, 0, 0, 0, width - fmap.shape[1]))
    return F.normalize(padded.flatten(1), dim=1)


def _check_group(where: str, teacher: Sequence[Tensor], student: Sequence[Tensor]) -> None:
    if len(teacher) == 0 or len(student) == 0:
        raise ValueError(f"{where} has {len(teacher)} teacher and {len(student)} student blocks")
    for name, maps in (("teacher", teacher), ("student", student)):
        for b, fmap in enumerate(maps):
            if not isinstance(fmap, Tensor) or fmap.dim() != 4:
                raise ValueError(f"{name} block {b} of {where} is not a (B, C, H, W) tensor")
    t_shapes = [tuple(m.shape) for m in teacher]
    s_shapes = [tuple(m.shape) for m in student]
    sizes = {(shape[0], *shape[2:]) for shape in t_shapes + s_shapes}
    if len(sizes) != 1 or max(s[1] for s in s_shapes) > min(t[1] for t in t_shapes):
        raise ValueError(
            f"{where}: teacher maps {t_shapes} and student maps {s_shapes} must share batch and "
            f"spatial sizes, and no student map may be wider than a teacher map"
        )


def block_similarity(teacher: Sequence[Tensor], student: Sequence[Tensor]) -> Tensor:
    """Eq. 3 for one group: ``(S, T)`` cosine similarities of student block ``j`` and teacher
    block ``k``, per sample after zero-padding to the teacher block's width, batch mean."""
    _check_group("the group", teacher, student)
    rows = []
    for s in student:
        row = [
            (normalized_map(t.detach(), t.shape[1]) * normalized_map(s, t.shape[1])).sum(1).mean()
            for t in teacher
        ]
        rows.append(torch.stack(row))
    return torch.stack(rows)


def _check_blocks(teacher_blocks: Blocks, student_blocks: Blocks) -> None:
    if len(teacher_blocks) != len(student_blocks) or len(teacher_blocks) == 0:
        raise ValueError(
            f"the teacher has {len(teacher_blocks)} groups and the student "
            f"{len(student_blocks)}; they must match and be >= 1"
        )
    for g, (t, s) in enumerate(zip(teacher_blocks, student_blocks, strict=True)):
        _check_group(f"group {g}", t, s)


@torch.no_grad()
def map_blocks(teacher_blocks: Blocks, student_blocks: Blocks) -> list[list[int]]:
    """Per group, per student block: the index of the most similar teacher block (ties: first).

    Parameters
    ----------
    teacher_blocks, student_blocks : sequence of sequences of Tensor
        ``[group][block]`` maps, e.g. from ``PrunedResNet.forward_blocks``; both need the same
        number of groups and, within a group, the same batch and spatial sizes.

    Raises
    ------
    ValueError
        If the group counts or a group's map sizes differ, or a student map is wider than a
        teacher map of its group (the message names the group and the shapes).
    """
    _check_blocks(teacher_blocks, student_blocks)
    return [
        block_similarity(t, s).argmax(dim=1).tolist()
        for t, s in zip(teacher_blocks, student_blocks, strict=True)
    ]


def fc_term(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """``J1``: per-sample Euclidean distance of the outputs, batch mean; a student with more
    classes compares its first ``c_t`` outputs."""
    check_logits("teacher_logits", teacher_logits)
    check_logits("student_logits", student_logits)
    c_t = teacher_logits.shape[1]
    if student_logits.shape[0] != teacher_logits.shape[0] or student_logits.shape[1] < c_t:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} must have the teacher's batch and at "
            f"least its classes, teacher_logits {tuple(teacher_logits.shape)}"
        )
    diff = teacher_logits.detach() - student_logits[:, :c_t]
    return torch.linalg.vector_norm(diff, dim=1).mean()


def block_term(teacher_map: Tensor, student_map: Tensor) -> Tensor:
    """``J_b``: per-sample distance of the normalised maps (student zero-padded), batch mean."""
    _check_group("the pair", [teacher_map], [student_map])
    width = teacher_map.shape[1]
    diff = normalized_map(teacher_map.detach(), width) - normalized_map(student_map, width)
    return torch.linalg.vector_norm(diff, dim=1).mean()


def label_term(student_logits: Tensor, labels: Tensor) -> Tensor:
    """``J3``: binary cross-entropy of the softmax output and the one-hot labels, summed over
    the ``c`` classes, batch mean (the sign derivation is in the module docstring)."""
    check_logits("student_logits", student_logits)
    c = student_logits.shape[1]
    if labels.shape != student_logits.shape[:1] or labels.dtype != torch.long:
        raise ValueError(f"labels must be a ({len(student_logits)},) int64 tensor, got {labels!r}")
    if len(labels) and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"labels must lie in [0, {c}), got {labels.tolist()}")
    targets = F.one_hot(labels, c).to(student_logits.dtype)
    probs = F.softmax(student_logits, dim=1)
    return F.binary_cross_entropy(probs, targets, reduction="sum") / len(labels)


def layerwise_kt_loss(
    teacher_logits: Tensor,
    student_logits: Tensor,
    teacher_blocks: Blocks,
    student_blocks: Blocks,
    labels: Tensor | None = None,
    *,
    lambdas: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> Tensor:
    """``lambda1 J1 + lambda2 sum_g J_b + lambda3 J3`` with this batch's block mapping.

    Parameters
    ----------
    teacher_logits, student_logits : Tensor
        ``(B, c_t)`` and ``(B, c_s)`` outputs, ``c_s >= c_t``.
    teacher_blocks, student_blocks : sequence of sequences of Tensor
        ``[group][block]`` feature maps (``forward_blocks``); see :func:`map_blocks`.
    labels : Tensor or None, optional
        ``(B,)`` true labels for ``J3``; None (unlabelled data, section 4.2) leaves ``J3`` out.
    lambdas : tuple of three floats, optional
        ``(lambda1, lambda2, lambda3)``, finite and >= 0. Default (1, 1, 1).

    Returns
    -------
    Tensor
        The scalar loss; gradients reach only the student's tensors.
    """
    if len(lambdas) != 3 or not all(is_finite_real(w) and w >= 0 for w in lambdas):
        raise ValueError(f"lambdas must be three finite numbers >= 0, got {lambdas!r}")
    mapping = map_blocks(teacher_blocks, student_blocks)
    loss = lambdas[0] * fc_term(teacher_logits, student_logits)
    for teacher, student, chosen in zip(teacher_blocks, student_blocks, mapping, strict=True):
        for s, k in zip(student, chosen, strict=True):
            loss = loss + lambdas[1] * block_term(teacher[k], s)
    if labels is not None:
        loss = loss + lambdas[2] * label_term(student_logits, labels)
    return loss


def _last_convs(model: nn.Module) -> list[nn.Module]:
    backbone = getattr(model, "backbone", None)
    convs = []
    g = 1
    while hasattr(backbone, f"layer{g}"):
        convs.append(getattr(backbone, f"layer{g}")[-1].conv2)
        g += 1
    if not convs:
        raise ValueError(f"{type(model).__name__} is not a CIFAR ResNet (no backbone.layer1)")
    return convs


def trainable_for_transfer(model: nn.Module, *, classifier: bool = False) -> list[nn.Parameter]:
    """Freeze every parameter but the last convolution of each group (and the output layer).

    Parameters
    ----------
    model : nn.Module
        The student, a ``PrunedResNet`` or ``CifarResNet`` (``backbone.layer{g}[-1].conv2``).
    classifier : bool, optional
        Also train ``model.classifier``, for new classes. Default False (the paper).

    Returns
    -------
    list of nn.Parameter
        The parameters left trainable (``requires_grad``), to hand to the optimiser.
    """
    keep = [p for conv in _last_convs(model) for p in conv.parameters()]
    if classifier:
        keep += list(model.get_submodule("classifier").parameters())
    ids = {id(p) for p in keep}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    return keep


def freeze_batchnorm(model: nn.Module) -> None:
    """Put every batch-norm layer in eval mode, so that training steps leave their running
    statistics unchanged (call after ``model.train()``, which undoes it)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
            module.eval()
