"""Flower's own FedAvg and FedProx, registered as ``fedavg`` and ``fedprox``.

FedAvg: McMahan et al. 2017, https://arxiv.org/abs/1602.05629.
FedProx: Li et al. 2020, https://arxiv.org/abs/1812.06127 (the client adds
``proximal-mu / 2 * ||w - w_global||^2``, read from the train message's config).
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg, FedProx

from edgekd.strategies.registry import StrategyContext, register_strategy

__all__ = ["build_fedavg", "build_fedprox"]


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
    return FedAvg(**_common(context))


@register_strategy("fedprox")
def build_fedprox(context: StrategyContext) -> FedProx:
    """Flower's FedProx with ``proximal-mu`` from the run config."""
    return FedProx(proximal_mu=context.config.proximal_mu, **_common(context))
