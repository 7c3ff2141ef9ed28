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
:func:`private_config`.

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
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, MessageType

from edgekd.config import ExperimentConfig, config_value
from edgekd.datasets import default_padding, load_dataset, to_tensors
from edgekd.experiment import TensorData, core_data, experiment_split, load_bundle

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
    if source != "split" and not source.startswith("npz:"):
        raise ValueError(f"fedmd-public-source must be 'split' or 'npz:<path>', got {source!r}")
    if source == "split" and not 0.0 < fraction < 1.0:
        raise ValueError(f"fedmd-public-fraction must be in (0, 1), got {fraction}")


def private_config(cfg: ExperimentConfig, source: str, fraction: float) -> ExperimentConfig:
    """The experiment config whose partitions are the clients' private data.

    In ``"split"`` mode the public set is the stratified core split of size ``fraction`` and
    the partitions are drawn from the rest; with ``"npz:<path>"`` the partitions are those of
    ``cfg``.
    """
    if source == "split":
        return cfg.replace(core_fraction=fraction)
    return cfg


def public_npz_path(source: str) -> Path:
    """The file of an ``"npz:<path>"`` public source (relative to the working directory)."""
    path = Path(source.removeprefix("npz:")).expanduser()
    if not path.is_absolute():
        path = path.resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"FedMD public data {source!r}: file {path} not found (relative paths are "
            "resolved against the working directory; give an absolute path under flwr run)"
        )
    return path


@dataclass(frozen=True)
class PublicPool:
    """The public data: normalised images, their own labels and number of classes."""

    data: TensorData
    num_classes: int


def public_pool_size(cfg: ExperimentConfig, source: str, fraction: float) -> int:
    """Number of rows of the public pool (what the indices of the protocol run over)."""
    check_public_source(source, fraction)
    if source == "split":
        return len(experiment_split(private_config(cfg, source, fraction)).core)
    aux = load_dataset("npz", npz_path=public_npz_path(source))
    return len(aux.y_train) + len(aux.y_test)


@lru_cache(maxsize=8)
def public_pool(cfg: ExperimentConfig, source: str, fraction: float) -> PublicPool:
    """Load the public pool; index ``i`` of the protocol is row ``i`` of ``pool.data``.

    Parameters
    ----------
    cfg : ExperimentConfig
        The run's config (the private dataset).
    source : str
        ``"split"``: the stratified ``fraction`` of the private training set (the core split);
        ``"npz:<path>"``: ``x_train`` followed by ``x_test`` of another npz data set of the same
        image shape, e.g. CIFAR-100 images as auxiliary data for CIFAR-10 clients.
    fraction : float
        Public share in ``"split"`` mode, in ``(0, 1)``.

    Returns
    -------
    PublicPool
        Images normalised with the private data set's statistics, and their labels.
    """
    check_public_source(source, fraction)
    if source == "split":
        public_cfg = private_config(cfg, source, fraction)
        return PublicPool(core_data(public_cfg), load_bundle(cfg).num_classes)
    private = load_bundle(cfg)
    aux = load_dataset("npz", npz_path=public_npz_path(source))
    if aux.x_train.shape[1:] != private.x_train.shape[1:]:
        raise ValueError(
            f"FedMD public data {source!r} has images of shape {aux.x_train.shape[1:]}, "
            f"but the private data set has {private.x_train.shape[1:]}"
        )
    x = np.concatenate([aux.x_train, aux.x_test])
    y = np.concatenate([aux.y_train, aux.y_test])
    xt, yt = to_tensors(x, y, private.mean, private.std, normalize=cfg.normalize)
    return PublicPool(TensorData(xt, yt, default_padding(private.image_size)), aux.num_classes)
