"""Cloud-edge offloading through `flwr run`, Flower's simulation engine and Ray, on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekd.launch import launch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_cloud_edge_round_trip_through_simulation_engine(tiny_npz: Path, tmp_path: Path) -> None:
    """The cloud distils an NMD student and 2 simulated edges offload to it, via flwr run + Ray.

    Prepare: the tiny npz, core 25 %, 2 SuperNodes (1 CPU each), 1-epoch teacher and student,
    sweep sigma in {0.2, 1}. Execute: the launcher (`flwr run` on a private SuperLink).
    Assert: exit 0; both edges completed both exchanges; sigma = 1 offloads everything (its
    system accuracy is the cloud's); the bytes are the offloaded 8x8x3 uint8 images.
    """
    out_dir = tmp_path / "results"
    overrides = (
        f"strategy='cloud-edge' dataset='npz' npz-path='{tiny_npz}' num-partitions=2 "
        "core-fraction=0.25 model='resnet8' batch-size=16 num-server-rounds=2 "
        "ce-teacher-model='resnet8' ce-teacher-epochs=1 ce-distill-epochs=1 ce-loss='nmd' "
        f"ce-sigmas='0.2' output-dir='{out_dir}'"
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
    sweep = json.loads((run_dir / "cloud_edge.json").read_text())["sweep"]
    assert [row["sigma"] for row in sweep] == [1.0, 0.2]
    assert all(row["edges-ok"] == 2 for row in sweep)
    full, partial = sweep
    assert full["offload-rate"] == 1.0 and full["system-acc"] == full["cloud-acc"]
    assert full["offload-bytes"] == full["num-examples"] * 8 * 8 * 3
    assert partial["offload-bytes"] == partial["offloaded"] * 8 * 8 * 3
