"""A federated knowledge transfer graph through `flwr run`, Flower's simulation engine and Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekd.launch import launch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_ktg_graph_round_trip_through_simulation_engine(tiny_npz: Path, tmp_path: Path) -> None:
    """3 graph nodes with their own models exchange logits and targets via flwr run + Ray.

    Prepare: the tiny npz, 3 SuperNodes (1 CPU each, models cnn, resnet8, cnn), gates
    "T,T,X;L,T,T;X,T,T" (Through, Linear and Cutoff edges), 2 rounds, 16 public images a
    round from a 20 % split. Execute: the launcher (`flwr run` on a private SuperLink).
    Assert: exit 0; every round has the 3 nodes' test accuracies and node 0's; all 3 nodes
    trained in both rounds with no logits left out; logits travelled (bytes received beyond
    the metrics); ktg-setup.json names the graph.
    """
    out_dir = tmp_path / "results"
    overrides = (
        f"strategy='ktg' dataset='npz' npz-path='{tiny_npz}' num-partitions=3 "
        "num-server-rounds=2 batch-size=16 ktg-models='cnn,resnet8,cnn' "
        "ktg-gates='T,T,X;L,T,T;X,T,T' ktg-public-fraction=0.2 ktg-public-size=16 "
        f"output-dir='{out_dir}'"
    )
    code = launch(
        ROOT,
        [overrides],
        federation_config="num-supernodes=3 client-resources-num-cpus=1",
        timeout=540,
        flwr_home=tmp_path / "flwr-home",
    )
    assert code == 0
    (run_dir,) = list(out_dir.iterdir())
    rows = {row["round"]: row for row in json.loads((run_dir / "metrics.json").read_text())}
    assert sorted(rows) == [0, 1, 2]
    for row in rows.values():
        assert len(row["node-acc"]) == 3 and row["node-0-acc"] == row["node-acc"][0]
        assert 0.0 <= row["test-acc-mean"] <= 1.0
    for server_round in (1, 2):
        assert rows[server_round]["num-trained"] == 3
        assert rows[server_round]["left-out"] == {} and rows[server_round]["num-teachers"] == 3
        assert rows[server_round]["bytes-received"] > 3 * 16 * 4 * 4
    setup = json.loads((run_dir / "ktg-setup.json").read_text())
    assert setup["gates"] == "T,T,X;L,T,T;X,T,T"
