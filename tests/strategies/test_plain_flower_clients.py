"""Every strategy with a ClientApp that knows only Flower's API (no edgekd messages).

The nodes run ``tests/apps/plain_flower_client.py`` (``@app.train()``/``@app.evaluate()`` in
Flower's conventions, no ``query.whoami``) or ClientApps that fail, on
:class:`edgekd.inprocess.InProcessGrid` with real Flower messages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from edgekd.inprocess import InProcessGrid
from edgekd.runner import run_experiment
from edgekd.strategies.common import FederationError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run_config(tiny_npz: Path, tmp_path: Path, strategy: str, **extra: Any) -> dict[str, Any]:
    """2 short rounds on the tiny npz, 3 nodes, core 1/4 (CEM asks for P=2, M=2)."""
    return {
        "strategy": strategy,
        "dataset": "npz",
        "npz-path": str(tiny_npz),
        "model": "cnn",
        "core-fraction": 0.25,
        "num-partitions": 3,
        "num-server-rounds": 2,
        "cd-variant": "CEM",
        "cd-ensemble-size": 2,
        "cd-memory-size": 2,
        "cd-core-epochs": 1,
        "cd-distill-epochs": 1,
        "async-round-wait": 30.0,
        "local-epochs": 1,
        "batch-size": 16,
        "output-dir": str(tmp_path),
        **extra,
    }


def _rows(out_dir: Path) -> dict[int, dict[str, Any]]:
    return {row["round"]: row for row in json.loads((out_dir / "metrics.json").read_text())}


@pytest.mark.parametrize(
    "strategy", ["cloned-distillation", "async-cloned-distillation", "core-fedavg", "fedavg"]
)
def test_plain_flower_client_trains_every_round(
    tiny_npz: Path, tmp_path: Path, strategy: str, plain_client_app: ClientApp
) -> None:
    """A Flower-only ClientApp (no whoami) is an edge/client of every averaging or
    distillation strategy, and the server's model changes in every round.

    Prepare: 3 in-process nodes of the plain ClientApp; 2 rounds.
    Execute: run_experiment.
    Assert: the test loss differs from the previous round's in rounds 1 and 2; for the
    cloned-distillation family every round's edge status is ok, the edges are met in node id
    order, and a plain reply counts as one teacher although P=2 was asked.
    """
    run_config = _run_config(tiny_npz, tmp_path, strategy)
    grid = InProcessGrid(plain_client_app, run_config, num_nodes=3, seed=1)
    run_experiment(grid, run_config, tmp_path / "run")

    rows = _rows(tmp_path / "run")
    assert rows[1]["test-loss"] != rows[0]["test-loss"]
    assert rows[2]["test-loss"] != rows[1]["test-loss"]
    if strategy == "fedavg":
        return
    for server_round in (1, 2):
        row = rows[server_round]
        status = row["edge-status"] if "edge-status" in row else row["consumed"][0]["status"]
        assert status == "ok", row
    edges = sorted(grid.get_node_ids())
    trains = [m for m in grid.delivered if m.metadata.message_type == "train"]
    assert [m.metadata.dst_node_id for m in trains] == edges[:2]
    if strategy == "cloned-distillation":
        assert rows[1]["num-teachers"] == 1 and rows[2]["num-teachers"] == 2


def _partly_unsupported(plain: ClientApp) -> ClientApp:
    """Partition 1 runs a ClientApp without any handler (Flower's own "No train function
    registered" error reply); the others run the plain Flower client."""
    empty = ClientApp()
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        node_app = empty if int(context.node_config["partition-id"]) == 1 else plain
        return node_app(message, context)

    return app


def test_edge_that_cannot_train_is_reported_with_its_reason(
    tiny_npz: Path, tmp_path: Path, plain_client_app: ClientApp
) -> None:
    """An edge whose ClientApp has no train handler is skipped with Flower's reason; the run
    goes on with the others.

    Prepare: 3 nodes, partition 1 (an unmapped edge: no whoami) answers train with an error;
    cloned distillation for 3 rounds (each edge once, in node id order).
    Execute: run_experiment.
    Assert: exactly the round of partition 1's node is rejected, its status naming "No train
    function registered", with the core unchanged (same test loss as the round before); the
    other rounds are ok.
    """
    run_config = _run_config(tiny_npz, tmp_path, "cloned-distillation", **{"num-server-rounds": 3})
    grid = InProcessGrid(_partly_unsupported(plain_client_app), run_config, num_nodes=3, seed=2)
    run_experiment(grid, run_config, tmp_path / "run")

    rows = _rows(tmp_path / "run")
    broken = sorted(grid.get_node_ids()).index(grid.node_id_of(1)) + 1
    for server_round in (1, 2, 3):
        status = rows[server_round]["edge-status"]
        if server_round == broken:
            assert status.startswith("rejected: edge replied with error 2")
            assert "No train function registered" in status
            assert rows[server_round]["test-loss"] == rows[server_round - 1]["test-loss"]
        else:
            assert status == "ok"


@pytest.mark.parametrize(
    "strategy", ["cloned-distillation", "async-cloned-distillation", "core-fedavg", "fedavg"]
)
def test_no_node_can_train_fails_the_run_with_one_line(
    tiny_npz: Path, tmp_path: Path, strategy: str
) -> None:
    """A run in which every node fails is an error naming the reason, never a success.

    Prepare: 2 nodes of a ClientApp with no handler at all (every message is an error reply).
    Execute: run_experiment for 2 rounds.
    Assert: FederationError, one line, naming the strategy, the rounds and Flower's "No train
    function registered"; summary.json records the error.
    """
    run_config = _run_config(tiny_npz, tmp_path, strategy, **{"num-partitions": 2})
    grid = InProcessGrid(ClientApp(), run_config, num_nodes=2)
    with pytest.raises(FederationError) as info:
        run_experiment(grid, run_config, tmp_path / "run")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{strategy}: no ") and "2 round(s)" in message
    assert "No train function registered" in message
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["error"] == message


def test_fedavg_reports_the_clients_that_failed(
    tiny_npz: Path, tmp_path: Path, plain_client_app: ClientApp
) -> None:
    """FedAvg averages the clients that trained and reports the others with their reasons.

    Prepare: 3 nodes, partition 1 without a train handler; FedAvg, 2 rounds.
    Execute: run_experiment.
    Assert: every round's row has train-failures {partition 1's node id: Flower's "No train
    function registered" reason}; the model still changes every round.
    """
    run_config = _run_config(tiny_npz, tmp_path, "fedavg")
    grid = InProcessGrid(_partly_unsupported(plain_client_app), run_config, num_nodes=3)
    run_experiment(grid, run_config, tmp_path / "run")

    rows = _rows(tmp_path / "run")
    for server_round in (1, 2):
        ((node, reason),) = rows[server_round]["train-failures"].items()
        assert node == str(grid.node_id_of(1))
        assert "No train function registered" in reason
        assert rows[server_round]["test-loss"] != rows[server_round - 1]["test-loss"]
