"""Start and stop Flower's executables: environment, free ports, process-group clean-up.

Shared by :mod:`edgekd.launch` (simulation SuperLink) and :mod:`edgekd.deploy.local`
(SuperLink and SuperNodes on localhost). Linux only where ``/proc`` is read.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["flower_env", "free_port", "stop_process"]


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower's executables: this interpreter's bin first, private FLWR_HOME."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    return {
        **os.environ,
        "PATH": path,
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sessions_using_port(port: int) -> set[int]:
    """Session ids of Flower processes (other than ours) whose command line names ``port``.

    The simulation (``flwr-simulation --runtime-api-address 127.0.0.1:PORT``) starts in a
    session of its own, with Ray's processes under it; Linux only (``/proc``).
    """
    sessions: set[int] = set()
    needle = f"127.0.0.1:{port}".encode()
    own = os.getsid(0)
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes()
            if needle in cmdline and b"flwr" in cmdline:
                sid = os.getsid(int(entry.name))
                if sid != own:
                    sessions.add(sid)
    return sessions


def _kill_sessions(sessions: set[int]) -> None:
    """SIGKILL every process of the given sessions."""
    if not sessions:
        return
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            pid = int(entry.name)
            if os.getsid(pid) in sessions:
                os.kill(pid, signal.SIGKILL)


def stop_process(process: subprocess.Popen[bytes], port: int | None = None) -> None:
    """Terminate the process group of ``process`` (SuperLink, SuperExec, SuperNode).

    With ``port``, also the simulation started for the SuperLink on that port (it runs in a
    session of its own, with Ray's processes under it).
    """
    stray = _sessions_using_port(port) if port is not None else set()
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    if port is not None:
        # a simulation that was still shutting down gets up to a second to exit by itself
        deadline = time.monotonic() + 1.0
        while _sessions_using_port(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        _kill_sessions(stray | _sessions_using_port(port))
