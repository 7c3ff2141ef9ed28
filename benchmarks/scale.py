"""Scale: 10, 100 and 1,000 virtual edges through Flower's simulation engine (Ray).

Every run is ``python -m edgekd.launch`` (``flwr run`` on a private SuperLink, one SuperNode
per edge, 1 CPU per virtual client, 1 torch thread) of cloned distillation with one edge per
round (variant CPP, the tiny ``cnn`` model) on Dirichlet partitions (alpha 1.0) of the same
data: ``../shared/data/cifar10_head.npz`` (5,170 training images; 10 % is the core). Only the
number of edges changes between runs; the first rounds meet edges 0, 1, 2, ... which hold
data in every setting (checked here before running).

Measured per run:

- partitioning time: :func:`edgekd.datasets.make_split` with the run's settings, timed in this
  process (median of 3 calls);
- time per round: the ServerApp's ``elapsed-s`` differences, rounds >= 2 (median). Round 1 also
  asks every node for its partition id (``whoami``): its extra time over a steady round is
  reported as mapping time;
- peak memory of the whole simulation: the largest sum over the process tree of
  ``python -m edgekd.launch`` (SuperLink, ServerApp, Ray and its actors) of RSS (and PSS),
  sampled every 0.5 s.

Sizes run in a rotated order in every repeat; the ratios 1000/10 are taken within a repeat.

Usage::

    python benchmarks/scale.py                      # writes benchmarks/scale.json
    python benchmarks/scale.py --edges 10 100 --repeats 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    HERE,
    launch_simulation,
    machine,
    stop_on_sigterm,
    summary,
    today,
    write_json,
)

DATA = "../shared/data/cifar10_head.npz"


def overrides(num_edges: int, rounds: int, out_dir: Path, data: str) -> str:
    """The run config of one scale run (``key=value ...``)."""
    pairs = {
        "strategy": '"cloned-distillation"',
        "cd-variant": '"CPP"',
        "dataset": '"npz"',
        "npz-path": json.dumps(str(Path(data).resolve())),
        "model": '"cnn"',
        "augment": "false",
        "partitioner": '"dirichlet"',
        "dirichlet-alpha": "1.0",
        "min-partition-size": "0",
        "partition-seed": "42",
        "core-fraction": "0.1",
        "num-partitions": str(num_edges),
        "num-server-rounds": str(rounds),
        "local-epochs": "1",
        "batch-size": "64",
        "cd-core-epochs": "1",
        "cd-distill-epochs": "1",
        "cd-distill-views": "1",
        "seed": "0",
        "output-dir": json.dumps(str(out_dir)),
    }
    return " ".join(f"{k}={v}" for k, v in pairs.items())


def partition_seconds(labels: Any, num_edges: int, calls: int = 3) -> tuple[float, list[int]]:
    """Median seconds of the run's split, and the sizes of the edge partitions."""
    from edgekd.datasets import make_split

    times, sizes = [], []
    for _ in range(calls):
        started = time.perf_counter()
        split = make_split(
            labels,
            num_partitions=num_edges,
            partitioner="dirichlet",
            alpha=1.0,
            min_partition_size=0,
            core_fraction=0.1,
            seed=42,
        )
        times.append(time.perf_counter() - started)
        sizes = [len(p) for p in split.partitions]
    return statistics.median(times), sizes


def one_run(num_edges: int, rounds: int, data: str) -> dict[str, Any]:
    """One simulation with ``num_edges`` SuperNodes; timings and memory."""
    run, rows = launch_simulation(
        lambda out: overrides(num_edges, rounds, out, data), num_edges, timeout=1200
    )
    if run.returncode != 0 or not rows:
        raise RuntimeError(f"{num_edges} edges: run failed ({run.returncode}):\n{run.text()}")
    # row 0 is Phase 0 and the initial evaluation; row 1 is round 1 (with the mapping)
    elapsed = [float(row["elapsed-s"]) for row in rows]
    round_s = [b - a for a, b in itertools.pairwise(elapsed)]
    statuses = [str(row.get("edge-status", "")) for row in rows]
    steady = statistics.median(round_s[1:])
    return {
        "edges": num_edges,
        "wall_s": run.wall_s,
        "phase0_s": _logged_seconds(run.text(), "Phase 0 done in"),
        "round_s": round_s,
        "round_s_median": steady,
        "first_round_s": round_s[0],
        "mapping_s": round_s[0] - steady,
        "uplink_s": [float(row.get("uplink-seconds", float("nan"))) for row in rows],
        "edge_examples": [int(row.get("edge-num-examples", 0)) for row in rows],
        "edge_status": statuses,
        "memory": run.memory,
    }


