"""Plain ``flwr run . --stream`` as a Flower user types it: Flower's default federation.

Flower's default connection (``:local:``) starts a detached local SuperLink with 2 simulated
SuperNodes; the app's ``num-partitions`` is 4. The nodes' own ``num-partitions`` (2, set by
the simulation engine) decides the partitioning, so the run completes. The test gives Flower
a private ``FLWR_HOME`` and free ports for the local SuperLink, and stops what it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd.processes import free_port

ROOT = Path(__file__).resolve().parents[2]


def _sessions_of(flwr_home: Path, port: int) -> set[int]:
    """Sessions of the local SuperLink started under ``flwr_home`` and of its simulation."""
    own = os.getsid(0)
    needles = (str(flwr_home).encode(), f"127.0.0.1:{port}".encode())
    sessions = set()
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes()
            if any(n in cmdline for n in needles) and (b"flwr" in cmdline or b"flower" in cmdline):
                sid = os.getsid(int(entry.name))
                if sid != own:
                    sessions.add(sid)
    return sessions


def _stop_sessions(sessions: set[int]) -> None:
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if os.getsid(int(entry.name)) in sessions:
                os.kill(int(entry.name), signal.SIGKILL)


@pytest.mark.integration
def test_flwr_run_with_the_default_federation_completes_the_main_job(tmp_path: Path) -> None:
    """``flwr run . --stream`` with Flower's default federation (2 SuperNodes) completes.

    Prepare: a private FLWR_HOME (Flower writes its default ``local`` connection there), free
    ports for the local SuperLink, runtime dependency installation off; the README's main job
    (FedAvg on the embedded digits, the app's num-partitions=4) shortened to 1 round.
    Execute: ``flwr run . --stream --run-config "num-server-rounds=1 output-dir=..."`` from
    the repository, then ``flwr ls --format json``.
    Assert: exit 0; the run's status is finished:completed; the streamed log shows 2 train
    results and no failure (the 2 nodes' own num-partitions decided their data);
    metrics.json has rounds 0 and 1 with the clients' train loss in round 1.
    """
    home, port = tmp_path / "flwr-home", free_port()
    out_dir = tmp_path / "results"
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(port),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    flwr = str(Path(sys.executable).with_name("flwr"))
    try:
        done = subprocess.run(
            [
                flwr,
                "run",
                ".",
                "--stream",
                "--run-config",
                f"num-server-rounds=1 output-dir='{out_dir}'",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
            check=False,
        )
        listing = subprocess.run(
            [flwr, "ls", "--format", "json"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        _stop_sessions(_sessions_of(home, port))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = json.loads(listing.stdout)["runs"]
    assert [r["status"] for r in runs] == ["finished:completed"], listing.stdout
    assert "Received 2 results and 0 failures" in done.stdout + done.stderr
    (run_dir,) = list(out_dir.iterdir())
    rows = {row["round"]: row for row in json.loads((run_dir / "metrics.json").read_text())}
    assert sorted(rows) == [0, 1]
    assert rows[1]["train/train-loss"] > 0
