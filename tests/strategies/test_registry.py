"""Tests for strategy selection by name and the worked custom-strategy example."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.serverapp.strategy import FedAvg, FedProx

from edgekd.clients.app import app as client_app
from edgekd.config import ExperimentConfig
from edgekd.inprocess import InProcessGrid
from edgekd.runner import run_experiment
from edgekd.strategies import StrategyContext, build_strategy, list_strategies, resolve_strategy


def test_builtin_baselines_are_registered() -> None:
    """fedavg and fedprox resolve to factories of Flower's own strategies."""
    assert {"fedavg", "fedprox"} <= set(list_strategies())


def test_unknown_strategy_lists_valid_names() -> None:
    """An unknown strategy name raises an error naming it and listing the valid ones."""
    with pytest.raises(ValueError, match=r"unknown strategy 'fedsgdx'.*fedavg.*fedprox"):
        resolve_strategy("fedsgdx")


def test_bad_plugin_path_is_reported() -> None:
    """A module:attribute path that cannot be imported names the path."""
    with pytest.raises(ValueError, match="no_such_module"):
        resolve_strategy("no_such_module:build")


@pytest.mark.parametrize(
    ("strategy", "plugins", "expected"),
    [
        ("fedavg", "", FedAvg),
        ("fedprox", "", FedProx),
        ("examples.custom_strategy:build", "", FedAvg),
        ("lowest-loss-fedavg", "examples.custom_strategy", FedAvg),
    ],
)
def test_run_experiment_with_selected_strategy(
    tiny_npz: Path, tmp_path: Path, strategy: str, plugins: str, expected: type
) -> None:
    """Each selectable strategy runs 2 rounds over real messages and writes its metrics."""
    run_config = {
        "strategy": strategy,
        "strategy-plugins": plugins,
        "dataset": "npz",
        "npz-path": str(tiny_npz),
        "num-partitions": 4,
        "num-server-rounds": 2,
        "batch-size": 16,
        "lr": 0.05,
        "output-dir": str(tmp_path),
    }
    grid = InProcessGrid(client_app, run_config, num_nodes=4)
    result = run_experiment(grid, run_config, tmp_path / "run")
    assert isinstance(result.arrays.to_torch_state_dict(), dict)
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("round,") and len(rows) == 4  # header + rounds 0, 1, 2
    assert (tmp_path / "run" / "accuracy.png").stat().st_size > 0
    assert len(grid.delivered) == 8  # 4 nodes x 2 rounds, all FedAvg-style train messages
    built = build_strategy(
        StrategyContext(ExperimentConfig.from_run_config(run_config), run_config)
    )
    assert isinstance(built, expected)
