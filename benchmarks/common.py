"""Shared helpers of the benchmarks: statistics, machine description, timed subprocesses and
the memory of a whole process tree (read from ``/proc``, Linux only).

Nothing here knows about a particular benchmark; every script in ``benchmarks/`` imports it as
``from common import ...`` (the scripts are run as ``python benchmarks/<name>.py``).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable

__all__ = [
    "HERE",
    "PYTHON",
    "ROOT",
    "TimedRun",
    "TreeMemory",
    "bench_env",
    "descendants",
    "flat_overrides",
    "machine",
    "process_name",
    "read_json",
    "run_timed",
    "stop_on_sigterm",
    "summary",
    "today",
    "write_json",
]


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so that cleanup (``finally``) runs."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """``{"median", "min", "max", "repeats"}`` of ``values`` (NaN-free, non-empty)."""
    if not values:
        raise ValueError("summary of no values")
    return {
        "median": float(statistics.median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
        "repeats": len(values),
    }


def today() -> str:
    """The date of the measurement, ``YYYY-MM-DD`` (local clock)."""
    return time.strftime("%Y-%m-%d")


def _load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - platform without load average
        return []


def machine() -> dict[str, Any]:
    """Where the figures were measured: CPU count, memory, versions and the current load."""
    import torch

    memory_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions: dict[str, str] = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("flwr", "ray"):
        try:
            module = __import__(name)
            versions[name] = str(getattr(module, "__version__", "?"))
        except ImportError:
            versions[name] = "not installed"
    return {
        "cpu_cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "platform": platform.platform(),
        "accelerator": "none (CPU only)",
        "load_average_at_start": _load_average(),
        "versions": versions,
    }


def bench_env(threads: int = 1, **extra: str) -> dict[str, str]:
    """Environment for benchmark subprocesses: ``OMP_NUM_THREADS`` pinned, no update checks.

    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray call this machine 127.0.0.1, so the
    single-node Ray instance that Flower's simulation engine starts listens on loopback only
    (otherwise Ray replaces 127.0.0.1 by the network address and listens on all interfaces).
    """
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise TypeError(f"run-config values are str, int, float or bool, got {value!r}")


def flat_overrides(items: Sequence[str], root: Path = ROOT) -> str:
    """Merge run-config TOML files and ``"k=v ..."`` strings into one ``"k=v ..."`` string.

    ``flwr run`` refuses a TOML file next to key-value overrides, so a profile plus overrides
    is passed as key-value pairs only. Later items win; relative TOML paths are read from
    ``root``.
    """
    import shlex
    import tomllib

    merged: dict[str, Any] = {}
    for item in items:
        path = root / item
        if item.endswith(".toml") and path.is_file():
            merged.update(tomllib.loads(path.read_text()))
            continue
        for token in shlex.split(item):
            key, _, raw = token.partition("=")
            try:
                merged[key] = tomllib.loads(f"v = {raw}")["v"]
            except tomllib.TOMLDecodeError:
                merged[key] = raw
    return " ".join(f"{key}={_toml_value(value)}" for key, value in merged.items())


def read_json(path: Path) -> Any:
    """Parse a JSON file."""
    return json.loads(path.read_text())


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON (creating the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


# ---------------------------------------------------------------------- process-tree memory
def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: split after the last ')'
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (by parent pid), as they are now."""
    tree = _children_map()
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(tree.get(pid, []))
    return found


