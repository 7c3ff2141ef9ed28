"""Tests for the FedMD strategy: config, consensus, bad replies and real-message runs.

The runs use :class:`edgekd.inprocess.InProcessGrid` (real Flower messages, the real ClientApp or
a deliberately misbehaving one, in this process); one run goes through ``flwr run``, Flower's
simulation engine and Ray.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from edgekd.clients import fedmd as fedmd_client
from edgekd.clients.app import app as real_client_app
from edgekd.clients.app import whoami
from edgekd.config import ExperimentConfig
from edgekd.inprocess import InProcessGrid
from edgekd.launch import launch
from edgekd.losses import latent_distillation_loss
from edgekd.models import build_model
from edgekd.runner import run_experiment
from edgekd.strategies import fedmd
from edgekd.strategies.common import FederationError
from edgekd.strategies.fedmd import FedMDConfig, consensus, content_bytes

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run_config(tiny_npz: Path, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A fast FedMD run on the tiny npz: public split 20 %, 16 alignment images per round."""
    config: dict[str, Any] = {
        "strategy": "fedmd",
        "dataset": "npz",
        "npz-path": str(tiny_npz),
        "num-partitions": 3,
        "num-server-rounds": 2,
        "batch-size": 16,
        "lr": 0.05,
        "fedmd-method": "LKD",
        "fedmd-client-models": "cnn,resnet8,vgg8",
        "fedmd-representation-dim": 16,
        "fedmd-public-source": "split",
        "fedmd-public-fraction": 0.2,
        "fedmd-alignment-size": 16,
        "fedmd-pretrain-public-epochs": 1,
        "fedmd-pretrain-private-epochs": 1,
        "fedmd-private-test-size": 20,
        "output-dir": str(tmp_path),
    }
    config.update(overrides)
    return config


def _rows(out_dir: Path) -> dict[int, dict[str, Any]]:
    """metrics.json of a run, keyed by round."""
    return {row["round"]: row for row in json.loads((out_dir / "metrics.json").read_text())}


def _recording(grid: InProcessGrid) -> list[tuple[Message, Message]]:
    """Make ``grid`` remember every (instruction, reply) pair it delivers."""
    pairs: list[tuple[Message, Message]] = []
    execute = grid._execute

    def record(message: Message) -> Message:
        reply = execute(message)
        pairs.append((message, reply))
        return reply

    grid._execute = record  # type: ignore[method-assign]
    return pairs


# ----------------------------------------------------------------------------- config
def test_config_parses_fedmd_keys() -> None:
    """The fedmd-* keys are parsed into FedMDConfig; absent keys keep the defaults."""
    parsed = FedMDConfig.from_run_config(
        {"fedmd-method": "KD", "fedmd-representation-dim": 32, "fedmd-client-models": "cnn, vgg8"}
    )
    assert parsed.method == "KD" and parsed.representation_dim == 32
    assert parsed.models == ("cnn", "vgg8")
    assert [parsed.model_name(p) for p in range(3)] == ["cnn", "vgg8", "cnn"]
    assert parsed.alignment_size == FedMDConfig().alignment_size


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("fedmd-method", "FedProx", "fedmd-method"),
        ("fedmd-client-models", "cnn,nosuchnet", "nosuchnet"),
        ("fedmd-logit-loss", "huber", "fedmd-logit-loss"),
        ("fedmd-consensus-weighting", "random", "fedmd-consensus-weighting"),
        ("fedmd-public-source", "hub:cifar", "fedmd-public-source"),
        ("fedmd-public-fraction", 0.0, "fedmd-public-fraction"),
        ("fedmd-representation-dim", 0, "fedmd-representation-dim"),
        ("fedmd-temperature", 0.0, "fedmd-temperature"),
    ],
)
def test_config_rejects_bad_values(key: str, value: Any, match: str) -> None:
    """A bad fedmd-* value raises one error naming the key."""
    with pytest.raises(ValueError, match=match):
        FedMDConfig.from_run_config({key: value})


def test_fedavg_needs_one_architecture() -> None:
    """The FedAvg baseline is refused when the clients' architectures differ."""
    with pytest.raises(ValueError, match="one architecture"):
        FedMDConfig.from_run_config({"fedmd-method": "FedAvg", "fedmd-client-models": "cnn,vgg8"})


