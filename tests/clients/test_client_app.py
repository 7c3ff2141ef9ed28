"""Tests for the edgekd ClientApp handlers, called with real Flower messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from edgekd.clients.app import app
from edgekd.config import ExperimentConfig
from edgekd.experiment import build_experiment_model, client_data
from edgekd.protocol import member_key


def _context(npz: Path, partition_id: int = 1, **extra: object) -> Context:
    run_config = {
        "dataset": "npz",
        "npz-path": str(npz),
        "model": "cnn",
        "num-partitions": 2,
        "local-epochs": 1,
        "batch-size": 16,
        "lr": 0.05,
        **extra,
    }
    return Context(
        run_id=1,
        node_id=11,
        node_config={"partition-id": partition_id, "num-partitions": 2},
        state=RecordDict(),
        run_config=run_config,
    )


def _message(arrays: ArrayRecord, message_type: str, config: dict[str, object]) -> Message:
    content = RecordDict({"arrays": arrays, "config": ConfigRecord(config)})
    return Message(content=content, dst_node_id=11, message_type=message_type)


def test_train_handler_trains_and_reports(tiny_npz: Path) -> None:
    """A TRAIN message returns changed arrays, num-examples, train loss/acc and partition id."""
    context = _context(tiny_npz)
    cfg = ExperimentConfig.from_run_config(context.run_config)
    model = build_experiment_model(cfg, seed=0)
    sent = ArrayRecord(model.state_dict())
    reply = app(_message(sent, MessageType.TRAIN, {"server-round": 1, "lr": 0.1}), context)
    assert not reply.has_error(), reply.error
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == len(client_data(cfg, 1))
    assert metrics["partition-id"] == 1
    assert 0.0 <= metrics["train-acc"] <= 1.0 and metrics["train-loss"] > 0
    before = sent.to_torch_state_dict()
    after = reply.content["arrays"].to_torch_state_dict()
    assert set(before) == set(after)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_train_handler_returns_ensemble_members(tiny_npz: Path) -> None:
    """ensemble-size=3 returns three models that differ only through batch order."""
    context = _context(tiny_npz)
    cfg = ExperimentConfig.from_run_config(context.run_config)
    sent = ArrayRecord(build_experiment_model(cfg, seed=0).state_dict())
    msg = _message(sent, MessageType.TRAIN, {"server-round": 2, "ensemble-size": 3})
    reply = app(msg, context)
    assert not reply.has_error(), reply.error
    members = [reply.content[member_key(i)].to_torch_state_dict() for i in range(3)]
    assert reply.content["metrics"]["ensemble-size"] == 3
    key = next(k for k in members[0] if k.endswith("weight"))
    assert not torch.equal(members[0][key], members[1][key])
    assert not torch.equal(members[1][key], members[2][key])


def test_train_is_reproducible(tiny_npz: Path) -> None:
    """The same message and run config give bit-identical trained arrays."""
    context = _context(tiny_npz)
    cfg = ExperimentConfig.from_run_config(context.run_config)
    sent = ArrayRecord(build_experiment_model(cfg, seed=0).state_dict())
    first = app(_message(sent, MessageType.TRAIN, {"server-round": 3}), context)
    second = app(_message(sent, MessageType.TRAIN, {"server-round": 3}), context)
    a = first.content["arrays"].to_torch_state_dict()
    b = second.content["arrays"].to_torch_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_evaluate_handler_reports_local_accuracy(tiny_npz: Path) -> None:
    """An EVALUATE message returns the received model's loss and accuracy on local data."""
    context = _context(tiny_npz, partition_id=0)
    cfg = ExperimentConfig.from_run_config(context.run_config)
    sent = ArrayRecord(build_experiment_model(cfg, seed=0).state_dict())
    reply = app(_message(sent, MessageType.EVALUATE, {}), context)
    assert not reply.has_error(), reply.error
    metrics = reply.content["metrics"]
    assert metrics["partition-id"] == 0
    assert metrics["num-examples"] == len(client_data(cfg, 0))
    assert 0.0 <= metrics["eval-acc"] <= 1.0


def test_whoami_query_reports_partition(tiny_npz: Path) -> None:
    """The query.whoami handler reports partition-id and num-partitions."""
    context = _context(tiny_npz, partition_id=1)
    msg = Message(content=RecordDict(), dst_node_id=11, message_type="query.whoami")
    reply = app(msg, context)
    assert not reply.has_error(), reply.error
    assert reply.content["metrics"]["partition-id"] == 1
    assert reply.content["metrics"]["num-partitions"] == 2


def test_node_num_partitions_decides_the_partitioning(tiny_npz: Path) -> None:
    """The node config's num-partitions decides which data a node trains on (Flower's way).

    Prepare: a run config with num-partitions 3; a node whose node config says partition 1 of
    2 (as Flower's simulation engine sets it for 2 SuperNodes).
    Execute: a TRAIN message and a whoami query.
    Assert: no error; num-examples is the size of partition 1 of 2 (not of 3); whoami reports
    num-partitions 2.
    """
    context = _context(tiny_npz, **{"num-partitions": 3})
    cfg = ExperimentConfig.from_run_config(context.run_config)
    sent = ArrayRecord(build_experiment_model(cfg, seed=0).state_dict())
    reply = app(_message(sent, MessageType.TRAIN, {}), context)
    assert not reply.has_error(), reply.error
    two = ExperimentConfig.from_run_config({**context.run_config, "num-partitions": 2})
    assert reply.content["metrics"]["num-examples"] == len(client_data(two, 1))
    assert len(client_data(two, 1)) != len(client_data(cfg, 1))
    whoami = Message(content=RecordDict(), dst_node_id=11, message_type="query.whoami")
    assert app(whoami, context).content["metrics"]["num-partitions"] == 2


def test_run_config_num_partitions_applies_without_a_node_value(tiny_npz: Path) -> None:
    """Without num-partitions in the node config the run config's applies; a partition-id out
    of its range raises a ValueError naming both values."""
    context = _context(tiny_npz, **{"num-partitions": 4})
    context.node_config.pop("num-partitions")
    whoami = Message(content=RecordDict(), dst_node_id=11, message_type="query.whoami")
    assert app(whoami, context).content["metrics"]["num-partitions"] == 4
    context.node_config["partition-id"] = 4
    with pytest.raises(ValueError, match="partition-id=4 is out of range for num-partitions=4"):
        app(whoami, context)
