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
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = [
    "alive_flower_processes",
    "descendants",
    "flower_env",
    "free_port",
    "process_table",
    "signal_all",
    "stop_process",
]


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


def process_table() -> dict[int, tuple[int, int]]:
    """``pid -> (ppid, pgid)`` of every process (``ps`` works on Linux and macOS)."""
    out = subprocess.run(
        ["ps", "-A", "-o", "pid=,ppid=,pgid="], capture_output=True, text=True, check=False
    ).stdout
    table: dict[int, tuple[int, int]] = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 3 and all(f.isdigit() for f in fields):
            table[int(fields[0])] = (int(fields[1]), int(fields[2]))
    return table


def descendants(roots: Iterable[int], table: Mapping[int, tuple[int, int]]) -> set[int]:
    """Every descendant of ``roots`` in ``table`` (:func:`process_table`)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    stack = [r for r in roots if r in table]
    while stack:
        pid = stack.pop()
        for child in children.get(pid, []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _command_line(pid: int) -> str | None:
    """The command line of a live, non-zombie process, or None."""
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return None
            return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            return None
    out = subprocess.run(
        ["ps", "-o", "stat=,command=", "-p", str(pid)], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not out or out.startswith("Z"):
        return None
    return out.split(None, 1)[1] if " " in out else out


def alive_flower_processes(pids: Iterable[int]) -> dict[int, str]:
    """Those of ``pids`` that are alive Flower processes (``flower-*``/``flwr*``): pid -> cmd."""
    alive = {}
    for pid in pids:
        cmd = _command_line(pid)
        if cmd is not None and ("flower" in cmd or "flwr" in cmd):
            alive[pid] = cmd
    return alive


def signal_all(pids: Iterable[int], table: Mapping[int, tuple[int, int]], sig: int) -> None:
    """Send ``sig`` to each pid and to each pid's process group (never to our own group)."""
    own_group = os.getpgrp()
    for pid in pids:
        pgid = table.get(pid, (0, 0))[1]
        if pgid > 1 and pgid != own_group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
