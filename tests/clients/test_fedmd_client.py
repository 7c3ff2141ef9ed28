"""Tests for the FedMD client handlers, called with real Flower messages on tiny data."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from edgekd.clients import fedmd
from edgekd.clients.app import app
from edgekd.config import ExperimentConfig
from edgekd.experiment import client_data
from edgekd.models import count_parameters
from edgekd.protocol import fedmd as protocol_fedmd

R = 16
SETUP: dict[str, Any] = {
    "server-round": 1,
    "client-models": "cnn,resnet8",
    "representation-dim": R,
    "public-source": "split",
    "public-fraction": 0.2,
    "pretrain-public-epochs": 1,
    "pretrain-private-epochs": 1,
    "private-test-size": 30,
    "seed": 0,
    "shared-init": False,
}
TRAIN: dict[str, Any] = {
    "digest-epochs": 2,
    "digest-lr": 0.05,
    "temperature": 2.0,
    "logit-loss": "kl",
    "latent-weight": 1.0,
    "revisit-epochs": 1,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _context(npz: Path, partition_id: int = 0) -> Context:
    run_config = {
        "dataset": "npz",
        "npz-path": str(npz),
        "num-partitions": 2,
        "batch-size": 16,
        "lr": 0.05,
    }
    return Context(
        run_id=1,
        node_id=11,
        node_config={"partition-id": partition_id, "num-partitions": 2},
        state=RecordDict(),
        run_config=run_config,
    )


def _message(message_type: str, config: dict[str, Any], **arrays: ArrayRecord) -> Message:
    content = RecordDict({"config": ConfigRecord(config), **arrays})
    return Message(content=content, dst_node_id=11, message_type=message_type)


def _indices(*values: int) -> ArrayRecord:
    return ArrayRecord({"indices": Array(np.array(values, dtype=np.int64))})


def test_client_models_differ_in_architecture(tiny_npz: Path) -> None:
    """Partitions 0 and 1 get different architectures with one representation size r."""
    setup = protocol_fedmd.FedMDSetup.from_config(SETUP)
    first = fedmd.build_client_model(setup, 0, num_classes=4, in_channels=3)
    second = fedmd.build_client_model(setup, 1, num_classes=4, in_channels=3)
    assert type(first).__name__ == "SmallCNN" and type(second).__name__ == "CifarResNet"
    assert count_parameters(first) != count_parameters(second)
    assert {type(m).__name__ for m in first.modules()} != {
        type(m).__name__ for m in second.modules()
    }
    assert first.feature_dim == second.feature_dim == R
    x = torch.zeros(2, 3, 8, 8)
    assert first.features(x).shape == second.features(x).shape == (2, R)


def test_scores_have_the_requested_shapes_and_no_weights(tiny_npz: Path) -> None:
    """query.fedmd_scores returns (N, C) logits and (N, r) representations, nothing else."""
    context = _context(tiny_npz, partition_id=1)
    message = _message(
        "query.fedmd_scores",
        {**SETUP, "with-representations": True},
        **{"fedmd-public": _indices(0, 3, 5, 7, 11)},
    )
    reply = app(message, context)
    assert not reply.has_error(), reply.error
    assert set(reply.content.array_records) == {"fedmd-scores"}
    scores = reply.content["fedmd-scores"]
    assert scores["logits"].numpy().shape == (5, 4)
    assert scores["representations"].numpy().shape == (5, R)
    assert reply.content["metrics"]["partition-id"] == 1
    assert "fedmd-model" in context.state.array_records  # pre-trained lazily, kept locally


def test_pretraining_runs_once_and_the_model_persists(tiny_npz: Path) -> None:
    """The first message pre-trains; later messages reuse context.state['fedmd-model']."""
    context = _context(tiny_npz)
    first = app(_message("evaluate.fedmd", SETUP), context)
    stored = context.state["fedmd-model"].to_torch_state_dict()
    second = app(_message("evaluate.fedmd", SETUP), context)
    assert first.content["metrics"]["uniform-acc"] == second.content["metrics"]["uniform-acc"]
    after = context.state["fedmd-model"].to_torch_state_dict()
    assert all(torch.equal(stored[k], after[k]) for k in stored)
    metrics = first.content["metrics"]
    assert 0.0 <= metrics["uniform-acc"] <= 1.0 and 0.0 <= metrics["private-acc"] <= 1.0
    assert metrics["num-examples"] == 30


def test_digest_moves_the_model_towards_the_consensus(tiny_npz: Path) -> None:
    """train.fedmd digests the consensus (loss reported), revisits, and updates the state."""
    context = _context(tiny_npz)
    query = _message(
        "query.fedmd_scores",
        {**SETUP, "with-representations": True},
        **{"fedmd-public": _indices(*range(16))},
    )
    scores = app(query, context).content["fedmd-scores"]
    before = context.state["fedmd-model"].to_torch_state_dict()
    target_logits = np.zeros((16, 4), dtype=np.float32)
    target_logits[:, 2] = 5.0  # a consensus that says "class 2" everywhere
    target_reps = np.zeros((16, R), dtype=np.float32)
    consensus = ArrayRecord(
        {
            "indices": Array(np.arange(16, dtype=np.int64)),
            "logits": Array(target_logits),
            "representations": Array(target_reps),
        }
    )
    reply = app(
        _message(
            "train.fedmd", {**SETUP, **TRAIN, "revisit-epochs": 0}, **{"fedmd-consensus": consensus}
        ),
        context,
    )
    assert not reply.has_error(), reply.error
    assert reply.content.array_records == {}  # no weights in the reply
    metrics = reply.content["metrics"]
    assert metrics["digest-loss"] > 0 and math.isnan(metrics["revisit-loss"])
    after = context.state["fedmd-model"].to_torch_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    again = app(query, context).content["fedmd-scores"]
    assert again["logits"].numpy().shape == scores["logits"].numpy().shape


def test_digest_loss_decreases(tiny_npz: Path) -> None:
    """Repeated digest steps lower the logit + latent distance to a fixed consensus."""
    setup = protocol_fedmd.FedMDSetup.from_config(SETUP)
    model = fedmd.build_client_model(setup, 1, num_classes=4, in_channels=3)
    cfg = ExperimentConfig.from_run_config(_context(tiny_npz).run_config)
    x = client_data(cfg, 0).x[:16]
    target_logits = torch.zeros(16, 4)
    target_logits[:, 2] = 5.0
    target_reps = torch.zeros(16, R)
    settings = protocol_fedmd.DigestSettings.from_config(
        {**TRAIN, "digest-epochs": 1, "logit-loss": "mse"}
    )
    losses = [
        fedmd.digest(model, x, target_logits, target_reps, settings, cfg, seed=step)
        for step in range(8)
    ]
    assert losses[-1] < losses[0]
    without_latent = protocol_fedmd.DigestSettings.from_config({**TRAIN, "latent-weight": 0.0})
    assert fedmd.digest(model, x, target_logits, None, without_latent, cfg, seed=0) > 0


def test_train_without_consensus_only_revisits(tiny_npz: Path) -> None:
    """Without fedmd-consensus (the CE baseline) only the private data is revisited."""
    context = _context(tiny_npz)
    reply = app(_message("train.fedmd", {**SETUP, **TRAIN}), context)
    metrics = reply.content["metrics"]
    assert math.isnan(metrics["digest-loss"]) and metrics["revisit-loss"] > 0
    cfg = ExperimentConfig.from_run_config(context.run_config).replace(core_fraction=0.2)
    assert metrics["num-examples"] == len(client_data(cfg, 0))


def test_missing_config_key_is_a_clear_error(tiny_npz: Path) -> None:
    """A FedMD message without a setup key yields an error reply naming that key."""
    config = {k: v for k, v in SETUP.items() if k != "representation-dim"}
    with pytest.raises(ValueError, match="representation-dim"):
        app(_message("evaluate.fedmd", config), _context(tiny_npz))


def test_private_test_set_follows_the_label_distribution() -> None:
    """The private test set has the client's label proportions, exact in counts and seeded."""
    test_labels = np.repeat(np.arange(4), 10)  # 10 test images per class
    train_labels = np.array([0] * 6 + [1] * 3 + [3] * 1)  # p = (0.6, 0.3, 0, 0.1)
    idx = fedmd.private_test_indices(test_labels, train_labels, 4, size=20, seed=3)
    assert np.bincount(test_labels[idx], minlength=4).tolist() == [12, 6, 0, 2]
    np.testing.assert_array_equal(
        idx, fedmd.private_test_indices(test_labels, train_labels, 4, size=20, seed=3)
    )
    assert len(set(idx[test_labels[idx] == 1].tolist())) == 6  # no repeats while available


