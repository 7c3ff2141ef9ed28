"""Tests for edgekd.checkpoint and ``--resume``: a run SIGKILLed between rounds goes on to
the same final metrics; a folder without a checkpoint or with another config is refused."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgekd.checkpoint import (
    CHECKPOINT,
    KILL_HOOK,
    check_same_config,
    load_checkpoint,
    restore_rng,
    rng_state,
    write_checkpoint,
)
from edgekd.launch import format_pairs
from edgekd.local import main as local_main

ROOT = Path(__file__).resolve().parents[1]
TIMING_WORDS = ("elapsed", "seconds")  # wall-clock values differ between any two runs

CLONED = {
    "strategy": "cloned-distillation",
    "cd-variant": "CEM",
    "cd-ensemble-size": 2,
    "cd-memory-size": 2,
    "cd-core-epochs": 1,
    "cd-distill-epochs": 1,
    "cd-detect-policy": "downweight",
    "core-fraction": 0.25,
    "num-partitions": 3,
}
FEDAVG = {"strategy": "fedavg", "num-partitions": 4, "fraction-train": 0.5}


def _config(tiny_npz: Path, tmp_path: Path, strategy: dict[str, Any]) -> dict[str, Any]:
    """A 4-round run on the tiny npz (seconds per run)."""
    return {
        "dataset": "npz",
        "npz-path": str(tiny_npz),
        "model": "cnn",
        "num-server-rounds": 4,
        "local-epochs": 1,
        "batch-size": 16,
        "output-dir": str(tmp_path / "runs"),
        **strategy,
    }


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.json without its wall-clock values."""
    rows = json.loads((run_dir / "metrics.json").read_text())
    return [{k: v for k, v in row.items() if not any(w in k for w in TIMING_WORDS)} for row in rows]


