"""Ensemble as P teachers or as one averaged teacher: CEP and CEM with ``cd-ensemble-mode``.

The reproduction (``reproduce_cloned_distillation.py``) counts an edge's P clones as P
teachers (``members``, the paper's sum over models), so the KD term of E variants weighs P
times as much against the core's CE as that of P variants. This script runs CEP and CEM with
``cd-ensemble-mode = "members"`` and ``"average"`` (one teacher per edge: the mean of its P
clones' logits), the same seeds, profiles and schedule, on this machine, so that the two modes
are paired per seed (same Phase 0, same edges). Both modes run here rather than reusing
``summary.json``: the same code and seed give other numbers on another processor (see
``results/cloned_distillation/README.md``). Runs go to
``results/cloned_distillation/runs/<variant>-<mode>-seed<s>`` (skipped when done); the result
is ``results/cloned_distillation/ensemble_mode.json`` and a table on stdout.

    python scripts/ablate_ensemble_mode.py --workers 2          # 12 runs, seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from repro_common import ROOT, final_stats, load_curve, load_rows, run_profile

OUT = ROOT / "results" / "cloned_distillation"
PROFILES = ROOT / "simulations" / "cloned-distillation"
VARIANTS = ("CEP", "CEM")


MODES = ("members", "average")


def run_mode(variant: str, mode: str, seed: int) -> Path:
    """``variant`` with ``cd-ensemble-mode = mode``, seed ``seed``."""
    run_dir = OUT / "runs" / f"{variant}-{mode}-seed{seed}"
    extra = [f"cd-ensemble-mode='{mode}'"]
    return run_profile([PROFILES / "base.toml", PROFILES / f"{variant}.toml"], seed, run_dir, extra)


def mode_stats(variant: str, mode: str, seeds: list[int]) -> dict[str, Any]:
    """Final and Phase-0 accuracy of one variant and mode over ``seeds``."""
    curves = [load_curve(OUT / "runs" / f"{variant}-{mode}-seed{s}") for s in seeds]
    stats = final_stats([c[-1] for c in curves], seeds)
    stats["phase0_per_seed"] = [c[0] for c in curves]
    stats["curve_mean"] = [statistics.fmean(v) for v in zip(*curves, strict=True)]
    rows = [r for s in seeds for r in load_rows(OUT / "runs" / f"{variant}-{mode}-seed{s}")]
    edges = [r for r in rows if r.get("teacher-accs") and r.get("edge-status") == "ok"]
    # teacher-accs: the test accuracies of this round's edge's P clones
    stats["clone_acc_spread_mean"] = statistics.fmean(
        max(r["teacher-accs"]) - min(r["teacher-accs"]) for r in edges
    )
    stats["ensemble_minus_mean_clone"] = statistics.fmean(
        r["teacher-ensemble-acc"] - r["teacher-acc-mean"] for r in edges
    )
    return stats


def main() -> int:
    """Run the missing ``average`` runs, then compare with the ``members`` results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    jobs = [(v, m, s) for s in args.seeds for v in VARIANTS for m in MODES]
    print(f"{len(jobs)} runs, {args.workers} at a time", flush=True)
    with ThreadPoolExecutor(args.workers) as pool:
        for future in [pool.submit(run_mode, v, m, s) for v, m, s in jobs]:
            future.result()
    result: dict[str, Any] = {"seeds": args.seeds, "variants": {}}
    lines = [
        "| variant | members (P teachers) | average (1 teacher) | average − members per seed |",
        "| --- | --- | --- | --- |",
    ]
    for variant in VARIANTS:
        members, average = (mode_stats(variant, m, args.seeds) for m in MODES)
        if members["phase0_per_seed"] != average["phase0_per_seed"]:
            raise RuntimeError(f"{variant}: the two modes did not start from the same Phase 0")
        paired = [a - m for a, m in zip(average["per_seed"], members["per_seed"], strict=True)]
        result["variants"][variant] = {
            "members": members,
            "average": average,
            "paired_difference": paired,
            "paired_difference_mean": statistics.fmean(paired),
        }
        lines.append(
            f"| {variant} | {members['final_acc_mean']:.4f} ± {members['final_acc_std']:.4f} "
            f"| {average['final_acc_mean']:.4f} ± {average['final_acc_std']:.4f} "
            f"| {', '.join(f'{d:+.3f}' for d in paired)} (mean {statistics.fmean(paired):+.4f}) |"
        )
    result["command"] = "python scripts/ablate_ensemble_mode.py " + " ".join(sys.argv[1:])
    (OUT / "ensemble_mode.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