def test_npz_public_data_with_other_classes(tiny_npz: Path, tmp_path: Path) -> None:
    """Auxiliary public data with other classes: pre-training uses a temporary output layer,
    and the pool is x_train followed by x_test of that file."""
    rng = np.random.default_rng(1)
    aux = tmp_path / "aux.npz"
    np.savez(
        aux,
        x_train=rng.integers(0, 255, (12, 8, 8, 3), dtype=np.uint8),
        y_train=np.arange(12) % 6,
        x_test=rng.integers(0, 255, (6, 8, 8, 3), dtype=np.uint8),
        y_test=np.arange(6),
    )
    setup = {**SETUP, "public-source": f"npz:{aux}"}
    cfg = ExperimentConfig.from_run_config(_context(tiny_npz).run_config)
    pool = protocol_fedmd.public_pool(cfg, setup["public-source"], 0.0)
    assert len(pool.data) == 18 and pool.num_classes == 6
    message = _message(
        "query.fedmd_scores",
        {**setup, "with-representations": False},
        **{"fedmd-public": _indices(0, 17)},
    )
    reply = app(message, _context(tiny_npz))
    assert not reply.has_error(), reply.error
    assert set(reply.content["fedmd-scores"]) == {"logits"}
    assert reply.content["fedmd-scores"]["logits"].numpy().shape == (2, 4)
    bad = tmp_path / "grey.npz"
    np.savez(
        bad,
        x_train=np.zeros((4, 8, 8, 1), np.uint8),
        y_train=np.arange(4),
        x_test=np.zeros((2, 8, 8, 1), np.uint8),
        y_test=np.arange(2),
    )
    with pytest.raises(ValueError, match="image"):
        protocol_fedmd.public_pool(cfg, f"npz:{bad}", 0.0)


