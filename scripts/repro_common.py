"""Shared helpers of the reproduction scripts: run profiles side by side, read their curves."""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from edgekd.progress import eta_seconds, finish_time

ROOT = Path(__file__).resolve().parents[1]


def table_parser(
    doc: str | None,
    folder: str,
    *,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    workers: int | None = 2,
    cache: bool = False,
    report_only: bool = True,
) -> argparse.ArgumentParser:
    """The options every table's reproduction script shares.

    ``--seeds``, ``--out`` (``results/<folder>``), and where asked ``--workers`` (runs side by
    side), ``--cache-dir`` (the training cache) and ``--report-only`` (no runs, only the
    summary). A script adds its own options to the parser it gets.
    """
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
    parser.add_argument("--out", type=Path, default=ROOT / "results" / folder)
    if workers is not None:
        parser.add_argument("--workers", type=int, default=workers)
    if cache:
        default_cache = str(Path.home() / ".cache" / "edgekd" / "runs")
        parser.add_argument("--cache-dir", default=default_cache)
    if report_only:
        parser.add_argument("--report-only", action="store_true", help="no runs, only the summary")
    return parser


class RunProgress:
    """Runs done / left of a batch and its estimated finish time, one line per finished run.

    The ETA is the mean duration of the runs finished in this session times the runs left,
    divided by ``workers`` (runs side by side); runs found already done count as done but
    not in the mean. Thread-safe (the scripts run workers in threads).
    """

    def __init__(self, total: int, *, workers: int = 1) -> None:
        self.total = total
        self.workers = max(1, workers)
        self.done = 0
        self.timed = 0
        self.seconds = 0.0
        self._lock = threading.Lock()

    def skipped(self) -> None:
        """Count a run that was already done (not timed)."""
        with self._lock:
            self.done += 1

    def finished(self, name: str, seconds: float) -> str:
        """Count a run that took ``seconds``; print and return the progress line."""
        with self._lock:
            self.done += 1
            self.timed += 1
            self.seconds += seconds
            left = self.total - self.done
            eta = eta_seconds(self.timed, self.timed + left, self.seconds, parallel=self.workers)
            line = (
                f"[{time.strftime('%H:%M:%S')}] after {name}: runs "
                f"{self.done}/{self.total} done, {left} left, ETA "
                f"{'?' if eta is None else f'{eta / 60:.0f} min'} (finish ~{finish_time(eta)} UTC)"
            )
        print(line, flush=True)
        return line


def run_profile(
    profile: Path | Sequence[Path],
    seed: int,
    run_dir: Path,
    extra: Sequence[str] = (),
    workers: int = 0,
) -> Path:
    """Run ``profile`` (one file, or several merged in order) with ``seed`` unless done."""
    profiles = [profile] if isinstance(profile, Path) else list(profile)
    if (run_dir / "summary.json").exists():
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "edgekd.local",
        str(ROOT),
        *[arg for path in profiles for arg in ("--run-config", str(path))],
        "--run-config",
        f"seed={seed}",
        *[arg for pair in extra for arg in ("--run-config", pair)],
        "--out-dir",
        str(run_dir),
        "--threads",
        "1",
        "--workers",
        str(workers),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.monotonic()
    with (run_dir / "log.txt").open("w") as log:
        code = subprocess.run(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False
        ).returncode
    if code != 0:
        raise RuntimeError(
            f"{run_dir.name} seed {seed} failed (exit {code}); see {run_dir / 'log.txt'}"
        )
    print(
        f"[{time.strftime('%H:%M:%S')}] {run_dir.name}: done in {time.monotonic() - started:.0f}s",
        flush=True,
    )
    return run_dir


def run_compact(
    name: str,
    seed: int,
    profiles: Sequence[Path],
    out: Path,
    compact: Callable[[Path], dict[str, Any]],
    *,
    extra: Sequence[str] = (),
    workers: int = 0,
    progress: RunProgress | None = None,
) -> dict[str, Any]:
    """Run ``profiles`` with ``seed`` unless ``out/compact/<name>-seed<seed>.json`` exists.

    The run goes to ``out/runs/<name>-seed<seed>``; ``compact(run_dir)`` picks the numbers
    the summary needs, saved with ``name`` and ``seed`` as that JSON (small enough to
    commit, so a table is built in several sittings). ``progress`` counts the run.
    """
    path = out / "compact" / f"{name}-seed{seed}.json"
    if path.exists():
        if progress is not None:
            progress.skipped()
        return json.loads(path.read_text())
    started = time.monotonic()
    run_dir = run_profile(profiles, seed, out / "runs" / f"{name}-seed{seed}", extra, workers)
    result = {"name": name, "seed": seed, **compact(run_dir)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result) + "\n")
    if progress is not None:
        progress.finished(f"{name}-seed{seed}", time.monotonic() - started)
    return result


