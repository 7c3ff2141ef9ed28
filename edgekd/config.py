"""Run configuration: every tunable of ``[tool.flwr.app.config]`` parsed once.

Flower delivers the app configuration as ``context.run_config`` (kebab-case keys, TOML types).
One parser, :func:`parse_section`, turns the keys of one prefix into a frozen, validated
dataclass whose field ``some_name`` is the key ``<prefix>some-name``: the shared keys
(:class:`ExperimentConfig`, no prefix), ``sim-*`` (:class:`SimulatedEdges`) and each
strategy's own keys (``cd-*``, ``async-*``, ``fedmd-*``). :func:`check_known_keys` refuses
keys the app does not define, as ``flwr run`` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import numpy as np

__all__ = [
    "ExperimentConfig",
    "Rules",
    "SimulatedEdges",
    "check_choice",
    "check_fields",
    "check_known_keys",
    "comma_floats",
    "config_key",
    "config_value",
    "parse_section",
]

T = TypeVar("T")


def config_value(run_config: Mapping[str, Any], key: str, default: Any, kind: type) -> Any:
    """Read ``key`` from ``run_config`` as ``kind``, with a clear error for a bad value.

    Parameters
    ----------
    run_config : Mapping[str, Any]
        ``context.run_config`` or a message's ``ConfigRecord``.
    key : str
        The kebab-case key.
    default : Any
        Used when the key is absent.
    kind : type
        One of ``bool``, ``int``, ``float`` or ``str``.
    """
    value = run_config.get(key, default)
    try:
        if kind is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in {"true", "false", "1", "0", "yes", "no"}:
                    raise ValueError(value)
                return lowered in {"true", "1", "yes"}
            return bool(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"run config key {key!r} must be a {kind.__name__}, got {value!r}"
        ) from err


def config_key(prefix: str, name: str) -> str:
    """The run-config key of dataclass field ``name`` in section ``prefix`` (kebab-case)."""
    return prefix + name.replace("_", "-")


def parse_section(cls: type[T], run_config: Mapping[str, Any], prefix: str = "") -> T:
    """Build the frozen dataclass ``cls`` from the ``prefix`` keys of ``run_config``.

    Field ``some_name`` is read from key ``<prefix>some-name`` as the type of its default
    (absent keys take the default). A field may declare ``metadata={"kind": type, "parse":
    callable}`` to read the key as ``kind`` and convert the value with ``parse`` (e.g. a
    comma-separated list into a tuple). Errors name the key and the value.
    """
    values: dict[str, Any] = {}
    for spec in fields(cls):  # type: ignore[arg-type]
        key = config_key(prefix, spec.name)
        default = spec.default
        kind = spec.metadata.get("kind", type(default))
        raw_default = spec.metadata.get("raw-default", default)
        value = config_value(run_config, key, raw_default, kind)
        parse: Callable[[Any], Any] | None = spec.metadata.get("parse")
        values[spec.name] = parse(value) if parse is not None else value
    return cls(**values)


def comma_floats(key: str) -> Callable[[str], tuple[float, ...]]:
    """A ``parse`` for :func:`parse_section`: ``"4,2,1"`` -> ``(4.0, 2.0, 1.0)``.

    A part that is not a number raises one error naming ``key`` and the whole value.
    """

    def parse(text: str) -> tuple[float, ...]:
        try:
            return tuple(float(part) for part in text.split(",") if part.strip())
        except ValueError as err:
            raise ValueError(f"{key} must be comma-separated numbers, got {text!r}") from err

    return parse


def check_known_keys(
    run_config: Iterable[str], known: Iterable[str], *, source: str = "the app"
) -> None:
    """Refuse keys that are not in ``known`` (the app's ``[tool.flwr.app.config]``).

    Raises one ``ValueError`` naming the unknown key(s), as ``flwr run`` refuses them.
    """
    valid = set(known)
    unknown = sorted(set(run_config) - valid)
    if unknown:
        listed = ", ".join(repr(k) for k in unknown)
        raise ValueError(
            f"unknown run-config key{'s' if len(unknown) > 1 else ''} {listed}: "
            f"not defined in {source}'s [tool.flwr.app.config]"
        )


def check_choice(key: str, value: str, choices: Iterable[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``, naming ``key``."""
    valid = tuple(choices)
    if value not in valid:
        raise ValueError(f"{key} must be one of {valid}, got {value!r}")


@dataclass(frozen=True)
class Rules:
    """Declarative value rules of a config section, checked by :func:`check_fields`.

    Attributes
    ----------
    choices : Mapping[str, tuple[str, ...]]
        Field -> its valid values.
    at_least : Mapping[float, str]
        Lower bound -> the (space-separated) fields that must be ``>=`` it.
    positive : str
        The (space-separated) fields that must be ``> 0``.
    within : Mapping[str, str]
        Field -> interval in mathematical notation, e.g. ``"[0, 1)"``.
    """

    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    at_least: Mapping[float, str] = field(default_factory=dict)
    positive: str = ""
    within: Mapping[str, str] = field(default_factory=dict)


def _inside(value: float, interval: str) -> bool:
    low_text, high_text = interval[1:-1].split(",")
    low, high = float(low_text), float(high_text)
    above = value >= low if interval[0] == "[" else value > low
    below = value <= high if interval[-1] == "]" else value < high
    return above and below


def check_fields(instance: Any, prefix: str, rules: Rules) -> None:
    """Raise ``ValueError`` for the first field of ``instance`` that breaks ``rules``.

    The message names the run-config key (``<prefix><field in kebab-case>``) and the value.
    """

    def key(name: str) -> str:
        return config_key(prefix, name)

    for name, valid in rules.choices.items():
        check_choice(key(name), getattr(instance, name), valid)
    for low, names in rules.at_least.items():
        for name in names.split():
            if getattr(instance, name) < low:
                raise ValueError(f"{key(name)} must be >= {low}, got {getattr(instance, name)!r}")
    for name in rules.positive.split():
        if not getattr(instance, name) > 0:
            raise ValueError(f"{key(name)} must be > 0, got {getattr(instance, name)!r}")
    for name, interval in rules.within.items():
        if not _inside(getattr(instance, name), interval):
            raise ValueError(f"{key(name)} must be in {interval}, got {getattr(instance, name)!r}")


_EXPERIMENT_RULES = Rules(
    choices={"lr_schedule": ("constant", "cosine")},
    at_least={
        1: "num_server_rounds num_partitions batch_size min_available_nodes",
        0: "seed partition_seed min_partition_size local_epochs momentum weight_decay "
        "client_threads proximal_mu partition_size",
    },
    positive="dirichlet_alpha lr",
    within={"core_fraction": "[0, 1)", "fraction_train": "(0, 1]", "fraction_evaluate": "[0, 1]"},
)


@dataclass(frozen=True)
class ExperimentConfig:
    """The shared part of the run configuration (see ``pyproject.toml``).

    Every field corresponds to the kebab-case key of the same name
    (``num_server_rounds`` <-> ``num-server-rounds``).
    """

    strategy: str = "fedavg"
    strategy_plugins: str = ""
    num_server_rounds: int = 3
    seed: int = 0
    output_dir: str = "results/runs"
    dataset: str = "digits"
    data_dir: str = ""
    npz_path: str = ""
    download: bool = False
    normalize: bool = True
    augment: bool = False
    partitioner: str = "iid"
    num_partitions: int = 4
    dirichlet_alpha: float = 0.5
    min_partition_size: int = 10
    partition_seed: int = 42
    partition_size: int = 0
    core_fraction: float = 0.0
    model: str = "cnn"
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    lr_schedule: str = "constant"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    client_threads: int = 0
    fraction_train: float = 1.0
    fraction_evaluate: float = 0.0
    min_available_nodes: int = 2
    proximal_mu: float = 0.01
    cache_dir: str = ""

    def __post_init__(self) -> None:
        """Validate ranges; names are checked against the registries by the server."""
        check_fields(self, "", _EXPERIMENT_RULES)
        if self.dataset == "npz" and not self.npz_path:
            raise ValueError("dataset 'npz' needs npz-path, got an empty npz-path")

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> ExperimentConfig:
        """Parse ``context.run_config`` (kebab-case keys); absent keys take the defaults."""
        return parse_section(cls, run_config)

    def replace(self, **changes: Any) -> ExperimentConfig:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


def _parse_lag(text: str) -> tuple[tuple[int, float, float], ...]:
    lag = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            pid_text, _, delay = item.partition(":")
            low_text, _, high_text = delay.partition("-")
            low = float(low_text)
            lag.append((int(pid_text), low, float(high_text) if high_text else low))
        except ValueError as err:
            raise ValueError(
                f"sim-lag-edges entry {item!r} is not 'pid:seconds' or 'pid:low-high'"
            ) from err
    return tuple(lag)


def _parse_noisy(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError as err:
        raise ValueError(f"sim-noisy-edges must list partition ids, got {text!r}") from err


@dataclass(frozen=True)
class SimulatedEdges:
    """Experiment-only edge behaviour, declared by a profile and applied by the ClientApp.

    Keys: ``sim-lag-edges`` (``"pid:seconds"`` or ``"pid:low-high"`` for a seeded uniform
    delay, comma-separated: the ClientApp of that partition really sleeps before replying),
    ``sim-noisy-edges`` (comma-separated partition ids that train on corrupted data),
    ``sim-noise-p`` (per-batch corruption probability) and ``sim-noise-mode``
    (``"shuffle"``: input-label pairs of a batch are shuffled, the paper's protocol; ``"flip"``:
    labels replaced by another class; ``"pair"``: class c becomes c + 1, pair flipping).
    """

    lag_edges: tuple[tuple[int, float, float], ...] = field(
        default=(), metadata={"kind": str, "raw-default": "", "parse": _parse_lag}
    )
    noisy_edges: tuple[int, ...] = field(
        default=(), metadata={"kind": str, "raw-default": "", "parse": _parse_noisy}
    )
    noise_p: float = 0.5
    noise_mode: str = "shuffle"

    def __post_init__(self) -> None:
        """Validate the values, naming the bad one."""
        check_fields(self, "sim-", Rules(choices={"noise_mode": ("shuffle", "flip", "pair")}))
        check_fields(self, "sim-", Rules(within={"noise_p": "[0, 1]"}))
        for pid, low, high in self.lag:
            if low < 0 or high < low:
                raise ValueError(f"sim-lag-edges: bad delay {low}-{high} for partition {pid}")

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> SimulatedEdges:
        """Parse the ``sim-*`` keys (absent keys: no lag, no noise)."""
        return parse_section(cls, run_config, "sim-")

    @property
    def lag(self) -> tuple[tuple[int, float, float], ...]:
        """``(partition, low, high)`` delay ranges of ``sim-lag-edges``."""
        return self.lag_edges

    @property
    def noisy(self) -> tuple[int, ...]:
        """The partition ids of ``sim-noisy-edges``."""
        return self.noisy_edges

    def delay(self, partition_id: int, seed: int) -> float:
        """Seconds the ClientApp of ``partition_id`` waits before replying."""
        for pid, low, high in self.lag:
            if pid == partition_id:
                if high == low:
                    return low
                return float(np.random.default_rng([seed, pid]).uniform(low, high))
        return 0.0
