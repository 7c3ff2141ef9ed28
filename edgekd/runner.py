"""Run one experiment on any Flower ``Grid``: validate, build the strategy, record the results.

Used by the ServerApp (:mod:`edgekd.server.app`, under ``flwr run``) and by
:mod:`edgekd.local` (in-process grid). :func:`prepare_run` validates the configuration and
loads the data before any round starts (bad names, missing files and impossible partitions
fail here with one clear error) and logs the class histogram of every partition;
:func:`run_experiment` runs the strategy and, as the only writer of results, records what it
reports and returns: ``metrics.csv``, ``metrics.json``, ``accuracy.png``, ``partitions.json``,
``config.json``, ``summary.json`` and the strategy's own JSON files. A run in which no client
took part (:class:`edgekd.strategies.common.FederationError`) records the reason in
``summary.json`` (``error``) and raises it: under ``flwr run`` the run then fails.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from logging import ERROR, INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from edgekd.checkpoint import (
    check_same_config,
    load_checkpoint,
    restore_rng,
    rng_state,
    write_checkpoint,
)
from edgekd.config import ExperimentConfig, check_known_keys, config_value
from edgekd.datasets import class_histograms
from edgekd.experiment import (
    build_experiment_model,
    experiment_split,
    load_bundle,
    test_data,
    validate_names,
)
from edgekd.progress import Stage, eta_seconds, stage
from edgekd.results import RunRecorder
from edgekd.strategies import (
    StrategyContext,
    build_strategy,
    check_strategy_config,
    import_plugins,
    resolve_strategy,
    section_keys,
)
from edgekd.strategies.common import FederationError
from edgekd.strategies.rounds import run_rounds, uses_flower_loop
from edgekd.training import evaluate, set_torch_threads

__all__ = [
    "RoundRecorder",
    "check_run_config",
    "make_output_dir",
    "prepare_run",
    "resumable",
    "run_experiment",
]


def make_output_dir(cfg: ExperimentConfig, run_id: int | str = "") -> Path:
    """``<output-dir>/<strategy>-<UTC timestamp>[-<run id>]``, absolute."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    name = cfg.strategy.replace(":", "-").replace(".", "-").replace("/", "-")
    suffix = f"-{run_id}" if run_id else ""
    return (Path(cfg.output_dir).expanduser() / f"{name}-{stamp}{suffix}").resolve()


def check_run_config(
    run_config: Mapping[str, Any], app_keys: Iterable[str], *, plugin_keys: bool = True
) -> ExperimentConfig:
    """Refuse, before anything runs, what the run would fail on: one ``ValueError`` each.

    Checks, in order: every key is one of ``app_keys`` (the app's
    ``[tool.flwr.app.config]``) or, with ``plugin_keys``, a key of a registered strategy's
    sections (plugins of ``strategy-plugins`` imported first); the shared keys' values; the
    dataset, model, partitioner and strategy names; the strategy's own sections.
    """
    import_plugins(config_value(run_config, "strategy-plugins", "", str))
    known = set(app_keys) | (section_keys() if plugin_keys else set())
    check_known_keys(run_config, known)
    cfg = ExperimentConfig.from_run_config(run_config)
    validate_names(cfg)
    resolve_strategy(cfg.strategy)
    check_strategy_config(cfg.strategy, run_config)
    return cfg


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
    recorder.save_json("config.json", {k: v for k, v in run_config.items() if k != "resume-dir"})
    log(INFO, "edgekd: results go to %s", recorder.out_dir)
    return cfg, recorder


