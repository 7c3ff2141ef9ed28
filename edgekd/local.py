"""Run an experiment in this process: same ServerApp logic, ClientApp and real Flower messages.

``run_local`` reads ``[tool.flwr.app.config]`` of the app plus ``--run-config`` overrides exactly
like :mod:`edgekd.launch`, but delivers the messages through
:class:`edgekd.inprocess.InProcessGrid` instead of a SuperLink and Ray. Like ``flwr run``, it
refuses a key the app does not define (a plugin's own keys excepted, see
:mod:`edgekd.strategies.registry`); a bad key or value exits with status 2 and one line, a run
in which no client could take part with status 1 and one line naming why.
Used for reproductions that run many short experiments on a small machine, and as the
"raw loop" side of the overhead benchmark.

Usage::

    python -m edgekd.local [APP_DIR] --run-config simulations/cloned-distillation/CEM.toml \
        --run-config "seed=1"
    python -m edgekd.local [APP_DIR] --resume RUN_DIR   # on from the last complete round
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flwr.supercore.task_identity import TaskIdentity

from edgekd.clients.app import app as client_app
from edgekd.config import ExperimentConfig
from edgekd.inprocess import InProcessGrid
from edgekd.launch import (
    PATH_KEYS,
    LaunchError,
    add_resume_argument,
    app_run_config,
    command_line,
    effective_run_config,
    resume_run_config,
)
from edgekd.runner import check_run_config, make_output_dir, run_experiment
from edgekd.strategies.common import FederationError
from edgekd.training import set_torch_threads

__all__ = ["main", "run_local"]


def run_local(
    run_config: dict[str, Any],
    out_dir: Path | None = None,
    *,
    threads: int = 1,
    workers: int = 0,
    resume: bool = False,
) -> Path:
    """Run ``run_config`` (already merged) with ``num-partitions`` in-process nodes.

    With ``resume``, ``out_dir`` is a run folder whose checkpoint the run continues from.

    ``workers > 0`` runs ClientApp calls in that many background threads (needed for
    asynchronous strategies whose edges really sleep); 0 runs them one at a time, in order.
    Returns the output directory. Python's ``random`` is seeded from ``seed`` because Flower's
    FedAvg samples clients with it.
    """
    for key in PATH_KEYS:
        value = run_config.get(key)
        if isinstance(value, str) and value:
            run_config[key] = str(Path(value).expanduser().resolve())
    cfg = ExperimentConfig.from_run_config(run_config)
    set_torch_threads(threads)
    random.seed(cfg.seed)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    target = out_dir or make_output_dir(cfg, "local")
    grid = InProcessGrid(
        client_app, run_config, num_nodes=cfg.num_partitions, seed=cfg.seed, workers=workers
    )
    try:
        run_experiment(grid, run_config, target, resume=resume)
    finally:
        grid.shutdown()
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m edgekd.local --help``."""
    parser = command_line("python -m edgekd.local", __doc__)
    parser.add_argument("--out-dir", default=None, help="exact output directory")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="background threads running ClientApp calls (0: sequential)",
    )
    add_resume_argument(parser)
    args = parser.parse_args(argv)
    app = Path(args.app).resolve()
    out_dir = Path(args.resume or args.out_dir) if (args.resume or args.out_dir) else None
    try:
        if args.resume:
            config = resume_run_config(app, args.resume, args.run_config)
        else:
            config = effective_run_config(app, args.run_config, check_keys=False)
        check_run_config(config, app_run_config(app))
    except (ValueError, LaunchError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        out = run_local(
            config, out_dir, threads=args.threads, workers=args.workers, resume=bool(args.resume)
        )
    except FederationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
