"""Why does digesting FedMD's consensus lower accuracy? One factor at a time, calibration seeds.

Every setting is ``simulations/fedmd/base.toml`` + one method file + a few overrides, at
Dirichlet alpha = 0.1, run on calibration seeds (never the reporting seeds) by
``python -m edgekd.local``. For each setting the script records the final private and uniform
accuracies, the change from round 0 (after transfer learning; identical across methods of a
seed), and the consensus diagnostics of every round (agreement with the clients; with a
labelled "split" public pool, the consensus's accuracy against the clients'). A setting's
effect is read against CE (no collaboration) run under the same transfer learning, per seed.

    python scripts/ablate_fedmd.py                 # writes results/fedmd/ablation.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from repro_common import ROOT, run_profile

PROFILES = ROOT / "simulations" / "fedmd"
SHORT = {"fedmd-pretrain-public-epochs": 2, "fedmd-pretrain-private-epochs": 3}
SPLIT = {"fedmd-public-source": "split", "fedmd-public-fraction": 0.2}
# name: (method, overrides, the CE setting it is read against)
SETTINGS: dict[str, tuple[str, dict[str, Any], str]] = {
    "CE": ("CE", {}, "CE"),
    "KD": ("KD", {}, "CE"),
    "LKD": ("LKD", {}, "CE"),
    "CE-short-pretrain": ("CE", SHORT, "CE-short-pretrain"),
    "KD-short-pretrain": ("KD", SHORT, "CE-short-pretrain"),
    "KD-L1": ("KD", {"fedmd-logit-loss": "mae"}, "CE"),
    "KD-t4": ("KD", {"fedmd-temperature": 4.0}, "CE"),
    "KD-weighted": ("KD", {"fedmd-consensus-weighting": "num-examples"}, "CE"),
    "KD-align1024": ("KD", {"fedmd-alignment-size": 1024}, "CE"),
    "CE-split": ("CE", SPLIT, "CE-split"),
    "KD-split": ("KD", SPLIT, "CE-split"),
}
CONSENSUS_KEYS = ("consensus-agreement", "consensus-acc", "client-acc-mean", "client-acc-max")


def value(v: Any) -> str:
    """A run-config override value in TOML syntax."""
    return f"'{v}'" if isinstance(v, str) else str(v)


def run_one(name: str, seed: int, out: Path, cache_dir: str) -> dict[str, Any]:
    """One setting on one seed; its compact per-round record (skipped when present)."""
    path = out / "ablation" / f"{name}-seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    method, overrides, _ = SETTINGS[name]
    extra = [f"{k}={value(v)}" for k, v in overrides.items()]
    extra += ["dirichlet-alpha=0.1", f"cache-dir='{cache_dir}'"]
    run_dir = run_profile(
        [PROFILES / "base.toml", PROFILES / f"{method}.toml"],
        seed,
        out / "runs" / "ablation" / f"{name}-seed{seed}",
        extra,
    )
    rows = json.loads((run_dir / "metrics.json").read_text())
    compact = {
        "name": name,
        "seed": seed,
        "private": [r["private-acc-mean"] for r in rows],
        "uniform": [r["uniform-acc-mean"] for r in rows],
        **{k: [r.get(k) for r in rows if r["round"] > 0] for k in CONSENSUS_KEYS},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(compact) + "\n")
    return compact


def summarise(runs: dict[tuple[str, int], dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Per setting: finals, change over transfer learning, minus its CE, consensus diagnostics."""
    table: dict[str, Any] = {}
    for name, (_, overrides, reference) in SETTINGS.items():
        group = [runs[(name, s)] for s in seeds]
        ref = [runs[(reference, s)] for s in seeds]
        entry: dict[str, Any] = {"overrides": overrides, "against": reference}
        for test in ("private", "uniform"):
            entry[f"{test}_final"] = statistics.fmean(r[test][-1] for r in group)
            entry[f"{test}_change_over_transfer"] = statistics.fmean(
                r[test][-1] - r[test][0] for r in group
            )
            entry[f"{test}_minus_ce"] = statistics.fmean(
                r[test][-1] - c[test][-1] for r, c in zip(group, ref, strict=True)
            )
        for key in CONSENSUS_KEYS:
            values = [v for r in group for v in r[key] if v is not None]
            entry[key] = statistics.fmean(values) if values else None
        table[name] = entry
    return {"calibration_seeds": seeds, "alpha": 0.1, "settings": table}


def main() -> int:
    """Run the missing settings, then write ablation.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[100])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "edgekd" / "runs"))
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "fedmd")
    args = parser.parse_args()
    unknown = sorted(set(args.settings) - set(SETTINGS))
    if unknown:
        parser.error(f"unknown setting(s) {unknown}; valid: {list(SETTINGS)}")
    needed = set(args.settings) | {SETTINGS[n][2] for n in args.settings}
    jobs = [(n, s) for s in args.seeds for n in SETTINGS if n in needed]
    print(f"{len(jobs)} runs, {args.workers} at a time", flush=True)
    with ThreadPoolExecutor(args.workers) as pool:
        futures = {job: pool.submit(run_one, *job, args.out, args.cache_dir) for job in jobs}
        runs = {job: future.result() for job, future in futures.items()}
    if set(args.settings) == set(SETTINGS):
        summary = summarise(runs, args.seeds)
        (args.out / "ablation.json").write_text(json.dumps(summary, indent=2) + "\n")
        for name, entry in summary["settings"].items():
            print(
                f"{name:20s} private {entry['private_final']:.4f} "
                f"({entry['private_minus_ce']:+.4f})"
                f" uniform {entry['uniform_final']:.4f} ({entry['uniform_minus_ce']:+.4f})"
                f" agreement {entry['consensus-agreement']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
