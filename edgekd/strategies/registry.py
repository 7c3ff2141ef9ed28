"""Select a strategy by name from the run config.

Built-in names are registered with :func:`register_strategy`. A user strategy is selected either
by registering it under a name (the module must be imported, e.g. listed in
``strategy-plugins``) or directly with ``strategy = "package.module:factory"``, where
``factory`` is a callable ``(StrategyContext) -> Strategy`` or a ``Strategy`` subclass whose
constructor takes no required argument. See ``examples/custom_strategy.py``.

A registered strategy names its own config sections: ``sections={"cd-":
ClonedDistillationConfig}`` says that the keys ``cd-*`` are the fields of that dataclass
(:func:`edgekd.config.parse_section`). :func:`check_strategy_config` parses them before the
run starts (a bad value fails at once, in one line), and :func:`section_keys` lists them, so
a plugin's keys are accepted by ``python -m edgekd.local`` although the app's pyproject does
not define them (``flwr run`` accepts only keys of ``[tool.flwr.app.config]``: add them there).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flwr.serverapp.strategy import Strategy

from edgekd.config import ExperimentConfig, config_key, parse_section

__all__ = [
    "StrategyContext",
    "StrategyFactory",
    "build_strategy",
    "check_strategy_config",
    "import_plugins",
    "list_strategies",
    "register_strategy",
    "resolve_strategy",
    "section_keys",
]


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy factory receives.

    Attributes
    ----------
    config : ExperimentConfig
        The parsed shared run config.
    run_config : Mapping[str, Any]
        The raw ``context.run_config``, for strategy-specific keys (parse them with
        :func:`edgekd.config.parse_section`).

    Notes
    -----
    A strategy does not write results: the server records what it returns, and, when it has
    them (see :class:`edgekd.strategies.common.RoundReports`), its ``round_report(round)``,
    ``run_files()`` and ``accuracy_keys``.
    """

    config: ExperimentConfig
    run_config: Mapping[str, Any]


StrategyFactory = Callable[[StrategyContext], Strategy]

_REGISTRY: dict[str, StrategyFactory] = {}
_SECTIONS: dict[str, dict[str, type]] = {}


def register_strategy(
    name: str, *, sections: Mapping[str, type] | None = None
) -> Callable[[StrategyFactory], StrategyFactory]:
    """Decorator registering ``factory`` under ``name`` (kebab-case, unique).

    ``sections`` maps a key prefix (``"cd-"``) to the frozen dataclass of those keys.
    """

    def decorator(factory: StrategyFactory) -> StrategyFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"strategy name {name!r} is already registered")
        _REGISTRY[name] = factory
        _SECTIONS[name] = dict(sections or {})
        return factory

    return decorator


def section_keys() -> set[str]:
    """Every run-config key of every registered strategy's sections."""
    return {
        config_key(prefix, field)
        for sections in _SECTIONS.values()
        for prefix, cls in sections.items()
        for field in cls.__dataclass_fields__  # type: ignore[attr-defined]
    }


def check_strategy_config(name: str, run_config: Mapping[str, Any]) -> None:
    """Parse the sections of strategy ``name`` (ValueError naming a bad key or value)."""
    for prefix, cls in _SECTIONS.get(name, {}).items():
        parse_section(cls, run_config, prefix)


def list_strategies() -> list[str]:
    """The registered strategy names, sorted."""
    return sorted(_REGISTRY)


def import_plugins(modules: str) -> None:
    """Import each comma-separated module of ``modules`` so its registrations run."""
    for module in (m.strip() for m in modules.split(",")):
        if module:
            try:
                importlib.import_module(module)
            except ImportError as err:
                raise ValueError(f"cannot import strategy plugin {module!r}: {err}") from err


def resolve_strategy(name: str) -> StrategyFactory:
    """Return the factory for a registered ``name`` or a ``module:attribute`` path."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot load strategy {name!r}: {err}") from err
        if inspect.isclass(target):
            if not issubclass(target, Strategy):
                raise ValueError(f"strategy {name!r} is a class but not a flwr Strategy")
            return lambda _context: target()
        if not callable(target):
            raise ValueError(f"strategy {name!r} is neither a Strategy subclass nor callable")
        return target
    raise ValueError(
        f"unknown strategy {name!r}; valid strategies: {', '.join(list_strategies())}, "
        "or 'package.module:factory' for your own"
    )


def build_strategy(context: StrategyContext) -> Strategy:
    """Build the strategy named by ``context.config.strategy``."""
    strategy = resolve_strategy(context.config.strategy)(context)
    if not isinstance(strategy, Strategy):
        raise ValueError(
            f"strategy {context.config.strategy!r} built {type(strategy).__name__}, "
            "not a flwr Strategy"
        )
    return strategy
