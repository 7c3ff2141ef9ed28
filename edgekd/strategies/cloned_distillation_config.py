"""The ``cd-*`` settings of cloned distillation and the paper's variant names.

A variant name (``cd-variant``: ``CEM``, ``CPP``, ``IsPP``, ...) decides how edges start
(``cd-edge-init``) and whether the ensemble and the memory are on. Explicit keys never lose
silently against it:

- ``cd-edge-init`` empty (the default) follows the variant; an explicit value that contradicts
  the variant is an error naming both keys (one that agrees is accepted);
- ``cd-ensemble-size`` (P) and ``cd-memory-size`` (M) are the sizes used *when the variant
  turns the ensemble (E) or the memory (M) on*; a variant with P in that position uses 1,
  whatever the key says, so one base profile serves every variant.

With ``cd-variant = ""`` the three keys are used as given (``cd-edge-init`` empty = clone).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgekd.config import Rules, check_fields, comma_floats, config_value, parse_section
from edgekd.losses.cloud_edge import MANIFOLDS
from edgekd.strategies.cloud_edge_config import check_nmd_batch, check_nmd_settings

__all__ = [
    "CONTROL",
    "DETECT_POLICIES",
    "DISTILL_LOSSES",
    "EDGE_INITS",
    "EDGE_ORDERS",
    "ENSEMBLE_MODES",
    "ClonedDistillationConfig",
    "parse_variant",
]

EDGE_INITS = ("clone", "independent", "scratch")
EDGE_ORDERS = ("round-robin", "permutation")
DETECT_POLICIES = ("off", "flag", "downweight", "reject", "exclude")
ENSEMBLE_MODES = ("members", "average")
DISTILL_LOSSES = ("kl", "nmd")
CONTROL = "control"
_RULES = Rules(
    choices={
        "edge_init": EDGE_INITS,
        "edge_order": EDGE_ORDERS,
        "ensemble_mode": ENSEMBLE_MODES,
        "detect_policy": DETECT_POLICIES,
        "distill_loss": DISTILL_LOSSES,
        "manifold": MANIFOLDS,
    },
    at_least={
        1: "ensemble_size memory_size manifold_dim",
        2: "neighbors",
        0: "core_epochs distill_epochs distill_views",
    },
    positive="core_lr distill_lr temperature round_timeout detect_threshold",
    within={"detect_downweight": "[0, 1]"},
)


def parse_variant(variant: str) -> tuple[str, bool, bool]:
    """Split a paper variant name into (edge init, ensemble on, memory on).

    ``"CEM"`` -> ("clone", True, True); ``"IsPP"`` -> ("scratch", False, False);
    ``"IPM"`` -> ("independent", False, True). First letter(s): C (clone), I (independent,
    trained on the core data with another seed), Is (trained from scratch at the edge);
    second: E (cloned perturbation ensemble) or P (plain); third: M (temporal memory) or P.
    ``"control"`` is the no-teacher control: no edge is contacted and every round runs Phase 2
    with the cross-entropy term only (same schedule), so a variant's gain over it is what its
    teachers add beyond the extra training on the core data.
    """
    name = variant.strip()
    if name == CONTROL:
        return "clone", False, False
    if name.startswith("Is"):
        init, rest = "scratch", name[2:]
    elif name[:1] == "I":
        init, rest = "independent", name[1:]
    elif name[:1] == "C":
        init, rest = "clone", name[1:]
    else:
        init, rest = "", ""
    if init == "" or len(rest) != 2 or rest[0] not in "EP" or rest[1] not in "MP":
        raise ValueError(
            f"unknown cloned-distillation variant {variant!r}; expected C|I|Is + E|P + M|P, "
            f"e.g. CEM, CPP, IEP, IsPP, or {CONTROL!r} (no teacher)"
        )
    return init, rest[0] == "E", rest[1] == "M"


@dataclass(frozen=True)
class ClonedDistillationConfig:
    """The ``cd-*`` keys of the run config (``cd-<field name in kebab-case>``).

    Attributes
    ----------
    variant : str
        Paper variant (``CEM``, ``CPP``, ``IsPP``, ``control``, ...); decides ``edge_init`` and
        whether the ensemble and the memory are on (see the module docstring). Empty: use
        ``edge_init``, ``ensemble_size`` and ``memory_size`` as given.
    edge_init : {"", "clone", "independent", "scratch"}
        How an edge's model starts; "" follows the variant. Resolved after parsing.
    ensemble_size : int
        P, models trained per edge (batch-order perturbation) when the ensemble is on.
    memory_size : int
        M, the number of most recent edges whose models are distilled (1 = only this round's).
    ensemble_mode : {"members", "average"}
        An edge's P models count as P teachers ("members", default: the paper's sum over
        teachers) or as one teacher whose logits are their mean ("average").
    core_epochs, core_lr : Phase 0 schedule (cosine from ``core_lr``).
    distill_epochs, distill_lr : Phase 2 schedule (cosine restarting at ``distill_lr``).
    temperature : float
        t in Eq. 1.
    distill_views : int
        Augmented copies of the core data that the teachers' logits are cached on (only with
        ``augment``); 0 = one per distillation epoch.
    edge_order : {"round-robin", "permutation"}
        Order edges are met in; every edge once per pass, a new seeded permutation each pass.
    independent_seed_offset : int
        The independent (I) model is initialised with ``seed + offset``.
    round_timeout : float
        Seconds to wait for an edge's reply before the round goes on without it.
    detect_policy : {"off", "flag", "downweight", "reject"}
        Corrupted-edge detection. A returned edge is *suspect* when its models' accuracy on the
        server's core data is below ``detect_threshold`` times the reference (the median of
        previously accepted edges' scores; before any, the core model's own score). "flag"
        records it and distils anyway, "downweight" multiplies its teachers' weights by
        ``detect_downweight``, "reject" leaves it out and skips the round's Phase 2 (the core
        is not touched), "exclude" leaves only its teachers out: Phase 2 still runs, on the
        memory without them (cross-entropy only when the memory is empty).
    detect_threshold, detect_downweight : float
        See ``detect_policy``.
    distill_loss : {"kl", "nmd"}
        Phase 2's teacher term: "kl" (default, the paper's Eq. 1: ``t^2`` KL to each stored
        teacher's logits) or "nmd", which adds the cloud-edge paper's neuron manifold
        distances (Eq. 3, :func:`edgekd.losses.manifold_term`) between the core's and each
        teacher's residual-stage features, weighted like the teacher's KL term. NMD keeps the
        remembered edges' models and runs one teacher forward pass per teacher and batch;
        it needs models with ``forward_stages`` (CIFAR ResNets).
    nmd_weights : tuple[float, ...]
        ``lambda_j``, one per residual stage (``"4,2,1"``: larger for shallow stages).
    manifold, manifold_dim, neighbors
        NMD's manifold ``psi`` ("linear" or "ltsa"), its dimension ``d`` (at most
        ``batch-size``) and LTSA's ``k`` (below ``batch-size``).
    """

    variant: str = ""
    edge_init: str = ""
    ensemble_size: int = 1
    memory_size: int = 1
    ensemble_mode: str = "members"
    core_epochs: int = 10
    core_lr: float = 0.05
    distill_epochs: int = 5
    distill_lr: float = 0.05
    temperature: float = 4.0
    distill_views: int = 0
    edge_order: str = "round-robin"
    independent_seed_offset: int = 1000
    round_timeout: float = 3600.0
    detect_policy: str = "off"
    detect_threshold: float = 0.8
    detect_downweight: float = 0.1
    distill_loss: str = "kl"
    nmd_weights: tuple[float, ...] = field(
        default=(4.0, 2.0, 1.0),
        metadata={"kind": str, "raw-default": "4,2,1", "parse": comma_floats("cd-nmd-weights")},
    )
    manifold: str = "linear"
    manifold_dim: int = 8
    neighbors: int = 10

    def __post_init__(self) -> None:
        """Resolve ``variant`` against the explicit keys and validate every value."""
        self._apply_variant()
        check_fields(self, "cd-", _RULES)
        check_nmd_settings(
            "cd-",
            weights=self.nmd_weights,
            manifold=self.manifold,
            dim=self.manifold_dim,
            neighbors=self.neighbors,
        )

    def _apply_variant(self) -> None:
        if not self.variant:
            if not self.edge_init:
                object.__setattr__(self, "edge_init", "clone")
            return
        init, ensemble, memory = parse_variant(self.variant)
        if self.edge_init and self.edge_init != init:
            raise ValueError(
                f"cd-edge-init {self.edge_init!r} contradicts cd-variant {self.variant!r} "
                f"(whose edges start as {init!r}): set only one of the two keys"
            )
        object.__setattr__(self, "edge_init", init)
        if not ensemble:
            object.__setattr__(self, "ensemble_size", 1)
        if not memory:
            object.__setattr__(self, "memory_size", 1)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> ClonedDistillationConfig:
        """Parse the ``cd-*`` keys (absent keys take the defaults); with NMD, check the
        manifold against ``batch-size`` (default 32)."""
        parsed = parse_section(cls, run_config, "cd-")
        if parsed.distill_loss == "nmd":
            check_nmd_batch(
                "cd-",
                manifold=parsed.manifold,
                dim=parsed.manifold_dim,
                neighbors=parsed.neighbors,
                batch_size=config_value(run_config, "batch-size", 32, int),
            )
        return parsed

    @property
    def is_control(self) -> bool:
        """The no-teacher control (``cd-variant = "control"``)."""
        return self.variant.strip() == CONTROL

    @property
    def teachers_per_edge(self) -> int:
        """Teachers one edge contributes to the distillation loss."""
        return self.ensemble_size if self.ensemble_mode == "members" else 1
