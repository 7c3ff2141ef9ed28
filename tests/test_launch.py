"""The launcher's ``flwr run`` command line (no SuperLink needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from edgekd.launch import LaunchError, flwr_run_command, format_pairs, run_config_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_profile_and_pairs_become_one_override_flower_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TOML profile plus 'k=v' pairs: one --run-config string that Flower's parser reads.

    Prepare: a profile with a relative npz-path, a string with spaces, a float and a bool; a
    later pair overriding one of its keys; cwd = tmp_path.
    Execute: flwr_run_command, then flwr.common.config.parse_config_args on its --run-config.
    Assert: exactly one --run-config; Flower parses it to the merged values (later pair wins),
    npz-path and output-dir made absolute against the launcher's cwd.
    """
    profile = tmp_path / "p.toml"
    profile.write_text(
        'npz-path = "../data/x.npz"\nstrategy = "fedavg"\nlr = 0.05\naugment = true\n'
        'cd-variant = "CEM"\nnum-server-rounds = 9\n'
    )
    monkeypatch.chdir(tmp_path)
    command = flwr_run_command(
        ROOT, "conn", [str(profile), "num-server-rounds=2 fedmd-client-models='cnn,vgg8'"], {}
    )
    assert command[2:5] == [str(ROOT), "conn", "--stream"]
    assert command.count("--run-config") == 1
    parsed = parse_config_args([command[command.index("--run-config") + 1]])
    assert parsed["npz-path"] == str((tmp_path / "../data/x.npz").resolve())
    assert parsed["output-dir"] == str((tmp_path / "results/runs").resolve())
    assert parsed["num-server-rounds"] == 2
    assert parsed["lr"] == 0.05
    assert parsed["augment"] is True
    assert parsed["strategy"] == "fedavg"
    assert parsed["fedmd-client-models"] == "cnn,vgg8"


def test_federation_pairs_are_quoted() -> None:
    """format_pairs writes TOML scalars: strings quoted, numbers and bools bare."""
    assert format_pairs({"a": "x y", "b": 2, "c": 0.5, "d": False}) == 'a="x y" b=2 c=0.5 d=false'


def test_missing_profile_is_named() -> None:
    """A --run-config ending in .toml that does not exist is an error naming it."""
    with pytest.raises(LaunchError, match=r"nope\.toml"):
        run_config_overrides(["simulations/nope.toml"])