def _kb(path: str, key: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def process_name(pid: int) -> str:
    """The process's title (what ``ps`` shows), or '' when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


@dataclass
class TreeMemory:
    """Samples the memory of a process tree in a background thread.

    ``peak_rss_mb`` is the largest sum of resident set sizes over the tree seen in one sample
    (shared pages counted once per process); ``peak_pss_mb`` the largest sum of proportional
    set sizes (shared pages split between the processes sharing them), a fairer total.
    """

    root: int
    interval: float = 0.5
    peak_rss_mb: float = 0.0
    peak_pss_mb: float = 0.0
    peak_processes: int = 0
    samples: int = 0
    omp_threads: dict[str, str] = field(default_factory=dict)
    _seen: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _note_environment(self, pid: int) -> None:
        """Remember ``OMP_NUM_THREADS`` of a newly seen process, keyed by its title."""
        self._seen.add(pid)
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return
        value = next(
            (e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"OMP_NUM_THREADS=")),
            "unset",
        )
        title = " ".join(Path(part).name for part in process_name(pid).split()[:3])
        if title:
            self.omp_threads[title[:80]] = value

    def sample(self) -> None:
        """Take one sample now."""
        pids = descendants(self.root)
        for pid in pids:
            if pid not in self._seen:
                self._note_environment(pid)
        rss = sum(_kb(f"/proc/{pid}/status", "VmRSS:") for pid in pids) / 1024
        pss = sum(_kb(f"/proc/{pid}/smaps_rollup", "Pss:") for pid in pids) / 1024
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        self.peak_pss_mb = max(self.peak_pss_mb, pss)
        self.peak_processes = max(self.peak_processes, len(pids))
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> TreeMemory:
        """Start sampling."""
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        """Stop sampling and return the peaks."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return {
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "peak_pss_mb": round(self.peak_pss_mb, 1),
            "peak_processes": self.peak_processes,
            "samples": self.samples,
            "omp_num_threads_by_process": dict(sorted(self.omp_threads.items())),
        }


# ---------------------------------------------------------------------- timed subprocesses
@dataclass
class TimedRun:
    """A finished subprocess: exit code, wall time, its output lines with arrival times."""

    returncode: int
    wall_s: float
    lines: list[tuple[float, str]]
    memory: dict[str, Any]

    def text(self) -> str:
        """The whole output."""
        return "\n".join(line for _, line in self.lines)


def run_timed(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
    timeout: float = 1800.0,
    sample_memory: bool = False,
    echo: bool = False,
    new_session: bool = False,
) -> TimedRun:
    """Run ``command``; time it from start to exit and stamp each output line on arrival.

    stdout and stderr are merged. With ``sample_memory`` the process tree's memory is sampled
    every 0.5 s (see :class:`TreeMemory`). The process is killed after ``timeout`` seconds.
    ``new_session`` starts it in its own session: with the kernel's autogroup scheduling (on
    here) a session is one CPU-share group, as the SuperLink that ``edgekd.launch`` starts is.
    """
    started = time.monotonic()
    process = subprocess.Popen(
        list(command),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=new_session,
    )
    sampler = TreeMemory(process.pid).start() if sample_memory else None
    lines: list[tuple[float, str]] = []
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append((time.monotonic() - started, line.rstrip("\n")))
            if echo:
                print(line, end="", flush=True)
        process.wait()
    finally:
        timer.cancel()
        if process.poll() is None:  # interrupted: let edgekd.launch stop its SuperLink
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
    wall = time.monotonic() - started
    memory = sampler.stop() if sampler is not None else {}
    return TimedRun(process.returncode, wall, lines, memory)


def launch_simulation(
    run_config: Callable[[Path], str],
    num_supernodes: int,
    *,
    timeout: float,
    launcher_timeout: float | None = None,
) -> tuple[TimedRun, list[dict[str, Any]]]:
    """One ``python -m edgekd.launch`` simulation with ``num_supernodes`` SuperNodes (1 CPU
    each, 1 torch thread), its process tree's memory sampled; the run and its metrics rows.

    ``run_config(out_dir)`` builds the ``--run-config`` string for a temporary output folder;
    ``launcher_timeout`` is passed as the launcher's own ``--timeout`` (it then stops its
    SuperLink and Ray itself); ``timeout`` bounds the whole subprocess. The rows are those of
    the run's ``metrics.json`` (empty when it wrote none).
    """
    with tempfile.TemporaryDirectory(prefix="edgekd-bench-") as tmp:
        out = Path(tmp)
        command = [
            PYTHON,
            "-m",
            "edgekd.launch",
            str(ROOT),
            "--run-config",
            run_config(out),
            "--federation-config",
            f"num-supernodes={num_supernodes} client-resources-num-cpus=1",
        ]
        if launcher_timeout is not None:
            command += ["--timeout", str(launcher_timeout)]
        run = run_timed(command, env=bench_env(1), sample_memory=True, timeout=timeout)
        files = sorted(out.glob("*/metrics.json"))
        rows = json.loads(files[-1].read_text()) if files else []
    return run, rows
