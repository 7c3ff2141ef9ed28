"""Federated knowledge transfer graph, client side: one graph node per SuperNode.

Minami, Hirakawa, Yamashita and Fujiyoshi, "Knowledge Transfer Graph for Deep Collaborative
Learning" (ACCV 2020); official code https://github.com/somaminami/DCL.

Every node owns a model of its own architecture (``node-models[partition-id]``), built from a
seed of its own on its first KTG message and kept in ``context.state["ktg-model"]``; its
weights never leave the node. Handlers (registered on the one edgekd ClientApp by
:func:`register`):

* ``query.ktg_logits``: logits on given public indices (eval mode);
* ``train.ktg``: ``local-epochs`` of :func:`edgekd.ktg.train_node`: the self edge on the
  private data (cross-entropy times ``self-weight``) plus the received gated targets on the
  public images;
* ``evaluate.ktg``: accuracy and loss on the test split.

The local schedule (``local-epochs``, ``batch-size``, ``lr``, ``lr-schedule``, ``momentum``,
``weight-decay``, ``augment``) is the run config's; the graph settings arrive in the message's
``config`` record. The message format is documented in :mod:`edgekd.protocol.ktg`.
"""

from __future__ import annotations

from logging import INFO

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from edgekd.clients.node import node_experiment
from edgekd.config import ExperimentConfig
from edgekd.experiment import TensorData, client_data, load_bundle, test_data
from edgekd.ktg import EdgeTargets, NodeRound, train_node
from edgekd.models import EdgeKDModel, build_model, count_parameters
from edgekd.protocol.common import CONFIG, METRICS, NUM_EXAMPLES, PARTITION_ID
from edgekd.protocol.ktg import (
    ACTION_EVALUATE,
    ACTION_LOGITS,
    ACTION_TRAIN,
    LOGITS,
    PUBLIC,
    TARGETS,
    KTGSetup,
    TrainSettings,
)
from edgekd.protocol.public import public_pool
from edgekd.seeds import derive_seed
from edgekd.training import evaluate, predict_logits, set_torch_threads

__all__ = [
    "STATE_MODEL",
    "build_node_model",
    "evaluate_ktg",
    "node_model",
    "node_schedule",
    "query_logits",
    "register",
    "train_ktg",
]

STATE_MODEL = "ktg-model"
STATE_META = "ktg-meta"


def build_node_model(
    setup: KTGSetup, partition_id: int, num_classes: int, in_channels: int
) -> EdgeKDModel:
    """A freshly initialised model of this node's architecture (seeded by seed and node)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed("ktg-init", setup.seed, partition=partition_id))
        return build_model(setup.model_name(partition_id), num_classes, in_channels)


def node_model(
    context: Context, cfg: ExperimentConfig, setup: KTGSetup, partition_id: int
) -> EdgeKDModel:
    """This node's model: from ``context.state``, or built on first use."""
    name = setup.model_name(partition_id)
    bundle = load_bundle(cfg)
    model = build_node_model(setup, partition_id, bundle.num_classes, bundle.in_channels)
    meta = context.state.config_records.get(STATE_META)
    if STATE_MODEL in context.state.array_records and meta is not None and meta["model"] == name:
        model.load_state_dict(context.state[STATE_MODEL].to_torch_state_dict(), strict=True)
    else:
        log(
            INFO,
            "ktg: partition %s: %s (%s parameters)",
            partition_id,
            name,
            count_parameters(model),
        )
        _store(context, model, name)
    return model


def _store(context: Context, model: EdgeKDModel, name: str) -> None:
    context.state[STATE_MODEL] = ArrayRecord(model.state_dict())
    context.state[STATE_META] = ConfigRecord({"model": name})


def node_schedule(cfg: ExperimentConfig, data: TensorData) -> dict[str, object]:
    """The local schedule of :func:`edgekd.ktg.train_node` (and of the equivalent
    :func:`edgekd.training.train_supervised`) from the run config, for ``data``."""
    return {
        "epochs": cfg.local_epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "momentum": cfg.momentum,
        "weight_decay": cfg.weight_decay,
        "augment": cfg.augment,
        "lr_schedule": cfg.lr_schedule,
        "padding": data.padding,
        "flip": data.x.shape[-1] >= 16,
    }


def _setup(msg: Message, context: Context) -> tuple[ExperimentConfig, KTGSetup, int]:
    cfg, partition_id = node_experiment(context)
    set_torch_threads(cfg.client_threads)
    config = msg.content.config_records.get(CONFIG, ConfigRecord())
    return cfg, KTGSetup.from_config(config), partition_id


