"""Tests for the federated knowledge transfer graph: config, graph targets, real-message runs.

The runs use :class:`edgekd.inprocess.InProcessGrid` (real Flower messages, the real ClientApp or
a deliberately misbehaving one, in this process); the run through ``flwr run`` and Ray is in
``tests/integration/test_ktg_simulation.py``.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from edgekd import experiment
from edgekd.clients import ktg as ktg_client
from edgekd.clients.app import app as real_client_app
from edgekd.clients.app import whoami
from edgekd.config import ExperimentConfig
from edgekd.inprocess import InProcessGrid
from edgekd.losses.ktg import GateMatrix, GateMatrixError
from edgekd.models import build_model
from edgekd.protocol import ktg as protocol
from edgekd.runner import run_experiment
from edgekd.seeds import derive_seed
from edgekd.strategies import fedmd, ktg
from edgekd.strategies.common import FederationError
from edgekd.strategies.fedmd import FedMDConfig
from edgekd.strategies.ktg import KTG, KTGConfig, graph_targets
from edgekd.strategies.ktg_targets import self_weight, teachers
from edgekd.training import evaluate, train_supervised

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run_config(tiny_npz: Path, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A fast 3-node KTG run on the tiny npz: public split 20 %, 16 public images a round."""
    config: dict[str, Any] = {
        "strategy": "ktg",
        "dataset": "npz",
        "npz-path": str(tiny_npz),
        "partitioner": "dirichlet",
        "dirichlet-alpha": 1.0,
        "min-partition-size": 5,
        "num-partitions": 3,
        "num-server-rounds": 2,
        "batch-size": 16,
        "lr": 0.05,
        "ktg-gates": "T,T,T;T,T,T;T,T,T",
        "ktg-models": "cnn,resnet8,cnn",
        "ktg-public-fraction": 0.2,
        "ktg-public-size": 16,
        "output-dir": str(tmp_path),
    }
    config.update(overrides)
    return config


def _rows(out_dir: Path) -> dict[int, dict[str, Any]]:
    """metrics.json of a run, keyed by round."""
    return {row["round"]: row for row in json.loads((out_dir / "metrics.json").read_text())}


def _strategy(run_config: dict[str, Any]) -> KTG:
    return KTG(ExperimentConfig.from_run_config(run_config), KTGConfig.from_run_config(run_config))


# ----------------------------------------------------------------------------- config
def test_config_defaults_match_pyproject() -> None:
    """Every ktg-* field has a pyproject key with the dataclass default, and no more keys."""
    app_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "config"
    ]
    assert KTGConfig.from_run_config(app_config) == KTGConfig()
    fields = {"ktg-" + name.replace("_", "-") for name in KTGConfig.__dataclass_fields__}
    assert fields == {key for key in app_config if key.startswith("ktg-")}
    assert KTGConfig().matrix(app_config["num-partitions"]).num_nodes == 4


def test_shipped_profiles_parse() -> None:
    """base.toml plus each graph file of simulations/ktg gives a valid 3-node configuration;
    independent.toml cuts every edge between nodes."""
    from edgekd.launch import effective_run_config

    folder = ROOT / "simulations" / "ktg"
    graphs = {}
    for variant in sorted(folder.glob("*.toml")):
        merged = effective_run_config(ROOT, [str(folder / "base.toml"), str(variant)])
        cfg = ExperimentConfig.from_run_config(merged)
        graphs[variant.stem] = KTGConfig.from_run_config(merged).matrix(cfg.num_partitions)
    assert {"base", "independent", "dml", "dcl"} <= set(graphs)
    assert teachers(graphs["independent"]) == ()


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"ktg-gates": "T,Q;T,T"}, GateMatrixError, r"ktg-gates: unknown gate 'Q'"),
        ({"ktg-gates": "T,X;T"}, GateMatrixError, r"ktg-gates: .*not square"),
        ({"ktg-gates": "X,X;X,T"}, GateMatrixError, r"ktg-gates: node 0 .*no path to anything"),
        ({"ktg-models": "cnn,vgg8,cnn", "ktg-gates": "T,T;T,T"}, ValueError, "names 3 models"),
        ({"ktg-models": "cnn,nosuchnet"}, ValueError, "nosuchnet"),
        ({"ktg-aggregate": "max"}, ValueError, "ktg-aggregate"),
        ({"ktg-public-size": 0}, ValueError, "ktg-public-size"),
        ({"ktg-temperature": 0.0}, ValueError, "ktg-temperature"),
        ({"ktg-public-source": "hub:x"}, ValueError, "ktg-public-source"),
        ({"ktg-public-fraction": 1.0}, ValueError, "ktg-public-fraction"),
        (
            {"ktg-gates": "T,C;T,T", "ktg-public-source": "npz:/any.npz"},
            ValueError,
            r"Correct \(C\) edge between nodes.*ktg-public-source = 'split'",
        ),
    ],
)
def test_config_rejects_bad_values(overrides: dict[str, Any], error: type, match: str) -> None:
    """A bad ktg-* value raises one named error naming the key (GateMatrixError for the
    matrix, a ValueError itself)."""
    with pytest.raises(error, match=match):
        KTGConfig.from_run_config(overrides)


