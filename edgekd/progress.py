"""Progress of long stages: a live bar with an ETA in a terminal, one log line otherwise.

Every long loop of edgekd (Phase 0, an edge's training, a distillation, a FedMD step, the
rounds of a run) opens one *stage* and advances it once per step::

    with stage("distillation (round 3)", total=epochs * batches) as progress:
        for batch in ...:
            ...
            progress.advance()

In a terminal (standard error is a TTY) the stage is a rich progress bar with its ETA, nested
stages shown together and removed when they end. Everywhere else (CI, log files, Ray actors,
SuperNodes) nothing is printed while the stage runs and ONE log line is written when it ends,
with its name, its steps and its elapsed seconds. ``EDGEKD_PROGRESS`` forces a mode: ``bar``,
``log`` or ``off`` (no bar, no line).

:func:`eta_seconds` and :func:`finish_time` are the ETA arithmetic (also used by the
reproduction scripts for runs done / left).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from logging import INFO
from typing import Any

from flwr.common.logger import log

__all__ = ["MODES", "Stage", "eta_seconds", "finish_time", "progress_mode", "stage"]

MODES = ("bar", "log", "off")
_ENV = "EDGEKD_PROGRESS"


def eta_seconds(done: float, total: float, elapsed: float, *, parallel: int = 1) -> float | None:
    """Seconds left for ``total - done`` more steps at the mean pace of the ``done`` ones.

    ``parallel`` steps run at once (workers): the remaining steps take ``1 / parallel`` of
    their summed time. ``None`` while nothing is done (no pace to go by); 0 when all is done.
    """
    if total < 0 or done < 0 or elapsed < 0 or parallel < 1:
        raise ValueError(
            f"need done, total, elapsed >= 0 and parallel >= 1, got {done}, {total}, "
            f"{elapsed}, {parallel}"
        )
    if done >= total:
        return 0.0
    if done == 0:
        return None
    return elapsed / done * (total - done) / parallel


def finish_time(eta: float | None, *, now: datetime | None = None) -> str:
    """The UTC wall-clock time ``eta`` seconds after ``now`` as ``HH:MM``, or ``"?"``."""
    if eta is None:
        return "?"
    start = now if now is not None else datetime.now(UTC)
    return (start + timedelta(seconds=eta)).strftime("%H:%M")


def progress_mode() -> str:
    """``EDGEKD_PROGRESS`` when set (one of :data:`MODES`), else ``bar`` on a TTY, ``log``."""
    forced = os.environ.get(_ENV, "").strip().lower()
    if forced:
        if forced not in MODES:
            raise ValueError(f"{_ENV} must be one of {', '.join(MODES)}, got {forced!r}")
        return forced
    return "bar" if sys.stderr.isatty() else "log"


class Stage:
    """One running stage: call :meth:`advance` once per step."""

    def __init__(self, name: str, total: int, unit: str) -> None:
        self.name = name
        self.total = total
        self.unit = unit
        self.done = 0
        self.started = time.monotonic()
        self._task: Any = None

    def advance(self, steps: int = 1) -> None:
        """Count ``steps`` more steps done (updates the bar in a terminal)."""
        self.done += steps
        if self._task is not None:
            _Bars.update(self._task, steps)

    @property
    def elapsed(self) -> float:
        """Seconds since the stage started."""
        return time.monotonic() - self.started


class _Bars:
    """The one rich display shared by every stage open in this process (thread-safe)."""

    _lock = threading.Lock()
    _progress: Any = None
    _open = 0

    @classmethod
    def add(cls, stage: Stage) -> Any:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with cls._lock:
            if cls._progress is None:
                cls._progress = Progress(  # on standard error: standard output stays data
                    TextColumn("{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("{task.fields[unit]}"),
                    TimeElapsedColumn(),
                    TextColumn("ETA"),
                    TimeRemainingColumn(),
                    console=Console(stderr=True),
                    transient=True,
                )
                cls._progress.start()
            cls._open += 1
            return cls._progress.add_task(stage.name, total=stage.total, unit=stage.unit)

    @classmethod
    def update(cls, task: Any, steps: int) -> None:
        if cls._progress is not None:
            cls._progress.advance(task, steps)

    @classmethod
    def remove(cls, task: Any) -> None:
        with cls._lock:
            if cls._progress is None:
                return
            cls._progress.remove_task(task)
            cls._open -= 1
            if cls._open == 0:
                cls._progress.stop()
                cls._progress = None


@contextmanager
def stage(name: str, *, total: int, unit: str = "steps") -> Iterator[Stage]:
    """Show the progress of ``name`` (``total`` steps of ``unit``) while the block runs.

    In a terminal: a live bar with the ETA. Otherwise: nothing until the block ends, then one
    INFO line ``edgekd: <name>: <done>/<total> <unit> in <s>s``. With
    ``EDGEKD_PROGRESS=off``: nothing at all.
    """
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    mode = progress_mode()
    current = Stage(name, total, unit)
    if mode == "bar":
        current._task = _Bars.add(current)
    try:
        yield current
    finally:
        if current._task is not None:
            _Bars.remove(current._task)
            current._task = None
        if mode != "off":
            log(
                INFO,
                "edgekd: %s: %s/%s %s in %.1fs",
                name,
                current.done,
                total,
                unit,
                current.elapsed,
            )
