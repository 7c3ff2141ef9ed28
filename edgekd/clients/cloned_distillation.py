"""Client handlers of cloned distillation (sync and async) and of Flower's FedAvg/FedProx.

``train`` trains the received model (or ``ensemble-size`` models, one per batch order) on this
node's data and replies with the trained arrays; ``evaluate`` scores the received model on
this node's data. The handlers are thin: they parse the run config once, pick this node's
partition (:mod:`edgekd.clients.node`) and call the pure functions of :mod:`edgekd.training`.
The message format is in :mod:`edgekd.protocol.cloned_distillation`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from logging import INFO
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from edgekd.cache import TrainingCache, run_description, state_digest
from edgekd.clients.node import NODE_DATA_KEY, model_for_arrays, node_data, node_experiment
from edgekd.config import ExperimentConfig, SimulatedEdges, config_value
from edgekd.experiment import TensorData
from edgekd.protocol import cloned_distillation as proto
from edgekd.protocol.common import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, PARTITION_ID
from edgekd.seeds import derive_seed
from edgekd.training import evaluate as evaluate_model
from edgekd.training import set_torch_threads, train_supervised

__all__ = ["LocalTrainConfig", "evaluate", "register", "train", "train_local"]

_SCHEDULE = ("epochs", "batch_size", "lr", "lr_schedule", "momentum", "weight_decay", "proximal_mu")


@dataclass(frozen=True)
class LocalTrainConfig:
    """Per-message training settings: the message's config, falling back to the run config."""

    epochs: int
    batch_size: int
    lr: float
    lr_schedule: str
    momentum: float
    weight_decay: float
    proximal_mu: float
    seed: int
    ensemble_size: int
    init: str
    init_seed: int

    @classmethod
    def from_message(
        cls, config: Mapping[str, Any], cfg: ExperimentConfig, partition_id: int
    ) -> LocalTrainConfig:
        """Merge a message's ``ConfigRecord`` over the run config (see :mod:`edgekd.protocol`)."""
        server_round = config_value(config, "server-round", 0, int)
        default_seed = derive_seed(
            "client-train", cfg.seed, server_round=server_round, partition=partition_id
        )
        local = cls(
            epochs=config_value(config, "local-epochs", cfg.local_epochs, int),
            batch_size=config_value(config, "batch-size", cfg.batch_size, int),
            lr=config_value(config, "lr", cfg.lr, float),
            lr_schedule=config_value(config, "lr-schedule", cfg.lr_schedule, str),
            momentum=config_value(config, "momentum", cfg.momentum, float),
            weight_decay=config_value(config, "weight-decay", cfg.weight_decay, float),
            proximal_mu=config_value(config, "proximal-mu", 0.0, float),
            seed=config_value(config, "seed", default_seed, int),
            ensemble_size=config_value(config, proto.ENSEMBLE_SIZE, 1, int),
            init=config_value(config, proto.INIT, "received", str),
            init_seed=config_value(config, proto.INIT_SEED, default_seed, int),
        )
        local.check()
        return local

    def check(self) -> None:
        """Raise ``ValueError`` naming the key of the first bad value."""
        if self.ensemble_size < 1:
            raise ValueError(f"ensemble-size must be >= 1, got {self.ensemble_size}")
        if self.lr_schedule not in {"constant", "cosine"}:
            raise ValueError(
                f"lr-schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}"
            )
        if self.init not in {"received", "scratch"}:
            raise ValueError(f"init must be 'received' or 'scratch', got {self.init!r}")
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(
                f"bad local schedule: local-epochs={self.epochs}, "
                f"batch-size={self.batch_size}, lr={self.lr}"
            )


def train_local(
    arrays: ArrayRecord,
    data: TensorData,
    local: LocalTrainConfig,
    cfg: ExperimentConfig,
    *,
    label_noise: str = "none",
    label_noise_p: float = 0.0,
    cache_context: Mapping[str, Any] | None = None,
) -> tuple[list[ArrayRecord], MetricRecord]:
    """Train ``local.ensemble_size`` models (one per batch order) from ``arrays``.

    Returns the trained models' arrays and the mean train loss/accuracy over the members.
    ``label_noise``/``label_noise_p`` corrupt the training batches (simulated noisy edge).
    With ``cache-dir`` set, each member's result is stored under a key of everything that
    decides it (received weights, schedule, seeds, data, plus ``cache_context``: which
    partition or which node's own file) and loaded, bit for bit, when a run repeats it.
    """
    state = arrays.to_torch_state_dict()
    cache = TrainingCache(cfg.cache_dir)
    base = {
        **(cache_context or {}),
        "config": run_description(cfg),
        "local": dataclasses.asdict(local),
        "received": state_digest(state) if cache.enabled else "",
        "noise": [label_noise, label_noise_p],
    }
    members: list[ArrayRecord] = []
    losses, accs = [], []
    edge = (cache_context or {}).get("partition", "?")
    for member in range(local.ensemble_size):
        label = f"edge {edge} training (member {member + 1}/{local.ensemble_size})"
        stored = cache.get_or_compute(
            "edge",
            {**base, "member": member},
            lambda member=member, label=label: _train_member(
                state, data, local, cfg, member, (label_noise, label_noise_p), label
            ),
        )
        members.append(ArrayRecord(stored["state"]))
        losses.append(float(stored["loss"]))
        accs.append(float(stored["accuracy"]))
    metrics = MetricRecord(
        {
            NUM_EXAMPLES: len(data),
            proto.TRAIN_LOSS: sum(losses) / len(losses),
            proto.TRAIN_ACC: sum(accs) / len(accs),
            proto.ENSEMBLE_SIZE: local.ensemble_size,
        }
    )
    return members, metrics


