"""Regenerate results/cloned_distillation/: eight variants, the no-teacher control and FedAvg.

Every run is ``simulations/cloned-distillation/base.toml`` plus one variant file, executed by
``python -m edgekd.local`` (the ServerApp logic, the ClientApp and real Flower messages in one
process, 1 torch thread; ``engine_check.json`` shows it gives the simulation engine's numbers),
``--workers`` runs side by side. Each finished run leaves a compact JSON in ``compact/`` (the
per-round values the claims rest on, committed), so the table can be built in several sittings:
finished runs are skipped. Phase 0 and edge training are cached in ``--cache-dir`` (identical
across the variants of a seed; independent edges do not depend on the core's history).

Claims are paired differences over the reporting seeds (same seed, same Phase 0) with a 95 %
t-interval: "A-B" reads "A beats B".

    python scripts/reproduce_cloned_distillation.py --workers 2                  # seeds 0-4
    python scripts/reproduce_cloned_distillation.py --report-only               # tables only
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from repro_common import (
    ROOT,
    RunProgress,
    compact_run,
    load_compacts,
    paired,
    run_compact,
    run_jobs,
    table_parser,
)

PROFILES = ROOT / "simulations" / "cloned-distillation"
VARIANTS = ["IsPP", "IPP", "IEP", "IPM", "CPP", "CEP", "CPM", "CEM"]
ORDER = [
    "control",
    "CPP",
    "IPP",
    "CPM",
    "IPM",
    "CEM",
    "core-fedavg",
    "IsPP",
    "CEP",
    "IEP",
    "CEM-average",
    "fedavg",
]
ABLATIONS = ["CEM-average"]  # CEM with each edge's clones averaged into one teacher
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
CLAIMS = [  # the paper's orderings (Fig. 5): A beats B
    ("CPP", "IPP"),
    ("CPM", "IPM"),
    ("CEP", "IEP"),
    ("CPM", "CPP"),
    ("CEP", "CPP"),
    ("CEM", "CPM"),
    ("CEM", "IPP"),
    ("CPP", "core-fedavg"),
    ("CEM", "core-fedavg"),
    ("CEM-average", "CEM"),  # ablation: is the clones' total weight what costs CEM?
    ("CEM-average", "CPM"),
]


def run_one(
    name: str, seed: int, out: Path, extra: list[str], progress: RunProgress | None = None
) -> dict[str, Any]:
    """Run ``name`` with ``seed`` unless its compact JSON exists; return the compact run."""
    profiles = [PROFILES / "base.toml", PROFILES / f"{name}.toml"]
    return run_compact(name, seed, profiles, out, compact_run, extra=extra, progress=progress)


def teacher_minus_core(run: dict[str, Any]) -> float | None:
    """Mean over rounds of the mean teacher's test accuracy minus the core's, at distillation."""
    pairs = [
        (t, c)
        for t, c in zip(run["teacher_acc_mean"], run["core_acc_before"], strict=True)
        if t is not None and c is not None
    ]
    return statistics.fmean(t - c for t, c in pairs) if pairs else None


def aggregate(runs: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Final-accuracy statistics of one variant over ``seeds`` (today's keys, plus more)."""
    curves = [run["test_acc"] for run in runs]
    finals = [c[-1] for c in curves]
    stats: dict[str, Any] = {
        "final_acc_mean": statistics.fmean(finals),
        "final_acc_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
        "seeds": seeds,
        "per_seed": finals,
        "curve_mean": [statistics.fmean(v) for v in zip(*curves, strict=True)],
        "phase0_acc_mean": statistics.fmean(c[0] for c in curves),
        "gain_over_phase0_mean": statistics.fmean(c[-1] - c[0] for c in curves),
        "last3_acc_mean": statistics.fmean(statistics.fmean(c[-3:]) for c in curves),
    }
    gaps = [g for g in (teacher_minus_core(run) for run in runs) if g is not None]
    if gaps:
        stats["teacher_minus_core_mean"] = statistics.fmean(gaps)
        stats["teacher_minus_core_per_seed"] = gaps
    return stats


def summarise(runs: dict[tuple[str, int], dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """summary.json: per-variant statistics, the control, FedAvg and every paired claim."""
    done = {
        name: [runs[(name, s)] for s in seeds]
        for name in ORDER
        if all((name, s) in runs for s in seeds)
    }
    final = {name: [run["test_acc"][-1] for run in group] for name, group in done.items()}
    last3 = {
        name: [statistics.fmean(run["test_acc"][-3:]) for run in group]
        for name, group in done.items()
    }
    pairs: dict[str, Any] = {}
    for a, b in [*CLAIMS, *((v, "control") for v in [*VARIANTS, *ABLATIONS])]:
        if a in final and b in final:
            pairs[f"{a}-{b}"] = paired(final[a], final[b])
            pairs[f"{a}-{b}"]["last3"] = paired(last3[a], last3[b])
    return {
        "variants": {n: aggregate(done[n], seeds) for n in VARIANTS if n in done},
        "ablations": {n: aggregate(done[n], seeds) for n in ABLATIONS if n in done},
        "fedavg": aggregate(done["fedavg"], seeds) if "fedavg" in done else None,
        "controls": {n: aggregate(done[n], seeds) for n in ("control", "core-fedavg") if n in done},
        "paired": pairs,
        "seeds": seeds,
        "calibration_seeds": json.loads(
            (ROOT / "results" / "cloned_distillation" / "pilot.json").read_text()
        ).get("seeds", []),
        "missing": [n for n in ORDER if n not in done],
        "setup": {
            "data": "../shared/data/cifar10_head.npz (5,170 train / 1,017 test CIFAR-10)",
            "profiles": "simulations/cloned-distillation/base.toml + <variant>.toml",
            "engine": "python -m edgekd.local (in-process; see engine_check.json)",
            "accuracy": "core test accuracy after the last round, as a fraction",
            "paired": "A-B = A minus B per seed (same seed, same Phase 0); 95 % t-interval; "
            "verdict on the claim A > B",
        },
    }


def main() -> int:
    """Run everything that is missing (in priority order), then write the summary."""
    parser = table_parser(__doc__, "cloned_distillation", cache=True)
    parser.add_argument("--variants", nargs="+", default=ORDER)
    args = parser.parse_args()
    unknown = sorted(set(args.variants) - set(ORDER))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; valid: {ORDER}")
    out: Path = args.out
    extra = [f"cache-dir='{args.cache_dir}'"]
    jobs = [(n, s) for n in ORDER if n in args.variants for s in args.seeds]
    if args.report_only:
        runs = load_compacts(out)
    else:
        runs = run_jobs(jobs, args.workers, lambda n, s, p: run_one(n, s, out, extra, p))
    summary = summarise(runs, args.seeds)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    from report_cloned_distillation import write_report

    write_report(summary, out, PAPER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
