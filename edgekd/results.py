"""Per-round metrics written as CSV and JSON, plus an accuracy-per-round plot.

:class:`RunRecorder` is held by the server alone (:mod:`edgekd.runner`): it records each round's
strategy report (``round_report``) next to the central evaluation, so every number of a run
lands in one ``metrics.csv`` / ``metrics.json`` pair in the run's output directory. Strategies
never see it. Files are rewritten after every round, so an interrupted run keeps what it
measured.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["RunRecorder", "plot_accuracy"]


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "tolist"):
        return _clean(value.tolist())
    return value


class RunRecorder:
    """Collects per-round metrics of one run and writes them to ``out_dir``.

    Parameters
    ----------
    out_dir : str | Path
        Created if missing. Receives ``metrics.csv``, ``metrics.json``, ``accuracy.png`` and
        any JSON saved with :meth:`save_json`.
    accuracy_keys : tuple[str, ...]
        Metrics drawn in the accuracy plot when present.
    """

    def __init__(
        self,
        out_dir: str | Path,
        accuracy_keys: tuple[str, ...] = ("test-acc",),
    ) -> None:
        self.out_dir = Path(out_dir).expanduser().resolve()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.accuracy_keys = accuracy_keys
        self.rounds: dict[int, dict[str, Any]] = {}

    def log_round(self, server_round: int, metrics: Mapping[str, Any]) -> None:
        """Merge ``metrics`` into round ``server_round`` and rewrite the files."""
        row = self.rounds.setdefault(server_round, {})
        row.update({str(k): _clean(v) for k, v in metrics.items()})
        self.flush()

    def rows(self) -> list[dict[str, Any]]:
        """One dict per round, sorted by round, each with a ``round`` key."""
        return [{"round": r, **self.rounds[r]} for r in sorted(self.rounds)]

    def flush(self) -> None:
        """Write ``metrics.json`` and ``metrics.csv`` (scalar columns only)."""
        rows = self.rows()
        (self.out_dir / "metrics.json").write_text(json.dumps(rows, indent=2) + "\n")
        columns: list[str] = []
        for row in rows:
            for key, value in row.items():
                if key not in columns and not isinstance(value, dict | list):
                    columns.append(key)
        with (self.out_dir / "metrics.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def save_json(self, name: str, payload: Any) -> Path:
        """Write ``payload`` as ``<out_dir>/<name>`` (indented JSON) and return the path."""
        path = self.out_dir / name
        path.write_text(json.dumps(_clean(payload), indent=2) + "\n")
        return path

    def plot(self, title: str = "") -> Path | None:
        """Draw the accuracy keys per round into ``accuracy.png``; None if nothing to draw."""
        return plot_accuracy(self.rows(), self.out_dir / "accuracy.png", self.accuracy_keys, title)


def plot_accuracy(
    rows: list[dict[str, Any]],
    path: Path,
    keys: tuple[str, ...] = ("test-acc",),
    title: str = "",
) -> Path | None:
    """Plot every key of ``keys`` found in ``rows`` against ``round`` into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {
        key: [(row["round"], row[key]) for row in rows if isinstance(row.get(key), int | float)]
        for key in keys
    }
    series = {key: points for key, points in series.items() if points}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, points in series.items():
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", label=key)
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
