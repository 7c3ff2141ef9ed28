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


def _app_like_this_repo(app: Path) -> None:
    """A small app with this repo's pyproject.toml and every kind of file the repo has."""
    files = {
        "pyproject.toml": (ROOT / "pyproject.toml").read_text(),
        "README.md": "# app\n",
        "LICENSE": "Apache-2.0\n",
        ".gitignore": "results/runs/\n.ci-venv/\n*.npz\n",
        "edgekd/__init__.py": "X = 1\n",
        "edgekd/strategies/s.py": "Y = 2\n",
        "examples/custom.py": "Z = 3\n",
        "simulations/p.toml": "lr = 0.1\n",
        "tests/conftest.py": "pass\n",
        "tests/test_x.py": "pass\n",
        "benchmarks/bench.py": "pass\n",
        "benchmarks/README.md": "# numbers\n",
        "scripts/run.py": "pass\n",
        "docs/deploy.md": "# deploy\n",
        "results/summary.json": "{}",
        "results/fedmd/README.md": "# results\n",
        "results/runs/r1/metrics.json": "[]",
        ".git/config.json": "{}",
        "edgekd/__pycache__/x.py": "pass\n",
    }
    for venv in (".venv", ".ci-venv"):
        files[f"{venv}/pyvenv.cfg"] = "home = /usr\n"
        files.update({f"{venv}/lib/site/m{i}.py": "pass\n" for i in range(20)})
    for name, text in files.items():
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(text)
    (app / "results" / "plot.png").write_bytes(b"\x89PNG")
    (app / "data.npz").write_bytes(b"x")


@pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")
def test_fab_carries_only_the_app(tmp_path: Path) -> None:
    """The FAB of an app with this repo's pyproject holds the package, examples and README only.

    Prepare: an app with this repo's pyproject.toml (its fab-include), package and example
    modules, README, LICENSE, and tests/, benchmarks/, scripts/, docs/, simulations/ and
    results/ files of FAB types.
    Execute: Flower's build_fab_from_disk.
    Assert: exactly pyproject.toml, README.md, the package's and the example's modules.
    """
    app = tmp_path / "app"
    _app_like_this_repo(app)
    assert set(_fab_members(app)) == {
        "pyproject.toml",
        "README.md",
        "edgekd/__init__.py",
        "edgekd/strategies/s.py",
        "examples/custom.py",
    }


@pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")
def test_staged_app_packs_into_the_same_fab(tmp_path: Path) -> None:
    """The launcher's staged copy gives Flower the same FAB without the files it drops.

    Prepare: the app of :func:`_app_like_this_repo` (with .venv, .ci-venv, __pycache__, an
    ignored results directory, an npz and a PNG, and a .git holding JSON); a staging
    directory left with a stale file by an earlier run.
    Execute: stage_app, then Flower's build_fab_from_disk on the original and the copy.
    Assert: the two FABs hold the same members with the same bytes (the stale file is gone);
    the copy holds none of the pruned directories (nothing of them was walked into it).
    """
    app = tmp_path / "app"
    _app_like_this_repo(app)
    (tmp_path / "staged").mkdir()
    (tmp_path / "staged" / "stale.py").write_text("left by an earlier run\n")
    staged = stage_app(app, tmp_path / "staged")

    original = _fab_members(app)
    assert "edgekd/__init__.py" in original
    assert _fab_members(staged) == original
    copied = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    assert "stale.py" not in copied
    assert not any(p.startswith((".venv/", ".ci-venv/", "results/runs/")) for p in copied), copied
    assert not any("__pycache__" in p for p in copied), copied
    assert "data.npz" not in copied
    assert "results/plot.png" not in copied


@pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")
def test_this_repo_fab_has_no_tests_benchmarks_or_results(tmp_path: Path) -> None:
    """The FAB `flwr run` ships for this repository carries only the app.

    Prepare: this repository.
    Execute: stage_app (as the launcher does), then Flower's build_fab_from_disk on the copy.
    Assert: every member is pyproject.toml, README.md, or below edgekd/ or examples/; the
    ServerApp and ClientApp modules are in it.
    """
    members = set(_fab_members(stage_app(ROOT, tmp_path / "staged")))
    outside = {m for m in members if not m.startswith(("edgekd/", "examples/"))}
    assert outside == {"pyproject.toml", "README.md"}
    assert {"edgekd/server/app.py", "edgekd/clients/app.py"} <= members


@pytest.mark.parametrize("module", ["edgekd.launch", "edgekd.deploy"])
def test_unknown_key_is_one_line_before_anything_starts(
    module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The launcher and the deployment command refuse an unknown key in one line, exit 2.

    Prepare: this app and a misspelt key.
    Execute: the module's main (no SuperLink is started: the check comes first).
    Assert: exit status 2 and one stderr line naming the key.
    """
    import importlib

    main = importlib.import_module(
        module if module == "edgekd.launch" else "edgekd.deploy.__main__"
    ).main
    argv = [str(ROOT), "--run-config", "cd-varient='CPP'"]
    code = main(argv if module == "edgekd.launch" else ["run", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "'cd-varient'" in err
