"""FedMD with latent-space distillation: heterogeneous client models, public alignment data.

Papers: Li and Wang, "FedMD: Heterogenous Federated Learning via Model Distillation", NeurIPS
2019 FL workshop, https://arxiv.org/abs/1910.03581; the latent extension follows the "Latent
Space Distillation" slides (KIT): a linear representation layer of size r before every client's
output layer lets heterogeneous perception modules share one latent space, and the clients
also distil that representation (MSE), which raised accuracy under non-IID data.

Each client keeps a model of its own architecture (``fedmd-client-models``, round-robin by
partition id), pre-trained by transfer learning on the public data and then on its private
data. Every round the server draws a seeded alignment subset of the public data; the clients
return class scores (and representations) on it; the server forms the consensus (mean,
optionally weighted by private-data size) and sends it back; the clients *digest* it (KL at a
temperature or MSE on the logits, plus MSE on the representation for LKD) and *revisit* their
private data. Weights never leave the clients. Methods (``fedmd-method``):

* ``CE``: no collaboration, every client only revisits its private data each round;
* ``KD``: FedMD, consensus of the logits only;
* ``LKD``: logits and representations (latent distillation);
* ``FedAvg``: reference where the architectures allow it (one model name for every client):
  the same transfer learning, then weights are averaged each round. Only this baseline sends
  weights.

Message format
--------------
All messages carry a ``config`` ConfigRecord with the setup keys ``server-round``,
``client-models``, ``representation-dim``, ``public-source``, ``public-fraction``,
``pretrain-public-epochs``, ``pretrain-private-epochs``, ``private-test-size``, ``seed`` and
``shared-init`` (true only for FedAvg). A node pre-trains its model lazily on its first FedMD
message and keeps it in ``context.state["fedmd-model"]``. Public data is never sent: it is
identified by row indices into the public pool both sides derive from the run config (the
stratified ``public-fraction`` core split of the training set for ``"split"``, or ``x_train``
followed by ``x_test`` of the npz for ``"npz:<path>"``).

``query.fedmd_scores``
    in: ``fedmd-public`` ArrayRecord ``{"indices": int64 (N,)}``; config adds
    ``with-representations`` (bool). out: ``fedmd-scores`` ArrayRecord
    ``{"logits": float32 (N, C), "representations": float32 (N, r) if requested}`` and
    ``metrics`` (``partition-id``, ``num-examples`` = private training size).
``train.fedmd``
    in: config adds ``digest-epochs``, ``digest-lr``, ``temperature``, ``logit-loss``,
    ``latent-weight``, ``revisit-epochs``; optional ``fedmd-consensus`` ArrayRecord
    ``{"indices", "logits" (N, C), "representations" (N, r) for LKD}`` (absent for CE: revisit
    only); FedAvg only: ``arrays`` (the global model, from round 2). out: ``metrics``
    (``partition-id``, ``num-examples``, ``digest-loss``, ``revisit-loss``); FedAvg only:
    ``arrays``.
``evaluate.fedmd``
    in: the setup config (FedAvg: ``arrays``). out: ``metrics`` (``partition-id``,
    ``uniform-acc``, ``uniform-loss`` on the whole test split, ``private-acc`` on a test set of
    ``private-test-size`` drawn with the client's label distribution, ``num-examples`` = its
    size, ``num-parameters``).

A scores reply with an error, a wrong shape (classes or samples) or NaN/inf values is left out
of the consensus with a logged reason; the round goes on with the others.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from edgekd.config import (
    ExperimentConfig,
    check_at_least,
    check_choice,
    check_positive,
    parse_section,
)
from edgekd.datasets import load_dataset
from edgekd.experiment import experiment_split, load_bundle
from edgekd.losses import consensus_logits
from edgekd.models import build_model, count_parameters, list_models
from edgekd.protocol import ARRAYS, CONFIG, METRICS
from edgekd.strategies.common import NodeMapper, RoundReports, error_reason
from edgekd.strategies.registry import StrategyContext, register_strategy

__all__ = [
    "CONSENSUS",
    "LOGIT_LOSSES",
    "METHODS",
    "MSG_EVALUATE",
    "MSG_SCORES",
    "MSG_TRAIN",
    "PUBLIC",
    "SCORES",
    "WEIGHTINGS",
    "ClientScores",
    "FedMD",
    "FedMDConfig",
    "check_scores",
    "consensus",
    "content_bytes",
]

METHODS = ("CE", "KD", "LKD", "FedAvg")
LOGIT_LOSSES = ("kl", "mse", "mae")
WEIGHTINGS = ("uniform", "num-examples")
MSG_SCORES = f"{MessageType.QUERY}.fedmd_scores"
MSG_TRAIN = f"{MessageType.TRAIN}.fedmd"
MSG_EVALUATE = f"{MessageType.EVALUATE}.fedmd"
PUBLIC = "fedmd-public"
CONSENSUS = "fedmd-consensus"
SCORES = "fedmd-scores"


@dataclass(frozen=True)
class FedMDConfig:
    """The ``fedmd-*`` keys of the run config (``fedmd-<field name in kebab-case>``).

    Attributes
    ----------
    method : {"CE", "KD", "LKD", "FedAvg"}
        What the clients share, see the module docstring. Default ``"LKD"``.
    client_models : str
        Comma-separated model names, assigned round-robin by partition id. Default
        ``"cnn,resnet8,vgg8"``.
    representation_dim : int
        r, the size of the representation layer before every output layer. Default 64.
    public_source : str
        ``"split"`` (a stratified ``public_fraction`` of the training set, taken out of the
        private partitions) or ``"npz:<path>"`` (another data set of the same image shape, e.g.
        ``npz:../shared/data/cifar100_head.npz``). Default ``"split"``.
    public_fraction : float
        Public share in ``"split"`` mode. Default 0.1.
    alignment_size : int
        Public images in each round's alignment subset (seeded by ``seed`` and round).
        Default 256.
    pretrain_public_epochs, pretrain_private_epochs : int
        Transfer learning before the first round (defaults 1 and 2).
    digest_epochs : int
        Epochs over the alignment subset towards the consensus per round. Default 1.
    digest_lr : float
        SGD learning rate of the digest (momentum and weight decay from the run config).
        Default 0.01.
    revisit_epochs : int
        Epochs on the private data per round (``lr``, ``lr-schedule`` of the run config).
        Default 1.
    temperature : float
        Temperature of the ``"kl"`` logit loss. Default 2.0.
    logit_loss : {"kl", "mse", "mae"}
        Loss between a client's logits and the consensus logits. Default ``"kl"``.
    latent_weight : float
        Weight of the representation MSE (LKD only). Default 1.0.
    private_test_size : int
        Size of each client's private test set, drawn from the test split with the client's
        label distribution. Default 200.
    consensus_weighting : {"uniform", "num-examples"}
        Plain mean, or weights proportional to the clients' private data sizes.
    """

    method: str = "LKD"
    client_models: str = "cnn,resnet8,vgg8"
    representation_dim: int = 64
    public_source: str = "split"
    public_fraction: float = 0.1
    alignment_size: int = 256
    pretrain_public_epochs: int = 1
    pretrain_private_epochs: int = 2
    digest_epochs: int = 1
    digest_lr: float = 0.01
    revisit_epochs: int = 1
    temperature: float = 2.0
    logit_loss: str = "kl"
    latent_weight: float = 1.0
    private_test_size: int = 200
    consensus_weighting: str = "uniform"

    def __post_init__(self) -> None:
        """Validate every value, naming the bad key."""
        check_choice("fedmd-method", self.method, METHODS)
        check_choice("fedmd-logit-loss", self.logit_loss, LOGIT_LOSSES)
        check_choice("fedmd-consensus-weighting", self.consensus_weighting, WEIGHTINGS)
        unknown = [m for m in self.models if m not in list_models()]
        if not self.models or unknown:
            raise ValueError(
                f"fedmd-client-models has unknown or no model names {unknown or ''} in "
                f"{self.client_models!r}; valid names: {', '.join(list_models())}"
            )
        if self.method == "FedAvg" and len(set(self.models)) != 1:
            raise ValueError(
                "fedmd-method 'FedAvg' needs one architecture for every client, got "
                f"fedmd-client-models={self.client_models!r}"
            )
        if self.public_source != "split" and not self.public_source.startswith("npz:"):
            raise ValueError(
                f"fedmd-public-source must be 'split' or 'npz:<path>', got {self.public_source!r}"
            )
        if self.public_source == "split" and not 0.0 < self.public_fraction < 1.0:
            raise ValueError(f"fedmd-public-fraction must be in (0, 1), got {self.public_fraction}")
        check_at_least(
            [
                ("fedmd-representation-dim", self.representation_dim, 1),
                ("fedmd-alignment-size", self.alignment_size, 1),
                ("fedmd-pretrain-public-epochs", self.pretrain_public_epochs, 0),
                ("fedmd-pretrain-private-epochs", self.pretrain_private_epochs, 0),
                ("fedmd-digest-epochs", self.digest_epochs, 0),
                ("fedmd-revisit-epochs", self.revisit_epochs, 0),
                ("fedmd-private-test-size", self.private_test_size, 1),
            ]
        )
        check_positive(
            [("fedmd-digest-lr", self.digest_lr), ("fedmd-temperature", self.temperature)]
        )
        if not self.latent_weight >= 0:
            raise ValueError(f"fedmd-latent-weight must be >= 0, got {self.latent_weight}")

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FedMDConfig:
        """Parse the ``fedmd-*`` keys; absent keys take the defaults."""
        return parse_section(cls, run_config, "fedmd-")

    @property
    def models(self) -> tuple[str, ...]:
        """The model names of ``client_models``."""
        return tuple(m.strip() for m in self.client_models.split(",") if m.strip())

    def model_name(self, partition_id: int) -> str:
        """The architecture of partition ``partition_id`` (round-robin)."""
        return self.models[partition_id % len(self.models)]

    @property
    def shares_scores(self) -> bool:
        """KD and LKD query scores and send a consensus."""
        return self.method in {"KD", "LKD"}

    def private_config(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """The experiment config whose partitions are the private data (see ``split``)."""
        if self.public_source == "split":
            return cfg.replace(core_fraction=self.public_fraction)
        return cfg


@dataclass(frozen=True)
class ClientScores:
    """One client's validated reply to ``query.fedmd_scores``."""

    partition_id: int
    logits: np.ndarray
    representations: np.ndarray | None
    num_examples: int


