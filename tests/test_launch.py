"""The launcher's ``flwr run`` command line (no SuperLink needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from edgekd.launch import (
    LaunchError,
    flwr_run_command,
    format_pairs,
    run_config_overrides,
    stage_app,
)

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


def _fab_members(app: Path) -> dict[str, bytes]:
    """Flower's own FAB of ``app``: member name -> bytes (the .info metadata left out)."""
    import io
    import zipfile

    from flwr.cli.build import build_fab_from_disk

    with zipfile.ZipFile(io.BytesIO(build_fab_from_disk(app))) as fab:
        return {n: fab.read(n) for n in fab.namelist() if not n.startswith(".info/")}


@pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")
def test_staged_app_packs_into_the_same_fab(tmp_path: Path) -> None:
    """The launcher's staged copy gives Flower the same FAB without the files it drops.

    Prepare: a copy of this repo's pyproject.toml, package files, a profile, a LICENSE, a
    .gitignore ignoring results/runs/, .ci-venv/ and *.npz, and what FAB building throws away:
    .venv and .ci-venv (pyvenv.cfg plus .py files), __pycache__, an ignored results directory
    holding JSON, an npz and a PNG; and a .git with a JSON file (which Flower does pack).
    Execute: stage_app into a directory left with a stale file by an earlier run, then
    Flower's build_fab_from_disk on the original and the copy.
    Assert: the two FABs hold the same members with the same bytes (the stale file is gone);
    the copy holds none of the pruned directories (nothing of them was walked into it).
    """
    app = tmp_path / "app"
    (app / "pkg").mkdir(parents=True)
    (app / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (app / "pkg" / "__init__.py").write_text("X = 1\n")
    (app / "pkg" / "notes.md").write_text("# notes\n")
    (app / "simulations").mkdir()
    (app / "simulations" / "p.toml").write_text("lr = 0.1\n")
    (app / "LICENSE").write_text("Apache-2.0\n")
    (app / ".gitignore").write_text("results/runs/\n.ci-venv/\n*.npz\n")
    (app / "results" / "runs" / "r1").mkdir(parents=True)
    (app / "results" / "runs" / "r1" / "metrics.json").write_text("[]")
    (app / "results" / "summary.json").write_text("{}")
    (app / "results" / "plot.png").write_bytes(b"\x89PNG")
    (app / "data.npz").write_bytes(b"x")
    for venv in (app / ".venv", app / ".ci-venv"):
        (venv / "lib" / "site").mkdir(parents=True)
        (venv / "pyvenv.cfg").write_text("home = /usr\n")
        for i in range(20):
            (venv / "lib" / "site" / f"m{i}.py").write_text("pass\n")
    (app / ".git").mkdir()
    (app / ".git" / "config.json").write_text("{}")
    (app / "pkg" / "__pycache__").mkdir()
    (app / "pkg" / "__pycache__" / "x.py").write_text("pass\n")

    (tmp_path / "staged").mkdir()
    (tmp_path / "staged" / "stale.py").write_text("left by an earlier run\n")
    staged = stage_app(app, tmp_path / "staged")

    original = _fab_members(app)
    assert "pkg/__init__.py" in original
    assert "results/summary.json" in original
    assert _fab_members(staged) == original
    copied = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    assert ".git/config.json" in original
    assert not any(p.startswith((".venv/", ".ci-venv/", "results/runs/")) for p in copied), copied
    assert not any("__pycache__" in p for p in copied), copied
    assert "data.npz" not in copied
    assert "results/plot.png" not in copied