def _train_member(
    state: Mapping[str, torch.Tensor],
    data: TensorData,
    local: LocalTrainConfig,
    cfg: ExperimentConfig,
    member: int,
    noise: tuple[str, float],
    progress: str,
) -> dict[str, Any]:
    """Train ensemble member ``member`` (label ``noise``: mode, probability; ``progress``:
    the stage's name); return its state dict, loss and accuracy."""
    if local.init == "scratch":
        model = model_for_arrays(cfg, state, data, seed=local.init_seed + member)
    else:
        model = model_for_arrays(cfg, state, data)
        model.load_state_dict(state, strict=True)
    global_params = (
        [p.detach().clone() for p in model.parameters()] if local.proximal_mu > 0 else None
    )
    # the fields of LocalTrainConfig named like train_supervised's arguments
    schedule = {name: getattr(local, name) for name in _SCHEDULE}
    augmentation = {"augment": cfg.augment, "padding": data.padding, "flip": data.x.shape[-1] >= 16}
    result = train_supervised(
        model,
        data.x,
        data.y,
        seed=derive_seed("member", local.seed, member=member),
        global_params=global_params,
        label_noise=noise[0],
        label_noise_p=noise[1],
        progress=progress,
        **schedule,
        **augmentation,
    )
    return {"state": model.state_dict(), "loss": result.loss, "accuracy": result.accuracy}


def train(msg: Message, context: Context) -> Message:
    """Train the received model on this node's partition and reply with the trained arrays."""
    cfg, partition_id = node_experiment(context)
    set_torch_threads(cfg.client_threads)
    config = msg.content.config_records.get(CONFIG, ConfigRecord())
    local = LocalTrainConfig.from_message(config, cfg, partition_id)
    data = node_data(context, cfg, partition_id)
    simulated = SimulatedEdges.from_run_config(context.run_config)
    noisy = partition_id in simulated.noisy
    members, metrics = train_local(
        msg.content.array_records[ARRAYS],
        data,
        local,
        cfg,
        label_noise=simulated.noise_mode if noisy else "none",
        label_noise_p=simulated.noise_p if noisy else 0.0,
        cache_context={
            "partition": partition_id,
            "node-data": str(context.node_config.get(NODE_DATA_KEY, "")),
        },
    )
    metrics[PARTITION_ID] = partition_id
    metrics[proto.SIMULATED_NOISY] = int(noisy)
    delay = simulated.delay(partition_id, local.seed)
    if delay > 0:
        log(INFO, "partition %s: simulated lag, replying in %.1fs", partition_id, delay)
        time.sleep(delay)
    metrics[proto.SIMULATED_DELAY_S] = delay
    log(
        INFO,
        "partition %s: trained %s model(s) on %s examples, loss %.4f, acc %.4f",
        partition_id,
        len(members),
        len(data),
        metrics[proto.TRAIN_LOSS],
        metrics[proto.TRAIN_ACC],
    )
    content = RecordDict({proto.member_key(i): arr for i, arr in enumerate(members)})
    content[METRICS] = metrics
    return Message(content=content, reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received model on this node's own data."""
    cfg, partition_id = node_experiment(context)
    set_torch_threads(cfg.client_threads)
    data = node_data(context, cfg, partition_id)
    state = msg.content.array_records[ARRAYS].to_torch_state_dict()
    model = model_for_arrays(cfg, state, data)
    model.load_state_dict(state, strict=True)
    result = evaluate_model(model, data.x, data.y)
    metrics = MetricRecord(
        {
            NUM_EXAMPLES: len(data),
            proto.EVAL_LOSS: result.loss,
            proto.EVAL_ACC: result.accuracy,
            PARTITION_ID: partition_id,
        }
    )
    return Message(content=RecordDict({METRICS: metrics}), reply_to=msg)


def register(app: ClientApp) -> None:
    """Register the default ``train`` and ``evaluate`` handlers on ``app``."""
    app.train()(train)
    app.evaluate()(evaluate)
