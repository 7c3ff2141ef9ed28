"""Regenerate results/lagged_noisy/: the paper's Fig. 7 (lagged edge) and Fig. 8 (noisy edges).

Profiles: simulations/lagged-noisy/*.toml, strategy ``async-cloned-distillation``, each run by
``python -m edgekd.local --workers 2`` (the ClientApp runs in 2 background threads, so a late
edge really sleeps while the server goes on), 1 torch thread, ``--parallel`` runs side by side.
Finished runs are skipped when started again.

    python scripts/reproduce_lagged_noisy.py                # seeds 0 1 2
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

PROFILES = ROOT / "simulations" / "lagged-noisy"
LAGGED = {
    "normal": "lag-normal",
    "late_used": "lag-late-used",
    "late_omitted": "lag-late-omitted",
    "late_used_polynomial": "lag-late-used-polynomial",
}
NOISY = {
    "clean": "noisy-clean",
    "no_detection": "noisy-no-detection",
    "detection": "noisy-detection",
}
PAPER = {"normal": 64.25, "late_used": 63.37, "late_omitted": 62.65}


def teachers(run_dir: Path) -> list[dict[str, Any]]:
    """The per-teacher records (staleness, status, detection) of an async run."""
    path = run_dir / "teachers.json"
    return json.loads(path.read_text()) if path.exists() else []


def detection_counts(run_dirs: list[Path]) -> dict[str, int]:
    """Suspect flags against ground truth over every returned edge of ``run_dirs``.

    The ground truth is the ``simulated-noisy`` flag the edge itself reported (the clean
    profile's partitions 3 and 6 are clean, the noisy profiles' are corrupted).
    """
    counts = {"tp": 0, "fn": 0, "fp": 0, "tn": 0}
    for run_dir in run_dirs:
        for entry in teachers(run_dir):
            if "suspect" not in entry or "simulated-noisy" not in entry:
                continue
            noisy = bool(entry["simulated-noisy"])
            key = (
                ("tp" if entry["suspect"] else "fn")
                if noisy
                else ("fp" if entry["suspect"] else "tn")
            )
            counts[key] += 1
    return counts


def plot(out: Path, curves: dict[str, dict[str, list[float]]]) -> None:
    """lagged.png and noisy.png: mean core test accuracy per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, group in curves.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, curve in group.items():
            ax.plot(range(len(curve)), curve, marker="o", label=label)
        ax.set_xlabel("round (last point for lagged runs: after the late reply was handled)")
        ax.set_ylabel("core test accuracy (mean over seeds)")
        ax.set_title(f"{name} edges, cifar10_head, resnet8")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)


def mean_curve(run_dirs: list[Path]) -> list[float]:
    """Mean test-acc per round over runs (truncated to the shortest)."""
    curves = [load_curve(d) for d in run_dirs]
    length = min(len(c) for c in curves)
    return [statistics.fmean(c[i] for c in curves) for i in range(length)]


def main() -> int:
    """Run what is missing, then write summary.json and the plots."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "lagged_noisy")
    args = parser.parse_args()
    out: Path = args.out
    profiles = [*LAGGED.values(), *NOISY.values()]
    jobs = [(p, s) for s in args.seeds for p in profiles]
    print(f"{len(jobs)} runs, {args.parallel} at a time", flush=True)

    def run(job: tuple[str, int]) -> Path:
        name, seed = job
        group = "lag.toml" if name.startswith("lag-") else "noisy.toml"
        chain = [PROFILES / "base.toml", PROFILES / group, PROFILES / f"{name}.toml"]
        return run_profile(chain, seed, out / "runs" / f"{name}-seed{seed}", workers=2)

    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(run, jobs))

    def dirs(name: str) -> list[Path]:
        return [out / "runs" / f"{name}-seed{s}" for s in args.seeds]

    lagged = {}
    for case, name in LAGGED.items():
        lagged[case] = final_stats([load_curve(d)[-1] for d in dirs(name)], args.seeds)
        lagged[case]["staleness"] = [
            [t["staleness"] for t in teachers(d) if t.get("status") == "ok"] for d in dirs(name)
        ]
        lagged[case]["teacher_weights"] = [
            [t["teacher-weight"] for t in teachers(d) if t.get("status") == "ok"]
            for d in dirs(name)
        ]
        lagged[case]["statuses"] = [[t.get("status") for t in teachers(d)] for d in dirs(name)]
    noisy: dict[str, Any] = {}
    for case, name in NOISY.items():
        finals = [load_curve(d)[-1] for d in dirs(name)]
        noisy[case] = final_stats(finals, args.seeds)
        rows = [load_rows(d) for d in dirs(name)]
        noisy[case]["min_acc_mean"] = statistics.fmean(
            min(r["test-acc"] for r in run_rows if r.get("test-acc") is not None)
            for run_rows in rows
        )
    flagged = detection_counts(
        dirs(NOISY["no_detection"]) + dirs(NOISY["detection"]) + dirs(NOISY["clean"])
    )
    noisy_total = flagged["tp"] + flagged["fn"]
    clean_total = flagged["fp"] + flagged["tn"]
    noisy["detection"]["detection_rate"] = flagged["tp"] / noisy_total if noisy_total else None
    noisy["detection"]["false_positive_rate"] = flagged["fp"] / clean_total if clean_total else None
    noisy["detection"]["detector_counts"] = flagged
    summary = {
        "lagged": lagged,
        "noisy": noisy,
        "setup": {
            "data": "../shared/data/cifar10_head.npz",
            "profiles": "simulations/lagged-noisy/base.toml + lag.toml|noisy.toml + <case>.toml",
            "seeds": args.seeds,
            "accuracy": "core test accuracy at the end of the run, as a fraction",
            "detection_counted_over": "every returned edge of the clean, no_detection and "
            "detection runs (ground truth: the simulated-noisy flag each edge reported)",
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(
        out,
        {
            "lagged": {case: mean_curve(dirs(name)) for case, name in LAGGED.items()},
            "noisy": {case: mean_curve(dirs(name)) for case, name in NOISY.items()},
        },
    )
    for case, stats in lagged.items():
        print(
            f"lagged {case:13s} {stats['final_acc_mean']:.4f} ± {stats['final_acc_std']:.4f} "
            f"(paper {PAPER.get(case, float('nan')):.2f} %) staleness {stats['staleness']}"
        )
    for case, stats in noisy.items():
        print(
            f"noisy  {case:13s} {stats['final_acc_mean']:.4f} ± {stats['final_acc_std']:.4f} "
            f"min {stats['min_acc_mean']:.4f}"
        )
    print("detector", flagged)
    return 0


if __name__ == "__main__":
    sys.exit(main())
