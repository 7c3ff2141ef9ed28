"""FedMD client side: heterogeneous local models that collaborate through public-data scores.

Li and Wang, "FedMD: Heterogenous Federated Learning via Model Distillation", NeurIPS 2019
FL workshop, https://arxiv.org/abs/1910.03581; the latent variant adds an MSE term on a shared
representation layer of size r ("Latent Space Distillation" slides, KIT).

Every node owns a model of its own architecture (``client-models[partition-id % n]``, with a
linear representation layer of size ``representation-dim`` before its output layer). On its
first FedMD message the node builds that model and trains it by transfer learning: on the
labelled public data (with a temporary output layer when the public data has other classes),
then on its private partition. The model then lives in ``context.state["fedmd-model"]``; its
weights never leave the node (except for the ``FedAvg`` baseline, which needs them).

Handlers (registered on the one edgekd ClientApp by :func:`register`):

* ``query.fedmd_scores``: class scores (logits) and representations on given public indices;
* ``train.fedmd``: *digest* (distil towards the received consensus) then *revisit* (train on
  the private data);
* ``evaluate.fedmd``: accuracy on the uniform test split and on this node's private test set.

All FedMD settings arrive in the message's ``config`` record (the server parses the run
config once); the message format is documented in :mod:`edgekd.protocol.fedmd`.
"""

from __future__ import annotations

from logging import INFO, WARNING
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
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

from edgekd.cache import TrainingCache, run_description
from edgekd.clients.node import node_experiment
from edgekd.config import ExperimentConfig, config_value
from edgekd.datasets import BatchLoader
from edgekd.experiment import TensorData, client_data, load_bundle, test_data
from edgekd.losses import fedmd_digest_loss, latent_distillation_loss
from edgekd.models import EdgeKDModel, build_model, count_parameters
from edgekd.progress import stage
from edgekd.protocol.common import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, PARTITION_ID
from edgekd.protocol.fedmd import (
    ACTION_EVALUATE,
    ACTION_SCORES,
    ACTION_TRAIN,
    CONSENSUS,
    PUBLIC,
    SCORES,
    WITH_REPRESENTATIONS,
    DigestSettings,
    FedMDSetup,
    public_pool,
)
from edgekd.seeds import derive_seed
from edgekd.training import make_optimizer, predict_logits, set_torch_threads, train_supervised

__all__ = [
    "STATE_MODEL",
    "build_client_model",
    "client_model",
    "digest",
    "evaluate_fedmd",
    "largest_remainder",
    "private_test_indices",
    "query_scores",
    "register",
    "train_fedmd",
]

STATE_MODEL = "fedmd-model"
STATE_META = "fedmd-meta"
# ExperimentConfig fields that do not change transfer learning (kept out of its cache keys)
_NOT_PRETRAINING = ("num_server_rounds", "strategy", "fraction_train", "fraction_evaluate")
_RUN_SCHEDULE = ("batch_size", "lr", "momentum", "weight_decay", "lr_schedule", "augment")


