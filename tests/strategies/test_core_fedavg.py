"""Tests for the core-FedAvg reference (FedAvg from the Phase-0 core, core data as a client)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import MessageType

from edgekd.clients.app import app as real_client_app
from edgekd.clients.cloned_distillation import LocalTrainConfig, train_local
from edgekd.config import ExperimentConfig
from edgekd.experiment import client_data
from edgekd.inprocess import InProcessGrid
from edgekd.runner import run_experiment
from edgekd.seeds import derive_seed
from edgekd.strategies.cloned_distillation import ClonedDistillationConfig
from edgekd.strategies.core_fedavg import CoreFedAvg, average_states
from edgekd.training import evaluate, train_supervised

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_average_states_weights_by_examples() -> None:
    """(1, 3) with 1 example and (3, 5) with 3 examples average to (2.5, 4.5)."""
    averaged = average_states(
        [({"w": torch.tensor([1.0, 3.0])}, 1), ({"w": torch.tensor([3.0, 5.0])}, 3)]
    )
    assert averaged.to_torch_state_dict()["w"].tolist() == [2.5, 4.5]


def test_one_round_equals_the_average_computed_by_hand(tiny_npz: Path, tmp_path: Path) -> None:
    """Round 1's core = average of the edge's clone and a core-data clone, by example counts.

    Prepare: a 1-round core-fedavg run on the tiny npz (core 40 images, 3 edges of 40).
    Execute: run_experiment on the in-process grid; by hand: Phase 0, the edge's training of
    the message it received (the ClientApp's own train_local), the core clone's training with
    the local schedule and the core's seed, then the weighted average.
    Assert: one TRAIN message, to edge 0, carrying the Phase-0 core; the run's final test
    accuracy and loss equal the hand-made model's.
    """
    run_config: dict[str, Any] = {
        "strategy": "core-fedavg",
        "dataset": "npz",
        "npz-path": str(tiny_npz),
        "model": "cnn",
        "core-fraction": 0.25,
        "num-partitions": 3,
        "num-server-rounds": 1,
        "cd-core-epochs": 1,
        "local-epochs": 2,
        "batch-size": 16,
        "output-dir": str(tmp_path),
    }
    grid = InProcessGrid(real_client_app, run_config, num_nodes=3)
    run_experiment(grid, run_config, tmp_path / "run")
    rows = {r["round"]: r for r in json.loads((tmp_path / "run" / "metrics.json").read_text())}
    (message,) = [m for m in grid.delivered if m.metadata.message_type == MessageType.TRAIN]
    assert message.metadata.dst_node_id == grid.node_id_of(0)

    cfg = ExperimentConfig.from_run_config(run_config)
    cd = ClonedDistillationConfig.from_run_config({**run_config, "cd-variant": "CPP"})
    strategy = CoreFedAvg(cfg, cd)
    strategy.phase0()
    sent = message.content.array_records["arrays"].to_torch_state_dict()
    assert all(torch.equal(sent[k], v) for k, v in strategy.model.state_dict().items())
    local = LocalTrainConfig.from_message(message.content.config_records["config"], cfg, 0)
    members, metrics = train_local(
        message.content.array_records["arrays"], client_data(cfg, 0), local, cfg
    )
    core_client = copy.deepcopy(strategy.model)
    train_supervised(
        core_client,
        strategy.core.x,
        strategy.core.y,
        epochs=2,
        batch_size=16,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        seed=derive_seed("client-train", cfg.seed, server_round=1, partition=3),
        lr_schedule=cfg.lr_schedule,
        flip=False,
    )
    averaged = average_states(
        [
            (members[0].to_torch_state_dict(), int(metrics["num-examples"])),
            (core_client.state_dict(), len(strategy.core)),
        ]
    )
    strategy.model.load_state_dict(averaged.to_torch_state_dict())
    final = evaluate(strategy.model, strategy.test.x, strategy.test.y)
    assert rows[1]["edge-status"] == "ok"
    assert rows[1]["test-acc"] == final.accuracy
    assert rows[1]["test-loss"] == final.loss
