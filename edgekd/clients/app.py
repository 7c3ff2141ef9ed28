"""The edgekd ClientApp: one edge device / federated client.

The handlers are thin: they parse the run config once, pick this node's partition from
``context.node_config["partition-id"]`` and call the pure functions of :mod:`edgekd.training`.
The message format is documented in :mod:`edgekd.protocol`. The same app runs under the
simulation engine and on a real ``flower-supernode``.

A real device whose data is its own sets ``npz-path`` in its node config
(``--node-config "partition-id=3 num-partitions=9 npz-path='/data/mine.npz'"``): it then trains
on the whole train split of that file, normalised with that file's own statistics, and builds
its model from the received arrays (classes from the output layer, channels from its images),
so the run's data set does not have to exist on the device. Data that is missing or malformed
is logged as an ERROR naming the partition, the file and the problem, and the message is
answered with an error reply: the server leaves the node out and the run goes on.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from logging import ERROR, INFO
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from edgekd.cache import TrainingCache, run_description, state_digest
from edgekd.config import ExperimentConfig, SimulatedEdges, config_value
from edgekd.datasets import default_padding, load_dataset, to_tensors
from edgekd.experiment import TensorData, client_data
from edgekd.models import EdgeKDModel, build_model
from edgekd.protocol import ARRAYS, CONFIG, METRICS, WHOAMI, member_key
from edgekd.training import evaluate as evaluate_model
from edgekd.training import set_torch_threads, train_supervised

__all__ = [
    "NODE_DATA_KEY",
    "LocalTrainConfig",
    "NodeDataError",
    "app",
    "model_for_arrays",
    "node_data",
    "node_partition",
    "train_local",
]

NODE_DATA_KEY = "npz-path"

app = ClientApp()


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
        default_seed = cfg.seed * 1_000_003 + server_round * 1_009 + partition_id
        local = cls(
            epochs=config_value(config, "local-epochs", cfg.local_epochs, int),
            batch_size=config_value(config, "batch-size", cfg.batch_size, int),
            lr=config_value(config, "lr", cfg.lr, float),
            lr_schedule=config_value(config, "lr-schedule", cfg.lr_schedule, str),
            momentum=config_value(config, "momentum", cfg.momentum, float),
            weight_decay=config_value(config, "weight-decay", cfg.weight_decay, float),
            proximal_mu=config_value(config, "proximal-mu", 0.0, float),
            seed=config_value(config, "seed", default_seed, int),
            ensemble_size=config_value(config, "ensemble-size", 1, int),
            init=config_value(config, "init", "received", str),
            init_seed=config_value(config, "init-seed", default_seed, int),
        )
        if local.ensemble_size < 1:
            raise ValueError(f"ensemble-size must be >= 1, got {local.ensemble_size}")
        if local.lr_schedule not in {"constant", "cosine"}:
            raise ValueError(
                f"lr-schedule must be 'constant' or 'cosine', got {local.lr_schedule!r}"
            )
        if local.init not in {"received", "scratch"}:
            raise ValueError(f"init must be 'received' or 'scratch', got {local.init!r}")
        if local.epochs < 0 or local.batch_size < 1 or local.lr <= 0:
            raise ValueError(
                f"bad local schedule: local-epochs={local.epochs}, "
                f"batch-size={local.batch_size}, lr={local.lr}"
            )
        return local


def node_partition(context: Context, cfg: ExperimentConfig) -> int:
    """This node's ``partition-id``, checked against ``num-partitions``."""
    node_config = context.node_config
    if "partition-id" not in node_config:
        raise ValueError(
            "this node has no 'partition-id' in its node config; start the SuperNode with "
            '--node-config "partition-id=<i> num-partitions=<n>"'
        )
    partition_id = int(node_config["partition-id"])
    num_partitions = int(node_config.get("num-partitions", cfg.num_partitions))
    if num_partitions != cfg.num_partitions:
        raise ValueError(
            f"node num-partitions={num_partitions} differs from run config "
            f"num-partitions={cfg.num_partitions}; give the simulation as many SuperNodes "
            "as partitions (num-supernodes) or set num-partitions to match"
        )
    return partition_id


class NodeDataError(RuntimeError):
    """This node's own data (node-config ``npz-path``) is missing or malformed."""


def _own_data(path: str) -> TensorData:
    bundle = load_dataset("npz", npz_path=path)
    x, y = to_tensors(bundle.x_train, bundle.y_train, bundle.mean, bundle.std)
    return TensorData(x, y, default_padding(bundle.image_size))


def node_data(context: Context, cfg: ExperimentConfig, partition_id: int) -> TensorData:
    """This node's training data: its own npz (node config) or its partition of the run's data.

    Raises
    ------
    NodeDataError
        When the node config names an npz that is missing or malformed; the reason is also
        logged at ERROR level on the node.
    """
    path = str(context.node_config.get(NODE_DATA_KEY, "")).strip()
    if not path:
        return client_data(cfg, partition_id)
    try:
        return _own_data(path)
    except (OSError, ValueError) as exc:
        message = (
            f"partition {partition_id}: cannot load this node's data "
            f"(node-config {NODE_DATA_KEY}={path}): {exc}"
        )
        log(ERROR, message)
        raise NodeDataError(message) from exc