def _indices(record: ArrayRecord, pool_size: int) -> np.ndarray:
    if "indices" not in record:
        raise ValueError("KTG message has no 'indices' array")
    idx = record["indices"].numpy().astype(np.int64)
    if idx.ndim != 1 or idx.size == 0 or idx.min() < 0 or idx.max() >= pool_size:
        raise ValueError(f"KTG public indices must be 1-D in [0, {pool_size}), got {idx.shape}")
    return idx


def query_logits(msg: Message, context: Context) -> Message:
    """``query.ktg_logits``: this node's logits on the given public indices."""
    cfg, setup, pid = _setup(msg, context)
    model = node_model(context, cfg, setup, pid)
    pool = public_pool(cfg, setup.public_source, setup.public_fraction)
    idx = _indices(msg.content.array_records[PUBLIC], len(pool.data))
    logits = predict_logits(model, pool.data.x[torch.from_numpy(idx)], batch_size=256)
    private = client_data(setup.private_config(cfg), pid)
    content = RecordDict(
        {
            LOGITS: ArrayRecord({"logits": Array(np.ascontiguousarray(logits.numpy()))}),
            METRICS: MetricRecord({PARTITION_ID: pid, NUM_EXAMPLES: len(private)}),
        }
    )
    return Message(content=content, reply_to=msg)


def _targets(msg: Message, cfg: ExperimentConfig, setup: KTGSetup) -> EdgeTargets | None:
    if TARGETS not in msg.content.array_records:
        return None
    record = msg.content.array_records[TARGETS]
    pool = public_pool(cfg, setup.public_source, setup.public_fraction)
    idx = _indices(record, len(pool.data))
    return EdgeTargets(
        x=pool.data.x[torch.from_numpy(idx)],
        logits=torch.from_numpy(record["logits"].numpy().astype(np.float32)),
        weights=torch.from_numpy(record["weights"].numpy().astype(np.float32)),
    )


def train_ktg(msg: Message, context: Context) -> Message:
    """``train.ktg``: the self edge on the private data plus the incoming gated targets."""
    cfg, setup, pid = _setup(msg, context)
    settings = TrainSettings.from_config(msg.content.config_records[CONFIG])
    model = node_model(context, cfg, setup, pid)
    targets = _targets(msg, cfg, setup)
    private = client_data(setup.private_config(cfg), pid)
    seed = derive_seed("client-train", setup.seed, server_round=setup.server_round, partition=pid)
    result: NodeRound = train_node(
        model,
        private.x,
        private.y,
        targets,
        seed=seed,
        public_seed=derive_seed("ktg-public", seed),
        self_weight=settings.self_weight,
        temperature=settings.temperature,
        progress=f"ktg partition {pid} round {setup.server_round}",
        **node_schedule(cfg, private),  # type: ignore[arg-type]
    )
    _store(context, model, setup.model_name(pid))
    num_targets = 0 if targets is None else len(targets.logits)
    log(
        INFO,
        "ktg: partition %s round %s: loss %.4f (ce %.4f, kd %.4f, %s targets)",
        pid,
        setup.server_round,
        result.loss,
        result.ce_loss,
        result.kd_loss,
        num_targets,
    )
    metrics = MetricRecord(
        {
            PARTITION_ID: pid,
            NUM_EXAMPLES: len(private),
            "train-loss": result.loss,
            "ce-loss": result.ce_loss,
            "kd-loss": result.kd_loss,
            "num-targets": num_targets,
        }
    )
    return Message(content=RecordDict({METRICS: metrics}), reply_to=msg)


def evaluate_ktg(msg: Message, context: Context) -> Message:
    """``evaluate.ktg``: accuracy and loss of this node's model on the test split."""
    cfg, setup, pid = _setup(msg, context)
    model = node_model(context, cfg, setup, pid)
    test = test_data(cfg)
    result = evaluate(model, test.x, test.y, batch_size=256)
    metrics = MetricRecord(
        {
            PARTITION_ID: pid,
            NUM_EXAMPLES: result.num_examples,
            "test-acc": result.accuracy,
            "test-loss": result.loss,
            "num-parameters": count_parameters(model),
        }
    )
    return Message(content=RecordDict({METRICS: metrics}), reply_to=msg)


def register(app: ClientApp) -> None:
    """Register the three KTG handlers on ``app`` (the edgekd ClientApp)."""
    app.query(ACTION_LOGITS)(query_logits)
    app.train(ACTION_TRAIN)(train_ktg)
    app.evaluate(ACTION_EVALUATE)(evaluate_ktg)
