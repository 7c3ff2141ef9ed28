"""Shared helpers of the reproduction scripts: run profiles side by side, read their curves."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_profile(
    profile: Path, seed: int, run_dir: Path, extra: Sequence[str] = (), workers: int = 0
) -> Path:
    """Run ``profile`` with ``seed`` via ``python -m edgekd.local`` unless already done."""
    if (run_dir / "summary.json").exists():
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "edgekd.local",
        str(ROOT),
        "--run-config",
        str(profile),
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
            f"{profile.stem} seed {seed} failed (exit {code}); see {run_dir / 'log.txt'}"
        )
    print(
        f"[{time.strftime('%H:%M:%S')}] {profile.stem} seed {seed}: done in "
        f"{time.monotonic() - started:.0f}s",
        flush=True,
    )
    return run_dir


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
