"""Message format of filter pruning + layer-wise knowledge transfer (cloud -> edges).

Paper: K. Zhao, Y. Chen and M. Zhao, "Enabling Deep Learning on Edge Devices through Filter
Pruning and Knowledge Transfer", 2022, https://arxiv.org/abs/2201.10947 (sections 3-4).

The ServerApp is the cloud: it trains the teacher on the old classes, prunes it per edge
(threshold ``P``) and trains each compressed student from scratch. One exchange per edge:

``train.pk_transfer`` (:data:`TRANSFER_TYPE`), cloud -> edge:

- ``content["arrays"]``: the student's ``state_dict`` (its classifier has one output per old
  class);
- ``content["teacher"]``: the teacher's ``state_dict`` (sent once, for the layer-wise
  transfer);
- ``content["config"]`` (:func:`transfer_config` / :func:`read_transfer`):

  - the two architectures as data, ``student-*`` and ``teacher-*`` (:func:`spec_entries`):
    ``<role>-stem`` (int), ``<role>-blocks`` (blocks per group, list of int),
    ``<role>-widths`` (``conv1, conv2`` of every block, group by group, list of int) and
    ``<role>-strides`` (list of int);
  - ``old-classes`` (list of int: the dataset labels of the outputs, in output order) and
    ``new-class`` (int: this edge's new class, appended as the last output);
  - ``threshold`` (float, the ``P`` the student was pruned with; informational);
  - the transfer's schedule: ``epochs``, ``batch-size``, ``lr``, ``momentum``,
    ``weight-decay``, ``lambdas`` (list of 3 floats: J1, J_b, J3), ``old-fraction`` (share of
    the edge's old-class images it trains on), ``seed`` and ``baseline`` (bool: also fine-tune
    a copy without the teacher terms, the "without KT" student).

Reply, edge -> cloud: ``content["metrics"]`` with ``partition-id``, ``num-examples`` (images
trained on), ``new-examples`` (of them, the new class's), ``test-old`` and ``test-new`` (test
images of the old classes and of the new class), the accuracies ``old-acc-before``,
``new-acc-before`` (the received student, new output appended), ``old-acc-after``,
``new-acc-after`` (after layer-wise transfer), ``old-acc-without-kt``, ``new-acc-without-kt``
(when ``baseline``) and ``transfer-seconds``. Accuracies are fractions over the output
classes ``old + [new]``; images and labels never travel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flwr.app import MessageType

from edgekd.models.pruned_resnet import ResNetSpec

__all__ = [
    "BASELINE",
    "NEW_ACC_AFTER",
    "NEW_ACC_BEFORE",
    "NEW_ACC_WITHOUT_KT",
    "NEW_CLASS",
    "NEW_EXAMPLES",
    "OLD_ACC_AFTER",
    "OLD_ACC_BEFORE",
    "OLD_ACC_WITHOUT_KT",
    "OLD_CLASSES",
    "TEACHER_RECORD",
    "TEST_NEW",
    "TEST_OLD",
    "TRANSFER",
    "TRANSFER_SECONDS",
    "TRANSFER_TYPE",
    "TransferPlan",
    "read_spec",
    "read_transfer",
    "spec_entries",
    "transfer_config",
]

TRANSFER = "pk_transfer"
TRANSFER_TYPE = f"{MessageType.TRAIN}.{TRANSFER}"
TEACHER_RECORD = "teacher"
OLD_CLASSES = "old-classes"
NEW_CLASS = "new-class"
BASELINE = "baseline"
NEW_EXAMPLES = "new-examples"
TEST_OLD = "test-old"
TEST_NEW = "test-new"
OLD_ACC_BEFORE = "old-acc-before"
NEW_ACC_BEFORE = "new-acc-before"
OLD_ACC_AFTER = "old-acc-after"
NEW_ACC_AFTER = "new-acc-after"
OLD_ACC_WITHOUT_KT = "old-acc-without-kt"
NEW_ACC_WITHOUT_KT = "new-acc-without-kt"
TRANSFER_SECONDS = "transfer-seconds"


def spec_entries(spec: ResNetSpec, role: str) -> dict[str, int | list[int]]:
    """The ConfigRecord entries ``<role>-stem``, ``-blocks``, ``-widths``, ``-strides``."""
    return {
        f"{role}-stem": spec.stem,
        f"{role}-blocks": list(spec.blocks_per_group),
        f"{role}-widths": [w for group in spec.groups for block in group for w in block],
        f"{role}-strides": list(spec.strides),
    }


def _ints(config: Mapping[str, Any], key: str) -> list[int]:
    value = config.get(key)
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        raise ValueError(f"config entry {key!r} must be a list of int, got {value!r}")
    return value


def read_spec(config: Mapping[str, Any], role: str) -> ResNetSpec:
    """The :class:`ResNetSpec` of :func:`spec_entries`; ``ValueError`` naming the bad entry."""
    stem = config.get(f"{role}-stem")
    blocks = _ints(config, f"{role}-blocks")
    widths = _ints(config, f"{role}-widths")
    if len(widths) != 2 * sum(blocks) or any(b < 1 for b in blocks):
        raise ValueError(
            f"{role}-widths has {len(widths)} entries, but {role}-blocks {blocks} needs "
            f"2 per block ({2 * sum(blocks)})"
        )
    pairs = [(widths[i], widths[i + 1]) for i in range(0, len(widths), 2)]
    groups, start = [], 0
    for count in blocks:
        groups.append(tuple(pairs[start : start + count]))
        start += count
    return ResNetSpec(stem, tuple(groups), tuple(_ints(config, f"{role}-strides")))  # type: ignore[arg-type]


@dataclass(frozen=True)
class TransferPlan:
    """What one edge is asked to do (the ``config`` record, parsed)."""

    student: ResNetSpec
    teacher: ResNetSpec
    old_classes: tuple[int, ...]
    new_class: int
    threshold: float
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    lambdas: tuple[float, float, float]
    old_fraction: float
    seed: int
    baseline: bool


def transfer_config(plan: TransferPlan) -> dict[str, Any]:
    """The ``config`` record's entries for ``plan``."""
    return {
        **spec_entries(plan.student, "student"),
        **spec_entries(plan.teacher, "teacher"),
        OLD_CLASSES: list(plan.old_classes),
        NEW_CLASS: plan.new_class,
        "threshold": plan.threshold,
        "epochs": plan.epochs,
        "batch-size": plan.batch_size,
        "lr": plan.lr,
        "momentum": plan.momentum,
        "weight-decay": plan.weight_decay,
        "lambdas": list(plan.lambdas),
        "old-fraction": plan.old_fraction,
        "seed": plan.seed,
        BASELINE: plan.baseline,
    }


