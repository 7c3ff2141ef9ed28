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


# ----------------------------------------------------------------------------- one parser
def test_parse_section_reads_the_prefixed_keys_only() -> None:
    """parse_section maps field some_name to <prefix>some-name, typed by the default.

    Prepare: a small frozen dataclass and a run config with its prefixed keys, a key of
    another prefix and an unprefixed key of the same name.
    Execute: parse_section with prefix "demo-".
    Assert: the prefixed values, converted to the defaults' types; absent keys default.
    """
    from dataclasses import dataclass

    from edgekd.config import parse_section

    @dataclass(frozen=True)
    class Demo:
        some_rate: float = 0.5
        steps: int = 3
        mode: str = "a"

    parsed = parse_section(Demo, {"demo-some-rate": 2, "steps": 9, "other-steps": 8}, "demo-")
    assert parsed == Demo(some_rate=2.0, steps=3, mode="a")
    assert isinstance(parsed.some_rate, float)


def test_simulated_edges_use_the_same_parser() -> None:
    """sim-* keys go through parse_section; lists are converted by the fields' parsers."""
    from edgekd.config import SimulatedEdges

    sim = SimulatedEdges.from_run_config(
        {"sim-lag-edges": "0:5, 2:1-3", "sim-noisy-edges": "1,4", "sim-noise-p": 1}
    )
    assert sim.lag == ((0, 5.0, 5.0), (2, 1.0, 3.0))
    assert sim.noisy == (1, 4) and sim.noise_p == 1.0 and sim.noise_mode == "shuffle"
    with pytest.raises(ValueError, match=r"sim-noise-p must be in \[0, 1\], got 1.5"):
        SimulatedEdges.from_run_config({"sim-noise-p": 1.5})
    with pytest.raises(ValueError, match="sim-lag-edges entry 'x'"):
        SimulatedEdges.from_run_config({"sim-lag-edges": "x"})


@pytest.mark.parametrize(
    ("interval", "inside", "outside"),
    [("[0, 1)", [0.0, 0.99], [1.0, -0.1]), ("(0, 1]", [1.0, 0.5], [0.0, 1.1])],
)
def test_rules_intervals(interval: str, inside: list[float], outside: list[float]) -> None:
    """Rules.within checks open and closed ends as written, naming key and value."""
    from dataclasses import dataclass

    from edgekd.config import Rules, check_fields

    @dataclass(frozen=True)
    class Box:
        share: float

    for value in inside:
        check_fields(Box(value), "x-", Rules(within={"share": interval}))
    for value in outside:
        with pytest.raises(ValueError, match=f"x-share must be in .*, got {value}"):
            check_fields(Box(value), "x-", Rules(within={"share": interval}))


def test_unknown_keys_are_refused_like_flwr_run(tmp_path: Path) -> None:
    """effective_run_config refuses an override key the app does not define, naming it.

    Prepare: this app; overrides with a misspelt key (as a pair and in a TOML profile).
    Execute: effective_run_config.
    Assert: ValueError naming the unknown key; with check_keys=False it is merged.
    """
    from edgekd.launch import effective_run_config

    with pytest.raises(ValueError, match="unknown run-config key 'cd-varient'"):
        effective_run_config(ROOT, ["cd-varient='CPP'"])
    profile = tmp_path / "p.toml"
    profile.write_text("num-server-round = 3\nlr = 0.1\n")
    with pytest.raises(ValueError, match="'num-server-round'"):
        effective_run_config(ROOT, [str(profile)])
    merged = effective_run_config(ROOT, ["cd-varient='CPP'"], check_keys=False)
    assert merged["cd-varient"] == "CPP" and merged["strategy"] == "fedavg"


def test_every_shipped_profile_uses_known_keys_only() -> None:
    """Every profile under simulations/ (alone, as a base or an override) has only app keys."""
    from edgekd.launch import effective_run_config

    for profile in sorted((ROOT / "simulations").rglob("*.toml")):
        effective_run_config(ROOT, [str(profile)])