def test_matrix_of_the_wrong_size_is_refused(tiny_npz: Path, tmp_path: Path) -> None:
    """A 2-node matrix for 3 partitions fails when the strategy is built, naming both sizes."""
    run_config = _run_config(tiny_npz, tmp_path, **{"ktg-gates": "T,T;T,T", "ktg-models": "cnn"})
    with pytest.raises(GateMatrixError, match=r"ktg-gates: .*has 2 nodes, expected 3"):
        _strategy(run_config)


def test_clients_that_do_not_match_the_matrix_are_refused(tiny_npz: Path, tmp_path: Path) -> None:
    """Prepare: a 3-node matrix (num-partitions 3), but only 2 SuperNodes (partitions 0, 1).
    Execute: start. Assert: GateMatrixError naming 3 nodes, 2 clients and their partitions;
    no KTG message was sent."""
    run_config = _run_config(tiny_npz, tmp_path)
    grid = InProcessGrid(
        real_client_app,
        run_config,
        num_nodes=2,
        node_configs=[{"partition-id": i, "num-partitions": 3} for i in range(2)],
    )
    strategy = _strategy(run_config)
    strategy.nodes.settle = 0.0
    with pytest.raises(GateMatrixError, match=r"has 3 nodes, but 2 client\(s\) joined .*\[0, 1\]"):
        strategy.start(grid, ArrayRecord(), num_rounds=1, timeout=5)
    assert all(m.metadata.message_type == "query.whoami" for m in grid.delivered)


def test_message_constants_match_the_client() -> None:
    """Strategy and client agree on message types and record keys (both from the protocol)."""
    assert f"{MessageType.QUERY}.{ktg_client.ACTION_LOGITS}" == ktg.MSG_LOGITS
    assert f"{MessageType.TRAIN}.{ktg_client.ACTION_TRAIN}" == ktg.MSG_TRAIN
    assert f"{MessageType.EVALUATE}.{ktg_client.ACTION_EVALUATE}" == ktg.MSG_EVALUATE
    setup = protocol.KTGSetup(3, ("cnn", "vgg8"), 7, "split", 0.2)
    assert protocol.KTGSetup.from_config(setup.to_config()) == setup
    settings = protocol.TrainSettings(0.5, 2.0)
    assert protocol.TrainSettings.from_config(settings.to_config()) == settings


