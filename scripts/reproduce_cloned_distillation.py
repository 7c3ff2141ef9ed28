"""Regenerate results/cloned_distillation/: all eight variants and FedAvg, several seeds.

Every run is one profile of simulations/cloned-distillation/ executed by ``python -m
edgekd.local`` (the ServerApp logic, the ClientApp and real Flower messages, in one process,
1 torch thread), ``--workers`` runs side by side. Finished runs are kept and skipped when the
script is started again. Then summary.json, README.md (table) and accuracy.png are written.

    python scripts/reproduce_cloned_distillation.py                 # 3 seeds, 2 workers
    python scripts/reproduce_cloned_distillation.py --seeds 0 --variants CEM CPP --rounds 2
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

PROFILES = ROOT / "simulations" / "cloned-distillation"
VARIANTS = ["IsPP", "IPP", "IEP", "IPM", "CPP", "CEP", "CPM", "CEM"]
PAPER = {  # Figure 5, CIFAR-100, ResNet-32, final accuracy in %
    "IsPP": 39.99,
    "IPP": 44.97,
    "IEP": 47.04,
    "IPM": 49.05,
    "CPP": 53.37,
    "CEP": 54.26,
    "CPM": 55.11,
    "CEM": 56.67,
}


def run_one(name: str, seed: int, out: Path, extra: list[str]) -> Path:
    """Run profile ``name`` with ``seed`` into ``out/runs/<name>-seed<seed>`` unless done."""
    return run_profile(PROFILES / f"{name}.toml", seed, out / "runs" / f"{name}-seed{seed}", extra)


def aggregate(name: str, seeds: list[int], out: Path) -> dict[str, Any]:
    """Final-accuracy statistics of one variant over ``seeds``."""
    curves = [load_curve(out / "runs" / f"{name}-seed{s}") for s in seeds]
    stats = final_stats([c[-1] for c in curves], seeds)
    stats["curve_mean"] = [statistics.fmean(v) for v in zip(*curves, strict=True)]
    stats["phase0_acc_mean"] = statistics.fmean(c[0] for c in curves)
    stats["gain_over_phase0_mean"] = statistics.fmean(c[-1] - c[0] for c in curves)
    stats["last3_acc_mean"] = statistics.fmean(statistics.fmean(c[-3:]) for c in curves)
    return stats


def write_report(summary: dict[str, Any], out: Path, command: str) -> None:
    """README.md table and accuracy.png with one mean curve per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, stats in {**summary["variants"], "FedAvg": summary["fedavg"]}.items():
        curve = stats["curve_mean"]
        style = "-" if name.startswith("C") else ("--" if name != "FedAvg" else ":")
        ax.plot(range(len(curve)), curve, style, marker=".", label=name)
    ax.set_xlabel("round (edge met); 0 = after Phase 0")
    ax.set_ylabel("core test accuracy")
    ax.set_title("Cloned distillation at CPU scale (CIFAR-10 head, resnet8)")
    ax.grid(alpha=0.3)
    ax.legend(ncol=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)

    seeds = summary["fedavg"]["seeds"]
    lines = [
        "| variant | final acc (mean ± std) | gain over Phase 0 | mean of last 3 rounds "
        "| per seed | paper Fig. 5 (CIFAR-100) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    rows = [*summary["variants"].items(), ("FedAvg", summary["fedavg"])]
    for name, stats in rows:
        per = ", ".join(f"{v:.3f}" for v in stats["per_seed"])
        paper = f"{PAPER[name]:.2f} %" if name in PAPER else "—"
        lines.append(
            f"| {name} | {stats['final_acc_mean']:.4f} ± {stats['final_acc_std']:.4f} "
            f"| {stats['gain_over_phase0_mean']:+.4f} | {stats['last3_acc_mean']:.4f} "
            f"| {per} | {paper} |"
        )
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)
    print(f"seeds {seeds}; command: {command}")


def main() -> int:
    """Run everything that is missing, then aggregate."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "cloned_distillation")
    parser.add_argument(
        "--extra",
        nargs="*",
        default=[],
        help="extra 'key=value' run-config overrides for every run",
    )
    args = parser.parse_args()
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; valid: {VARIANTS} (FedAvg always runs)")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(name, seed) for seed in args.seeds for name in [*args.variants, "fedavg"]]
    print(f"{len(jobs)} runs, {args.workers} at a time", flush=True)
    with ThreadPoolExecutor(args.workers) as pool:
        for future in [pool.submit(run_one, n, s, out, args.extra) for n, s in jobs]:
            future.result()
    summary = {
        "variants": {name: aggregate(name, args.seeds, out) for name in args.variants},
        "fedavg": aggregate("fedavg", args.seeds, out),
        "setup": {
            "data": "../shared/data/cifar10_head.npz (5,170 train / 1,017 test CIFAR-10)",
            "profiles": "simulations/cloned-distillation/*.toml",
            "extra_overrides": args.extra,
            "accuracy": "core test accuracy after the last round, as a fraction",
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    command = "python scripts/reproduce_cloned_distillation.py " + " ".join(sys.argv[1:])
    write_report(summary, out, command.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
