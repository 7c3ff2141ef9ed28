"""Filter pruning + layer-wise transfer through `flwr run`, Flower's simulation engine and Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekd.launch import launch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_prune_kt_round_trip_through_simulation_engine(tiny_npz: Path, tmp_path: Path) -> None:
    """The cloud prunes its teacher per edge and 2 simulated edges each learn their new class.

    Prepare: the tiny npz (4 classes), core 50 %, 2 SuperNodes (1 CPU each), resnet8 teacher
    on classes {0, 1}, edge 0: P = 1.0 and new class 3, edge 1: P = 0.8 and new class 2; one
    epoch everywhere. Execute: the launcher (`flwr run` on a private SuperLink).
    Assert: exit 0; both edges completed the transfer with their own P and new class; the
    recorded downlink bytes cover student and teacher; accuracies are fractions.
    """
    out_dir = tmp_path / "results"
    overrides = (
        f"strategy='prune-kt' dataset='npz' npz-path='{tiny_npz}' num-partitions=2 "
        "core-fraction=0.5 model='resnet8' batch-size=16 num-server-rounds=1 "
        "pk-teacher-depth=8 pk-teacher-epochs=1 pk-student-epochs=1 pk-transfer-epochs=1 "
        "pk-thresholds='1.0,0.8' pk-new-classes='3,2' pk-old-fraction=0.5 pk-stat-images=16 "
        f"output-dir='{out_dir}'"
    )
    code = launch(
        ROOT,
        [overrides],
        federation_config="num-supernodes=2 client-resources-num-cpus=1",
        timeout=540,
        flwr_home=tmp_path / "flwr-home",
    )
    assert code == 0
    (run_dir,) = list(out_dir.iterdir())
    report = json.loads((run_dir / "prune_kt.json").read_text())
    assert report["old-classes"] == [0, 1]
    edges = report["edges"]
    assert [(e["threshold"], e["new-class"]) for e in edges.values()] == [(1.0, 3), (0.8, 2)]
    for edge in edges.values():
        assert edge["status"] == "ok"
        assert edge["downlink-bytes"] >= edge["student-bytes"] + edge["teacher-bytes"]
        assert 0.0 <= edge["new-acc-after"] <= 1.0 and 0.0 <= edge["old-acc-without-kt"] <= 1.0