# ----------------------------------------------------------------------------- graph targets
def test_graph_targets_by_hand() -> None:
    """Prepare: 3 nodes, gates "T,C,X;L,T,T;X,X,X" (node 2 fixed, teaching node 1), round 1
    of 4, hand-made logits and labels. Execute: graph_targets.
    Assert: node 0 gets node 1 with the Correct mask, node 1 gets node 0 at 1/4 (Linear)
    and node 2 at 1; node 2 (fixed) gets nothing; a node missing from the logits drops its
    edges."""
    gates = GateMatrix.parse("T,C,X;L,T,T;X,X,X")
    z = {
        0: np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]], np.float32),
        1: np.array([[0.0, 3.0], [0.0, 1.0], [5.0, 0.0]], np.float32),  # top-1: 1, 1, 0
        2: np.array([[1.0, 1.0], [2.0, 0.0], [0.0, 2.0]], np.float32),
    }
    labels = np.array([0, 1, 0])

    found = graph_targets(z, labels, gates, server_round=1, num_rounds=4)

    assert sorted(found) == [0, 1]
    assert found[0].sources == (1,)
    np.testing.assert_array_equal(found[0].logits, z[1][None])
    np.testing.assert_array_equal(found[0].weights, [[0.0, 1.0, 1.0]])
    assert found[1].sources == (0, 2)
    np.testing.assert_array_equal(found[1].logits, np.stack([z[0], z[2]]))
    np.testing.assert_array_equal(found[1].weights, [[0.25] * 3, [1.0] * 3])
    partial = graph_targets({0: z[0], 2: z[2]}, labels, gates, server_round=1, num_rounds=4)
    assert partial[0].sources == () and partial[0].logits.shape == (0, 3, 2)
    assert partial[1].sources == (0, 2)
    assert self_weight(gates, 1, 1, 4) == 1.0 and self_weight(gates, 2, 1, 4) == 0.0
    assert self_weight(GateMatrix.parse("L,T;T,T"), 0, 1, 4) == 0.25


def test_mean_logits_graph_is_fedmds_consensus_of_the_others(
    tiny_npz: Path, tmp_path: Path
) -> None:
    """FedMD as a graph: all Through with ktg-aggregate = "mean-logits".

    Prepare: a FedMD (KD) strategy and a KTG strategy on the same run, 3 partitions; random
    logits of the 3 clients on the public batch, as scores replies.
    Execute: for each node t, FedMD's aggregate_query on the replies of the other two nodes,
    and KTG's graph_targets on all three.
    Assert: node t's one KTG target is FedMD's consensus of the others, bit for bit, with
    gate 1 on every image.
    """
    run_config = _run_config(
        tiny_npz, tmp_path, **{"fedmd-method": "KD", "fedmd-alignment-size": 16}
    )
    fm = fedmd.FedMD(
        ExperimentConfig.from_run_config(run_config), FedMDConfig.from_run_config(run_config)
    )
    fm.nodes.node_of_partition.update({0: 11, 1: 12, 2: 13})
    rng = np.random.default_rng(0)
    logits = {p: rng.standard_normal((16, 4)).astype(np.float32) * 10 for p in range(3)}
    replies = {}
    for pid, node in fm.nodes.node_of_partition.items():
        request = Message(RecordDict(), dst_node_id=node, message_type=fedmd.MSG_SCORES)
        scores = ArrayRecord({"logits": Array(logits[pid])})
        replies[pid] = Message(RecordDict({fedmd.SCORES: scores}), reply_to=request)
        replies[pid].metadata.__dict__["_src_node_id"] = node

    targets = graph_targets(
        logits, None, GateMatrix.parse("T,T,T;T,T,T;T,T,T"), 1, 2, "mean-logits"
    )

    for t in range(3):
        consensus, _ = fm.aggregate_query(1, [replies[s] for s in range(3) if s != t])
        assert consensus is not None
        assert targets[t].sources == tuple(s for s in range(3) if s != t)
        assert targets[t].logits.shape == (1, 16, 4)
        assert np.array_equal(targets[t].logits[0], consensus["logits"].numpy())
        assert np.array_equal(targets[t].weights, np.ones((1, 16), np.float32))


