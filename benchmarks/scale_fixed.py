"""Scale with fixed data per edge: 10, 100, 1,000 and 10,000 SuperNodes on the simulation engine.

Unlike ``scale.py`` (the same images split among more and more edges, so each edge's work
shrinks), every edge here holds the same number of images however many edges there are:
``partitioner = "fixed"``, each edge drawing ``--per-edge`` images with its own seed from
``../shared/data/cifar10_head.npz``. Two strategies, each run being ``python -m edgekd.launch``
(private SuperLink, one SuperNode per edge, 1 CPU per virtual client, 1 torch thread):

- ``fedavg``: Flower's FedAvg sampling 10 edges per round (``fraction-train = 10 / edges``);
- ``cloned-distillation``: CPP, one edge per round (core 10 %).

Measured per run: time per round (median of the ServerApp's ``elapsed-s`` differences over
rounds >= 2), time to the first round (launcher start to the ServerApp's round-1 line: start-up
of the SuperLink, Ray and the nodes, Phase 0, the partition mapping), and the peak memory of
the whole process tree (RSS and PSS, sampled every 0.5 s). A run that fails or exceeds
``--timeout`` is recorded with what was measured (wall time, peak memory, last lines).

The time per round is the median over rounds 2 to ``--rounds`` (default 6: five samples per
run, so one slow round cannot decide a ratio). ``--merge`` re-measures some points and keeps
the other runs of ``--out``; every run records the sitting (command, date, load average) that
made it.

Usage::

    python benchmarks/scale_fixed.py                         # writes benchmarks/scale_fixed.json
    python benchmarks/scale_fixed.py --edges 10 100 --strategies fedavg --rounds 3
    python benchmarks/scale_fixed.py --edges 10 1000 --merge # re-measure two points
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from common import (
    HERE,
    ROOT,
    launch_simulation,
    machine,
    read_json,
    stop_on_sigterm,
    today,
    write_json,
)

DATA = "../shared/data/cifar10_head.npz"
STRATEGIES = ("fedavg", "cloned-distillation")
SAMPLED_PER_ROUND = 10


def overrides(strategy: str, edges: int, args: argparse.Namespace, out_dir: Path) -> str:
    """The run config of one run (``key=value ...``)."""
    pairs: dict[str, Any] = {
        "strategy": json.dumps(strategy),
        "dataset": '"npz"',
        "npz-path": json.dumps(str((ROOT / args.data).resolve())),
        "model": '"cnn"',
        "partitioner": '"fixed"',
        "partition-size": args.per_edge,
        "partition-seed": 42,
        "num-partitions": edges,
        "num-server-rounds": args.rounds,
        "local-epochs": 1,
        "batch-size": 32,
        "seed": 0,
        "output-dir": json.dumps(str(out_dir)),
    }
    if strategy == "fedavg":
        pairs.update(
            {
                "fraction-train": min(1.0, SAMPLED_PER_ROUND / edges),
                "min-available-nodes": edges,
            }
        )
    else:
        pairs.update(
            {
                "cd-variant": '"CPP"',
                "core-fraction": 0.1,
                "cd-core-epochs": 1,
                "cd-distill-epochs": 1,
                "cd-distill-views": 1,
            }
        )
    return " ".join(f"{k}={v}" for k, v in pairs.items())


def _first_round_s(lines: list[tuple[float, str]]) -> float | None:
    for stamp, line in lines:
        if "edgekd: round 1/" in line:
            return stamp
    return None


def one_run(strategy: str, edges: int, args: argparse.Namespace) -> dict[str, Any]:
    """One launcher run; its timings and memory (or what was measured before it failed)."""
    run, rows = launch_simulation(
        lambda out: overrides(strategy, edges, args, out),
        edges,
        timeout=args.timeout + 180,
        launcher_timeout=args.timeout,  # the launcher stops its SuperLink and Ray itself
    )
    record: dict[str, Any] = {
        "strategy": strategy,
        "edges": edges,
        "returncode": run.returncode,
        "wall_s": run.wall_s,
        "first_round_s": _first_round_s(run.lines),
        "rounds_recorded": max((int(r["round"]) for r in rows), default=-1),
        "memory": run.memory,
    }
    elapsed = [float(r["elapsed-s"]) for r in rows if r.get("elapsed-s") is not None]
    round_s = [b - a for a, b in itertools.pairwise(elapsed)]
    if run.returncode != 0 or len(round_s) < 2:
        record["error"] = "\n".join(line for _, line in run.lines[-40:])
        return record
    record.update({"round_s": round_s, "round_s_median": statistics.median(round_s[1:])})
    return record


def _ratios(runs: list[dict[str, Any]], high: int, low: int) -> dict[str, Any]:
    by_key = {(r["strategy"], r["edges"]): r for r in runs if "round_s_median" in r}
    ratios: dict[str, Any] = {}
    for strategy in {r["strategy"] for r in runs}:
        a, b = by_key.get((strategy, high)), by_key.get((strategy, low))
        if a and b:
            ratios[strategy] = {
                "round_time": a["round_s_median"] / b["round_s_median"],
                "rss": a["memory"]["peak_rss_mb"] / b["memory"]["peak_rss_mb"],
                "pss": a["memory"]["peak_pss_mb"] / b["memory"]["peak_pss_mb"],
            }
    return ratios


def merged(old: dict[str, Any], new: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``new`` with ``old``'s sittings and its runs of the points this sitting does not re-run.

    Raises SystemExit when ``old`` measured other data (images per edge, data file, model):
    runs of different set-ups are not put in one table.
    """
    fixed = ("per_edge", "data", "model", "partitioner")
    changed = [k for k in fixed if old["settings"].get(k) != new["settings"].get(k)]
    if changed:
        raise SystemExit(f"--merge: {args.out} measured other settings {changed}; use --out")
    sittings = old.get("sittings") or [
        {
            "command": old["command"],
            "date": old["date"],
            "load_average_at_start": old.get("machine", {}).get("load_average_at_start"),
            "rounds": old["settings"]["rounds"],
            "timeout_s": old["settings"]["timeout_s"],
        }
    ]
    redone = {(s, e) for s in args.strategies for e in args.edges}
    kept = [
        {**run, "sitting": run.get("sitting", 0)}
        for run in old["runs"]
        if (run["strategy"], run["edges"]) not in redone
    ]
    return {**new, "sittings": [*sittings, *new["sittings"]], "runs": kept}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--edges", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-edge", type=int, default=32, help="images per edge")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--out", type=Path, default=HERE / "scale_fixed.json")
    parser.add_argument(
        "--merge", action="store_true", help="keep --out's runs of the points not re-run"
    )
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error(f"--rounds must be at least 3 (a median over rounds >= 2), got {args.rounds}")
    result: dict[str, Any] = {
        "command": "python benchmarks/scale_fixed.py " + " ".join(sys.argv[1:]),
        "date": today(),
        "machine": machine(),
        "engine": "Flower simulation engine (Ray), python -m edgekd.launch",
        "settings": {
            "edges": args.edges,
            "strategies": {
                "fedavg": f"Flower FedAvg, {SAMPLED_PER_ROUND} edges sampled per round",
                "cloned-distillation": "CPP, one edge per round, core 10 %",
            },
            "rounds": args.rounds,
            "data": args.data,
            "per_edge": args.per_edge,
            "partitioner": "fixed (each edge draws its own images, seeded)",
            "model": "cnn",
            "client_resources_num_cpus": 1,
            "torch_threads": 1,
            "timeout_s": args.timeout,
        },
        "runs": [],
    }
    sitting = {
        "command": result["command"],
        "date": result["date"],
        "load_average_at_start": result["machine"].get("load_average_at_start"),
        "rounds": args.rounds,
        "timeout_s": args.timeout,
    }
    result["sittings"] = [sitting]
    if args.merge and args.out.is_file():
        result = merged(read_json(args.out), result, args)
    for edges in args.edges:  # smallest first: a failure at the largest size keeps the rest
        for strategy in args.strategies:
            record = {**one_run(strategy, edges, args), "sitting": len(result["sittings"]) - 1}
            result["runs"].append(record)
            result["ratios_1000_10"] = _ratios(result["runs"], 1000, 10)
            write_json(args.out, result)
            print(
                f"{strategy} {edges} edges: rc {record['returncode']}, wall "
                f"{record['wall_s']:.0f}s, first round {record['first_round_s']}, round "
                f"{record.get('round_s_median', 'n/a')}, peak RSS "
                f"{record['memory'].get('peak_rss_mb', 'n/a')} MB",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    stop_on_sigterm()
    sys.exit(main())
