"""The ``ktg-*`` settings of the federated knowledge transfer graph (:mod:`edgekd.strategies.ktg`).

Minami, Hirakawa, Yamashita and Fujiyoshi, "Knowledge Transfer Graph for Deep Collaborative
Learning" (ACCV 2020); official code https://github.com/somaminami/DCL. The server parses them
once; the clients receive what they need in every message's ``config`` record
(:class:`edgekd.protocol.ktg.KTGSetup`), never the run config's keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgekd.config import ExperimentConfig, Rules, check_fields, parse_section
from edgekd.losses.ktg import Gate, GateMatrix, GateMatrixError
from edgekd.models import list_models
from edgekd.protocol.ktg import parse_models
from edgekd.protocol.public import (
    check_public_source,
    private_config,
    public_labels_in_private_space,
)

__all__ = ["AGGREGATES", "KTGConfig"]

AGGREGATES = ("sum", "mean-logits")
_RULES = Rules(
    choices={"aggregate": AGGREGATES},
    at_least={1: "public_size"},
    positive="temperature",
)


@dataclass(frozen=True)
class KTGConfig:
    """The ``ktg-*`` keys of the run config (``ktg-<field name in kebab-case>``).

    Attributes
    ----------
    gates : str
        The gate matrix, one row per node (row = target, column = source, diagonal = the
        self/CE edge; letters T Through, X Cutoff, L Linear, C Correct), grammar of
        :class:`edgekd.losses.ktg.GateMatrix`: ``"T,X;T,T"``. Its size must equal
        ``num-partitions`` (node ``i`` = partition ``i``). Default: 4-node deep mutual learning.
    models : str
        Model name of each node in node order (``"resnet8,cnn,resnet8"``), or one name for
        every node. Default ``"cnn"``.
    aggregate : {"sum", "mean-logits"}
        ``"sum"``: one KL term per incoming edge, summed (the paper, DCL); ``"mean-logits"``:
        one KL term towards the per-sample gate-weighted mean of the incoming sources' logits,
        weighted by the mean gate (with Through edges: FedMD's consensus of the other nodes).
        Default ``"sum"``.
    temperature : float
        Softmax temperature of the KL edges. Default 1.0 (official code).
    public_source : str
        ``"split"`` (a stratified ``public_fraction`` of the training set, labelled, taken out
        of the private partitions; needed by a Correct gate between nodes) or ``"npz:<path>"``
        (unlabelled transfer data of the same image shape, e.g.
        ``npz:../shared/data/cifar100_head.npz``). Default ``"split"``.
    public_fraction : float
        Public share in ``"split"`` mode. Default 0.1.
    public_size : int
        Public images per round (seeded by ``seed`` and round). Default 256.
    """

    gates: str = "T,T,T,T;T,T,T,T;T,T,T,T;T,T,T,T"
    models: str = "cnn"
    aggregate: str = "sum"
    temperature: float = 1.0
    public_source: str = "split"
    public_fraction: float = 0.1
    public_size: int = 256

    def __post_init__(self) -> None:
        """Validate every value, naming the bad key."""
        check_fields(self, "ktg-", _RULES)
        matrix = self.matrix()
        unknown = [m for m in self.model_names if m not in list_models()]
        if not self.model_names or unknown:
            raise ValueError(
                f"ktg-models has unknown or no model names {unknown or ''} in "
                f"{self.models!r}; valid names: {', '.join(list_models())}"
            )
        if len(self.model_names) not in {1, matrix.num_nodes}:
            raise ValueError(
                f"ktg-models names {len(self.model_names)} models, but ktg-gates has "
                f"{matrix.num_nodes} nodes: give one name per node, or one for all"
            )
        check_public_source(self.public_source, self.public_fraction, prefix="ktg-")
        if self.needs_labels and not public_labels_in_private_space(self.public_source):
            raise ValueError(
                f"ktg-gates {str(matrix)!r} has a Correct (C) edge between nodes, which needs "
                "public labels of the clients' classes: set ktg-public-source = 'split', "
                f"got {self.public_source!r}"
            )

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> KTGConfig:
        """Parse the ``ktg-*`` keys; absent keys take the defaults."""
        return parse_section(cls, run_config, "ktg-")

    def matrix(self, num_nodes: int | None = None) -> GateMatrix:
        """The parsed gate matrix (checked against ``num_nodes`` when given).

        Raises :class:`edgekd.losses.ktg.GateMatrixError` naming ``ktg-gates``.
        """
        try:
            return GateMatrix.parse(self.gates, num_nodes)
        except GateMatrixError as err:
            hint = "" if num_nodes is None else f" (num-partitions = {num_nodes})"
            raise GateMatrixError(f"ktg-gates: {err}{hint}") from None

    @property
    def model_names(self) -> tuple[str, ...]:
        """The model names of ``models``."""
        return parse_models(self.models)

    def model_name(self, node: int) -> str:
        """The architecture of node (partition) ``node``."""
        names = self.model_names
        return names[0] if len(names) == 1 else names[node]

    @property
    def needs_labels(self) -> bool:
        """A Correct gate on an edge between two nodes needs the public batch's labels."""
        rows = self.matrix().rows
        return any(
            g is Gate.CORRECT for t, row in enumerate(rows) for s, g in enumerate(row) if s != t
        )

    def private_config(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """The experiment config whose partitions are the private data."""
        return private_config(cfg, self.public_source, self.public_fraction)