def model_for_arrays(
    cfg: ExperimentConfig, state: Mapping[str, Any], data: TensorData, *, seed: int | None = None
) -> EdgeKDModel:
    """Build ``cfg.model`` shaped like the received arrays (classes) and the data (channels).

    ``seed`` gives a reproducible fresh initialisation (edges that start from scratch).
    Labels outside the received model's classes are an error that names them.
    """
    weight = state.get("classifier.weight")
    if weight is None or len(weight.shape) != 2:
        raise ValueError(f"received arrays have no 2-D 'classifier.weight' for model {cfg.model!r}")
    num_classes = int(weight.shape[0])
    if len(data) and int(data.y.max()) >= num_classes:
        raise ValueError(
            f"this node's labels go up to {int(data.y.max())}, but the received model has "
            f"{num_classes} classes"
        )
    in_channels = int(data.x.shape[1])
    if seed is None:
        return build_model(cfg.model, num_classes, in_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(cfg.model, num_classes, in_channels)


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
    for member in range(local.ensemble_size):
        stored = cache.get_or_compute(
            "edge",
            {**base, "member": member},
            lambda member=member: _train_member(
                state, data, local, cfg, member, label_noise, label_noise_p
            ),
        )
        members.append(ArrayRecord(stored["state"]))
        losses.append(float(stored["loss"]))
        accs.append(float(stored["accuracy"]))
    metrics = MetricRecord(
        {
            "num-examples": len(data),
            "train-loss": sum(losses) / len(losses),
            "train-acc": sum(accs) / len(accs),
            "ensemble-size": local.ensemble_size,
        }
    )
    return members, metrics


def _train_member(
    state: Mapping[str, torch.Tensor],
    data: TensorData,
    local: LocalTrainConfig,
    cfg: ExperimentConfig,
    member: int,
    label_noise: str,
    label_noise_p: float,
) -> dict[str, Any]:
    """Train ensemble member ``member``; return its state dict, loss and accuracy."""
    flip = int(data.x.shape[-1]) >= 16
    if local.init == "scratch":
        model = model_for_arrays(cfg, state, data, seed=local.init_seed + member)
    else:
        model = model_for_arrays(cfg, state, data)
        model.load_state_dict(state, strict=True)
    global_params = (
        [p.detach().clone() for p in model.parameters()] if local.proximal_mu > 0 else None
    )
    result = train_supervised(
        model,
        data.x,
        data.y,
        epochs=local.epochs,
        batch_size=local.batch_size,
        lr=local.lr,
        momentum=local.momentum,
        weight_decay=local.weight_decay,
        seed=local.seed + 7_919 * member,
        augment=cfg.augment,
        padding=data.padding,
        flip=flip,
        lr_schedule=local.lr_schedule,
        proximal_mu=local.proximal_mu,
        global_params=global_params,
        label_noise=label_noise,
        label_noise_p=label_noise_p,
    )
    return {"state": model.state_dict(), "loss": result.loss, "accuracy": result.accuracy}


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received model on this node's partition and reply with the trained arrays."""
    cfg = ExperimentConfig.from_run_config(context.run_config)
    set_torch_threads(cfg.client_threads)
    partition_id = node_partition(context, cfg)
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
    metrics["partition-id"] = partition_id
    metrics["simulated-noisy"] = int(noisy)
    delay = simulated.delay(partition_id, local.seed)
    if delay > 0:
        log(INFO, "partition %s: simulated lag, replying in %.1fs", partition_id, delay)
        time.sleep(delay)
    metrics["simulated-delay-s"] = delay
    log(
        INFO,
        "partition %s: trained %s model(s) on %s examples, loss %.4f, acc %.4f",
        partition_id,
        len(members),
        len(data),
        metrics["train-loss"],
        metrics["train-acc"],
    )
    content = RecordDict({member_key(i): arr for i, arr in enumerate(members)})
    content[METRICS] = metrics
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received model on this node's own data."""
    cfg = ExperimentConfig.from_run_config(context.run_config)
    set_torch_threads(cfg.client_threads)
    partition_id = node_partition(context, cfg)
    data = node_data(context, cfg, partition_id)
    state = msg.content.array_records[ARRAYS].to_torch_state_dict()
    model = model_for_arrays(cfg, state, data)
    model.load_state_dict(state, strict=True)
    result = evaluate_model(model, data.x, data.y)
    metrics = MetricRecord(
        {
            "num-examples": len(data),
            "eval-loss": result.loss,
            "eval-acc": result.accuracy,
            "partition-id": partition_id,
        }
    )
    return Message(content=RecordDict({METRICS: metrics}), reply_to=msg)


@app.query(WHOAMI)
def whoami(msg: Message, context: Context) -> Message:
    """Report this node's partition so that a server can address a chosen edge."""
    cfg = ExperimentConfig.from_run_config(context.run_config)
    partition_id = node_partition(context, cfg)
    metrics = MetricRecord(
        {
            "partition-id": partition_id,
            "num-partitions": cfg.num_partitions,
            "num-examples": len(node_data(context, cfg, partition_id)),
        }
    )
    return Message(content=RecordDict({METRICS: metrics}), reply_to=msg)


from edgekd.clients.fedmd import register as _register_fedmd  # noqa: E402

_register_fedmd(app)
