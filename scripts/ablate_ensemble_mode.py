"""Ensemble as P teachers or as one averaged teacher: CEP and CEM with ``cd-ensemble-mode``.

The reproduction (``reproduce_cloned_distillation.py``) counts an edge's P clones as P
teachers (``members``, the paper's sum over models), so the KD term of E variants weighs P
times as much against the core's CE as that of P variants. This script runs CEP and CEM again
with ``cd-ensemble-mode = "average"`` (one teacher per edge: the mean of its P clones' logits),
the same seeds, profiles and schedule, and sets them beside the ``members`` numbers of
``results/cloned_distillation/summary.json`` (paired per seed: same Phase 0, same edges).
Runs go to ``results/cloned_distillation/runs/<variant>-average-seed<s>`` (skipped when done);
the result is ``results/cloned_distillation/ensemble_mode.json`` and a table on stdout.

    python scripts/ablate_ensemble_mode.py --workers 2          # 6 runs, seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from repro_common import ROOT, final_stats, load_curve, run_profile

OUT = ROOT / "results" / "cloned_distillation"
PROFILES = ROOT / "simulations" / "cloned-distillation"
VARIANTS = ("CEP", "CEM")


def run_average(variant: str, seed: int) -> Path:
    """``variant`` with one averaged teacher per edge, seed ``seed``."""
    run_dir = OUT / "runs" / f"{variant}-average-seed{seed}"
    extra = ["cd-ensemble-mode='average'"]
    return run_profile(PROFILES / f"{variant}.toml", seed, run_dir, extra)


def main() -> int:
    """Run the missing ``average`` runs, then compare with the ``members`` results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    members = json.loads((OUT / "summary.json").read_text())["variants"]
    for variant in VARIANTS:
        if members[variant]["seeds"] != args.seeds:
            parser.error(
                f"summary.json has {variant} for seeds {members[variant]['seeds']}, "
                f"not {args.seeds}: rerun reproduce_cloned_distillation.py with these seeds"
            )
    jobs = [(v, s) for s in args.seeds for v in VARIANTS]
    print(f"{len(jobs)} runs, {args.workers} at a time", flush=True)
    with ThreadPoolExecutor(args.workers) as pool:
        for future in [pool.submit(run_average, v, s) for v, s in jobs]:
            future.result()
    result: dict[str, Any] = {"seeds": args.seeds, "variants": {}}
    lines = [
        "| variant | members (P teachers) | average (1 teacher) | average − members per seed |",
        "| --- | --- | --- | --- |",
    ]
    for variant in VARIANTS:
        curves = [load_curve(OUT / "runs" / f"{variant}-average-seed{s}") for s in args.seeds]
        average = final_stats([c[-1] for c in curves], args.seeds)
        average["curve_mean"] = [statistics.fmean(v) for v in zip(*curves, strict=True)]
        paired = [
            a - m for a, m in zip(average["per_seed"], members[variant]["per_seed"], strict=True)
        ]
        result["variants"][variant] = {
            "members": {k: members[variant][k] for k in ("final_acc_mean", "final_acc_std")}
            | {"per_seed": members[variant]["per_seed"]},
            "average": average,
            "paired_difference": paired,
            "paired_difference_mean": statistics.fmean(paired),
        }
        lines.append(
            f"| {variant} | {members[variant]['final_acc_mean']:.4f} ± "
            f"{members[variant]['final_acc_std']:.4f} | {average['final_acc_mean']:.4f} ± "
            f"{average['final_acc_std']:.4f} | {', '.join(f'{d:+.3f}' for d in paired)} "
            f"(mean {statistics.fmean(paired):+.4f}) |"
        )
    result["command"] = "python scripts/ablate_ensemble_mode.py " + " ".join(sys.argv[1:])
    (OUT / "ensemble_mode.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