def _floats(values: Sequence[Any], n: int, key: str) -> tuple[float, ...]:
    if len(values) != n or not all(isinstance(v, int | float) for v in values):
        raise ValueError(f"config entry {key!r} must be {n} numbers, got {values!r}")
    return tuple(float(v) for v in values)


def read_transfer(config: Mapping[str, Any]) -> TransferPlan:
    """The :class:`TransferPlan` of a ``config`` record; ``ValueError`` naming a bad entry."""
    try:
        lambdas = _floats(list(config["lambdas"]), 3, "lambdas")
        return TransferPlan(
            student=read_spec(config, "student"),
            teacher=read_spec(config, "teacher"),
            old_classes=tuple(_ints(config, OLD_CLASSES)),
            new_class=int(config[NEW_CLASS]),
            threshold=float(config["threshold"]),
            epochs=int(config["epochs"]),
            batch_size=int(config["batch-size"]),
            lr=float(config["lr"]),
            momentum=float(config["momentum"]),
            weight_decay=float(config["weight-decay"]),
            lambdas=(lambdas[0], lambdas[1], lambdas[2]),
            old_fraction=float(config["old-fraction"]),
            seed=int(config["seed"]),
            baseline=bool(config[BASELINE]),
        )
    except KeyError as err:
        raise ValueError(f"transfer config misses entry {err}") from err