def _killed_run(pairs: str, run_dir: Path, after_round: int) -> subprocess.CompletedProcess:
    """``python -m edgekd.local`` SIGKILLed right after the checkpoint of ``after_round``."""
    env = {**os.environ, KILL_HOOK: str(after_round), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "edgekd.local", str(ROOT), "--run-config", pairs]
    return subprocess.run(
        [*command, "--out-dir", str(run_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_checkpoint_is_written_atomically_and_read_without_code(tmp_path: Path) -> None:
    """write + os.replace leaves one complete file and no temporary; it loads as written."""
    write_checkpoint(tmp_path, {"round": 1, "arrays": {"w": torch.ones(2)}})
    write_checkpoint(tmp_path, {"round": 2, "arrays": {"w": torch.zeros(2)}})
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]
    state = load_checkpoint(tmp_path)
    assert state["round"] == 2
    assert torch.equal(state["arrays"]["w"], torch.zeros(2))


def test_rng_states_round_trip() -> None:
    """Python, numpy and torch draw the same numbers after restore_rng as after the save."""
    saved = rng_state()
    first = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    restore_rng(saved)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == first


def test_config_difference_names_every_differing_key() -> None:
    """Another config is one ValueError listing each key with both values; the keys that
    may change (output-dir, resume-dir) are ignored."""
    saved = {"lr": 0.05, "seed": 0, "output-dir": "a", "cd-variant": "CEM"}
    current = {"lr": 0.1, "seed": 0, "output-dir": "b", "resume-dir": "x", "model": "cnn"}
    with pytest.raises(ValueError) as info:
        check_same_config(saved, current, "RUN")
    message = str(info.value)
    assert message.startswith("cannot resume RUN: its checkpoint was made by a different config")
    assert "lr = 0.05 in the checkpoint, 0.1 now" in message
    assert "cd-variant = 'CEM' in the checkpoint, (absent) now" in message
    assert "model = (absent) in the checkpoint, 'cnn' now" in message
    assert "output-dir" not in message and "seed" not in message


@pytest.mark.parametrize("strategy", [CLONED, FEDAVG], ids=["cloned-distillation", "fedavg"])
def test_local_run_sigkilled_after_round_2_resumes_to_the_same_metrics(
    strategy: dict[str, Any], tiny_npz: Path, tmp_path: Path, one_torch_thread: None
) -> None:
    """A 4-round local run killed with SIGKILL after round 2 and resumed equals one run.

    Prepare: the same run config for an uninterrupted run and for a run in a subprocess
    that SIGKILLs itself right after round 2's checkpoint (cloned distillation with memory,
    ensembles and detection statistics; FedAvg sampling 2 of 4 nodes with Python's random).
    Execute: the uninterrupted run; the killed run; python -m edgekd.local --resume.
    Assert: the kill happened (-9) with round 2's checkpoint and no summary; the resumed
    run's metrics.json equals the uninterrupted run's, timings aside.
    """
    pairs = format_pairs(_config(tiny_npz, tmp_path, strategy))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert local_main([str(ROOT), "--run-config", pairs, "--out-dir", str(whole)]) == 0
    done = _killed_run(pairs, killed, after_round=2)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert load_checkpoint(killed)["round"] == 2
    assert not (killed / "summary.json").exists()
    assert local_main([str(ROOT), "--resume", str(killed)]) == 0
    assert _metrics(killed) == _metrics(whole)
    summary = json.loads((killed / "summary.json").read_text())
    assert summary == json.loads((whole / "summary.json").read_text())


def test_launcher_resume_runs_the_server_app_on_from_the_checkpoint(
    tiny_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread: None
) -> None:
    """``edgekd.launch --resume`` passes the checkpoint's config plus resume-dir to flwr run,
    and the ServerApp given that config goes on from the checkpoint to the same metrics.

    Prepare: an uninterrupted local run, and a run killed after round 2.
    Execute: edgekd.launch.main --resume with launch() captured; then the ServerApp's main
    with the captured run config on an in-process grid (what flwr run would call).
    Assert: exit 0; the run config is the checkpoint's with resume-dir; metrics as one run.
    """
    from flwr.app import Context, RecordDict

    from edgekd import launch
    from edgekd.clients.app import app as client_app
    from edgekd.inprocess import InProcessGrid
    from edgekd.server.app import main as server_main

    config = _config(tiny_npz, tmp_path, CLONED)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert (
        local_main([str(ROOT), "--run-config", format_pairs(config), "--out-dir", str(whole)]) == 0
    )
    assert _killed_run(format_pairs(config), killed, after_round=2).returncode == -9
    captured: dict[str, Any] = {}
    monkeypatch.setattr(
        launch, "launch", lambda app, run_config, *a: captured.update(rc=run_config) or 0
    )
    assert launch.main([str(ROOT), "--resume", str(killed)]) == 0
    run_config = launch.effective_run_config(ROOT, captured["rc"])
    assert run_config["resume-dir"] == str(killed.resolve())
    grid = InProcessGrid(client_app, run_config, num_nodes=3, seed=0)
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    server_main(grid, context)
    assert _metrics(killed) == _metrics(whole)


def test_resume_without_checkpoint_or_with_another_config_is_one_line(
    tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_torch_thread: None
) -> None:
    """--resume of a folder with no checkpoint, or with --run-config that differs from the
    checkpoint's, exits 2 with one line naming the folder or the difference (both CLIs)."""
    from edgekd.launch import main as launch_main

    empty = tmp_path / "empty"
    empty.mkdir()
    for cli in (local_main, launch_main):
        assert cli([str(ROOT), "--resume", str(empty)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"no checkpoint in {empty}" in err
    config = _config(tiny_npz, tmp_path, {**FEDAVG, "num-server-rounds": 1})
    run = tmp_path / "run"
    assert local_main([str(ROOT), "--run-config", format_pairs(config), "--out-dir", str(run)]) == 0
    capsys.readouterr()
    other = format_pairs({**config, "lr": 0.1})
    for cli in (local_main, launch_main):
        assert cli([str(ROOT), "--resume", str(run), "--run-config", other]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert "made by a different config: lr = 0.05 in the checkpoint, 0.1 now" in err
