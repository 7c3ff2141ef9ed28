"""The edgekd ServerApp: builds the strategy named in the run config and records the run.

``main`` validates the configuration and loads the data before any round starts (bad names,
missing files and impossible partitions fail here with one clear error), logs the class
histogram of every partition, evaluates the global/core model on the test split after every
round, and writes ``metrics.csv``, ``metrics.json``, ``accuracy.png``, ``partitions.json`` and
``config.json`` into ``<output-dir>/<strategy>-<timestamp>``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result

from edgekd.config import ExperimentConfig
from edgekd.datasets import class_histograms
from edgekd.experiment import (
    build_experiment_model,
    experiment_split,
    load_bundle,
    test_data,
    validate_names,
)
from edgekd.results import RunRecorder
from edgekd.strategies import StrategyContext, build_strategy, import_plugins, resolve_strategy
from edgekd.training import evaluate, set_torch_threads

__all__ = ["app", "make_output_dir", "prepare_run", "run_experiment"]

app = ServerApp()


def make_output_dir(cfg: ExperimentConfig, run_id: int | str = "") -> Path:
    """``<output-dir>/<strategy>-<UTC timestamp>[-<run id>]``, absolute."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    name = cfg.strategy.replace(":", "-").replace(".", "-").replace("/", "-")
    suffix = f"-{run_id}" if run_id else ""
    return (Path(cfg.output_dir).expanduser() / f"{name}-{stamp}{suffix}").resolve()


def prepare_run(
    run_config: Mapping[str, Any], out_dir: Path
) -> tuple[ExperimentConfig, RunRecorder]:
    """Validate everything that can be checked before training and start the recorder.

    Raises ``ValueError``/``FileNotFoundError`` naming the bad value: unknown dataset, model or
    strategy, ``dirichlet-alpha <= 0``, more partitions than samples, a missing npz key or an
    empty data directory.
    """
    cfg = ExperimentConfig.from_run_config(run_config)
    validate_names(cfg)
    import_plugins(cfg.strategy_plugins)
    resolve_strategy(cfg.strategy)
    bundle = load_bundle(cfg)
    split = experiment_split(cfg)
    recorder = RunRecorder(out_dir)
    histograms = split.histograms(bundle.y_train, bundle.num_classes)
    core_hist = class_histograms(bundle.y_train, [split.core], bundle.num_classes)[0]
    log(
        INFO,
        "edgekd: dataset %s, %s classes, %s train / %s test images",
        bundle.name,
        bundle.num_classes,
        len(bundle.y_train),
        len(bundle.y_test),
    )
    if len(split.core):
        log(INFO, "edgekd: core split  n=%5d  classes=%s", len(split.core), core_hist.tolist())
    for pid, hist in enumerate(histograms):
        log(INFO, "edgekd: partition %3d n=%5d  classes=%s", pid, int(hist.sum()), hist.tolist())
    recorder.save_json(
        "partitions.json",
        {
            "dataset": bundle.name,
            "num_classes": bundle.num_classes,
            "core_size": len(split.core),
            "core_histogram": core_hist.tolist(),
            "partition_sizes": [int(h.sum()) for h in histograms],
            "histograms": histograms.tolist(),
        },
    )
    recorder.save_json("config.json", dict(run_config))
    log(INFO, "edgekd: results go to %s", recorder.out_dir)
    return cfg, recorder


def run_experiment(grid: Grid, run_config: Mapping[str, Any], out_dir: Path) -> Result:
    """Run the configured strategy on ``grid`` and write the results into ``out_dir``."""
    cfg, recorder = prepare_run(run_config, out_dir)
    set_torch_threads(0)
    strategy = build_strategy(StrategyContext(cfg, run_config, recorder))
    test = test_data(cfg)
    model = build_experiment_model(cfg, seed=cfg.seed)
    started = time.monotonic()

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
        result = evaluate(model, test.x, test.y)
        elapsed = time.monotonic() - started
        recorder.log_round(
            server_round,
            {"test-loss": result.loss, "test-acc": result.accuracy, "elapsed-s": elapsed},
        )
        log(
            INFO,
            "edgekd: round %s/%s  test-acc %.4f  test-loss %.4f  (%.1fs)",
            server_round,
            cfg.num_server_rounds,
            result.accuracy,
            result.loss,
            elapsed,
        )
        return MetricRecord({"test-loss": result.loss, "test-acc": result.accuracy})

    train_config = ConfigRecord(
        {
            "local-epochs": cfg.local_epochs,
            "batch-size": cfg.batch_size,
            "lr": cfg.lr,
            "lr-schedule": cfg.lr_schedule,
            "momentum": cfg.momentum,
            "weight-decay": cfg.weight_decay,
        }
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=cfg.num_server_rounds,
        train_config=train_config,
        evaluate_config=ConfigRecord(),
        evaluate_fn=central_evaluate,
    )
    for server_round, metrics in result.train_metrics_clientapp.items():
        row = recorder.rounds.get(server_round, {})
        recorder.log_round(
            server_round, {f"train/{k}": v for k, v in metrics.items() if k not in row}
        )
    for server_round, metrics in result.evaluate_metrics_clientapp.items():
        recorder.log_round(server_round, {f"client-eval/{k}": v for k, v in metrics.items()})
    recorder.plot(title=f"{cfg.strategy} on {cfg.dataset} ({cfg.model})")
    recorder.save_json("summary.json", _summary(cfg, recorder))
    log(INFO, "edgekd: wrote %s", recorder.out_dir)
    return result


def _summary(cfg: ExperimentConfig, recorder: RunRecorder) -> dict[str, Any]:
    rows = recorder.rows()
    accs = [row["test-acc"] for row in rows if isinstance(row.get("test-acc"), float)]
    return {
        "strategy": cfg.strategy,
        "dataset": cfg.dataset,
        "model": cfg.model,
        "seed": cfg.seed,
        "num_server_rounds": cfg.num_server_rounds,
        "final_test_acc": accs[-1] if accs else None,
        "best_test_acc": max(accs) if accs else None,
    }


@app.main()
def main(grid: Grid, context: Context) -> None:
    """ServerApp entry point (``flwr run``)."""
    run_config = dict(context.run_config)
    cfg = ExperimentConfig.from_run_config(run_config)
    out_dir = make_output_dir(cfg, context.run_id)
    run_experiment(grid, run_config, out_dir)
