"""edgekd strategies: Flower ``Strategy`` subclasses selectable by name."""

from edgekd.strategies import (
    async_cloned_distillation,
    cloned_distillation,
    cloud_edge,
    core_fedavg,
    fedmd,
    flower_baselines,
    ktg,
    prune_kt,
)
from edgekd.strategies.registry import (
    StrategyContext,
    StrategyFactory,
    build_strategy,
    check_strategy_config,
    import_plugins,
    list_strategies,
    register_strategy,
    resolve_strategy,
    section_keys,
)

__all__ = [
    "StrategyContext",
    "StrategyFactory",
    "async_cloned_distillation",
    "build_strategy",
    "check_strategy_config",
    "cloned_distillation",
    "cloud_edge",
    "core_fedavg",
    "fedmd",
    "flower_baselines",
    "import_plugins",
    "ktg",
    "list_strategies",
    "prune_kt",
    "register_strategy",
    "resolve_strategy",
    "section_keys",
]
