"""Phase-0 core test accuracy of a cloned-distillation profile and seed, with this checkout's code.

Phase 0 (the core trained on the core data) is the first thing every cloned-distillation run
computes and the same for all variants of a seed, so it is the cheapest place to compare code
versions or machines. To check another commit, put it in a worktree and run this script from
there with that worktree first on the import path:

    python scripts/check_phase0.py                                   # CEM profile, seed 0
    git worktree add /tmp/wt 06b9c35
    (cd /tmp/wt && PYTHONPATH=/tmp/wt python /path/to/scripts/check_phase0.py --root /tmp/wt)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from repro_common import ROOT


def main() -> int:
    """Print which edgekd was imported and the Phase-0 test accuracy, as JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=ROOT, help="app directory (a checkout)")
    parser.add_argument(
        "--profile",
        nargs="+",
        default=[
            "simulations/cloned-distillation/base.toml",
            "simulations/cloned-distillation/CEM.toml",
        ],
        help="run-config TOML files, merged in order",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--npz", type=Path, default=ROOT.parent / "shared/data/cifar10_head.npz")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import edgekd
    from edgekd.launch import effective_run_config
    from edgekd.runner import prepare_run
    from edgekd.strategies.cloned_distillation import (
        ClonedDistillation,
        ClonedDistillationConfig,
    )
    from edgekd.training import evaluate, set_torch_threads

    root = args.root.resolve()
    profiles = [str(root / profile) for profile in args.profile]
    run_config = effective_run_config(root, [*profiles, f"seed={args.seed}"])
    run_config["npz-path"] = str(args.npz.resolve())
    with tempfile.TemporaryDirectory() as out:
        run_config["output-dir"] = out
        cfg, _recorder = prepare_run(run_config, Path(out))
        set_torch_threads(0)
        cd = ClonedDistillationConfig.from_run_config(run_config)
        strategy = ClonedDistillation(cfg, cd)
        strategy.phase0()
        acc = evaluate(strategy.model, strategy.test.x, strategy.test.y).accuracy
    print(
        json.dumps(
            {
                "edgekd": edgekd.__file__,
                "profile": args.profile,
                "seed": args.seed,
                "phase0_test_acc": acc,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