class RoundRecorder:
    """The server's end-of-round hook (the ``evaluate_fn`` strategies call every round).

    Records, in this order, the strategy's ``round_report(round)`` (when it has one), then
    the central evaluation of the returned arrays on the test split (unless the strategy says
    ``central_evaluation = False``), rewrites the strategy's ``run_files()`` and, for a
    resumable strategy (:func:`resumable`), writes the round's checkpoint
    (:mod:`edgekd.checkpoint`). The server is the only writer of a run's results.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        recorder: RunRecorder,
        strategy: Strategy,
        model: torch.nn.Module,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.recorder = recorder
        self.strategy = strategy
        self.model = model
        self.run_config = dict(run_config or {})
        self.test = test_data(cfg)
        self.started = time.monotonic()
        self.rounds: Stage | None = None  # the run's "rounds" stage, set by run_experiment
        self._pace_from: tuple[float, int] | None = None  # (time, rounds done) at round 0
        self.result = Result()  # shared with Flower's round loop (the checkpoint holds it)

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Record round ``server_round``; the central evaluation's metrics (or None)."""
        if self.rounds is not None and 1 <= server_round <= self.cfg.num_server_rounds:
            self.rounds.advance()
        if server_round == 0 and self.rounds is not None:  # the ETA leaves out Phase 0
            self._pace_from = (time.monotonic(), self.rounds.done)
        round_report = getattr(self.strategy, "round_report", None)
        if round_report is not None:
            self.recorder.log_round(server_round, round_report(server_round))
        self.save_run_files()
        metrics = None
        if getattr(self.strategy, "central_evaluation", True):
            metrics = self._evaluate(server_round, arrays)
        if 1 <= server_round <= self.cfg.num_server_rounds and resumable(self.strategy):
            self.save_checkpoint(server_round, arrays)
        return metrics

    def _evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        self.model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
        result = evaluate(self.model, self.test.x, self.test.y)
        elapsed = time.monotonic() - self.started
        self.recorder.log_round(
            server_round,
            {"test-loss": result.loss, "test-acc": result.accuracy, "elapsed-s": elapsed},
        )
        log(
            INFO,
            "edgekd: round %s/%s  test-acc %.4f  test-loss %.4f  (%.1fs%s)",
            server_round,
            self.cfg.num_server_rounds,
            result.accuracy,
            result.loss,
            elapsed,
            self._eta(),
        )
        return MetricRecord({"test-loss": result.loss, "test-acc": result.accuracy})

    def _eta(self) -> str:
        """``", ETA 12s"`` for the rounds left, at the pace of this process's rounds since
        round 0 (or since the resumption); "" before there is a pace."""
        if self.rounds is None:
            return ""
        since, done_then = self._pace_from or (self.rounds.started, 0)
        eta = eta_seconds(
            self.rounds.done - done_then, self.rounds.total - done_then, time.monotonic() - since
        )
        return "" if eta is None else f", ETA {eta:.0f}s"

    def save_run_files(self) -> None:
        """Write the strategy's extra JSON files (``run_files()``), if it has any."""
        run_files = getattr(self.strategy, "run_files", None)
        for name, payload in (run_files() if run_files is not None else {}).items():
            self.recorder.save_json(name, payload)

    def save_checkpoint(self, server_round: int, arrays: ArrayRecord) -> None:
        """Write the checkpoint of the complete round ``server_round`` (atomically)."""
        state_fn = getattr(self.strategy, "checkpoint_state", None)
        write_checkpoint(
            self.recorder.out_dir,
            {
                "round": server_round,
                "run-config": self.run_config,
                "arrays": arrays.to_torch_state_dict(),
                "strategy": state_fn() if state_fn is not None else {},
                "rng": rng_state(),
                "rounds": self.recorder.rounds,
                "train-metrics": _plain(self.result.train_metrics_clientapp),
                "evaluate-metrics": _plain(self.result.evaluate_metrics_clientapp),
                "elapsed": time.monotonic() - self.started,
            },
        )

    def resume(self, run_dir: Path) -> tuple[int, ArrayRecord]:
        """Restore the last complete round of ``run_dir``: (the next round, its arrays).

        Raises ``ValueError``/``FileNotFoundError`` when there is no checkpoint, when it was
        made by another run config (naming every difference) or when the strategy cannot
        resume. The RNG states are restored last, just before the next round.
        """
        state = load_checkpoint(run_dir)
        check_same_config(state["run-config"], self.run_config, run_dir)
        restore = getattr(self.strategy, "restore_checkpoint", None)
        if restore is not None:
            restore(state["strategy"], int(state["round"]))
        elif not resumable(self.strategy):
            raise ValueError(f"strategy {self.cfg.strategy!r} cannot be resumed")
        self.recorder.rounds = {int(k): dict(v) for k, v in state["rounds"].items()}
        self.recorder.flush()
        self.started -= float(state["elapsed"])
        for key, into in (
            ("train-metrics", self.result.train_metrics_clientapp),
            ("evaluate-metrics", self.result.evaluate_metrics_clientapp),
        ):
            into.update({int(r): MetricRecord(m) for r, m in state[key].items()})
        arrays = ArrayRecord(state["arrays"])
        self.result.arrays = arrays
        log(INFO, "edgekd: resuming %s after round %s", run_dir, state["round"])
        restore_rng(state["rng"])
        return int(state["round"]) + 1, arrays


