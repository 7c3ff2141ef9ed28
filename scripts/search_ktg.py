"""Search a knowledge transfer graph (node models and edge gates) with ASHA; write search.json.

Paper: "Knowledge Transfer Graph for Deep Collaborative Learning" (Minami et al., ACCV 2020),
official code https://github.com/somaminami/DCL (``train.py``: random sampling plus successive
halving, objective the *test* accuracy; here node 0's accuracy on a validation split cut from
the training set, never the test set).

Needs the optional extra: ``pip install -e '.[tune]'`` (``ray[tune]==2.55.1``). Trials are drawn
up front by a seeded random draw of valid graphs (no fixed node; see
:mod:`edgekd.ktg_search`) and trained in Ray workers, ``--workers`` at a time (1 CPU and 1 torch
thread each), under ``ASHAScheduler(time_attr="training_iteration", max_t=--epochs,
grace_period=1, reduction_factor=2)``; one training iteration is one epoch of the graph.

Resumable: Ray Tune keeps the experiment in ``--storage/--name``. Interrupt it (Ctrl-C once:
Tune saves its state and exits) or lose the process, then run the same command again: the
experiment is restored (``Tuner.restore``), finished and stopped trials are kept, unfinished ones
retrain from their first epoch. A restore with other search arguments is refused (``--name``
starts another experiment). ``--out`` (``results/ktg/search.json``) gets every trial's config,
rungs reached, promoted / stopped status, validation curve and seconds, and the best graph.

Size (defaults: 3 nodes, resnet8 at node 0, pool resnet8 / resnet20 / wrn16_2 / cnn, all four
gates, max_t = 10 epochs, the reproduction's length): ASHA trains a trial ~3 epochs on average,
so 32 trials are ~100 graph epochs; a 3-node graph epoch of the average draw takes ~20 s on an
idle core (~54 s under a load average of ~7; from the reproduction's pilot): ~17 min on 2 idle
cores, ~46 min under that load.

    python scripts/search_ktg.py                                   # 32 trials, 2 workers
    python scripts/search_ktg.py --trials 4 --epochs 2 --pool cnn --target cnn \\
        --nodes 2 --limit 300 --out /tmp/ktg/search.json --storage /tmp/ktg/tune  # a smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from repro_common import ROOT

from edgekd.ktg_search import (
    DEFAULT_POOL,
    SearchSpace,
    TrainSettings,
    load_graph_data,
    run_search,
    search_log,
)

DEFAULT_NPZ = ROOT.parent / "shared" / "data" / "cifar10_head.npz"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ)
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10, help="ASHA's max_t, in epochs")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--target", default="resnet8", help="node 0's model ('' = searched)")
    parser.add_argument("--pool", nargs="+", default=list(DEFAULT_POOL))
    parser.add_argument("--gates", default="TXLC", help="gate letters the edges draw from")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the graph draw")
    parser.add_argument("--train-seed", type=int, default=0, help="seed of every trial")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--limit", type=int, default=0, help="use the first N train images")
    parser.add_argument("--storage", type=Path, default=Path.home() / ".cache/edgekd/ktg-tune")
    parser.add_argument("--name", default="ktg-search")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "ktg" / "search.json")
    return parser.parse_args(argv)


def _identity(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments a restored experiment must share with the one it continues."""
    skip = {"workers", "out", "storage", "name"}
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in skip}


def _check_resume(folder: Path, identity: dict[str, Any]) -> None:
    """Record the arguments of a new experiment; refuse a restore with different ones."""
    path = folder / "search_args.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != identity:
            changed = sorted(k for k in identity if saved.get(k) != identity[k])
            raise SystemExit(
                f"{folder} holds a search with other arguments ({', '.join(changed)}); "
                "rerun with the same arguments to resume it, or pick another --name"
            )
    else:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(identity, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run or resume the search, then write ``--out``."""
    args = parse_args(argv)
    import ray

    space = SearchSpace(args.nodes, tuple(args.pool), args.target or None, tuple(args.gates))
    settings = TrainSettings(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.train_seed
    )
    data = load_graph_data(args.npz, val_fraction=args.val_fraction)
    if args.limit:
        data = _limited(data, args.limit)
    storage = args.storage.expanduser().resolve()
    _check_resume(storage / args.name, _identity(args))
    started = time.monotonic()
    ray.init(num_cpus=args.workers, include_dashboard=False)
    try:
        results = run_search(
            space,
            data,
            settings,
            num_trials=args.trials,
            storage=storage,
            name=args.name,
            seed=args.seed,
            workers=args.workers,
        )
    finally:
        ray.shutdown()
    extra = {
        "space": asdict(space),
        "data": data.description,
        "draw_seed": args.seed,
        "workers": args.workers,
        "experiment": str(storage / args.name),
        "wall_seconds_last_sitting": round(time.monotonic() - started, 1),
    }
    log = search_log(results, settings, extra=extra)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(log, indent=2) + "\n")
    print(f"best graph {log['gates']} {log['models']}: val {log['best']['val_accuracy']:.4f}")
    print(f"wrote {args.out}")
    return 0


def _limited(data: Any, limit: int) -> Any:
    """``data`` with only its first ``limit`` training images (smoke runs)."""
    from dataclasses import replace

    return replace(
        data,
        x_train=data.x_train[:limit],
        y_train=data.y_train[:limit],
        description={**data.description, "train": min(limit, len(data.y_train))},
    )


if __name__ == "__main__":
    sys.exit(main())
