"""FedMD's message format and the setup rules both sides must share.

Li and Wang, "FedMD: Heterogenous Federated Learning via Model Distillation", NeurIPS 2019 FL
workshop, https://arxiv.org/abs/1910.03581; the latent variant (LKD) adds an MSE term on a
shared representation layer of size r ("Latent Space Distillation" slides, KIT).

Each client keeps a model of its own architecture (``client-models``, round-robin by
partition id), pre-trained by transfer learning on the public data and then on its private
data. Every round the server draws a seeded alignment subset of the public data; the clients
return class scores (and representations) on it; the server forms the consensus and sends it
back; the clients *digest* it and *revisit* their private data. Weights never leave the
clients, except in the ``FedAvg`` baseline.

Message format
--------------
All messages carry a ``config`` ConfigRecord with the setup keys ``server-round``,
``client-models``, ``representation-dim``, ``public-source``, ``public-fraction``,
``pretrain-public-epochs``, ``pretrain-private-epochs``, ``private-test-size``, ``seed`` and
``shared-init`` (true only for FedAvg: every node starts from the same global model, the
shared initialisation after the public stage, with no private pre-training) --
:class:`FedMDSetup`. A node pre-trains its model lazily on its first FedMD message and keeps
it in ``context.state["fedmd-model"]``. Public data is never sent: it is identified by row
indices into the public pool both sides derive from the run config (:func:`public_pool`: the
stratified ``public-fraction`` core split of the training set for ``"split"``, or ``x_train``
followed by ``x_test`` of the npz for ``"npz:<path>"``); the private partitions are those of
:func:`private_config` (both shared with other public-data methods:
:mod:`edgekd.protocol.public`).

``query.fedmd_scores`` (:data:`MSG_SCORES`)
    in: ``fedmd-public`` ArrayRecord ``{"indices": int64 (N,)}``; config adds
    ``with-representations`` (bool). out: ``fedmd-scores`` ArrayRecord
    ``{"logits": float32 (N, C), "representations": float32 (N, r) if requested}`` and
    ``metrics`` (``partition-id``, ``num-examples`` = private training size).
``train.fedmd`` (:data:`MSG_TRAIN`)
    in: config adds ``digest-epochs``, ``digest-lr``, ``temperature``, ``logit-loss``,
    ``latent-weight``, ``revisit-epochs`` (:class:`DigestSettings`); optional
    ``fedmd-consensus`` ArrayRecord ``{"indices", "logits" (N, C), "representations" (N, r)
    for LKD}`` (absent for CE: revisit only); FedAvg only: ``arrays`` (the global model, from
    round 2). out: ``metrics`` (``partition-id``, ``num-examples``, ``digest-loss``,
    ``revisit-loss``); FedAvg only: ``arrays``.
``evaluate.fedmd`` (:data:`MSG_EVALUATE`)
    in: the setup config (FedAvg: ``arrays``). out: ``metrics`` (``partition-id``,
    ``uniform-acc``, ``uniform-loss`` on the whole test split, ``private-acc`` on a test set of
    ``private-test-size`` drawn with the client's label distribution, ``num-examples`` = its
    size, ``num-parameters``).

A scores reply with an error, a wrong shape (classes or samples) or NaN/inf values is left out
of the consensus with a logged reason; the round goes on with the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from flwr.app import ConfigRecord, MessageType

from edgekd.config import ExperimentConfig, config_value
from edgekd.protocol import public
from edgekd.protocol.public import (
    PublicPool,
    private_config,
    public_npz_path,
    public_pool,
    public_pool_size,
)

__all__ = [
    "ACTION_EVALUATE",
    "ACTION_SCORES",
    "ACTION_TRAIN",
    "CONSENSUS",
    "MSG_EVALUATE",
    "MSG_SCORES",
    "MSG_TRAIN",
    "PUBLIC",
    "SCORES",
    "WITH_REPRESENTATIONS",
    "DigestSettings",
    "FedMDSetup",
    "PublicPool",
    "check_public_source",
    "private_config",
    "public_npz_path",
    "public_pool",
    "public_pool_size",
]

# the action names a ClientApp registers (``app.query(ACTION_SCORES)``), and the full types
ACTION_SCORES = "fedmd_scores"
ACTION_TRAIN = "fedmd"
ACTION_EVALUATE = "fedmd"
MSG_SCORES = f"{MessageType.QUERY}.{ACTION_SCORES}"
MSG_TRAIN = f"{MessageType.TRAIN}.{ACTION_TRAIN}"
MSG_EVALUATE = f"{MessageType.EVALUATE}.{ACTION_EVALUATE}"
PUBLIC = "fedmd-public"
CONSENSUS = "fedmd-consensus"
SCORES = "fedmd-scores"
WITH_REPRESENTATIONS = "with-representations"


_KINDS: dict[str, type] = {"bool": bool, "float": float, "int": int, "str": str}


def _require(config: Mapping[str, Any], key: str, kind: type) -> Any:
    """Read a key the server always sends; a missing key is a protocol error."""
    if key not in config:
        raise ValueError(f"FedMD message config lacks the key {key!r}")
    return config_value(config, key, None, kind)


def _read_fields(cls: type, config: Mapping[str, Any], skip: str = "") -> dict[str, Any]:
    """The fields of dataclass ``cls``, read from their kebab-case keys."""
    return {
        f.name: _require(config, f.name.replace("_", "-"), _KINDS[str(f.type)])
        for f in fields(cls)
        if f.name != skip
    }


def _kebab_fields(instance: Any) -> dict[str, Any]:
    """A dataclass instance's fields under their kebab-case keys."""
    return {f.name.replace("_", "-"): getattr(instance, f.name) for f in fields(instance)}


