"""Regenerate results/ktg/: independent, KD, DML (2 and 3 nodes) and the searched graph (DCL).

Paper: "Knowledge Transfer Graph for Deep Collaborative Learning" (Minami et al., ACCV 2020),
official code https://github.com/somaminami/DCL (the "Comparison" table: KD, DML and DCL, the
accuracy of node 1, here node 0).

Every run trains one graph centrally (:func:`edgekd.ktg_search.train_config`, no Flower) on the
training part of ``cifar10_head.npz`` (80 %; the 20 % validation split is the search's), then
reports node 0's test accuracy after the last epoch. Methods (node 0 is ``--target`` always):

* ``independent``: node 0 alone, cross-entropy (``T``);
* ``KD``: node 0 learns from labels and a pretrained, fixed ``--teacher`` (``T,T;X,X``);
* ``DML2``: node 0 and ``--teacher`` learn from each other (``T,T;T,T``);
* ``DML3``: three ``--target`` nodes, all edges Through;
* ``DCL``: the best graph of the search (``--search``, written by ``search_ktg.py``), retrained.

A fixed node's weights are pretrained once per model, node and seed (cached under
``runs/teachers``). The seeds (default 1-5) differ from the search's training seed 0, so DCL is
retrained with fresh seeds; a seed gives node 0 the same initial weights and batch order in
every method (paired comparisons). Each run is its own process with 1 torch thread,
``--workers`` side by side, and leaves ``compact/<method>-seed<seed>.json``: finished runs are
skipped, so the table is built in several sittings.

``summary.json``: ``seeds``; per method node 0's test accuracy (mean, std, per seed), its
validation curve and seconds per epoch; ``paired`` differences over seeds with 95 %
t-intervals (``"DCL-independent"``, ``"DCL-DML"`` against the DML with as many nodes as the
searched graph, and the other orderings); ``search`` (``trials``, ``gates``, ``models``).

Sizes (10 epochs, resnet8 at node 0, resnet20 as KD teacher and DML2 partner, the 80 % train
split) come from a pilot (2 epochs on a quarter of the train split, seed 1, nice 19, on 2 cores
already loaded by other jobs, load average ~7; seconds per epoch incl. the validation pass):
independent 6.0, KD 9.4 (+ teacher pretraining 14.1), DML2 19.1, DML3 15.0, a heavy DCL
(resnet8, resnet20, wrn16_2) 27.5. Scaled to the full split (~3.25x) that is ~295 s per seed and
epoch under that load, ~100 s on idle cores (single-thread speed ~2.7x the loaded one): 5 seeds x
10 epochs on 2 workers ~= 40-46 min idle (the DCL graph's models move it), ~2 h under the load.

    python scripts/reproduce_ktg.py --workers 2                  # 5 methods x 5 seeds
    python scripts/reproduce_ktg.py --report-only                # summary and README only
    python scripts/reproduce_ktg.py --seeds 1 --epochs 1 --limit 300 --out /tmp/ktg \\
        --search /tmp/ktg/search.json                            # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from repro_common import ROOT, RunProgress, load_compacts, paired, run_jobs, table_parser

from edgekd.ktg_search import (
    GraphData,
    TrainSettings,
    load_graph_data,
    node_test_accuracies,
    pretrain_teacher,
    train_config,
)
from edgekd.losses.ktg import GateMatrix

METHODS = ["independent", "KD", "DML2", "DML3", "DCL"]
DEFAULT_NPZ = ROOT.parent / "shared" / "data" / "cifar10_head.npz"


def graphs(target: str, teacher: str, search: dict[str, Any] | None) -> dict[str, dict[str, str]]:
    """Each method's graph: gate matrix and node models (DCL only with a search)."""
    found = {
        "independent": {"gates": "T", "models": target},
        "KD": {"gates": "T,T;X,X", "models": f"{target},{teacher}"},
        "DML2": {"gates": "T,T;T,T", "models": f"{target},{teacher}"},
        "DML3": {"gates": "T,T,T;T,T,T;T,T,T", "models": f"{target},{target},{target}"},
    }
    if search is not None:
        found["DCL"] = {"gates": search["gates"], "models": ",".join(search["models"])}
    return found


def _data(args: argparse.Namespace) -> GraphData:
    data = load_graph_data(args.npz, val_fraction=args.val_fraction)
    if args.limit:
        data = replace(data, x_train=data.x_train[: args.limit], y_train=data.y_train[: args.limit])
    return data


def _teachers(
    config: dict[str, str], data: GraphData, settings: TrainSettings, cache: Path
) -> tuple[dict[int, dict[str, torch.Tensor]], dict[str, float]]:
    """Pretrained weights of every fixed node (cached per model, node, seed and epochs)."""
    names = config["models"].split(",")
    states, val = {}, {}
    for node in GateMatrix.parse(config["gates"], len(names)).fixed_nodes:
        path = cache / f"{names[node]}-node{node}-seed{settings.seed}-e{settings.epochs}.pt"
        if not path.exists():
            state, accuracy = pretrain_teacher(names[node], node, data, settings)
            cache.mkdir(parents=True, exist_ok=True)
            torch.save({"state": state, "val": accuracy}, path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)
        saved = torch.load(path, weights_only=True)
        states[node], val[str(node)] = saved["state"], saved["val"]
    return states, val