def resumable(strategy: Strategy) -> bool:
    """Whether a run of ``strategy`` checkpoints and resumes: Flower's own round loop (its
    state is the global arrays) or a strategy with ``checkpoint_state``/``restore_checkpoint``.
    """
    return uses_flower_loop(strategy) or hasattr(strategy, "restore_checkpoint")


def _plain(history: Mapping[int, MetricRecord]) -> dict[int, dict[str, Any]]:
    return {int(r): dict(m) for r, m in history.items()}


def run_experiment(
    grid: Grid, run_config: Mapping[str, Any], out_dir: Path, *, resume: bool = False
) -> Result:
    """Run the configured strategy on ``grid`` and write the results into ``out_dir``.

    With ``resume``, ``out_dir`` is a run folder with a checkpoint: the run goes on from its
    last complete round (same run config required).
    """
    cfg, recorder = prepare_run(run_config, out_dir)
    set_torch_threads(0)
    strategy = build_strategy(StrategyContext(cfg, run_config))
    recorder.accuracy_keys = tuple(getattr(strategy, "accuracy_keys", recorder.accuracy_keys))
    model = build_experiment_model(cfg, seed=cfg.seed)
    round_end = RoundRecorder(cfg, recorder, strategy, model, run_config)
    first_round, arrays = 1, ArrayRecord(model.state_dict())
    if not resumable(strategy):
        log(INFO, "edgekd: strategy %s writes no checkpoint (cannot resume)", cfg.strategy)
    if resume:
        first_round, arrays = round_end.resume(out_dir)
    total = cfg.num_server_rounds - first_round + 1
    try:
        with stage("rounds", total=max(total, 0), unit="rounds") as rounds:
            round_end.rounds = rounds
            result = _start(strategy, grid, arrays, first_round, round_end)
    except FederationError as err:  # no client took part: a failed run, never a result
        log(ERROR, "edgekd: run failed: %s", err)
        recorder.save_json("summary.json", {**_summary(cfg, recorder), "error": str(err)})
        raise
    round_end.save_run_files()
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


def _start(
    strategy: Strategy,
    grid: Grid,
    arrays: ArrayRecord,
    first_round: int,
    round_end: RoundRecorder,
) -> Result:
    """Flower's round loop (:func:`run_rounds`) or the strategy's own ``start``."""
    cfg = round_end.cfg
    options: dict[str, Any] = {
        "num_rounds": cfg.num_server_rounds,
        "train_config": ConfigRecord(
            {
                "local-epochs": cfg.local_epochs,
                "batch-size": cfg.batch_size,
                "lr": cfg.lr,
                "lr-schedule": cfg.lr_schedule,
                "momentum": cfg.momentum,
                "weight-decay": cfg.weight_decay,
            }
        ),
        "evaluate_config": ConfigRecord(),
        "evaluate_fn": round_end,
    }
    if uses_flower_loop(strategy):
        result = run_rounds(
            strategy, grid, arrays, first_round=first_round, result=round_end.result, **options
        )
        check = getattr(strategy, "check_result", None)
        if check is not None:
            check(result, cfg.num_server_rounds)
        return result
    return strategy.start(grid=grid, initial_arrays=arrays, **options)


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
