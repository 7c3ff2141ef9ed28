"""Tests for edgekd.config."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from edgekd.config import ExperimentConfig, config_value

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_match_pyproject() -> None:
    """Every ExperimentConfig field has a pyproject key with the same default."""
    app_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "config"
    ]
    cfg = ExperimentConfig.from_run_config(app_config)
    assert cfg == ExperimentConfig()
    for name in ExperimentConfig.__dataclass_fields__:
        assert name.replace("_", "-") in app_config


def test_kebab_keys_and_types_are_parsed() -> None:
    """Kebab-case keys map to fields and TOML ints become floats where a float is expected."""
    cfg = ExperimentConfig.from_run_config({"num-server-rounds": 7, "lr": 1, "augment": "true"})
    assert cfg.num_server_rounds == 7
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0
    assert cfg.augment is True


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("dirichlet-alpha", 0.0, "dirichlet-alpha must be > 0, got 0.0"),
        ("dirichlet-alpha", -1.0, "got -1.0"),
        ("num-partitions", 0, "num-partitions must be >= 1, got 0"),
        ("core-fraction", 1.0, "core-fraction"),
        ("batch-size", 0, "batch-size"),
    ],
)
def test_bad_values_name_the_value(key: str, value: float, fragment: str) -> None:
    """A bad range raises ValueError whose message names the key and the value."""
    with pytest.raises(ValueError, match=fragment):
        ExperimentConfig.from_run_config({key: value})


def test_wrong_type_names_key() -> None:
    """A value of the wrong type names the key and the value."""
    with pytest.raises(ValueError, match="'num-server-rounds' must be a int, got 'many'"):
        config_value({"num-server-rounds": "many"}, "num-server-rounds", 3, int)


def test_npz_needs_path() -> None:
    """dataset='npz' without npz-path fails before anything runs."""
    with pytest.raises(ValueError, match="npz-path"):
        ExperimentConfig.from_run_config({"dataset": "npz"})