def _logged_seconds(text: str, marker: str) -> float:
    for line in text.splitlines():
        if marker in line:
            return float(line.split(marker, 1)[1].split("s", 1)[0])
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--edges", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--out", type=Path, default=HERE / "scale.json")
    args = parser.parse_args(argv)
    import numpy as np

    labels = np.load(Path(args.data).resolve())["y_train"]
    partitioning: dict[int, float] = {}
    for n in args.edges:
        seconds, sizes = partition_seconds(labels, n)
        partitioning[n] = seconds
        empty = [i for i in range(args.rounds) if sizes[i % n] == 0]
        if empty:
            raise SystemExit(f"{n} edges: edges {empty} met in the first rounds have no data")
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in args.edges}
    failures: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        shift = repeat % len(args.edges)
        for n in args.edges[shift:] + args.edges[:shift]:
            try:
                result = one_run(n, args.rounds, args.data)
            except RuntimeError as err:  # one retry: a shared machine may disturb a run
                print(f"repeat {repeat} edges {n} failed, retrying once: {err}"[:2000])
                failures.append({"repeat": repeat, "edges": n, "error": str(err)[-2000:]})
                result = one_run(n, args.rounds, args.data)
            runs[n].append(result)
            print(
                f"repeat {repeat} edges {n}: wall {result['wall_s']:.1f}s, round "
                f"{result['round_s_median']:.2f}s, mapping {result['mapping_s']:.1f}s, "
                f"peak RSS {result['memory']['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    rows = []
    for n in args.edges:
        rows.append(
            {
                "edges": n,
                "partition_s": partitioning[n],
                "round_s": summary([r["round_s_median"] for r in runs[n]]),
                "mapping_s": summary([r["mapping_s"] for r in runs[n]]),
                "wall_s": summary([r["wall_s"] for r in runs[n]]),
                "peak_rss_mb": summary([r["memory"]["peak_rss_mb"] for r in runs[n]]),
                "peak_pss_mb": summary([r["memory"]["peak_pss_mb"] for r in runs[n]]),
                "peak_processes": max(r["memory"]["peak_processes"] for r in runs[n]),
            }
        )
    result: dict[str, Any] = {
        "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:]),
        "date": today(),
        "machine": machine(),
        "engine": "Flower simulation engine (Ray), python -m edgekd.launch",
        "settings": {
            "edges": args.edges,
            "rounds": args.rounds,
            "data": args.data,
            "model": "cnn",
            "strategy": "cloned-distillation CPP, one edge per round",
            "partitioner": "dirichlet alpha=1.0 min-partition-size=0 core-fraction=0.1",
            "client_resources_num_cpus": 1,
            "torch_threads": 1,
        },
        "rows": rows,
        "failed_runs_retried": failures,
        "runs": {str(n): runs[n] for n in args.edges},
    }
    low, high = min(args.edges), max(args.edges)
    if low != high:
        pairs = list(zip(runs[high], runs[low], strict=True))
        result[f"round_time_ratio_{high}_{low}"] = summary(
            [a["round_s_median"] / b["round_s_median"] for a, b in pairs]
        )
        result[f"rss_ratio_{high}_{low}"] = summary(
            [a["memory"]["peak_rss_mb"] / b["memory"]["peak_rss_mb"] for a, b in pairs]
        )
        result[f"pss_ratio_{high}_{low}"] = summary(
            [a["memory"]["peak_pss_mb"] / b["memory"]["peak_pss_mb"] for a, b in pairs]
        )
    write_json(args.out, result)
    for row in rows:
        print(
            f"{row['edges']:5d} edges: partition {row['partition_s'] * 1000:.1f} ms, round "
            f"{row['round_s']['median']:.2f}s, peak RSS {row['peak_rss_mb']['median']:.0f} MB"
        )
    return 0


if __name__ == "__main__":
    stop_on_sigterm()
    sys.exit(main())