def test_message_constants_match_the_client() -> None:
    """Strategy and client agree on the message types and record keys (both take them from
    edgekd.protocol.fedmd; they never import each other)."""
    assert f"{MessageType.QUERY}.{fedmd_client.ACTION_SCORES}" == fedmd.MSG_SCORES
    assert f"{MessageType.TRAIN}.{fedmd_client.ACTION_TRAIN}" == fedmd.MSG_TRAIN
    assert f"{MessageType.EVALUATE}.{fedmd_client.ACTION_EVALUATE}" == fedmd.MSG_EVALUATE
    assert (fedmd.PUBLIC, fedmd.CONSENSUS, fedmd.SCORES) == (
        fedmd_client.PUBLIC,
        fedmd_client.CONSENSUS,
        fedmd_client.SCORES,
    )


# ----------------------------------------------------------------------------- consensus, loss
def test_consensus_equals_hand_computation() -> None:
    """The consensus is the mean of the clients' scores, or their weighted mean."""
    a = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    b = np.array([[3.0, 0.0], [-1.0, 2.0]], dtype=np.float32)
    c = np.array([[2.0, 4.0], [1.0, 0.0]], dtype=np.float32)

    plain = consensus([a, b, c])
    weighted = consensus([a, b, c], [1.0, 2.0, 1.0])

    np.testing.assert_allclose(plain, [[2.0, 2.0], [1.0, 2.0]], rtol=1e-6)
    hand = (1 * a + 2 * b + 1 * c) / 4  # [[2.25, 1.5], [0.5, 2.0]]
    np.testing.assert_allclose(weighted, hand, rtol=1e-6)
    np.testing.assert_allclose(weighted, [[2.25, 1.5], [0.5, 2.0]], rtol=1e-6)


def test_latent_loss_zero_for_identical_positive_otherwise() -> None:
    """The representation MSE is 0 for identical representations and positive otherwise."""
    reps = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    assert float(latent_distillation_loss(reps, reps.clone())) == 0.0
    assert float(latent_distillation_loss(reps, reps + 0.1)) == pytest.approx(0.01, rel=1e-4)
    assert float(latent_distillation_loss(reps, torch.zeros_like(reps))) > 0.0


# ----------------------------------------------------------------------------- real runs
def test_lkd_run_sends_scores_not_weights(tiny_npz: Path, tmp_path: Path) -> None:
    """An LKD run over real messages: per-round accuracies and bytes, and no weights travel."""
    run_config = _run_config(tiny_npz, tmp_path)
    grid = InProcessGrid(real_client_app, run_config, num_nodes=3)
    pairs = _recording(grid)

    run_experiment(grid, run_config, tmp_path / "run")

    rows = _rows(tmp_path / "run")
    assert sorted(rows) == [0, 1, 2]
    for row in rows.values():
        assert 0.0 <= row["uniform-acc-mean"] <= 1.0 and 0.0 <= row["private-acc-mean"] <= 1.0
        assert len(row["uniform-acc"]) == 3 and row["uniform-acc-std"] >= 0.0
    assert rows[2]["num-in-consensus"] == 3 and rows[2]["left-out"] == {}
    state_keys = set().union(
        *(
            build_model(name, 4, 3, representation_dim=16).state_dict()
            for name in ("cnn", "resnet8", "vgg8")
        )
    )
    for message, reply in pairs:
        for record in [
            *message.content.array_records.values(),
            *reply.content.array_records.values(),
        ]:
            assert not set(record) & state_keys, "model weights travelled"
        if reply.content.array_records:
            assert set(reply.content.array_records) == {fedmd.SCORES}
            assert set(reply.content[fedmd.SCORES]) == {"logits", "representations"}
    for server_round in (1, 2):
        in_round = [(m, r) for m, r in pairs if m.metadata.group_id == str(server_round)]
        assert rows[server_round]["bytes-sent"] == sum(content_bytes(m) for m, _ in in_round)
        assert rows[server_round]["bytes-received"] == sum(content_bytes(r) for _, r in in_round)
        assert rows[server_round]["bytes-received"] > 16 * (4 + 16) * 4 * 3  # logits + reps
    setup = json.loads((tmp_path / "run" / "fedmd-setup.json").read_text())
    assert [c["model"] for c in setup["clients"]] == ["cnn", "resnet8", "vgg8"]
    assert len({c["num_parameters"] for c in setup["clients"]}) == 3
    assert (tmp_path / "run" / "accuracy.png").stat().st_size > 0


