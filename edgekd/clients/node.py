"""Who this node is and what data it holds: partition, training data, model shape.

Every client handler starts here (:func:`node_experiment`). A node learns its partition from
``context.node_config["partition-id"]`` and, as in Flower's examples, how many partitions the
data is cut into from ``context.node_config["num-partitions"]``: the node config decides
(Flower's simulation engine sets both, ``num-partitions`` = the number of simulated
SuperNodes, so ``flwr run`` with any ``num-supernodes`` works); the run config's
``num-partitions`` applies only to a node whose node config has none. A real device whose
data is its own sets ``npz-path`` in its node config (``--node-config "partition-id=3
num-partitions=9 npz-path='/data/mine.npz'"``): it then trains on the whole train split of that
file, normalised with that file's own statistics, and builds its model from the received arrays
(classes from the output layer, channels from its images), so the run's data set does not
have to exist on the device. Data that is missing or malformed is logged as an ERROR naming
the partition, the file and the problem, and the message is answered with an error reply: the
server leaves the node out and the run goes on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from logging import ERROR
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from edgekd.config import ExperimentConfig
from edgekd.datasets import default_padding, load_dataset, to_tensors
from edgekd.experiment import TensorData, client_data, experiment_split, load_bundle
from edgekd.models import EdgeKDModel, build_model
from edgekd.protocol.common import METRICS, NUM_EXAMPLES, NUM_PARTITIONS, PARTITION_ID, WHOAMI

__all__ = [
    "NODE_DATA_KEY",
    "NodeDataError",
    "model_for_arrays",
    "node_data",
    "node_experiment",
    "node_images",
    "node_partition",
    "register",
    "whoami",
]

NODE_DATA_KEY = "npz-path"


def node_partition(context: Context, cfg: ExperimentConfig) -> int:
    """This node's ``partition-id``, checked against its ``num-partitions``.

    ``num-partitions`` is the node config's, else ``cfg.num_partitions`` (the run config).
    """
    node_config = context.node_config
    if PARTITION_ID not in node_config:
        raise ValueError(
            "this node has no 'partition-id' in its node config; start the SuperNode with "
            '--node-config "partition-id=<i> num-partitions=<n>"'
        )
    partition_id = int(node_config[PARTITION_ID])
    num_partitions = int(node_config.get(NUM_PARTITIONS, cfg.num_partitions))
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"node partition-id={partition_id} is out of range for num-partitions="
            f"{num_partitions} (node config, else run config)"
        )
    return partition_id


def node_experiment(context: Context) -> tuple[ExperimentConfig, int]:
    """The run config as this node uses it, and its partition id.

    The node config's ``num-partitions`` (when present) replaces the run config's, so the
    node's data is partition ``partition-id`` of the partitioning its node config names.
    """
    cfg = ExperimentConfig.from_run_config(context.run_config)
    if NUM_PARTITIONS in context.node_config:
        num_partitions = int(context.node_config[NUM_PARTITIONS])
        if num_partitions < 1:
            raise ValueError(f"node num-partitions must be >= 1, got {num_partitions}")
        cfg = replace(cfg, num_partitions=num_partitions)
    return cfg, node_partition(context, cfg)


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


def node_images(context: Context, cfg: ExperimentConfig, partition_id: int) -> np.ndarray:
    """The raw ``uint8`` ``(N, H, W, C)`` images behind :func:`node_data`, in the same order."""
    path = str(context.node_config.get(NODE_DATA_KEY, "")).strip()
    if path:
        return load_dataset("npz", npz_path=path).x_train
    node_data(context, cfg, partition_id)  # validates the partition id
    return load_bundle(cfg).x_train[experiment_split(cfg).partitions[partition_id]]


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


def whoami(msg: Message, context: Context) -> Message:
    """``query.whoami``: report this node's partition so that a server can address it."""
    cfg, partition_id = node_experiment(context)
    metrics = MetricRecord(
        {
            PARTITION_ID: partition_id,
            NUM_PARTITIONS: cfg.num_partitions,
            NUM_EXAMPLES: len(node_data(context, cfg, partition_id)),
        }
    )
    return Message(content=RecordDict({METRICS: metrics}), reply_to=msg)


def register(app: ClientApp) -> None:
    """Register ``query.whoami`` on ``app`` (the edgekd ClientApp)."""
    app.query(WHOAMI)(whoami)
