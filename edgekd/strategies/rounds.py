"""Flower's round loop with a first round: what a resumed run continues with.

:func:`run_rounds` is the loop of ``flwr.serverapp.strategy.Strategy.start`` (configure,
``send_and_receive``, aggregate, the same for evaluation, then ``evaluate_fn``) for the
rounds ``first_round..num_rounds``. From round 1 it also evaluates the initial arrays as
round 0, as Flower does; from a later round (a resumed run) it does not. ``result`` can be
shared with the caller, who then sees the metrics of the finished rounds (the checkpoint
holds them).
"""

from __future__ import annotations

from collections.abc import Callable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

__all__ = ["run_rounds", "uses_flower_loop"]


def uses_flower_loop(strategy: Strategy) -> bool:
    """True when ``strategy`` runs Flower's own ``start``: it does not override it, or it
    declares ``flower_loop = True`` (its ``start`` only adds a check, ``check_result``)."""
    return type(strategy).start is Strategy.start or bool(getattr(strategy, "flower_loop", False))


def run_rounds(
    strategy: Strategy,
    grid: Grid,
    arrays: ArrayRecord,
    *,
    num_rounds: int,
    first_round: int = 1,
    timeout: float = 3600,
    train_config: ConfigRecord | None = None,
    evaluate_config: ConfigRecord | None = None,
    evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    result: Result | None = None,
) -> Result:
    """Run ``strategy``'s rounds ``first_round..num_rounds`` from ``arrays``; the Result."""
    if first_round < 1:
        raise ValueError(f"first_round must be >= 1, got {first_round}")
    train_config = ConfigRecord() if train_config is None else train_config
    evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
    result = Result() if result is None else result
    result.arrays = arrays
    if first_round == 1:
        log(INFO, "Starting %s strategy:", type(strategy).__name__)
        strategy.summary()
        if evaluate_fn is not None:
            initial = evaluate_fn(0, arrays)
            if initial is not None:
                result.evaluate_metrics_serverapp[0] = initial
    else:
        log(INFO, "Resuming %s at round %s/%s", type(strategy).__name__, first_round, num_rounds)
    for server_round in range(first_round, num_rounds + 1):
        log(INFO, "[ROUND %s/%s]", server_round, num_rounds)
        messages = strategy.configure_train(server_round, arrays, train_config, grid)
        replies = grid.send_and_receive(messages=messages, timeout=timeout)
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        if new_arrays is not None:
            result.arrays = arrays = new_arrays
        if train_metrics is not None:
            result.train_metrics_clientapp[server_round] = train_metrics
        messages = strategy.configure_evaluate(server_round, arrays, evaluate_config, grid)
        replies = grid.send_and_receive(messages=messages, timeout=timeout)
        evaluate_metrics = strategy.aggregate_evaluate(server_round, replies)
        if evaluate_metrics is not None:
            result.evaluate_metrics_clientapp[server_round] = evaluate_metrics
        if evaluate_fn is not None:
            central = evaluate_fn(server_round, arrays)
            if central is not None:
                result.evaluate_metrics_serverapp[server_round] = central
    return result
