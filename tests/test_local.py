"""Tests for edgekd.local: the in-process runner and its command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd.local import main, run_local

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("cd-varient='CPP'", ["unknown run-config key 'cd-varient'"]),
        (
            "strategy='cloned-distillation' cd-variant='CPP' cd-edge-init='independent'",
            ["cd-edge-init 'independent'", "cd-variant 'CPP'"],
        ),
        ("lr=-1", ["lr must be > 0, got -1"]),
        ("strategy='cloned-distillation' cd-temperature='hot'", ["'cd-temperature'", "'hot'"]),
        ("model='gpt'", ["unknown model 'gpt'"]),
    ],
)
def test_bad_run_config_is_one_line_and_exit_2(
    override: str, fragments: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A bad key or value stops the command before anything runs, with one line on stderr.

    Prepare: this app and one bad --run-config override.
    Execute: edgekd.local.main.
    Assert: exit status 2; stderr is one line starting 'error:' naming the key(s)/value;
    nothing was written to the output directory.
    """
    out = tmp_path / "out"
    code = main([str(ROOT), "--run-config", override, "--out-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err
    assert not out.exists()


def test_unknown_key_from_the_shell_has_no_traceback() -> None:
    """``python -m edgekd.local . --run-config "cd-varient='CPP'"`` exits non-zero in one line.

    Prepare: nothing (the repository's app).
    Execute: the command in a subprocess.
    Assert: exit status 2, one stderr line naming 'cd-varient', no 'Traceback'.
    """
    done = subprocess.run(
        [sys.executable, "-m", "edgekd.local", ".", "--run-config", "cd-varient='CPP'"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cd-varient" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_plugin_keys_are_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin's own section keys are valid keys for edgekd.local (not for flwr run).

    Prepare: a plugin module registering strategy 'plugged' with a section 'plug-' whose
    field 'size' must be >= 1, importable from tmp_path.
    Execute: check_run_config with strategy-plugins naming it, plug-size 2 then 0.
    Assert: 2 passes, 0 fails naming plug-size; with plugin_keys=False the key is unknown.
    """
    from edgekd.launch import app_run_config
    from edgekd.runner import check_run_config

    (tmp_path / "plug_mod.py").write_text(
        "from dataclasses import dataclass\n"
        "from flwr.serverapp.strategy import FedAvg\n"
        "from edgekd.config import Rules, check_fields\n"
        "from edgekd.strategies import register_strategy\n\n\n"
        "@dataclass(frozen=True)\n"
        "class PlugConfig:\n"
        "    size: int = 1\n\n"
        "    def __post_init__(self) -> None:\n"
        "        check_fields(self, 'plug-', Rules(at_least={1: 'size'}))\n\n\n"
        "@register_strategy('plugged', sections={'plug-': PlugConfig})\n"
        "def build(context):\n"
        "    return FedAvg()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    app_keys = app_run_config(ROOT)
    run_config = {**app_keys, "strategy": "plugged", "strategy-plugins": "plug_mod"}
    check_run_config({**run_config, "plug-size": 2}, app_keys)
    with pytest.raises(ValueError, match="plug-size must be >= 1, got 0"):
        check_run_config({**run_config, "plug-size": 0}, app_keys)
    with pytest.raises(ValueError, match="unknown run-config key 'plug-size'"):
        check_run_config({**run_config, "plug-size": 2}, app_keys, plugin_keys=False)


def test_run_local_writes_the_run(tiny_npz: Path, tmp_path: Path) -> None:
    """run_local runs FedAvg in this process and writes the run's files.

    Prepare: a merged run config for 3 nodes, 1 round on the tiny npz, a relative output-dir.
    Execute: run_local with an exact output directory.
    Assert: metrics.json rounds 0 and 1 with test-acc; config.json holds the config.
    """
    run_config = {
        "strategy": "fedavg",
        "dataset": "npz",
        "npz-path": str(tiny_npz),
        "num-partitions": 3,
        "num-server-rounds": 1,
        "batch-size": 16,
        "output-dir": str(tmp_path / "runs"),
    }
    out = run_local(dict(run_config), tmp_path / "run")
    rows = json.loads((out / "metrics.json").read_text())
    assert [row["round"] for row in rows] == [0, 1]
    assert all(0.0 <= row["test-acc"] <= 1.0 for row in rows)
    assert json.loads((out / "config.json").read_text())["num-partitions"] == 3


def test_run_where_every_node_fails_exits_1_with_the_reason(
    tiny_npz: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When no node can train, ``python -m edgekd.local`` exits 1 with one line naming why.

    Prepare: the nodes run a ClientApp with no handler (every message is Flower's "No train
    function registered" error reply); cloned distillation CPP, 2 edges, 2 rounds.
    Execute: edgekd.local.main.
    Assert: exit status 1; stderr is one line "error: cloned-distillation: no edge returned a
    model in any of 2 round(s) ..." naming Flower's reason.
    """
    from flwr.clientapp import ClientApp

    monkeypatch.setattr("edgekd.local.client_app", ClientApp())
    overrides = (
        f"strategy='cloned-distillation' cd-variant='CPP' dataset='npz' npz-path='{tiny_npz}' "
        "core-fraction=0.25 num-partitions=2 num-server-rounds=2 cd-core-epochs=1 "
        f"cd-distill-epochs=1 batch-size=16 output-dir='{tmp_path}'"
    )
    code = main([str(ROOT), "--run-config", overrides, "--out-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1, err
    assert err.startswith("error: cloned-distillation: no edge returned a model in any of 2 ")
    assert "No train function registered" in err
