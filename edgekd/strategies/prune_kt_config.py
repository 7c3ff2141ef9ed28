"""The ``pk-*`` settings of filter pruning + layer-wise knowledge transfer.

Paper: K. Zhao, Y. Chen and M. Zhao, "Enabling Deep Learning on Edge Devices through Filter
Pruning and Knowledge Transfer", 2022, https://arxiv.org/abs/2201.10947.

Parsed once by :meth:`PruneKTConfig.from_run_config`; every value is validated with an error
that names the key and the value. Two checks need the shared ``num-partitions``: one threshold
for all edges or one per edge, and one new class per edge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgekd.config import Rules, check_fields, comma_floats, config_value, parse_section

__all__ = ["PruneKTConfig"]

_RULES = Rules(
    at_least={
        1: "stat_images transfer_epochs",
        0: "teacher_epochs student_epochs min_width",
    },
    positive="teacher_lr student_lr transfer_lr round_timeout",
    within={"old_fraction": "[0, 1]"},
)


def _comma_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise ValueError(
            f"pk-new-classes must be comma-separated class labels, got {text!r}"
        ) from err


@dataclass(frozen=True)
class PruneKTConfig:
    """The ``pk-*`` keys of the run config (``pk-<field name in kebab-case>``).

    Attributes
    ----------
    teacher_depth : int
        The cloud's teacher, the CIFAR ResNet of depth ``6n + 2`` (20: resnet20), trained on
        the core split's old classes once per seed (cached in ``cache-dir``). The run's
        ``model`` is not used: students are the teacher's compressed specs.
    teacher_epochs, teacher_lr : Teacher schedule (cosine from ``teacher_lr``).
    thresholds : tuple[float, ...]
        Filter pruning threshold ``P`` per edge in edge order (a weaker device, a smaller P),
        or one value for every edge; each in ``[0, 1]``.
    min_width : int
        Floor for the pruned widths; 0 = none, and a width that would reach 0 leaves that
        edge out (logged, with the convolution named).
    stat_images : int
        ``M``, core images of the activation statistics (the paper: one batch).
    student_epochs, student_lr : Schedule of each compressed student, trained from scratch
        on the cloud's data.
    dependent_student : bool
        Train each student with the teacher's help (the paper's *dependent student*:
        ``lambdas``' layer-wise loss with the labels, every layer learning) instead of with
        cross-entropy alone, so that its channels follow the teacher's before an edge's
        layer-wise transfer compares them one by one (default False).
    new_classes : tuple[int, ...]
        Edge ``i``'s new class (dataset label), one per edge, distinct; the cloud never trains
        on any of them (:mod:`edgekd.datasets.incremental`).
    old_fraction : float
        Share of its old-class images an edge trains on next to its new class (0: the new
        class only, the paper's incremental task).
    transfer_epochs, transfer_lr : The edge's transfer schedule (cosine from ``transfer_lr``).
    lambdas : tuple[float, ...]
        ``(lambda1, lambda2, lambda3)``: weights of J1 (outputs), J_b (blocks) and J3 (labels).
    baseline : bool
        Each edge also fine-tunes a copy without the teacher terms (``J3`` only, same layers
        and epochs): the "without KT" student.
    round_timeout : float
        Seconds to wait for the edges' replies.
    """

    teacher_depth: int = 20
    teacher_epochs: int = 10
    teacher_lr: float = 0.1
    thresholds: tuple[float, ...] = field(
        default=(1.0, 0.9, 0.8, 0.7),
        metadata={
            "kind": str,
            "raw-default": "1.0,0.9,0.8,0.7",
            "parse": comma_floats("pk-thresholds"),
        },
    )
    min_width: int = 0
    stat_images: int = 128
    student_epochs: int = 10
    student_lr: float = 0.1
    dependent_student: bool = False
    new_classes: tuple[int, ...] = field(
        default=(9, 8, 7, 6),
        metadata={"kind": str, "raw-default": "9,8,7,6", "parse": _comma_ints},
    )
    old_fraction: float = 0.0
    transfer_epochs: int = 5
    transfer_lr: float = 0.01
    lambdas: tuple[float, ...] = field(
        default=(1.0, 1.0, 1.0),
        metadata={"kind": str, "raw-default": "1,1,1", "parse": comma_floats("pk-lambdas")},
    )
    baseline: bool = True
    round_timeout: float = 3600.0

    def __post_init__(self) -> None:
        """Validate every value, naming the key."""
        check_fields(self, "pk-", _RULES)
        if self.teacher_depth < 8 or (self.teacher_depth - 2) % 6:
            raise ValueError(
                f"pk-teacher-depth must be 6n + 2 (8, 20, 32, 56...), got {self.teacher_depth!r}"
            )
        if not self.thresholds or any(not 0.0 <= p <= 1.0 for p in self.thresholds):
            raise ValueError(f"pk-thresholds must be numbers in [0, 1], got {self.thresholds!r}")
        if not self.new_classes or len(set(self.new_classes)) != len(self.new_classes):
            raise ValueError(
                f"pk-new-classes must be distinct labels, one per edge, got {self.new_classes!r}"
            )
        if any(c < 0 for c in self.new_classes):
            raise ValueError(f"pk-new-classes must be labels >= 0, got {self.new_classes!r}")
        if len(self.lambdas) != 3 or any(not w >= 0 for w in self.lambdas):
            raise ValueError(f"pk-lambdas must be 3 numbers >= 0, got {self.lambdas!r}")

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> PruneKTConfig:
        """Parse the ``pk-*`` keys and check them against ``num-partitions`` (default 4)."""
        parsed = parse_section(cls, run_config, "pk-")
        parsed.check_edges(config_value(run_config, "num-partitions", 4, int))
        return parsed

    def check_edges(self, num_partitions: int) -> None:
        """``ValueError`` unless there is one new class per edge and one threshold (for all)
        or one per edge."""
        if len(self.new_classes) != num_partitions:
            raise ValueError(
                f"pk-new-classes gives {len(self.new_classes)} classes for num-partitions="
                f"{num_partitions} edges: give one new class per edge"
            )
        if len(self.thresholds) not in (1, num_partitions):
            raise ValueError(
                f"pk-thresholds gives {len(self.thresholds)} values for num-partitions="
                f"{num_partitions} edges: give one for all or one per edge"
            )

    def threshold_of(self, position: int) -> float:
        """``P`` of the edge at ``position`` in edge order."""
        return self.thresholds[0] if len(self.thresholds) == 1 else self.thresholds[position]