def _state(context: Context) -> dict[str, torch.Tensor]:
    return context.state["fedmd-model"].to_torch_state_dict()


def test_transfer_learning_is_cached_bit_for_bit(tiny_npz: Path, tmp_path: Path) -> None:
    """With cache-dir, a second node with the same setup loads both stages (same weights,
    files written once); without it the weights are the same."""
    plain = _context(tiny_npz)
    app(_message("evaluate.fedmd", SETUP), plain)
    cached = []
    for _ in range(2):
        context = _context(tiny_npz)
        context.run_config["cache-dir"] = str(tmp_path)
        app(_message("evaluate.fedmd", SETUP), context)
        cached.append(_state(context))
    files = sorted(p.parent.name for p in tmp_path.rglob("*.pt"))
    assert files == ["fedmd-private", "fedmd-public"]
    for state in cached:
        assert all(torch.equal(state[k], _state(plain)[k]) for k in state)


def test_fedavg_nodes_start_from_one_global_model(tiny_npz: Path) -> None:
    """shared-init: both partitions hold the same weights after transfer learning (the same
    public stage, no private pre-training), unlike the FedMD clients."""
    shared = {**SETUP, "client-models": "cnn", "shared-init": True}
    states = []
    for pid in (0, 1):
        context = _context(tiny_npz, partition_id=pid)
        app(_message("evaluate.fedmd", shared), context)
        states.append(_state(context))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    apart = []
    for pid in (0, 1):
        context = _context(tiny_npz, partition_id=pid)
        app(_message("evaluate.fedmd", {**shared, "shared-init": False}), context)
        apart.append(_state(context))
    assert not all(torch.equal(apart[0][k], apart[1][k]) for k in apart[0])