def consensus(scores: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """The FedMD consensus: the (weighted) mean over clients of their score arrays.

    Parameters
    ----------
    scores : Sequence[np.ndarray]
        ``K >= 1`` arrays of the same shape, e.g. ``(N, C)`` logits or ``(N, r)``
        representations.
    weights : Sequence[float], optional
        Non-negative client weights (normalised to sum to 1); None is the plain mean.

    Returns
    -------
    np.ndarray
        ``float32`` array of the common shape.
    """
    stacked = torch.from_numpy(np.stack([np.asarray(s, dtype=np.float32) for s in scores]))
    flat = stacked.reshape(stacked.shape[0], stacked.shape[1], -1)
    mean = consensus_logits(flat, weights)
    return mean.reshape(stacked.shape[1:]).numpy()


def _array(record: ArrayRecord, key: str) -> np.ndarray:
    if key not in record:
        raise ValueError(f"reply has no {key!r} array")
    return record[key].numpy()


def check_scores(
    reply: Message,
    partition_id: int,
    num_samples: int,
    num_classes: int,
    representation_dim: int | None,
) -> ClientScores:
    """Validate a scores reply; raise ``ValueError`` saying why it must be left out.

    Parameters
    ----------
    reply : Message
        The reply to ``query.fedmd_scores``.
    partition_id : int
        The sender's partition.
    num_samples, num_classes : int
        The expected logits shape ``(N, C)``.
    representation_dim : int or None
        The expected representation width r, or None when representations are not needed.
    """
    reason = error_reason(reply)
    if reason is not None:
        raise ValueError(reason)
    content = reply.content
    if SCORES not in content.array_records:
        raise ValueError(f"reply has no {SCORES!r} record")
    record = content.array_records[SCORES]
    logits = _array(record, "logits")
    if logits.shape != (num_samples, num_classes):
        raise ValueError(
            f"logits have shape {logits.shape}, expected ({num_samples}, {num_classes})"
        )
    if not np.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf values")
    representations = None
    if representation_dim is not None:
        representations = _array(record, "representations")
        if representations.shape != (num_samples, representation_dim):
            raise ValueError(
                f"representations have shape {representations.shape}, expected "
                f"({num_samples}, {representation_dim})"
            )
        if not np.isfinite(representations).all():
            raise ValueError("representations contain NaN or inf values")
    num_examples = 0
    if METRICS in content.metric_records:
        num_examples = int(content.metric_records[METRICS].get("num-examples", 0))
    return ClientScores(partition_id, logits, representations, num_examples)


def content_bytes(message: Message) -> int:
    """Payload bytes of a message: arrays, configs and metrics (0 for an error reply)."""
    if not message.has_content():
        return 0
    return sum(record.count_bytes() for record in message.content.values())


def _average_arrays(records: Sequence[ArrayRecord], weights: Sequence[float]) -> ArrayRecord:
    """Weighted mean of floating-point arrays; integer arrays (counters) from the first."""
    total = float(sum(weights))
    averaged: dict[str, Array] = {}
    for key in records[0]:
        arrays = [r[key].numpy() for r in records]
        if np.issubdtype(arrays[0].dtype, np.floating):
            mean = sum(w * a.astype(np.float64) for w, a in zip(weights, arrays, strict=True))
            averaged[key] = Array(np.asarray(mean / total, dtype=arrays[0].dtype))
        else:
            averaged[key] = Array(arrays[0])
    return ArrayRecord(averaged)


class FedMD(RoundReports, Strategy):
    """FedMD / latent FedMD over heterogeneous client models (no global model).

    Parameters
    ----------
    config : ExperimentConfig
        Shared run config: data set, Dirichlet/IID partitions (``num-partitions``), the
        clients' schedule (``batch-size``, ``lr``, ``lr-schedule``, ``momentum``,
        ``weight-decay``, ``augment``) and ``seed``.
    fedmd : FedMDConfig
        The ``fedmd-*`` settings.

    Notes
    -----
    Per round, :meth:`round_report` holds ``uniform-acc-mean``/``-std``,
    ``private-acc-mean``/``-std``, per-client lists in partition order,
    ``bytes-sent``/``bytes-received``, ``num-in-consensus`` and ``left-out`` (partition ->
    reason); :meth:`run_files` gives ``fedmd-setup.json``.
    The clients must implement the three actions of the module docstring (edgekd's ClientApp
    does, see :mod:`edgekd.clients.fedmd`). Round 0 is the evaluation after the clients'
    transfer learning. The ServerApp's central evaluation is skipped: there is no global model
    (except for the FedAvg baseline, whose global model the clients evaluate).
    """

    accuracy_keys = ("uniform-acc-mean", "private-acc-mean")
    central_evaluation = False

    def __init__(self, config: ExperimentConfig, fedmd: FedMDConfig) -> None:
        self.config = config
        self.fedmd = fedmd
        bundle = load_bundle(config)
        self.num_classes = bundle.num_classes
        self.pool_size = self._public_pool_size()
        if fedmd.alignment_size > self.pool_size:
            raise ValueError(
                f"fedmd-alignment-size ({fedmd.alignment_size}) exceeds the public pool "
                f"({self.pool_size} images from {fedmd.public_source!r})"
            )
        split = experiment_split(fedmd.private_config(config))
        self.partition_sizes = [len(p) for p in split.partitions]
        self.histograms = split.histograms(bundle.y_train, bundle.num_classes)
        self.model_parameters: dict[int, int] = {}
        self.model_bytes: dict[int, int] = {}
        for pid in range(config.num_partitions):
            model = build_model(
                fedmd.model_name(pid),
                bundle.num_classes,
                bundle.in_channels,
                representation_dim=fedmd.representation_dim,
            )
            self.model_parameters[pid] = count_parameters(model)
            self.model_bytes[pid] = ArrayRecord(model.state_dict()).count_bytes()
        self.nodes = NodeMapper(config.num_partitions, "fedmd")
        self.global_arrays: ArrayRecord | None = None
        self._consensus: ArrayRecord | None = None
        self._bytes = {"sent": 0, "received": 0}

    # ------------------------------------------------------------------ helpers
    def _public_pool_size(self) -> int:
        source = self.fedmd.public_source
        if source == "split":
            return len(experiment_split(self.fedmd.private_config(self.config)).core)
        path = Path(source.removeprefix("npz:")).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"fedmd-public-source {source!r}: file {path} not found")
        aux = load_dataset("npz", npz_path=path)
        return len(aux.y_train) + len(aux.y_test)

    def summary(self) -> None:
        """Log the configuration."""
        fm = self.fedmd
        log(
            INFO,
            "\t├── FedMD method %s, r=%s, models %s",
            fm.method,
            fm.representation_dim,
            fm.models,
        )
        log(
            INFO,
            "\t├── Public %s (%s images), alignment %s per round, weighting %s",
            fm.public_source,
            self.pool_size,
            fm.alignment_size,
            fm.consensus_weighting,
        )
        log(
            INFO,
            "\t└── Digest %s epoch(s) lr %s (%s, t=%s, latent weight %s); revisit %s epoch(s)",
            fm.digest_epochs,
            fm.digest_lr,
            fm.logit_loss,
            fm.temperature,
            fm.latent_weight if fm.method == "LKD" else 0,
            fm.revisit_epochs,
        )

    def setup_record(self) -> dict[str, Any]:
        """What ``fedmd-setup.json`` holds: models, sizes and class histograms per client."""
        return {
            "method": self.fedmd.method,
            "fedmd": {f.name: getattr(self.fedmd, f.name) for f in fields(self.fedmd)},
            "public_pool_size": self.pool_size,
            "clients": [
                {
                    "partition_id": pid,
                    "model": self.fedmd.model_name(pid),
                    "num_parameters": self.model_parameters[pid],
                    "model_bytes": self.model_bytes[pid],
                    "num_examples": self.partition_sizes[pid],
                    "histogram": self.histograms[pid].tolist(),
                }
                for pid in range(self.config.num_partitions)
            ],
        }

    @property
    def node_of_partition(self) -> dict[int, int]:
        """Partition id -> node id of the clients mapped so far."""
        return self.nodes.node_of_partition

    def run_files(self) -> Mapping[str, Any]:
        """``fedmd-setup.json``: the clients' models, sizes and class histograms."""
        return {"fedmd-setup.json": self.setup_record()}

    def message_config(self, server_round: int, **extra: Any) -> ConfigRecord:
        """The setup keys every FedMD message carries, plus ``extra``."""
        fm = self.fedmd
        values: dict[str, Any] = {
            "server-round": server_round,
            "client-models": fm.client_models,
            "representation-dim": fm.representation_dim,
            "public-source": fm.public_source,
            "public-fraction": fm.public_fraction,
            "pretrain-public-epochs": fm.pretrain_public_epochs,
            "pretrain-private-epochs": fm.pretrain_private_epochs,
            "private-test-size": fm.private_test_size,
            "seed": self.config.seed,
            "shared-init": fm.method == "FedAvg",
        }
        values.update(extra)
        return ConfigRecord(values)

    def _messages(
        self, grid: Grid, server_round: int, message_type: str, content: RecordDict
    ) -> list[Message]:
        return self.nodes.messages(content, message_type, str(server_round))

    def _exchange(self, grid: Grid, messages: list[Message], timeout: float) -> list[Message]:
        """send_and_receive, counting the payload bytes of both directions."""
        self._bytes["sent"] += sum(content_bytes(m) for m in messages)
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        self._bytes["received"] += sum(content_bytes(r) for r in replies)
        return replies

    def _failed(self, what: str, server_round: int, reply: Message) -> str | None:
        """Log and return the reason when ``reply`` is an error, else None."""
        reason = error_reason(reply)
        if reason is not None:
            log(
                WARNING,
                "fedmd: round %s: %s of partition %s failed: %s",
                server_round,
                what,
                self.nodes.partition_of(reply),
                reason,
            )
        return reason

    # ------------------------------------------------------------------ alignment / consensus
    def alignment_indices(self, server_round: int) -> np.ndarray:
        """This round's alignment subset: sorted public indices, seeded by seed and round."""
        rng = np.random.default_rng([self.config.seed, server_round, 0xFED])
        chosen = rng.choice(self.pool_size, size=self.fedmd.alignment_size, replace=False)
        return np.sort(chosen).astype(np.int64)

    def configure_query(self, server_round: int, grid: Grid) -> list[Message]:
        """``query.fedmd_scores`` to every client, with this round's alignment indices."""
        indices = self.alignment_indices(server_round)
        content = RecordDict(
            {
                PUBLIC: ArrayRecord({"indices": Array(indices)}),
                CONFIG: self.message_config(
                    server_round, **{"with-representations": self.fedmd.method == "LKD"}
                ),
            }
        )
        return self._messages(grid, server_round, MSG_SCORES, content)

    def aggregate_query(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, dict[int, str]]:
        """Validate the scores, leave bad clients out and form the consensus.

        Returns the consensus record (None when no client is left) and the reasons of the
        clients left out, by partition id.
        """
        indices = self.alignment_indices(server_round)
        r_dim = self.fedmd.representation_dim if self.fedmd.method == "LKD" else None
        accepted: list[ClientScores] = []
        left_out: dict[int, str] = {}
        for reply in replies:
            pid = self.nodes.partition_of(reply)
            try:
                accepted.append(check_scores(reply, pid, len(indices), self.num_classes, r_dim))
            except ValueError as err:
                left_out[pid] = str(err)
                log(
                    WARNING,
                    "fedmd: round %s: partition %s left out of the consensus: %s",
                    server_round,
                    pid,
                    err,
                )
        answered = {s.partition_id for s in accepted} | set(left_out)
        for pid in sorted(set(self.node_of_partition) - answered):
            left_out[pid] = "no reply before the timeout"
            log(WARNING, "fedmd: round %s: partition %s did not reply", server_round, pid)
        if not accepted:
            log(WARNING, "fedmd: round %s: no valid scores, no consensus this round", server_round)
            return None, left_out
        weights = None
        if self.fedmd.consensus_weighting == "num-examples":
            weights = [float(s.num_examples) for s in accepted]
            if sum(weights) <= 0:
                weights = None
        arrays = {
            "indices": Array(indices),
            "logits": Array(consensus([s.logits for s in accepted], weights)),
        }
        if r_dim is not None:
            reps = [s.representations for s in accepted if s.representations is not None]
            arrays["representations"] = Array(consensus(reps, weights))
        return ArrayRecord(arrays), left_out

    # ------------------------------------------------------------------ Strategy API
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """``train.fedmd`` to every client: the consensus (if any) to digest, then revisit."""
        fm = self.fedmd
        train_config = self.message_config(
            server_round,
            **{
                "digest-epochs": fm.digest_epochs,
                "digest-lr": fm.digest_lr,
                "temperature": fm.temperature,
                "logit-loss": fm.logit_loss,
                "latent-weight": fm.latent_weight if fm.method == "LKD" else 0.0,
                "revisit-epochs": fm.revisit_epochs,
            },
        )
        content = RecordDict({CONFIG: train_config})
        if self._consensus is not None:
            content[CONSENSUS] = self._consensus
        if fm.method == "FedAvg" and len(arrays) > 0:
            content[ARRAYS] = arrays
        return self._messages(grid, server_round, MSG_TRAIN, content)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Mean digest/revisit losses; for FedAvg also the weighted mean of the weights."""
        ok: list[Message] = []
        failures: dict[int, str] = {}
        for reply in replies:
            reason = self._failed("train", server_round, reply)
            if reason is None:
                ok.append(reply)
            else:
                failures[self.nodes.partition_of(reply)] = reason
        metrics: dict[str, Any] = {"num-trained": len(ok)}
        if failures:
            metrics["train-failures"] = failures
        for key in ("digest-loss", "revisit-loss"):
            values = [float(r.content[METRICS][key]) for r in ok]
            finite = [v for v in values if np.isfinite(v)]
            if finite:
                metrics[f"{key}-mean"] = float(np.mean(finite))
        arrays = None
        if self.fedmd.method == "FedAvg":
            with_arrays = [r for r in ok if ARRAYS in r.content.array_records]
            if with_arrays:
                weights = [float(r.content[METRICS]["num-examples"]) for r in with_arrays]
                arrays = _average_arrays([r.content[ARRAYS] for r in with_arrays], weights)
        self.report(server_round, metrics)
        return arrays, MetricRecord(
            {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """``evaluate.fedmd`` to every client (FedAvg: with the global model)."""
        content = RecordDict({CONFIG: self.message_config(server_round)})
        if self.fedmd.method == "FedAvg" and len(arrays) > 0:
            content[ARRAYS] = arrays
        return self._messages(grid, server_round, MSG_EVALUATE, content)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Mean and spread over clients of the uniform and private test accuracies."""
        per_client: dict[int, Mapping[str, Any]] = {}
        failures: dict[int, str] = {}
        for reply in replies:
            reason = self._failed("evaluate", server_round, reply)
            if reason is None:
                per_client[self.nodes.partition_of(reply)] = reply.content[METRICS]
            else:
                failures[self.nodes.partition_of(reply)] = reason
        metrics: dict[str, Any] = {"num-evaluated": len(per_client)}
        if failures:
            metrics["evaluate-failures"] = failures
        if per_client:
            order = sorted(per_client)
            metrics["partitions"] = order
            for key in ("uniform-acc", "private-acc"):
                values = np.array([float(per_client[p][key]) for p in order])
                metrics[f"{key}-mean"] = float(values.mean())
                metrics[f"{key}-std"] = float(values.std())
                metrics[f"{key}-min"] = float(values.min())
                metrics[f"{key}-max"] = float(values.max())
                metrics[key] = values.tolist()
                by_model: dict[str, list[float]] = {}
                for pid, value in zip(order, values, strict=True):
                    by_model.setdefault(self.fedmd.model_name(pid), []).append(float(value))
                metrics[f"{key}-by-model"] = {m: float(np.mean(v)) for m, v in by_model.items()}
        self.report(server_round, metrics)
        if not per_client:
            return None
        return MetricRecord({k: v for k, v in metrics.items() if isinstance(v, int | float)})

    # ------------------------------------------------------------------ round loop
    def _evaluate_round(self, server_round: int, grid: Grid, timeout: float) -> MetricRecord | None:
        arrays = self.global_arrays if self.global_arrays is not None else ArrayRecord()
        messages = list(self.configure_evaluate(server_round, arrays, ConfigRecord(), grid))
        return self.aggregate_evaluate(server_round, self._exchange(grid, messages, timeout))

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Any = None,
    ) -> Result:
        """Transfer learning (round 0), then per round: scores, consensus, digest, revisit.

        ``initial_arrays``, ``train_config`` and ``evaluate_config`` are ignored: the clients
        own their models and schedules come from the run config. ``evaluate_fn`` is called at
        the end of every round (round 0 included) with the global arrays (empty but for the
        FedAvg baseline): it is the server's per-round hook (there is no central evaluation,
        see ``central_evaluation``).
        """
        started = time.monotonic()
        log(INFO, "fedmd: starting %s rounds of %s", num_rounds, self.fedmd.method)
        self.summary()
        self.nodes.map(grid, timeout)
        result = Result()
        for server_round in range(num_rounds + 1):
            self._bytes = {"sent": 0, "received": 0}
            round_metrics: dict[str, Any] = {}
            if server_round > 0:
                round_metrics = self._train_round(server_round, grid, timeout, result)
            evaluation = self._evaluate_round(server_round, grid, timeout)
            if evaluation is not None:
                result.evaluate_metrics_clientapp[server_round] = evaluation
            elapsed = time.monotonic() - started
            round_metrics.update(
                {
                    "bytes-sent": self._bytes["sent"],
                    "bytes-received": self._bytes["received"],
                    "elapsed-s": elapsed,
                }
            )
            self.report(server_round, round_metrics)
            self._log_round(server_round, num_rounds, evaluation, elapsed)
            if evaluate_fn is not None:
                arrays = self.global_arrays if self.global_arrays is not None else ArrayRecord()
                evaluate_fn(server_round, arrays)
        return result

    def _train_round(
        self, server_round: int, grid: Grid, timeout: float, result: Result
    ) -> dict[str, Any]:
        """Scores and consensus (KD, LKD), then digest and revisit; the round's metrics."""
        round_metrics: dict[str, Any] = {}
        self._consensus = None
        if self.fedmd.shares_scores:
            replies = self._exchange(grid, self.configure_query(server_round, grid), timeout)
            self._consensus, left_out = self.aggregate_query(server_round, replies)
            round_metrics["left-out"] = left_out
            round_metrics["num-in-consensus"] = len(self.node_of_partition) - len(left_out)
        arrays = self.global_arrays if self.global_arrays is not None else ArrayRecord()
        messages = list(self.configure_train(server_round, arrays, ConfigRecord(), grid))
        new_arrays, train_metrics = self.aggregate_train(
            server_round, self._exchange(grid, messages, timeout)
        )
        if new_arrays is not None:
            self.global_arrays = new_arrays
            result.arrays = new_arrays
        if train_metrics is not None:
            result.train_metrics_clientapp[server_round] = train_metrics
        return round_metrics

    def _log_round(
        self, server_round: int, num_rounds: int, evaluation: MetricRecord | None, elapsed: float
    ) -> None:
        row = evaluation if evaluation is not None else MetricRecord()
        log(
            INFO,
            "fedmd: round %s/%s  uniform-acc %.4f ± %.4f  private-acc %.4f ± %.4f  "
            "bytes sent %s received %s  (%.1fs)",
            server_round,
            num_rounds,
            row.get("uniform-acc-mean", float("nan")),
            row.get("uniform-acc-std", float("nan")),
            row.get("private-acc-mean", float("nan")),
            row.get("private-acc-std", float("nan")),
            self._bytes["sent"],
            self._bytes["received"],
            elapsed,
        )


@register_strategy("fedmd", sections={"fedmd-": FedMDConfig})
def build_fedmd(context: StrategyContext) -> FedMD:
    """Factory for ``strategy = "fedmd"`` (keys ``fedmd-*``)."""
    return FedMD(
        context.config,
        FedMDConfig.from_run_config(context.run_config),
    )