def _misbehaving_app() -> ClientApp:
    """A ClientApp that delegates to the real FedMD handlers but corrupts some scores.

    Partition 1 returns 5 classes instead of 4, partition 2 one sample too few, partition 3
    NaN logits and partition 4 raises; partition 0 behaves.
    """
    app = ClientApp()
    app.query("whoami")(whoami)
    app.train(fedmd_client.ACTION_TRAIN)(fedmd_client.train_fedmd)
    app.evaluate(fedmd_client.ACTION_EVALUATE)(fedmd_client.evaluate_fedmd)

    @app.query(fedmd_client.ACTION_SCORES)
    def scores(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        if pid == 4:
            raise RuntimeError("scores exploded")
        reply = fedmd_client.query_scores(msg, context)
        logits = reply.content[fedmd_client.SCORES]["logits"].numpy()
        if pid == 1:
            logits = np.concatenate([logits, logits[:, :1]], axis=1)
        elif pid == 2:
            logits = logits[:-1]
        elif pid == 3:
            logits = logits.copy()
            logits[0, 0] = np.nan
        reply.content[fedmd_client.SCORES]["logits"] = Array(np.ascontiguousarray(logits))
        return reply

    return app


def test_bad_replies_are_left_out_and_the_run_continues(tiny_npz: Path, tmp_path: Path) -> None:
    """Wrong classes, wrong sample count, NaN and error replies leave the consensus with a
    reason each; the good client's scores form it and the run completes both rounds."""
    run_config = _run_config(
        tiny_npz,
        tmp_path,
        **{"num-partitions": 5, "fedmd-method": "KD", "fedmd-client-models": "cnn,vgg8"},
    )
    grid = InProcessGrid(_misbehaving_app(), run_config, num_nodes=5)

    run_experiment(grid, run_config, tmp_path / "run")

    rows = _rows(tmp_path / "run")
    assert sorted(rows) == [0, 1, 2]
    for server_round in (1, 2):
        left_out = rows[server_round]["left-out"]
        assert set(left_out) == {"1", "2", "3", "4"}
        assert "logits have shape" in left_out["1"] and ", 5)" in left_out["1"]
        assert "logits have shape" in left_out["2"]
        assert "NaN" in left_out["3"]
        assert "error reply" in left_out["4"] and "scores exploded" in left_out["4"]
        assert rows[server_round]["num-in-consensus"] == 1
        assert rows[server_round]["num-trained"] == 5
        assert math.isfinite(rows[server_round]["uniform-acc-mean"])


class _PerPartition:
    """A node runner that gives chosen partitions another ClientApp (called as Flower does)."""

    def __init__(self, default: ClientApp, others: dict[int, ClientApp]) -> None:
        self.default, self.others = default, others

    def __call__(self, message: Message, context: Context) -> Message:
        app = self.others.get(int(context.node_config["partition-id"]), self.default)
        return app(message, context)


def test_node_without_fedmd_handlers_is_left_out(
    tiny_npz: Path, tmp_path: Path, plain_client_app: ClientApp
) -> None:
    """A plain Flower ClientApp (no FedMD handlers, no whoami) is left out with its reason.

    Prepare: 3 nodes; partition 2 runs the Flower-only ClientApp, the others edgekd's; KD,
    1 round.
    Execute: run_experiment.
    Assert: round 0 reports that node left out, naming Flower's "No evaluate function
    registered"; the consensus of round 1 has the 2 FedMD clients and no "left-out"; after
    round 0 no message went to the left-out node.
    """
    run_config = _run_config(tiny_npz, tmp_path, **{"fedmd-method": "KD", "num-server-rounds": 1})
    runner = _PerPartition(real_client_app, {2: plain_client_app})
    grid = InProcessGrid(runner, run_config, num_nodes=3)  # type: ignore[arg-type]
    run_experiment(grid, run_config, tmp_path / "run")

    rows = _rows(tmp_path / "run")
    ((label, reason),) = rows[0]["left-out-nodes"].items()
    assert label == f"node {grid.node_id_of(2)}"
    assert "No evaluate function registered" in reason
    assert rows[1]["num-in-consensus"] == 2 and rows[1]["left-out"] == {}
    assert rows[1]["num-trained"] == 2 and len(rows[1]["uniform-acc"]) == 2
    later = [m for m in grid.delivered if m.metadata.group_id not in {"0", "whoami"}]
    assert later and all(m.metadata.dst_node_id != grid.node_id_of(2) for m in later)


def test_fewer_than_two_fedmd_clients_fail_the_run(
    tiny_npz: Path, tmp_path: Path, plain_client_app: ClientApp
) -> None:
    """With one FedMD client out of two nodes the run fails with one line naming the count.

    Prepare: 2 nodes, partition 1 runs the Flower-only ClientApp.
    Execute: run_experiment.
    Assert: FederationError "fedmd: 1 of 2 node(s) answered FedMD's messages; FedMD needs at
    least 2 clients (first reason: ...No evaluate function registered...)", one line.
    """
    run_config = _run_config(tiny_npz, tmp_path, **{"num-partitions": 2})
    runner = _PerPartition(real_client_app, {1: plain_client_app})
    grid = InProcessGrid(runner, run_config, num_nodes=2)  # type: ignore[arg-type]
    with pytest.raises(FederationError) as info:
        run_experiment(grid, run_config, tmp_path / "run")
    message = str(info.value)
    assert message.startswith("fedmd: 1 of 2 node(s) answered FedMD's messages; FedMD needs")
    assert "No evaluate function registered" in message and "\n" not in message


def test_ce_and_fedavg_baselines(tiny_npz: Path, tmp_path: Path) -> None:
    """CE sends no scores query and no consensus; FedAvg (one architecture) averages weights
    and the clients evaluate the global model."""
    ce = _run_config(tiny_npz, tmp_path, **{"fedmd-method": "CE", "num-server-rounds": 1})
    grid = InProcessGrid(real_client_app, ce, num_nodes=3)
    run_experiment(grid, ce, tmp_path / "ce")
    types = {m.metadata.message_type for m in grid.delivered}
    assert fedmd.MSG_SCORES not in types and fedmd.MSG_TRAIN in types
    assert all(fedmd.CONSENSUS not in m.content.array_records for m in grid.delivered)

    avg = _run_config(
        tiny_npz,
        tmp_path,
        **{"fedmd-method": "FedAvg", "fedmd-client-models": "cnn", "num-server-rounds": 2},
    )
    grid = InProcessGrid(real_client_app, avg, num_nodes=3)
    result = run_experiment(grid, avg, tmp_path / "fedavg")
    cfg = ExperimentConfig.from_run_config(avg)
    reference = build_model("cnn", 4, 3, representation_dim=16).state_dict()
    assert set(result.arrays.to_torch_state_dict()) == set(reference)
    evaluations = [m for m in grid.delivered if m.metadata.message_type == fedmd.MSG_EVALUATE]
    assert [("arrays" in m.content.array_records) for m in evaluations] == [False] * 3 + [True] * (
        3 * cfg.num_server_rounds
    )
    rows = _rows(tmp_path / "fedavg")
    # Every client evaluates the same global model on the same uniform test split.
    assert rows[2]["uniform-acc-std"] == pytest.approx(0.0, abs=1e-9)


def test_consensus_does_not_depend_on_reply_order(tiny_npz: Path, tmp_path: Path) -> None:
    """Replies arrive in any order; the consensus is formed in partition order, bit for bit.

    Prepare: a KD strategy for 3 partitions mapped to node ids; three scores replies with
    random logits whose float32 sum depends on the summation order.
    Execute: aggregate_query with the replies in two different orders.
    Assert: the two consensus arrays are identical (not just close).
    """
    run_config = _run_config(tiny_npz, tmp_path, **{"fedmd-method": "KD"})
    strategy = fedmd.FedMD(
        ExperimentConfig.from_run_config(run_config), FedMDConfig.from_run_config(run_config)
    )
    strategy.nodes.node_of_partition.update({0: 11, 1: 12, 2: 13})
    indices = strategy.alignment_indices(1)
    rng = np.random.default_rng(0)
    replies = []
    for node in (11, 12, 13):
        request = Message(RecordDict(), dst_node_id=node, message_type=fedmd.MSG_SCORES)
        logits = (rng.standard_normal((len(indices), strategy.num_classes)) * 1e3).astype(
            np.float32
        )
        scores = ArrayRecord({"logits": Array(logits)})
        reply = Message(RecordDict({fedmd.SCORES: scores}), reply_to=request)
        reply.metadata.__dict__["_src_node_id"] = node
        replies.append(reply)
    forward, _ = strategy.aggregate_query(1, replies)
    backward, _ = strategy.aggregate_query(1, [replies[2], replies[0], replies[1]])
    assert forward is not None and backward is not None
    assert np.array_equal(forward["logits"].numpy(), backward["logits"].numpy())


def test_unreachable_public_npz_is_reported(tiny_npz: Path, tmp_path: Path) -> None:
    """An npz public source that does not exist fails before any round, naming the file."""
    run_config = _run_config(
        tiny_npz, tmp_path, **{"fedmd-public-source": f"npz:{tmp_path / 'missing.npz'}"}
    )
    grid = InProcessGrid(real_client_app, run_config, num_nodes=3)
    with pytest.raises(FileNotFoundError, match=r"missing\.npz"):
        run_experiment(grid, run_config, tmp_path / "run")
    assert grid.delivered == []


def test_scores_reply_without_record_is_rejected() -> None:
    """check_scores names what is missing in a reply."""
    reply = Message(
        content=RecordDict({"other": ArrayRecord()}), dst_node_id=1, message_type="query"
    )
    with pytest.raises(ValueError, match="fedmd-scores"):
        fedmd.check_scores(reply, 0, 4, 10, None)


@pytest.mark.integration
def test_fedmd_two_rounds_through_simulation_engine(tiny_npz: Path, tmp_path: Path) -> None:
    """2 LKD rounds, 2 heterogeneous clients, via flwr run + Flower's simulation engine + Ray."""
    out_dir = tmp_path / "results"
    overrides = (
        f"strategy='fedmd' dataset='npz' npz-path='{tiny_npz}' num-partitions=2 "
        "num-server-rounds=2 batch-size=16 fedmd-client-models='cnn,resnet8' "
        "fedmd-representation-dim=16 fedmd-public-fraction=0.2 fedmd-alignment-size=16 "
        "fedmd-pretrain-private-epochs=1 fedmd-private-test-size=20 "
        f"output-dir='{out_dir}'"
    )
    code = launch(ROOT, [overrides], timeout=540, flwr_home=tmp_path / "home")
    assert code == 0
    runs = list(out_dir.iterdir())
    assert len(runs) == 1
    rows = _rows(runs[0])
    assert sorted(rows) == [0, 1, 2]
    assert all(0.0 <= rows[r]["uniform-acc-mean"] <= 1.0 for r in rows)
    assert rows[2]["num-in-consensus"] == 2 and rows[2]["bytes-received"] > 0
    setup = json.loads((runs[0] / "fedmd-setup.json").read_text())
    assert [c["model"] for c in setup["clients"]] == ["cnn", "resnet8"]


def test_kd_without_digest_equals_ce_digit_for_digit(tiny_npz: Path, tmp_path: Path) -> None:
    """KD with fedmd-digest-epochs = 0 queries scores but trains exactly as CE: every
    accuracy of every round is the same."""
    runs = {}
    for method in ("CE", "KD"):
        config = _run_config(
            tiny_npz, tmp_path, **{"fedmd-method": method, "fedmd-digest-epochs": 0}
        )
        run_experiment(
            InProcessGrid(real_client_app, config, num_nodes=3), config, tmp_path / method
        )
        runs[method] = _rows(tmp_path / method)
    keys = ("uniform-acc-mean", "private-acc-mean", "uniform-acc-std", "private-acc-std")
    assert len(runs["CE"]) == 3
    for server_round, row in runs["CE"].items():
        assert [row[k] for k in keys] == [runs["KD"][server_round][k] for k in keys]
    assert "consensus-agreement" in runs["KD"][1] and "consensus-agreement" not in runs["CE"][1]


def test_consensus_diagnostics_by_hand() -> None:
    """Agreement and accuracies of the consensus and the clients on hand-made logits."""
    from edgekd.strategies.fedmd_consensus import ClientScores, consensus_diagnostics

    a = np.array([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])  # top-1: 0, 0, 1
    b = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])  # top-1: 1, 0, 1
    scores = [ClientScores(0, a, None, 10), ClientScores(1, b, None, 10)]
    mean = consensus([a, b])  # top-1: 0, 0, 1
    found = consensus_diagnostics(scores, mean, np.array([1, 0, 1]))
    assert found["consensus-agreement"] == pytest.approx((3 / 3 + 2 / 3) / 2)
    assert found["consensus-acc"] == pytest.approx(2 / 3)
    assert found["client-acc-mean"] == pytest.approx((2 / 3 + 3 / 3) / 2)
    assert found["client-acc-max"] == pytest.approx(1.0)
    assert set(consensus_diagnostics(scores, mean, None)) == {"consensus-agreement"}
