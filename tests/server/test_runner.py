"""The server is the only writer of a run's results (edgekd.runner)."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from edgekd.clients.app import app as client_app
from edgekd.inprocess import InProcessGrid
from edgekd.runner import run_experiment
from edgekd.strategies import StrategyContext, register_strategy
from edgekd.strategies.common import RoundReports

ROOT = Path(__file__).resolve().parents[2]


class ReportingFedAvg(RoundReports, FedAvg):
    """FedAvg that reports per-round details (strings, lists) and one extra JSON file."""

    accuracy_keys = ("test-acc", "fake-acc")

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg's aggregate plus a report of who answered."""
        replies = list(replies)
        self.report(
            server_round,
            {"answered": len(replies), "status": f"round {server_round}", "ids": [1, 2]},
        )
        self.report(server_round, {"fake-acc": 0.5})
        return super().aggregate_train(server_round, replies)

    def run_files(self) -> Mapping[str, Any]:
        """One extra file listing the reported rounds."""
        return {"extra.json": {"rounds": sorted(self.__dict__.get("_round_reports", {}))}}


@register_strategy("reporting-fedavg-test")
def _build(context: StrategyContext) -> ReportingFedAvg:
    return ReportingFedAvg(fraction_evaluate=0.0, min_available_nodes=2)


def test_round_report_lands_in_metrics_next_to_the_central_evaluation(
    tiny_npz: Path, tmp_path: Path
) -> None:
    """What a strategy reports for a round is recorded by the server in that round's row.

    Prepare: a FedAvg that reports an int, a string, a list and a fake accuracy each round,
    an extra JSON file, and its accuracy keys; 3 in-process nodes, 2 rounds.
    Execute: run_experiment.
    Assert: rows 1 and 2 hold the report before the server's test-acc, in that order;
    metrics.csv has the scalar report columns; extra.json was written by the server;
    the strategy's round-1 numbers are not copied again as train/ columns.
    """
    run_config = {
        "strategy": "reporting-fedavg-test",
        "dataset": "npz",
        "npz-path": str(tiny_npz),
        "num-partitions": 3,
        "num-server-rounds": 2,
        "batch-size": 16,
        "output-dir": str(tmp_path),
    }
    out = tmp_path / "run"
    run_experiment(InProcessGrid(client_app, run_config, num_nodes=3), run_config, out)
    rows = {row["round"]: row for row in json.loads((out / "metrics.json").read_text())}
    assert list(rows[0]) == ["round", "test-loss", "test-acc", "elapsed-s"]
    for server_round in (1, 2):
        row = rows[server_round]
        keys = list(row)
        assert keys[1:5] == ["answered", "status", "ids", "fake-acc"]
        assert keys.index("fake-acc") < keys.index("test-acc")
        assert (row["answered"], row["status"], row["ids"]) == (3, f"round {server_round}", [1, 2])
        assert "train/answered" not in row
        assert "train/train-loss" in row  # what Flower's FedAvg returns is recorded once
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"answered", "status", "fake-acc"} <= set(header) and "ids" not in header
    assert json.loads((out / "extra.json").read_text()) == {"rounds": [1, 2]}
    assert (out / "accuracy.png").stat().st_size > 0


def test_strategies_never_import_the_recorder() -> None:
    """No strategy module imports edgekd.results (the server alone writes results)."""
    for path in (ROOT / "edgekd" / "strategies").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module is not None
        }
        assert "edgekd.results" not in imported, path.name


def test_rounds_log_one_stage_line_and_an_eta_per_round(
    tiny_npz: Path,
    tmp_path: Path,
    monkeypatch: Any,
    caplog: Any,
    one_torch_thread: None,
) -> None:
    """Off a terminal a 3-round run logs its "rounds" stage once, at the end, and every
    round's line gives the ETA of the rounds left (0 s after the last)."""
    import logging

    monkeypatch.setenv("EDGEKD_PROGRESS", "log")
    run_config = {
        "strategy": "fedavg",
        "dataset": "npz",
        "npz-path": str(tiny_npz),
        "num-partitions": 2,
        "num-server-rounds": 3,
        "batch-size": 16,
    }
    grid = InProcessGrid(client_app, run_config, num_nodes=2)
    with caplog.at_level(logging.INFO, logger="flwr"):
        run_experiment(grid, run_config, tmp_path / "run")
    lines = [r.getMessage() for r in caplog.records]
    assert len([x for x in lines if x.startswith("edgekd: rounds: 3/3 rounds in ")]) == 1
    round_lines = [x for x in lines if x.startswith("edgekd: round ") and "/3 " in x]
    assert [x.split()[2] for x in round_lines] == ["0/3", "1/3", "2/3", "3/3"]
    assert all("ETA" in x for x in round_lines[1:])
    assert round_lines[-1].endswith(", ETA 0s)")
    training = [x for x in lines if x.startswith("edgekd: edge ") and " training " in x]
    assert len(training) == 6  # one line per client training (2 clients x 3 rounds)


def test_which_strategies_checkpoint() -> None:
    """Flower's loop (FedAvg) and strategies with restore_checkpoint (cloned distillation,
    async) checkpoint; FedMD, whose clients keep their models on the nodes, does not."""
    from edgekd.runner import resumable
    from edgekd.strategies.async_cloned_distillation import AsyncClonedDistillation
    from edgekd.strategies.cloned_distillation import ClonedDistillation
    from edgekd.strategies.fedmd import FedMD

    assert resumable(FedAvg())
    assert resumable(object.__new__(ClonedDistillation))
    assert resumable(object.__new__(AsyncClonedDistillation))
    assert not resumable(object.__new__(FedMD))