def largest_remainder(proportions: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total`` in the given proportions (largest remainder)."""
    exact = np.asarray(proportions, dtype=np.float64) * total
    counts = np.floor(exact).astype(np.int64)
    remaining = total - int(counts.sum())
    if remaining > 0:
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[:remaining]] += 1
    return counts


def private_test_indices(
    test_labels: np.ndarray, train_labels: np.ndarray, num_classes: int, size: int, seed: int
) -> np.ndarray:
    """A test set drawn from ``test_labels`` with the label distribution of ``train_labels``.

    Class ``c`` receives ``round(size * p_c)`` indices (largest remainder), drawn without
    replacement while the test split has enough images of ``c`` and cycled through a seeded
    permutation of them beyond that, so the label distribution is exact. Classes absent from
    the test split are dropped.

    Parameters
    ----------
    test_labels : np.ndarray
        Labels of the (uniform) test split.
    train_labels : np.ndarray
        Labels of the node's private training data.
    num_classes : int
        Number of classes.
    size : int
        Requested size, ``>= 1``.
    seed : int
        Seed of the draw.

    Returns
    -------
    np.ndarray
        Sorted ``int64`` indices into the test split (repeats possible, see above).
    """
    if size < 1:
        raise ValueError(f"fedmd-private-test-size must be >= 1, got {size}")
    hist = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=num_classes)
    if hist.sum() == 0:
        raise ValueError("cannot draw a private test set for a node without training data")
    counts = largest_remainder(hist / hist.sum(), size)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.flatnonzero(counts):
        pool = np.flatnonzero(np.asarray(test_labels) == c)
        if pool.size:
            chosen.append(np.resize(rng.permutation(pool), int(counts[c])))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def build_client_model(
    setup: FedMDSetup, partition_id: int, num_classes: int, in_channels: int
) -> EdgeKDModel:
    """A freshly initialised model of this partition's architecture (seeded)."""
    if setup.shared_init:
        seed = derive_seed("fedmd-shared-init", setup.seed)
    else:
        seed = derive_seed("fedmd-init", setup.seed, partition=partition_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(
            setup.model_name(partition_id),
            num_classes,
            in_channels,
            representation_dim=setup.representation_dim,
        )


def _train(
    model: torch.nn.Module,
    data: TensorData,
    epochs: int,
    cfg: ExperimentConfig,
    seed: int,
    progress: str,
) -> float:
    if epochs == 0:
        return float("nan")
    # the run config's supervised schedule, by train_supervised's argument names
    schedule = {name: getattr(cfg, name) for name in _RUN_SCHEDULE}
    flip = data.x.shape[-1] >= 16
    result = train_supervised(
        model,
        data.x,
        data.y,
        epochs=epochs,
        seed=seed,
        padding=data.padding,
        flip=flip,
        progress=progress,
        **schedule,
    )
    return result.loss


def _pretrain(
    setup: FedMDSetup, cfg: ExperimentConfig, partition_id: int, private: TensorData
) -> EdgeKDModel:
    """Transfer learning: public labels first (own output layer), then the private data.

    The FedAvg baseline (``shared_init``) starts every node from the same global model: the
    shared initialisation after the same public stage (one seed for all nodes, so every node
    computes the same weights), with no private training before round 1. With ``cache-dir``
    set, each stage is stored under a key of everything that decides it, so CE, KD and LKD runs
    of a seed share their transfer learning (bit for bit).
    """
    bundle = load_bundle(cfg)
    cache = TrainingCache(cfg.cache_dir)
    owner = 0 if setup.shared_init else partition_id
    seed = derive_seed("fedmd-pretrain", setup.seed, partition=owner)
    public_key = {
        "config": run_description(cfg, exclude=_NOT_PRETRAINING),
        "model": setup.model_name(partition_id),
        "representation-dim": setup.representation_dim,
        "seed": setup.seed,
        "shared-init": setup.shared_init,
        "owner": owner,
        "public": [setup.public_source, setup.public_fraction, setup.pretrain_public_epochs],
    }

    def public_stage() -> dict[str, Any]:
        model = build_client_model(setup, partition_id, bundle.num_classes, bundle.in_channels)
        _train_public(model, setup, cfg, partition_id, seed)
        return {"state": model.state_dict()}

    model = build_client_model(setup, partition_id, bundle.num_classes, bundle.in_channels)
    model.load_state_dict(cache.get_or_compute("fedmd-public", public_key, public_stage)["state"])
    if setup.shared_init:
        return model

    def private_stage() -> dict[str, Any]:
        label = f"fedmd partition {partition_id}: pre-training on private data"
        _train(model, private, setup.pretrain_private_epochs, cfg, seed + 1, label)
        return {"state": model.state_dict()}

    private_key = {
        **public_key,
        "partition": partition_id,
        "private-epochs": setup.pretrain_private_epochs,
    }
    model.load_state_dict(
        cache.get_or_compute("fedmd-private", private_key, private_stage)["state"]
    )
    return model


def _train_public(
    model: EdgeKDModel, setup: FedMDSetup, cfg: ExperimentConfig, partition_id: int, seed: int
) -> None:
    """The public stage of transfer learning: with a public label space of its own, through a
    twin with its own output layer, whose other weights ``model`` then takes."""
    if setup.pretrain_public_epochs == 0:
        return
    bundle = load_bundle(cfg)
    pool = public_pool(cfg, setup.public_source, setup.public_fraction)
    public_model = model
    if pool.num_classes != bundle.num_classes:
        public_model = build_client_model(setup, partition_id, pool.num_classes, bundle.in_channels)
        public_model.load_state_dict(_without_head(model), strict=False)
    label = f"fedmd partition {partition_id}: pre-training on public data"
    _train(public_model, pool.data, setup.pretrain_public_epochs, cfg, seed, label)
    if public_model is not model:
        model.load_state_dict(_without_head(public_model), strict=False)


def _without_head(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}


def client_model(
    context: Context, cfg: ExperimentConfig, setup: FedMDSetup, partition_id: int
) -> EdgeKDModel:
    """This node's model: from ``context.state``, or built and pre-trained on first use."""
    name = setup.model_name(partition_id)
    meta = context.state.config_records.get(STATE_META)
    bundle = load_bundle(cfg)
    if (
        STATE_MODEL in context.state.array_records
        and meta is not None
        and meta.get("model") == name
        and meta.get("representation-dim") == setup.representation_dim
    ):
        model = build_client_model(setup, partition_id, bundle.num_classes, bundle.in_channels)
        model.load_state_dict(context.state[STATE_MODEL].to_torch_state_dict(), strict=True)
        return model
    if meta is not None:
        log(
            WARNING, "fedmd: partition %s: model settings changed, pre-training again", partition_id
        )
    private = client_data(setup.private_config(cfg), partition_id)
    model = _pretrain(setup, cfg, partition_id, private)
    _store(context, model, name, setup.representation_dim)
    log(
        INFO,
        "fedmd: partition %s: %s (r=%s, %s parameters) pre-trained: %s public, %s private epochs",
        partition_id,
        name,
        setup.representation_dim,
        count_parameters(model),
        setup.pretrain_public_epochs,
        0 if setup.shared_init else setup.pretrain_private_epochs,
    )
    return model


def _store(context: Context, model: EdgeKDModel, name: str, representation_dim: int) -> None:
    context.state[STATE_MODEL] = ArrayRecord(model.state_dict())
    context.state[STATE_META] = ConfigRecord(
        {"model": name, "representation-dim": representation_dim}
    )


def digest(
    model: EdgeKDModel,
    x: torch.Tensor,
    target_logits: torch.Tensor,
    target_representations: torch.Tensor | None,
    settings: DigestSettings,
    cfg: ExperimentConfig,
    seed: int,
    *,
    progress: str = "fedmd digest",
) -> float:
    """Distil ``model`` towards the consensus on the alignment images ``x``.

    Loss per batch: :func:`edgekd.losses.fedmd_digest_loss` on the logits (KL at
    ``temperature`` or MSE), plus ``latent_weight`` times
    :func:`edgekd.losses.latent_distillation_loss` on the representation when target
    representations are given. No augmentation: the targets belong to the plain images.
    ``progress`` names the stage shown by :func:`edgekd.progress.stage`.

    Returns
    -------
    float
        Mean loss of the last epoch (NaN when ``digest_epochs`` is 0).
    """
    if settings.digest_epochs == 0 or len(x) == 0:
        return float("nan")
    loader = BatchLoader(x, torch.arange(len(x)), cfg.batch_size, shuffle=True, seed=seed)
    optimizer = make_optimizer(model, settings.digest_lr, cfg.momentum, cfg.weight_decay)
    latent = target_representations is not None and settings.latent_weight > 0
    model.train()
    loss_sum, seen = 0.0, 0
    with stage(progress, total=settings.digest_epochs * len(loader), unit="batches") as bar:
        for _ in range(settings.digest_epochs):
            loss_sum, seen = 0.0, 0
            for xb, ib in loader:
                logits, feats = model.forward_with_features(xb)
                loss = fedmd_digest_loss(
                    logits,
                    target_logits[ib],
                    mode=settings.logit_loss,
                    temperature=settings.temperature,
                )
                if latent:
                    assert target_representations is not None
                    loss = loss + settings.latent_weight * latent_distillation_loss(
                        feats, target_representations[ib]
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * len(ib)
                seen += len(ib)
                bar.advance()
    return loss_sum / max(seen, 1)


@torch.no_grad()
def _scores(model: EdgeKDModel, x: torch.Tensor, batch_size: int = 256) -> tuple[Any, Any]:
    model.eval()
    logits, feats = [], []
    for start in range(0, len(x), batch_size):
        lg, ft = model.forward_with_features(x[start : start + batch_size])
        logits.append(lg)
        feats.append(ft)
    return torch.cat(logits).numpy(), torch.cat(feats).numpy()


def _indices(record: ArrayRecord, pool_size: int) -> np.ndarray:
    if "indices" not in record:
        raise ValueError("FedMD message has no 'indices' array")
    idx = record["indices"].numpy().astype(np.int64)
    if idx.ndim != 1 or idx.size == 0 or idx.min() < 0 or idx.max() >= pool_size:
        raise ValueError(f"FedMD public indices must be 1-D in [0, {pool_size}), got {idx.shape}")
    return idx


def _setup(msg: Message, context: Context) -> tuple[ExperimentConfig, FedMDSetup, int]:
    cfg, partition_id = node_experiment(context)
    set_torch_threads(cfg.client_threads)
    config = msg.content.config_records.get(CONFIG, ConfigRecord())
    return cfg, FedMDSetup.from_config(config), partition_id


def query_scores(msg: Message, context: Context) -> Message:
    """``query.fedmd_scores``: logits (and representations) on the given public indices."""
    cfg, setup, pid = _setup(msg, context)
    model = client_model(context, cfg, setup, pid)
    pool = public_pool(cfg, setup.public_source, setup.public_fraction)
    idx = _indices(msg.content.array_records[PUBLIC], len(pool.data))
    config = msg.content.config_records[CONFIG]
    logits, feats = _scores(model, pool.data.x[torch.from_numpy(idx)])
    arrays = {"logits": Array(np.ascontiguousarray(logits, dtype=np.float32))}
    if config_value(config, WITH_REPRESENTATIONS, False, bool):
        arrays["representations"] = Array(np.ascontiguousarray(feats, dtype=np.float32))
    private = client_data(setup.private_config(cfg), pid)
    metrics = MetricRecord({PARTITION_ID: pid, NUM_EXAMPLES: len(private)})
    content = RecordDict({SCORES: ArrayRecord(arrays), METRICS: metrics})
    return Message(content=content, reply_to=msg)


def train_fedmd(msg: Message, context: Context) -> Message:
    """``train.fedmd``: digest the consensus (when sent), then revisit the private data.

    Without ``fedmd-consensus`` only the revisit runs (the CE baseline). With an ``arrays``
    record (the FedAvg baseline) the received global model replaces the local one first and
    the trained weights are returned.
    """
    cfg, setup, pid = _setup(msg, context)
    settings = DigestSettings.from_config(msg.content.config_records[CONFIG])
    model = client_model(context, cfg, setup, pid)
    content = msg.content
    if ARRAYS in content.array_records:
        model.load_state_dict(content.array_records[ARRAYS].to_torch_state_dict(), strict=True)
    seed = derive_seed("client-train", setup.seed, server_round=setup.server_round, partition=pid)
    digest_loss = float("nan")
    if CONSENSUS in content.array_records:
        record = content.array_records[CONSENSUS]
        pool = public_pool(cfg, setup.public_source, setup.public_fraction)
        idx = _indices(record, len(pool.data))
        target = torch.from_numpy(record["logits"].numpy().astype(np.float32))
        reps = None
        if "representations" in record:
            reps = torch.from_numpy(record["representations"].numpy().astype(np.float32))
        x = pool.data.x[torch.from_numpy(idx)]
        label = f"fedmd partition {pid} round {setup.server_round}: digest"
        digest_loss = digest(model, x, target, reps, settings, cfg, seed, progress=label)
    private = client_data(setup.private_config(cfg), pid)
    step = f"fedmd partition {pid} round {setup.server_round}"
    revisit_loss = _train(
        model, private, settings.revisit_epochs, cfg, seed + 1, f"{step}: revisit"
    )
    _store(context, model, setup.model_name(pid), setup.representation_dim)
    metrics = MetricRecord(
        {
            PARTITION_ID: pid,
            NUM_EXAMPLES: len(private),
            "digest-loss": digest_loss,
            "revisit-loss": revisit_loss,
        }
    )
    reply = RecordDict({METRICS: metrics})
    if ARRAYS in content.array_records or setup.shared_init:
        reply[ARRAYS] = ArrayRecord(model.state_dict())
    log(
        INFO,
        "fedmd: partition %s round %s: digest-loss %.4f revisit-loss %.4f",
        pid,
        setup.server_round,
        digest_loss,
        revisit_loss,
    )
    return Message(content=reply, reply_to=msg)


def evaluate_fedmd(msg: Message, context: Context) -> Message:
    """``evaluate.fedmd``: accuracy on the uniform test split and on the private test set.

    Evaluates the node's own model, or the received ``arrays`` (FedAvg's global model).
    """
    cfg, setup, pid = _setup(msg, context)
    model = client_model(context, cfg, setup, pid)
    if ARRAYS in msg.content.array_records:
        state = msg.content.array_records[ARRAYS].to_torch_state_dict()
        model.load_state_dict(state, strict=True)
    bundle = load_bundle(cfg)
    test = test_data(cfg)
    private = client_data(setup.private_config(cfg), pid)
    idx = private_test_indices(
        bundle.y_test,
        private.y.numpy(),
        bundle.num_classes,
        setup.private_test_size,
        seed=derive_seed("fedmd-private-test", setup.seed, partition=pid),
    )
    logits = predict_logits(model, test.x, batch_size=256)
    correct = (logits.argmax(1) == test.y).float()
    private_acc = float(correct[torch.from_numpy(idx)].mean())
    metrics = MetricRecord(
        {
            PARTITION_ID: pid,
            NUM_EXAMPLES: len(idx),
            "uniform-acc": float(correct.mean()),
            "uniform-loss": float(F.cross_entropy(logits, test.y)),
            "private-acc": private_acc,
            "num-parameters": count_parameters(model),
        }
    )
    return Message(content=RecordDict({METRICS: metrics}), reply_to=msg)


def register(app: ClientApp) -> None:
    """Register the three FedMD handlers on ``app`` (the edgekd ClientApp)."""
    app.query(ACTION_SCORES)(query_scores)
    app.train(ACTION_TRAIN)(train_fedmd)
    app.evaluate(ACTION_EVALUATE)(evaluate_fedmd)
