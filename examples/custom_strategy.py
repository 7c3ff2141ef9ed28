"""Worked example: plug your own Flower strategy into edgekd and select it by name.

``LowestLossFedAvg`` is FedAvg that averages only the ``keep`` replies with the lowest train loss
(a crude defence against clients that diverged). Select it from the run config without touching
edgekd, in either way:

- by path: ``flwr run . --run-config "strategy='examples.custom_strategy:build'"``
- by name: ``--run-config "strategy='lowest-loss-fedavg'
  strategy-plugins='examples.custom_strategy'"``
  (importing the plugin module runs its ``@register_strategy``).
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from edgekd.strategies import StrategyContext, register_strategy


class LowestLossFedAvg(FedAvg):
    """FedAvg over the ``keep`` valid replies with the lowest ``train-loss``.

    Parameters
    ----------
    keep : int (default: 2)
        How many replies to average each round.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    def __init__(self, *, keep: int = 2, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.keep = keep

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Keep the lowest-loss replies, then aggregate them as FedAvg does."""
        valid = [r for r in replies if not r.has_error()]
        valid.sort(key=lambda r: float(r.content["metrics"]["train-loss"]))
        return super().aggregate_train(server_round, valid[: self.keep])

    def summary(self) -> None:
        """Log the configuration."""
        super().summary()


@register_strategy("lowest-loss-fedavg")
def build(context: StrategyContext) -> LowestLossFedAvg:
    """Factory edgekd calls with the parsed run config."""
    cfg = context.config
    return LowestLossFedAvg(
        keep=max(1, cfg.num_partitions // 2),
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_available_nodes=min(cfg.min_available_nodes, cfg.num_partitions),
        min_train_nodes=1,
        min_evaluate_nodes=1,
    )