def run_one(args: argparse.Namespace, method: str, seed: int) -> dict[str, Any]:
    """Train ``method``'s graph with ``seed`` in this process; return its compact record."""
    torch.set_num_threads(1)
    search = json.loads(args.search.read_text()) if args.search.exists() else None
    config = graphs(args.target, args.teacher, search)[method]
    data = _data(args)
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed)
    started = time.monotonic()
    pretrained, teacher_val = _teachers(config, data, settings, args.out / "runs" / "teachers")
    trained = time.monotonic()
    models, history = train_config(config, data, settings, pretrained=pretrained)
    seconds = time.monotonic() - trained
    test = node_test_accuracies(models, data)
    return {
        "gates": config["gates"],
        "models": config["models"].split(","),
        "test_acc": test[0],
        "test_acc_nodes": test,
        "val_acc": history[-1].val_accuracy[0] if history[-1].val_accuracy else None,
        "val_curve": [h.val_accuracy[0] for h in history if h.val_accuracy],
        "teacher_val_acc": teacher_val,
        "seconds": seconds,
        "seconds_per_epoch": seconds / max(1, len(history)),
        "teacher_seconds": trained - started,
        "epochs": args.epochs,
    }


def launch(args: argparse.Namespace, method: str, seed: int, progress: RunProgress) -> Any:
    """Run ``method`` with ``seed`` in a subprocess (1 thread) unless its compact JSON exists."""
    path = args.out / "compact" / f"{method}-seed{seed}.json"
    if path.exists():
        progress.skipped()
        return json.loads(path.read_text())
    command = [sys.executable, __file__, *sys.argv[1:], "--run-one", method, str(seed)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = args.out / "runs" / f"{method}-seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log.open("w") as handle:
        code = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise RuntimeError(f"{method} seed {seed} failed (exit {code}); see {log}")
    progress.finished(f"{method}-seed{seed}", time.monotonic() - started)
    return json.loads(path.read_text())


def _stats(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "per_seed": values,
    }


def _mean_curve(runs: list[dict[str, Any]]) -> list[float]:
    return [statistics.fmean(c) for c in zip(*(r["val_curve"] for r in runs), strict=True)]


def summarise(
    runs: dict[tuple[str, int], dict[str, Any]], seeds: list[int], search: dict[str, Any] | None
) -> dict[str, Any]:
    """summary.json (see the module docstring)."""
    done = {m: [runs[(m, s)] for s in seeds] for m in METHODS if all((m, s) in runs for s in seeds)}
    acc = {m: [r["test_acc"] for r in group] for m, group in done.items()}
    methods = {
        m: {
            "gates": group[0]["gates"],
            "models": group[0]["models"],
            "test_acc": _stats(acc[m]),
            "val_acc": _stats([r["val_acc"] for r in group]),
            "seconds_per_epoch": statistics.fmean(r["seconds_per_epoch"] for r in group),
            "val_curve_mean": _mean_curve(group),
        }
        for m, group in done.items()
    }
    pairs = {}
    if "DCL" in acc:
        dml = "DML2" if len(done["DCL"][0]["models"]) == 2 else "DML3"
        for other in ("independent", dml):
            if other in acc:
                name = "DCL-DML" if other == dml else f"DCL-{other}"
                pairs[name] = {**paired(acc["DCL"], acc[other]), "against": other}
    for a, b in [("DCL", "KD"), ("KD", "independent"), ("DML2", "independent")]:
        if a in acc and b in acc:
            pairs[f"{a}-{b}"] = paired(acc[a], acc[b])
    if "DML3" in acc and "independent" in acc:
        pairs["DML3-independent"] = paired(acc["DML3"], acc["independent"])
    return {
        "seeds": seeds,
        "methods": methods,
        "paired": pairs,
        "search": _search_entry(search),
        "missing": [m for m in METHODS if m not in done],
    }


def _search_entry(search: dict[str, Any] | None) -> dict[str, Any] | None:
    if search is None:
        return None
    return {
        "trials": int(search["trials"]),
        "gates": search["gates"],
        "models": search["models"],
        "val_accuracy": search["best"]["val_accuracy"],
        "epochs_trained": search["epochs_trained"],
        "rungs": search["scheduler"]["rungs"],
        "max_t": search["scheduler"]["max_t"],
    }


def parse_args() -> argparse.Namespace:
    """The command line (module docstring)."""
    parser = table_parser(__doc__, "ktg", seeds=(1, 2, 3, 4, 5))
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--target", default="resnet8")
    parser.add_argument("--teacher", default="resnet20", help="KD's teacher, DML2's partner")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--limit", type=int, default=0, help="use the first N train images")
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ)
    parser.add_argument("--search", type=Path, default=ROOT / "results" / "ktg" / "search.json")
    parser.add_argument("--run-one", nargs=2, metavar=("METHOD", "SEED"), help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    """Run what is missing (or one run with ``--run-one``), then write the summary."""
    args = parse_args()
    if args.run_one:
        method, seed = args.run_one[0], int(args.run_one[1])
        record = {"name": method, "seed": seed, **run_one(args, method, seed)}
        path = args.out / "compact" / f"{method}-seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record) + "\n")
        return 0
    search = json.loads(args.search.read_text()) if args.search.exists() else None
    methods = [m for m in args.methods if m != "DCL" or search is not None]
    if search is None and "DCL" in args.methods:
        print(f"no search output at {args.search}: DCL left out", flush=True)
    if args.report_only:
        runs = load_compacts(args.out)
    else:
        jobs = [(m, s) for s in args.seeds for m in methods]
        runs = run_jobs(jobs, args.workers, lambda m, s, p: launch(args, m, s, p))
    summary = summarise(runs, args.seeds, search)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    from report_ktg import write_report

    write_report(summary, args.out)
    print(f"wrote {args.out / 'summary.json'} and {args.out / 'README.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
