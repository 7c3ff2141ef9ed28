"""The ``ce-*`` settings of cloud-edge distillation with confidence offloading.

Parsed once by :meth:`CloudEdgeConfig.from_run_config`; every value is validated with an error
that names the key and the value. Two checks need the shared ``batch-size``: the manifold
dimension ``ce-manifold-dim`` must not exceed it and ``ce-neighbors`` must be below it (a
neighbourhood is drawn from one batch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgekd.cloud_edge_training import STUDENT_LOSSES, StudentLoss
from edgekd.config import Rules, check_fields, comma_floats, config_value, parse_section
from edgekd.losses.cloud_edge import MANIFOLDS
from edgekd.models import list_models

__all__ = ["LOSSES", "CloudEdgeConfig", "check_nmd_batch", "check_nmd_settings"]

LOSSES = STUDENT_LOSSES
_RULES = Rules(
    choices={"loss": LOSSES, "manifold": MANIFOLDS},
    at_least={
        1: "manifold_dim ece_bins",
        2: "neighbors",
        0: "teacher_epochs distill_epochs alpha beta at_weight fsp_weight",
    },
    positive="teacher_lr distill_lr temperature round_timeout",
    within={"val_fraction": "(0, 1)", "select_tolerance": "[0, 1]"},
)


def check_nmd_settings(
    prefix: str, *, weights: tuple[float, ...], manifold: str, dim: int, neighbors: int
) -> None:
    """Refuse NMD settings that cannot work, naming the ``<prefix>*`` key and the value.

    Three stage weights ``>= 0`` (one per residual stage) and, for LTSA, ``dim < neighbors``
    (``d + 1`` local basis vectors must fit in a neighbourhood).
    """
    if len(weights) != 3 or any(not w >= 0 for w in weights):
        raise ValueError(
            f"{prefix}nmd-weights must be 3 numbers >= 0 (one per residual stage), got {weights!r}"
        )
    if manifold == "ltsa" and dim >= neighbors:
        raise ValueError(
            f"{prefix}manifold-dim ({dim}) must be < {prefix}neighbors ({neighbors}) for the "
            "LTSA manifold"
        )


def check_nmd_batch(
    prefix: str, *, manifold: str, dim: int, neighbors: int, batch_size: int
) -> None:
    """``ValueError`` when ``d > batch-size`` or (LTSA) ``k >= batch-size``: a manifold is
    drawn from one batch."""
    if dim > batch_size:
        raise ValueError(f"{prefix}manifold-dim ({dim}) must be <= batch-size ({batch_size})")
    if manifold == "ltsa" and neighbors >= batch_size:
        raise ValueError(f"{prefix}neighbors ({neighbors}) must be < batch-size ({batch_size})")


@dataclass(frozen=True)
class CloudEdgeConfig:
    """The ``ce-*`` keys of the run config (``ce-<field name in kebab-case>``).

    Attributes
    ----------
    teacher_model : str
        The cloud's teacher (a registered model; trained once per seed on the core split and
        cached in ``cache-dir``). The student is the run's ``model``.
    teacher_epochs, teacher_lr : Teacher schedule (cosine from ``teacher_lr``).
    loss : {"ce", "st", "at", "fsp", "nmd"}
        Student training loss: cross-entropy only, ST (Hinton KD), AT + ST, FSP + ST, NMD
        (Eq. 3). The feature losses need models with ``forward_stages`` (CIFAR ResNets).
    alpha, beta, temperature : CE weight, KL weight and softmax temperature of ST/NMD.
    manifold : {"linear", "ltsa"}
        NMD's manifold ``psi`` (PCA, Eq. 12, or LTSA, Eq. 16-23).
    manifold_dim : int
        ``d``, the manifold dimension; at most ``batch-size``.
    neighbors : int
        ``k``, LTSA neighbourhood size; ``d < k < batch-size``.
    nmd_weights : tuple[float, ...]
        ``lambda_j`` per residual stage, shallow first (``"4,2,1"``: larger for shallow
        stages, as the paper says; its values are not given). Non-negative.
    at_weight, fsp_weight : float
        Weight of the AT term per stage (``1000``, the AT authors' beta) and of the FSP term
        per stage pair (``50``, RepDistiller's default for FSP).
    distill_epochs, distill_lr : Student schedule (cosine from ``distill_lr``).
    val_fraction : float
        Fraction of the core split held out to select the checkpoint (Algorithm 1).
    select_tolerance : float
        A checkpoint is "close to the best" when its validation accuracy is at least the best
        validation accuracy minus this (absolute, in ``[0, 1]``); among those the lowest
        validation ECE is kept (ties: the later epoch).
    ece_bins : int
        ``M``, equal-width bins of the ECE (Eq. 30).
    sigmas : tuple[float, ...]
        The offloading thresholds swept, each in ``[0, 1]`` (Eq. 34 with ``s = 1``); ``1`` is
        added when absent (its exchange measures the cloud-only accuracy).
    round_timeout : float
        Seconds to wait for the edges' replies in each exchange.
    """

    teacher_model: str = "resnet56"
    teacher_epochs: int = 10
    teacher_lr: float = 0.05
    loss: str = "nmd"
    alpha: float = 1.0
    beta: float = 1.0
    temperature: float = 4.0
    manifold: str = "linear"
    manifold_dim: int = 8
    neighbors: int = 10
    nmd_weights: tuple[float, ...] = field(
        default=(4.0, 2.0, 1.0),
        metadata={"kind": str, "raw-default": "4,2,1", "parse": comma_floats("ce-nmd-weights")},
    )
    at_weight: float = 1000.0
    fsp_weight: float = 50.0
    distill_epochs: int = 10
    distill_lr: float = 0.05
    val_fraction: float = 0.2
    select_tolerance: float = 0.01
    ece_bins: int = 15
    sigmas: tuple[float, ...] = field(
        default=(0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0),
        metadata={
            "kind": str,
            "raw-default": "0,0.05,0.1,0.2,0.3,0.5,1",
            "parse": comma_floats("ce-sigmas"),
        },
    )
    round_timeout: float = 3600.0

    def __post_init__(self) -> None:
        """Validate every value, naming the key."""
        check_fields(self, "ce-", _RULES)
        if self.teacher_model not in list_models():
            raise ValueError(
                f"ce-teacher-model must be a registered model, got {self.teacher_model!r}; "
                f"valid: {', '.join(list_models())}"
            )
        check_nmd_settings(
            "ce-",
            weights=self.nmd_weights,
            manifold=self.manifold,
            dim=self.manifold_dim,
            neighbors=self.neighbors,
        )
        if not self.sigmas or any(not 0 <= s <= 1 for s in self.sigmas):
            raise ValueError(f"ce-sigmas must be numbers in [0, 1], got {self.sigmas!r}")
        sweep = tuple(sorted(set(self.sigmas) | {1.0}))
        object.__setattr__(self, "sigmas", sweep)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> CloudEdgeConfig:
        """Parse the ``ce-*`` keys and check them against ``batch-size`` (default 32)."""
        parsed = parse_section(cls, run_config, "ce-")
        parsed.check_batch_size(config_value(run_config, "batch-size", 32, int))
        return parsed

    def check_batch_size(self, batch_size: int) -> None:
        """``ValueError`` when ``d > batch-size`` or (for NMD-LTSA) ``k >= batch-size``."""
        if self.loss == "nmd":
            check_nmd_batch(
                "ce-",
                manifold=self.manifold,
                dim=self.manifold_dim,
                neighbors=self.neighbors,
                batch_size=batch_size,
            )

    def student_loss(self) -> StudentLoss:
        """The student's objective with these weights."""
        return StudentLoss(
            name=self.loss,
            alpha=self.alpha,
            beta=self.beta,
            temperature=self.temperature,
            manifold=self.manifold,
            dim=self.manifold_dim,
            neighbors=self.neighbors,
            nmd_weights=self.nmd_weights,
            at_weight=self.at_weight,
            fsp_weight=self.fsp_weight,
        )

    def replace(self, **changes: Any) -> CloudEdgeConfig:
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)
