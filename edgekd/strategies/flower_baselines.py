"""Flower's own FedAvg and FedProx, registered as ``fedavg`` and ``fedprox``.

FedAvg: McMahan et al. 2017, https://arxiv.org/abs/1602.05629.
FedProx: Li et al. 2020, https://arxiv.org/abs/1812.06127 (the client adds
``proximal-mu / 2 * ||w - w_global||^2``, read from the train message's config).

Both work with any Flower ClientApp (train replies with one ArrayRecord and a MetricRecord
with ``num-examples``). A run in which no client trained in any round raises
:class:`edgekd.strategies.common.FederationError` with the clients' error reasons instead of
ending as if it had succeeded.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx, Result

from edgekd.strategies.common import FederationError, RoundReports, error_reason
from edgekd.strategies.registry import StrategyContext, register_strategy

__all__ = ["CheckedFedAvg", "CheckedFedProx", "build_fedavg", "build_fedprox"]


class _FailsWithoutClients(RoundReports, FedAvg):
    """FedAvg that reports failed clients and raises :class:`FederationError` when no client
    trained in any round."""

    name = "fedavg"

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's aggregation; each error reply is logged and reported (``train-failures``,
        node id -> reason) and its reason kept for the final check."""
        replies = list(replies)
        failures = {
            str(r.metadata.src_node_id): str(error_reason(r)) for r in replies if r.has_error()
        }
        for node, reason in failures.items():
            log(WARNING, "%s: round %s: node %s failed: %s", self.name, server_round, node, reason)
        if failures:
            self.report(server_round, {"train-failures": failures})
        self.__dict__.setdefault("_reasons", []).extend(failures.values())
        return super().aggregate_train(server_round, replies)

    # edgekd's runner drives it with :func:`edgekd.strategies.rounds.run_rounds` (Flower's loop
    # with a first round, for resume), then calls :meth:`check_result`
    flower_loop = True

    def start(self, grid: Grid, initial_arrays: ArrayRecord, **options: Any) -> Result:
        """Flower's round loop, then fail if not one round had a client that trained."""
        result = super().start(grid, initial_arrays, **options)
        self.check_result(result, options.get("num_rounds", 3))
        return result

    def check_result(self, result: Result, num_rounds: int) -> None:
        """Raise :class:`FederationError` when no client trained in any round."""
        if num_rounds >= 1 and not result.train_metrics_clientapp:
            reasons = list(dict.fromkeys(self.__dict__.get("_reasons", [])))
            raise FederationError(
                f"{self.name}: no client trained in any of {num_rounds} round(s): "
                f"{'; '.join(map(str, reasons[:3])) or 'no reply'}"
            )


class CheckedFedAvg(_FailsWithoutClients):
    """Flower's FedAvg; fails loudly when no client trained (see the module docstring)."""


class CheckedFedProx(_FailsWithoutClients, FedProx):
    """Flower's FedProx; fails loudly when no client trained (see the module docstring)."""

    name = "fedprox"


def _common(context: StrategyContext) -> dict[str, float | int]:
    cfg = context.config
    return {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_available_nodes": min(cfg.min_available_nodes, cfg.num_partitions),
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1,
    }


@register_strategy("fedavg")
def build_fedavg(context: StrategyContext) -> FedAvg:
    """Flower's FedAvg with the fractions of the run config."""
    return CheckedFedAvg(**_common(context))


@register_strategy("fedprox")
def build_fedprox(context: StrategyContext) -> FedProx:
    """Flower's FedProx with ``proximal-mu`` from the run config."""
    return CheckedFedProx(proximal_mu=context.config.proximal_mu, **_common(context))