def run_jobs(
    jobs: Sequence[tuple[str, int]],
    workers: int,
    run: Callable[[str, int, RunProgress], dict[str, Any]],
) -> dict[tuple[str, int], dict[str, Any]]:
    """``run(name, seed, progress)`` for every job, ``workers`` side by side (threads)."""
    print(f"{len(jobs)} runs, {workers} at a time", flush=True)
    progress = RunProgress(len(jobs), workers=workers)
    with ThreadPoolExecutor(workers) as pool:
        futures = {job: pool.submit(run, *job, progress) for job in jobs}
        return {job: future.result() for job, future in futures.items()}


def load_compacts(out: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """Every compact run under ``out/compact``, keyed by (name, seed)."""
    runs = {}
    for path in sorted((out / "compact").glob("*.json")):
        run = json.loads(path.read_text())
        runs[(run["name"], run["seed"])] = run
    return runs


def load_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The per-round rows of a run's metrics.json."""
    return json.loads((run_dir / "metrics.json").read_text())


def load_curve(run_dir: Path) -> list[float]:
    """test-acc per round (round 0 first)."""
    return [float(r["test-acc"]) for r in load_rows(run_dir) if r.get("test-acc") is not None]


def final_stats(finals: list[float], seeds: list[int]) -> dict[str, Any]:
    """Mean, sample std and the per-seed values of final accuracies."""
    return {
        "final_acc_mean": statistics.fmean(finals),
        "final_acc_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
        "seeds": seeds,
        "per_seed": finals,
    }


COMPACT_KEYS = {
    "test_acc": "test-acc",
    "core_acc_before": "core-acc-before",
    "teacher_acc_mean": "teacher-acc-mean",
    "teacher_ensemble_acc": "teacher-ensemble-acc",
    "num_teachers": "num-teachers",
    "edge_status": "edge-status",
    "suspect": "suspect",
    "staleness": "staleness",
    "edge": "edge",
    "detect_score": "detect-score",
    "detect_reference": "detect-reference",
}


def compact_run(run_dir: Path) -> dict[str, Any]:
    """The per-round values a claim rests on, small enough to commit (round 0 = Phase 0).

    ``test_acc`` has one entry per round from round 0; every other list one per round from 1
    (``None`` where a round did not record it).
    """
    rows = load_rows(run_dir)
    compact: dict[str, Any] = {"run": run_dir.name, "test_acc": load_curve(run_dir)}
    for name, key in COMPACT_KEYS.items():
        if name != "test_acc":
            compact[name] = [row.get(key) for row in rows if int(row.get("round", 0)) > 0]
    return compact


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Paired difference a − b over seeds: mean, 95 % t-interval, n and a verdict.

    The verdict reads the claim "a > b": "holds" when the whole interval is above 0, "does
    not hold" when it is below 0, "unresolved" when it contains 0 (or n < 2).
    """
    from scipy import stats

    diffs = [x - y for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return {"mean": mean, "ci95": [math.nan, math.nan], "n": n, "verdict": "unresolved"}
    half = float(stats.t.ppf(0.975, n - 1)) * statistics.stdev(diffs) / math.sqrt(n)
    low, high = mean - half, mean + half
    verdict = "holds" if low > 0 else ("does not hold" if high < 0 else "unresolved")
    entry = {"mean": mean, "ci95": [low, high], "n": n, "verdict": verdict, "per_seed": diffs}
    if verdict == "unresolved" and mean != 0:
        # seeds a normal-approximation interval would need to exclude 0 at this mean and spread
        entry["seeds_to_resolve"] = math.ceil((1.96 * statistics.stdev(diffs) / abs(mean)) ** 2)
    return entry


def format_paired(name: str, entry: dict[str, Any]) -> str:
    """One markdown table row of a paired difference."""
    low, high = entry["ci95"]
    needed = entry.get("seeds_to_resolve")
    verdict = entry["verdict"] + (f" (≈{needed} seeds to resolve)" if needed else "")
    return (
        f"| {name} | {entry['mean']:+.4f} | [{low:+.4f}, {high:+.4f}] | {entry['n']} | {verdict} |"
    )


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal ("n/a" for None)."""
    return "n/a" if value is None else f"{100 * value:.1f}"


def paired_table(pairs: dict[str, Any], title: str | None = None) -> list[str]:
    """A markdown table of paired differences (under a ``## title`` when given)."""
    head = [f"## {title}", ""] if title else []
    lines = ["| claim (A − B) | mean | 95 % CI | n | verdict |", "| --- | --- | --- | --- | --- |"]
    return head + lines + [format_paired(name, entry) for name, entry in pairs.items()]


def bars_per_seed(ax: Any, groups: dict[str, list[float]], ylabel: str, title: str) -> None:
    """One bar per group at its mean, with every seed's value as a dot."""
    for i, values in enumerate(groups.values()):
        ax.scatter([i] * len(values), values, alpha=0.5)
        ax.bar(i, statistics.fmean(values), alpha=0.3)
    ax.set_xticks(range(len(groups)), list(groups), rotation=20)
    ax.set_ylim(min(min(v) for v in groups.values()) - 0.02, None)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
