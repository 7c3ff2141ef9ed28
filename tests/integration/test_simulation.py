"""A real run through `flwr run`, Flower's simulation engine and Ray, on tiny data."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

import pytest

from edgekd.launch import launch

ROOT = Path(__file__).resolve().parents[2]


def _processes_of_run(flwr_home: Path) -> list[str]:
    """Live processes that belong to the launcher's run in ``flwr_home``.

    The SuperLink names its database under ``flwr_home``; the simulation names the SuperLink's
    address (read back from the connection the launcher wrote). Other sessions' Flower
    processes on the same machine are ignored.
    """
    config = (flwr_home / "config.toml").read_text()
    address = re.search(r'address = "([^"]+)"', config)
    assert address, config
    needles = (str(flwr_home), address.group(1))
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if any(n in line for n in needles)]


@pytest.mark.integration
def test_fedavg_two_rounds_through_simulation_engine(tiny_npz: Path, tmp_path: Path) -> None:
    """2 FedAvg rounds on 2 virtual clients via flwr run + Ray write per-round metrics.

    Also: no process of the run (SuperLink, SuperExec, simulation) is left afterwards.
    """
    out_dir = tmp_path / "results"
    overrides = (
        f"dataset='npz' npz-path='{tiny_npz}' num-partitions=2 num-server-rounds=2 "
        f"batch-size=16 output-dir='{out_dir}'"
    )
    code = launch(ROOT, [overrides], timeout=540, flwr_home=tmp_path / "flwr-home")
    assert code == 0
    runs = list(out_dir.iterdir())
    assert len(runs) == 1
    with (runs[0] / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    assert all(0.0 <= float(r["test-acc"]) <= 1.0 for r in rows)
    assert rows[-1]["train/train-loss"]
    assert (runs[0] / "accuracy.png").exists()
    assert _processes_of_run(tmp_path / "flwr-home") == [], "the launcher left processes behind"


@pytest.mark.integration
def test_async_late_edge_consumed_rounds_later(tiny_npz: Path, tmp_path: Path) -> None:
    """Through Ray, an edge whose ClientApp sleeps is distilled rounds after its dispatch."""
    out_dir = tmp_path / "results"
    overrides = (
        f"strategy='async-cloned-distillation' dataset='npz' npz-path='{tiny_npz}' "
        "core-fraction=0.25 num-partitions=3 num-server-rounds=3 cd-variant='CPP' "
        "cd-core-epochs=1 cd-distill-epochs=1 local-epochs=1 batch-size=16 "
        "sim-lag-edges='0:25' async-round-wait=4.0 async-final-wait=120.0 "
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
    teachers = json.loads((run_dir / "teachers.json").read_text())
    late = [t for t in teachers if t["edge"] == 0]
    assert len(late) == 1 and late[0]["status"] == "ok"
    assert late[0]["dispatch-round"] == 1
    assert late[0]["staleness"] >= 1, late
