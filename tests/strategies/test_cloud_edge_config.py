"""Tests for the ce-* settings (edgekd.strategies.cloud_edge_config)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from edgekd.strategies.cloud_edge_config import CloudEdgeConfig

ROOT = Path(__file__).resolve().parents[2]


def _app_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_defaults_match_pyproject() -> None:
    """Every field has a ce-* key in pyproject with the dataclass default, and no more keys."""
    app_config = _app_config()
    assert CloudEdgeConfig.from_run_config(app_config) == CloudEdgeConfig()
    fields = {"ce-" + name.replace("_", "-") for name in CloudEdgeConfig.__dataclass_fields__}
    assert fields == {key for key in app_config if key.startswith("ce-")}


def test_lists_are_parsed_and_sigma_one_added() -> None:
    """ce-nmd-weights and ce-sigmas parse to floats; the sweep is sorted and includes 1."""
    cfg = CloudEdgeConfig.from_run_config({"ce-nmd-weights": "3, 2,1", "ce-sigmas": "0.3,0,0.1"})
    assert cfg.nmd_weights == (3.0, 2.0, 1.0)
    assert cfg.sigmas == (0.0, 0.1, 0.3, 1.0)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"ce-sigmas": "0,1.5"}, r"ce-sigmas must be numbers in \[0, 1\], got \(0.0, 1.5\)"),
        ({"ce-sigmas": "-0.1"}, r"ce-sigmas .*-0.1"),
        ({"ce-sigmas": "0,x"}, "ce-sigmas must be comma-separated numbers, got '0,x'"),
        ({"ce-loss": "crd"}, "ce-loss must be one of .*got 'crd'"),
        ({"ce-manifold": "isomap"}, "ce-manifold must be one of .*got 'isomap'"),
        ({"ce-manifold-dim": 0}, "ce-manifold-dim must be >= 1, got 0"),
        ({"ce-manifold-dim": 40, "batch-size": 32}, r"ce-manifold-dim \(40\) must be <= batch"),
        (
            {"ce-manifold": "ltsa", "ce-neighbors": 32, "batch-size": 32},
            r"ce-neighbors \(32\) must be < batch-size \(32\)",
        ),
        (
            {"ce-manifold": "ltsa", "ce-manifold-dim": 10, "ce-neighbors": 10},
            r"ce-manifold-dim \(10\) must be < ce-neighbors \(10\)",
        ),
        ({"ce-nmd-weights": "1,2"}, r"ce-nmd-weights must be 3 numbers >= 0.*\(1.0, 2.0\)"),
        ({"ce-nmd-weights": "1,-2,1"}, "ce-nmd-weights .*-2.0"),
        ({"ce-select-tolerance": 1.5}, r"ce-select-tolerance must be in \[0, 1\], got 1.5"),
        ({"ce-val-fraction": 0.0}, r"ce-val-fraction must be in \(0, 1\), got 0.0"),
        ({"ce-temperature": 0.0}, "ce-temperature must be > 0, got 0.0"),
        ({"ce-ece-bins": 0}, "ce-ece-bins must be >= 1, got 0"),
        ({"ce-teacher-epochs": -1}, "ce-teacher-epochs must be >= 0, got -1"),
        (
            {"ce-teacher-model": "resnet7"},
            "ce-teacher-model must be a registered model, .*'resnet7'",
        ),
    ],
)
def test_bad_values_name_key_and_value(overrides: dict, fragment: str) -> None:
    """Each invalid value raises a ValueError naming the key and the value."""
    with pytest.raises(ValueError, match=fragment):
        CloudEdgeConfig.from_run_config(overrides)


def test_batch_checks_only_apply_to_nmd() -> None:
    """A large manifold dimension is irrelevant (and accepted) when the loss is not NMD."""
    cfg = CloudEdgeConfig.from_run_config({"ce-loss": "st", "ce-manifold-dim": 64, "batch-size": 8})
    assert cfg.loss == "st"


def test_shipped_profiles_parse() -> None:
    """base.toml plus each loss file of simulations/cloud-edge gives a valid configuration."""
    from edgekd.launch import effective_run_config

    folder = ROOT / "simulations" / "cloud-edge"
    losses = set()
    for variant in sorted(folder.glob("*.toml")):
        if variant.name != "base.toml":
            merged = effective_run_config(ROOT, [str(folder / "base.toml"), str(variant)])
            losses.add(CloudEdgeConfig.from_run_config(merged).loss)
    assert losses == {"ce", "st", "at", "fsp", "nmd"}
