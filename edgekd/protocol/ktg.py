"""Federated knowledge transfer graph: the message format both sides share.

Minami, Hirakawa, Yamashita and Fujiyoshi, "Knowledge Transfer Graph for Deep Collaborative
Learning" (ACCV 2020); official code https://github.com/somaminami/DCL. The graph, its gates
and its grammar are :class:`edgekd.losses.ktg.GateMatrix`; node ``i`` of the graph is the
client of partition ``i``, with a model of its own architecture (``node-models[i]``) and its
private shard. Weights never leave the nodes: the edges are computed on a shared public batch.

Per round the server draws a seeded public batch (row indices into the public pool both sides
derive from the run config, :mod:`edgekd.protocol.public`), asks every node that teaches
someone for its logits on it, applies the gate matrix and sends each learning node its
**gated targets**: the logits of its incoming sources and the per-sample gate weights. The
node then trains ``local-epochs`` on its private data (the self edge: cross-entropy times
``self-weight``) plus, on the same steps, the KL of its incoming edges on public batches.

Message format
--------------
All messages carry a ``config`` ConfigRecord with the setup keys ``server-round``,
``node-models`` (comma-separated, one name per node, or one name for all), ``seed``,
``public-source`` and ``public-fraction`` (:class:`KTGSetup`). A node builds its model
(seeded by ``seed`` and its partition) on its first KTG message and keeps it in
``context.state["ktg-model"]``; its private data is its partition of
:func:`edgekd.protocol.public.private_config`.

``query.ktg_logits`` (:data:`MSG_LOGITS`)
    in: ``ktg-public`` ArrayRecord ``{"indices": int64 (N,)}``. out: ``ktg-logits``
    ArrayRecord ``{"logits": float32 (N, C)}`` (eval mode) and ``metrics``
    (``partition-id``, ``num-examples`` = private training size).
``train.ktg`` (:data:`MSG_TRAIN`)
    in: config adds ``self-weight`` (the self edge's gate this round: 1 for T and C,
    ``round / num-rounds`` for L, 0 for X) and ``temperature`` (:class:`TrainSettings`);
    optional ``ktg-targets`` ArrayRecord ``{"indices": int64 (N,), "logits": float32
    (K, N, C), "weights": float32 (K, N), "sources": int64 (K,)}``: ``K >= 1`` targets, the
    incoming edges' source logits and per-sample gate weights (absent: no incoming edge this
    round, the node trains on its labels only). out: ``metrics`` (``partition-id``,
    ``num-examples``, ``train-loss``, ``ce-loss``, ``kd-loss``, ``num-targets``).
``evaluate.ktg`` (:data:`MSG_EVALUATE`)
    in: the setup config. out: ``metrics`` (``partition-id``, ``test-acc`` and
    ``test-loss`` on the whole test split, ``num-examples`` = its size,
    ``num-parameters``).

Node ``t``'s loss per step, the private batch ``(x, y)`` and a public batch ``P`` of the
target rows (cycled, seeded)::

    self-weight * CE(f_t(x), y) + sum_k T^2 * mean_{n in P}(w_kn * KL(p_kn || p_t(n)))

``p = softmax(z / T)`` with ``T`` = ``temperature``. Without targets and with
``self-weight`` 1 this is exactly :func:`edgekd.training.train_supervised` (independent local
training). A logits reply with an error, a wrong shape or NaN/inf values is left out for that
round (its outgoing edges are dropped, the reason logged); the run goes on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flwr.app import ConfigRecord, MessageType

from edgekd.config import ExperimentConfig, config_value
from edgekd.protocol.public import private_config

__all__ = [
    "ACTION_EVALUATE",
    "ACTION_LOGITS",
    "ACTION_TRAIN",
    "LOGITS",
    "MSG_EVALUATE",
    "MSG_LOGITS",
    "MSG_TRAIN",
    "PUBLIC",
    "TARGETS",
    "KTGSetup",
    "TrainSettings",
    "parse_models",
]

ACTION_LOGITS = "ktg_logits"
ACTION_TRAIN = "ktg"
ACTION_EVALUATE = "ktg"
MSG_LOGITS = f"{MessageType.QUERY}.{ACTION_LOGITS}"
MSG_TRAIN = f"{MessageType.TRAIN}.{ACTION_TRAIN}"
MSG_EVALUATE = f"{MessageType.EVALUATE}.{ACTION_EVALUATE}"
PUBLIC = "ktg-public"
LOGITS = "ktg-logits"
TARGETS = "ktg-targets"


def _require(config: Mapping[str, Any], key: str, kind: type) -> Any:
    """Read a key the server always sends; a missing key is a protocol error."""
    if key not in config:
        raise ValueError(f"KTG message config lacks the key {key!r}")
    return config_value(config, key, None, kind)


def parse_models(text: str) -> tuple[str, ...]:
    """``"resnet8, cnn"`` -> ``("resnet8", "cnn")`` (empty parts dropped)."""
    return tuple(m.strip() for m in str(text).split(",") if m.strip())


@dataclass(frozen=True)
class KTGSetup:
    """The setup keys every KTG message carries.

    Attributes
    ----------
    server_round : int
        The round the message belongs to (0 = initial evaluation).
    node_models : tuple[str, ...]
        Model name of each node (partition) in node order, or one name for every node.
    seed : int
        Base seed of model initialisation and batch orders.
    public_source : str
        ``"split"`` or ``"npz:<path>"`` (:mod:`edgekd.protocol.public`).
    public_fraction : float
        Stratified public share of the training set in ``"split"`` mode.
    """

    server_round: int
    node_models: tuple[str, ...]
    seed: int
    public_source: str
    public_fraction: float

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> KTGSetup:
        """Parse the setup keys of a message's ``ConfigRecord``."""
        models = parse_models(_require(config, "node-models", str))
        if not models:
            raise ValueError("KTG message config has an empty 'node-models'")
        return cls(
            server_round=_require(config, "server-round", int),
            node_models=models,
            seed=_require(config, "seed", int),
            public_source=_require(config, "public-source", str),
            public_fraction=_require(config, "public-fraction", float),
        )

    def to_config(self, **extra: Any) -> ConfigRecord:
        """The message ``ConfigRecord`` of this setup, plus ``extra`` keys."""
        return ConfigRecord(
            {
                "server-round": self.server_round,
                "node-models": ",".join(self.node_models),
                "seed": self.seed,
                "public-source": self.public_source,
                "public-fraction": self.public_fraction,
                **extra,
            }
        )

    def model_name(self, partition_id: int) -> str:
        """The architecture of node ``partition_id`` (the one name when only one is given)."""
        if len(self.node_models) == 1:
            return self.node_models[0]
        if not 0 <= partition_id < len(self.node_models):
            raise ValueError(
                f"node-models names {len(self.node_models)} nodes, no model for partition "
                f"{partition_id}"
            )
        return self.node_models[partition_id]

    def private_config(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """The experiment config whose partitions are the private data."""
        return private_config(cfg, self.public_source, self.public_fraction)


@dataclass(frozen=True)
class TrainSettings:
    """The per-round keys of a ``train.ktg`` message."""

    self_weight: float
    temperature: float

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrainSettings:
        """Parse the train keys of a message's ``ConfigRecord``."""
        return cls(
            self_weight=_require(config, "self-weight", float),
            temperature=_require(config, "temperature", float),
        )

    def to_config(self) -> dict[str, Any]:
        """The train keys, to add to the setup's ``ConfigRecord``."""
        return {"self-weight": self.self_weight, "temperature": self.temperature}