# ----------------------------------------------------------------------------- real runs
def test_all_cutoff_equals_independent_local_training(tiny_npz: Path, tmp_path: Path) -> None:
    """All-Cutoff off-diagonal is independent local training, digit for digit.

    Prepare: 3 heterogeneous nodes (cnn, resnet8, cnn), gates "T,X,X;X,T,X;X,X,T", 2 rounds
    of 2 local epochs with augmentation and a cosine schedule; the reference builds each
    node's model from the same seed and trains it with train_supervised on its private
    shard, round by round, with the same seeds and schedule.
    Execute: run_experiment over real messages; the reference loop.
    Assert: every node's test accuracy of every round and its final weights are identical;
    no logits query and no targets were sent.
    """
    run_config = _run_config(
        tiny_npz,
        tmp_path,
        **{
            "ktg-gates": "T,X,X;X,T,X;X,X,T",
            "local-epochs": 2,
            "augment": True,
            "lr-schedule": "cosine",
        },
    )
    grid = InProcessGrid(real_client_app, run_config, num_nodes=3)
    run_experiment(grid, run_config, tmp_path / "run")
    rows = _rows(tmp_path / "run")

    cfg = ExperimentConfig.from_run_config(run_config)
    private_cfg = cfg.replace(core_fraction=0.2)
    test = experiment.test_data(cfg)
    for pid, name in enumerate(["cnn", "resnet8", "cnn"]):
        torch.manual_seed(derive_seed("ktg-init", cfg.seed, partition=pid))
        model = build_model(name, 4, 3)
        private = experiment.client_data(private_cfg, pid)
        accuracies = [evaluate(model, test.x, test.y, batch_size=256).accuracy]
        for server_round in (1, 2):
            train_supervised(
                model,
                private.x,
                private.y,
                epochs=2,
                batch_size=16,
                lr=0.05,
                momentum=cfg.momentum,
                weight_decay=cfg.weight_decay,
                seed=derive_seed(
                    "client-train", cfg.seed, server_round=server_round, partition=pid
                ),
                augment=True,
                padding=private.padding,
                flip=False,
                lr_schedule="cosine",
            )
            accuracies.append(evaluate(model, test.x, test.y, batch_size=256).accuracy)
        assert [rows[r]["node-acc"][pid] for r in (0, 1, 2)] == accuracies
        state = grid.contexts[grid.node_id_of(pid)].state["ktg-model"].to_torch_state_dict()
        for key, value in model.state_dict().items():
            assert torch.equal(state[key], value), key
    assert rows[2]["num-trained"] == 3 and rows[2]["num-teachers"] == 0
    types = {m.metadata.message_type for m in grid.delivered}
    assert ktg.MSG_LOGITS not in types and ktg.MSG_TRAIN in types
    assert all(protocol.TARGETS not in m.content.array_records for m in grid.delivered)


def test_graph_run_sends_logits_and_targets_not_weights(tiny_npz: Path, tmp_path: Path) -> None:
    """A 3-node run with every gate kind over real messages.

    Prepare: gates "T,C,X;L,T,T;X,T,T" (node 0: Correct from 1; node 1: Linear from 0,
    Through from 2; node 2: Through from 1), 2 rounds. Execute: run_experiment.
    Assert: per-round node accuracies and node 0's; each train message carries the targets
    of its row (sources, K x N x C logits, the Linear weight 1/2 then 1); no model weights
    travel; ktg-setup.json names the graph and models.
    """
    run_config = _run_config(tiny_npz, tmp_path, **{"ktg-gates": "T,C,X;L,T,T;X,T,T"})
    grid = InProcessGrid(real_client_app, run_config, num_nodes=3)
    run_experiment(grid, run_config, tmp_path / "run")

    rows = _rows(tmp_path / "run")
    assert sorted(rows) == [0, 1, 2]
    for row in rows.values():
        assert len(row["node-acc"]) == 3 and row["node-0-acc"] == row["node-acc"][0]
        assert 0.0 <= row["test-acc-mean"] <= row["test-acc-max"] <= 1.0
    assert rows[1]["left-out"] == {} and rows[1]["num-teachers"] == 3
    assert rows[2]["num-trained"] == 3 and rows[2]["bytes-received"] > 3 * 16 * 4 * 4
    trains = [m for m in grid.delivered if m.metadata.message_type == ktg.MSG_TRAIN]
    by_round = {(m.metadata.group_id, m.metadata.dst_node_id): m for m in trains}
    node1 = by_round[("1", grid.node_id_of(1))].content[protocol.TARGETS]
    assert node1["sources"].numpy().tolist() == [0, 2]
    assert node1["logits"].numpy().shape == (2, 16, 4)
    np.testing.assert_array_equal(node1["weights"].numpy()[0], np.full(16, 0.5, np.float32))
    node1 = by_round[("2", grid.node_id_of(1))].content[protocol.TARGETS]
    np.testing.assert_array_equal(node1["weights"].numpy()[0], np.ones(16, np.float32))
    assert set(
        np.unique(by_round[("1", grid.node_id_of(0))].content[protocol.TARGETS]["weights"].numpy())
    ) <= {0.0, 1.0}
    state_keys = set().union(*(build_model(n, 4, 3).state_dict() for n in ("cnn", "resnet8")))
    for message in grid.delivered:
        for record in message.content.array_records.values():
            assert not set(record) & state_keys, "model weights travelled"
    setup = json.loads((tmp_path / "run" / "ktg-setup.json").read_text())
    assert setup["gates"] == "T,C,X;L,T,T;X,T,T"
    assert [n["model"] for n in setup["nodes"]] == ["cnn", "resnet8", "cnn"]