@dataclass(frozen=True)
class FedMDSetup:
    """The setup keys every FedMD message carries.

    Attributes
    ----------
    server_round : int
        The round the message belongs to (0 = initial evaluation).
    client_models : tuple[str, ...]
        Model names, assigned round-robin by partition id.
    representation_dim : int
        Size r of the representation layer.
    public_source : str
        ``"split"`` or ``"npz:<path>"``.
    public_fraction : float
        Stratified share of the training set that is public in ``"split"`` mode.
    pretrain_public_epochs, pretrain_private_epochs : int
        Transfer-learning schedule of the lazy first training.
    private_test_size : int
        Size of the private test set drawn with the node's label distribution.
    seed : int
        Base seed of model initialisation, batch orders and the private test draw.
    shared_init : bool
        All nodes start from the same initialisation (the FedAvg baseline).
    """

    server_round: int
    client_models: tuple[str, ...]
    representation_dim: int
    public_source: str
    public_fraction: float
    pretrain_public_epochs: int
    pretrain_private_epochs: int
    private_test_size: int
    seed: int
    shared_init: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FedMDSetup:
        """Parse the setup keys of a message's ``ConfigRecord``."""
        models = tuple(
            m.strip() for m in _require(config, "client-models", str).split(",") if m.strip()
        )
        if not models:
            raise ValueError("FedMD message config has an empty 'client-models'")
        return cls(client_models=models, **_read_fields(cls, config, skip="client_models"))

    def to_config(self, **extra: Any) -> ConfigRecord:
        """The message ``ConfigRecord`` of this setup, plus ``extra`` keys."""
        values = _kebab_fields(self)
        values["client-models"] = ",".join(self.client_models)
        return ConfigRecord({**values, **extra})

    def model_name(self, partition_id: int) -> str:
        """The architecture of partition ``partition_id`` (round-robin)."""
        return self.client_models[partition_id % len(self.client_models)]

    def private_config(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """The experiment config whose partitions are the private data (:func:`private_config`)."""
        return private_config(cfg, self.public_source, self.public_fraction)


@dataclass(frozen=True)
class DigestSettings:
    """The per-round training keys of a ``train.fedmd`` message."""

    digest_epochs: int
    digest_lr: float
    temperature: float
    logit_loss: str
    latent_weight: float
    revisit_epochs: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DigestSettings:
        """Parse the train keys of a message's ``ConfigRecord``."""
        return cls(**_read_fields(cls, config))

    def to_config(self) -> dict[str, Any]:
        """The train keys, to add to the setup's ``ConfigRecord``."""
        return _kebab_fields(self)


def check_public_source(source: str, fraction: float) -> None:
    """Raise ``ValueError`` naming the key when ``fedmd-public-source``/``-fraction`` is bad."""
    public.check_public_source(source, fraction, prefix="fedmd-")