def _misbehaving_app(train_fails: bool = False) -> ClientApp:
    """The real KTG handlers, but partition 1 returns 5 classes and partition 2 NaN logits;
    with ``train_fails`` every train handler raises."""
    app = ClientApp()
    app.query("whoami")(whoami)
    app.evaluate(ktg_client.ACTION_EVALUATE)(ktg_client.evaluate_ktg)

    @app.train(ktg_client.ACTION_TRAIN)
    def train(msg: Message, context: Context) -> Message:
        if train_fails:
            raise RuntimeError("training exploded")
        return ktg_client.train_ktg(msg, context)

    @app.query(ktg_client.ACTION_LOGITS)
    def logits(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        reply = ktg_client.query_logits(msg, context)
        z = reply.content[protocol.LOGITS]["logits"].numpy().copy()
        if pid == 1:
            z = np.concatenate([z, z[:, :1]], axis=1)
        elif pid == 2:
            z[0, 0] = np.nan
        reply.content[protocol.LOGITS]["logits"] = Array(np.ascontiguousarray(z))
        return reply

    return app


def test_bad_logits_are_left_out_and_the_run_continues(tiny_npz: Path, tmp_path: Path) -> None:
    """Prepare: all-Through 3 nodes; partition 1 sends 5 classes, partition 2 NaN logits.
    Execute: run_experiment, 2 rounds.
    Assert: each round reports both left out with their reason; node 0 gets no targets
    (both its sources are out), nodes 1 and 2 get node 0 only; all 3 train every round."""
    run_config = _run_config(tiny_npz, tmp_path)
    grid = InProcessGrid(_misbehaving_app(), run_config, num_nodes=3)
    run_experiment(grid, run_config, tmp_path / "run")

    rows = _rows(tmp_path / "run")
    for server_round in (1, 2):
        left_out = rows[server_round]["left-out"]
        assert set(left_out) == {"1", "2"}
        assert "logits have shape (16, 5), expected (16, 4)" in left_out["1"]
        assert "NaN" in left_out["2"]
        assert rows[server_round]["num-teachers"] == 1
        assert rows[server_round]["num-trained"] == 3
    trains = [m for m in grid.delivered if m.metadata.message_type == ktg.MSG_TRAIN]
    for message in trains:
        record = message.content.array_records.get(protocol.TARGETS)
        if message.metadata.dst_node_id == grid.node_id_of(0):
            assert record is None
        else:
            assert record is not None and record["sources"].numpy().tolist() == [0]


def test_no_client_trained_fails_the_run(tiny_npz: Path, tmp_path: Path) -> None:
    """Every train handler raises: the run ends with FederationError (one line), after the
    failures of each round are reported."""
    run_config = _run_config(tiny_npz, tmp_path, **{"num-server-rounds": 1})
    grid = InProcessGrid(_misbehaving_app(train_fails=True), run_config, num_nodes=3)
    with pytest.raises(FederationError, match=r"^ktg: no client trained in any of the 1 round"):
        run_experiment(grid, run_config, tmp_path / "run")
