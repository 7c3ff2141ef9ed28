"""Regenerate results/fedmd/: CE, KD, LKD and FedAvg at two Dirichlet alphas, paired over seeds.

CPU-scale version of the comparison in the "Latent Space Distillation" slides (FedMD with a
representation layer): 6 CIFAR-10-head clients of three architecture families (cnn, resnet8,
vgg8), CIFAR-100-head images as public transfer and alignment data. Every run is
``simulations/fedmd/base.toml`` + ``<method>.toml`` executed by ``python -m edgekd.local`` (the
ServerApp logic, the ClientApp and real Flower messages in one process, 1 torch thread),
``--workers`` runs side by side. Transfer learning is cached per stage in ``--cache-dir``, so
CE, KD and LKD of one seed and alpha share it. Each finished run leaves a compact record in
``compact/`` (per-round private and uniform accuracy, consensus diagnostics, bytes), committed,
so the table is built in several sittings; a second start runs only what is missing. Then
``summary.json`` (every paired difference, same seed = same split and transfer learning),
README.md and accuracy.png through ``report_fedmd.py``.

    python scripts/reproduce_fedmd.py --workers 2          # the full table
    python scripts/reproduce_fedmd.py --report-only        # summary, README and plot only
"""

from __future__ import annotations

import statistics
import sys
import tomllib
from itertools import combinations
from pathlib import Path
from typing import Any

from repro_common import (
    ROOT,
    RunProgress,
    load_compacts,
    load_rows,
    paired,
    run_compact,
    run_jobs,
    table_parser,
)

PROFILES = ROOT / "simulations" / "fedmd"
METHODS = ["CE", "KD", "LKD", "FedAvg"]
ALPHAS = [0.1, 1.0]
DEFAULT_R = 64
R_SWEEP = [16, 64, 256]
TESTS = ("private", "uniform")
# Orderings the slides' "Comparison with SOTA" table shows (A above B), per test.
SLIDE_CLAIMS = {
    "private": ["LKD-CE", "LKD-KD"],
    "uniform": ["KD-CE", "LKD-CE"],
}
CONSENSUS_KEYS = ("consensus-agreement", "consensus-acc", "client-acc-mean", "client-acc-max")


def run_name(method: str, alpha: float, r: int = DEFAULT_R) -> str:
    """Name of one (method, alpha, r) cell; a seed is appended per run."""
    suffix = "" if r == DEFAULT_R else f"-r{r}"
    return f"{method}-alpha{alpha:g}{suffix}"


def alpha_key(alpha: float) -> str:
    """Key of one alpha's block in summary.json: ``"alpha=0.1"``, ``"alpha=1.0"``."""
    return f"alpha={float(alpha)!r}"


def pair_key(pair: str, alpha: float, test: str) -> str:
    """Key of one paired difference in summary.json's ``"paired"``."""
    return f"{pair} {alpha_key(alpha)} {test}"


def compact(run_dir: Path) -> dict[str, Any]:
    """What the summary needs from one run: per-round curves, final per-client values."""
    rows = load_rows(run_dir)
    final = rows[-1]
    return {
        "private": [float(r["private-acc-mean"]) for r in rows],
        "uniform": [float(r["uniform-acc-mean"]) for r in rows],
        "private_std": float(final["private-acc-std"]),
        "uniform_std": float(final["uniform-acc-std"]),
        "uniform_by_model": final["uniform-acc-by-model"],
        "bytes": [
            float(r["bytes-sent"]) + float(r["bytes-received"]) for r in rows if r["round"] > 0
        ],
        "seconds": float(final["elapsed-s"]),
        **{k: [r.get(k) for r in rows if r["round"] > 0] for k in CONSENSUS_KEYS},
    }


def overrides(alpha: float, r: int, cache_dir: str) -> list[str]:
    """The run-config overrides of one cell."""
    return [
        f"dirichlet-alpha={alpha}",
        f"fedmd-representation-dim={r}",
        f"cache-dir='{cache_dir}'",
    ]


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(group: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Final-round accuracies of one method at one alpha over ``seeds``, with curves."""
    entry: dict[str, Any] = {"seeds": seeds, "per_seed": {}}
    for test in TESTS:
        finals = [run[test][-1] for run in group]
        entry[f"{test}_acc_mean"], entry[f"{test}_acc_std"] = _stats(finals)
        entry["per_seed"][test] = finals
    entry["client_spread"] = {
        test: statistics.fmean(run[f"{test}_std"] for run in group) for test in TESTS
    }
    entry["after_transfer"] = {
        test: statistics.fmean(run[test][0] for run in group) for test in TESTS
    }
    entry["by_model_uniform"] = {
        model: statistics.fmean(run["uniform_by_model"][model] for run in group)
        for model in group[0]["uniform_by_model"]
    }
    entry["bytes_per_round"] = statistics.fmean(b for run in group for b in run["bytes"])
    for test in TESTS:
        entry[f"curve_{test}"] = [
            statistics.fmean(run[test][i] for run in group) for i in range(len(group[0][test]))
        ]
    entry["seconds"] = statistics.fmean(run["seconds"] for run in group)
    for key in CONSENSUS_KEYS:
        values = [v for run in group for v in run.get(key, []) if v is not None]
        entry[key.replace("-", "_")] = statistics.fmean(values) if values else None
    return entry


def summarise(
    runs: dict[tuple[str, int], dict[str, Any]], seeds: list[int], r_seed: int
) -> dict[str, Any]:
    """summary.json: per-alpha blocks, every paired difference, the r sweep, the setup."""
    summary: dict[str, Any] = {"seeds": seeds, "paired": {}}
    for alpha in ALPHAS:
        block = {}
        for method in METHODS:
            group = [runs[(run_name(method, alpha), s)] for s in seeds]
            block[method] = aggregate(group, seeds)
        block["FedAvg"]["note"] = "one architecture (resnet8) for all clients; weights travel"
        summary[alpha_key(alpha)] = block
        for test in TESTS:
            finals = {m: block[m]["per_seed"][test] for m in METHODS}
            for b, a in combinations(METHODS, 2):
                entry = paired(finals[a], finals[b])
                entry["slides_claim"] = f"{a}-{b}" in SLIDE_CLAIMS[test]
                summary["paired"][pair_key(f"{a}-{b}", alpha, test)] = entry
            for method in METHODS:  # what the rounds add to transfer learning, per method
                group = [runs[(run_name(method, alpha), s)] for s in seeds]
                entry = paired([r[test][-1] for r in group], [r[test][0] for r in group])
                entry["slides_claim"] = False
                summary["paired"][pair_key(f"{method}-round0", alpha, test)] = entry
    sweep: dict[str, Any] = {"method": "LKD", "alpha": ALPHAS[0], "seed": r_seed, "runs": {}}
    for r in R_SWEEP:
        run = runs[(run_name("LKD", ALPHAS[0], r), r_seed)]
        sweep["runs"][f"r={r}"] = {test: run[test][-1] for test in TESTS}
    summary["r_sweep"] = sweep
    profile = {
        **tomllib.loads((PROFILES / "base.toml").read_text()),
        **tomllib.loads((PROFILES / "LKD.toml").read_text()),
    }
    summary["setup"] = {
        "data": f"private: {profile['npz-path']} (5,170 train / 1,017 test CIFAR-10 images), "
        f"Dirichlet over {profile['num-partitions']} clients (min {profile['min-partition-size']} "
        f"images); public: {profile['fedmd-public-source']} (1,402 CIFAR-100 images), "
        f"{profile['fedmd-alignment-size']} per round for alignment",
        "clients": f"models {profile['fedmd-client-models']} round-robin, representation layer "
        f"r={profile['fedmd-representation-dim']} (FedAvg: resnet8 for all)",
        "schedule": f"transfer learning {profile['fedmd-pretrain-public-epochs']} public + "
        f"{profile['fedmd-pretrain-private-epochs']} private epochs (lr {profile['lr']}, batch "
        f"{profile['batch-size']}, augmentation), then {profile['num-server-rounds']} rounds of "
        f"digest ({profile['fedmd-digest-epochs']} epochs, lr {profile['fedmd-digest-lr']}, "
        f"{profile['fedmd-logit-loss']} t={profile['fedmd-temperature']}, latent weight "
        f"{profile['fedmd-latent-weight']} for LKD) and revisit "
        f"({profile['fedmd-revisit-epochs']} epochs)",
        "seeds": seeds,
        "accuracy": "final round; mean over clients, then mean/std over seeds; private test = "
        f"{profile['fedmd-private-test-size']} test images drawn with each client's label "
        "distribution; uniform = the whole test split",
        "profile": profile,
    }
    return summary


def main() -> int:
    """Run everything that is missing, then summarise and report."""
    parser = table_parser(__doc__, "fedmd", cache=True)
    parser.add_argument("--r-seed", type=int, default=0, help="seed of the r sweep")
    args = parser.parse_args()
    out: Path = args.out
    jobs: list[tuple[str, int]] = []
    cells: dict[str, tuple[str, float, int]] = {}
    for alpha in ALPHAS:
        for method in METHODS:
            cells[run_name(method, alpha)] = (method, alpha, DEFAULT_R)
    for r in R_SWEEP:
        cells[run_name("LKD", ALPHAS[0], r)] = ("LKD", ALPHAS[0], r)
    # Seed-major, and CE (which fills the transfer-learning cache) and FedAvg (which needs none)
    # before KD and LKD, so that runs side by side never compute the same transfer learning.
    for seed in args.seeds:
        for method in ["CE", "FedAvg", "KD", "LKD"]:
            jobs += [(run_name(method, alpha), seed) for alpha in ALPHAS]
    jobs += [(run_name("LKD", ALPHAS[0], r), args.r_seed) for r in R_SWEEP if r != DEFAULT_R]
    jobs = list(dict.fromkeys(jobs))
    if args.report_only:
        runs = load_compacts(out)
        missing = [job for job in jobs if job not in runs]
        if missing:
            print(f"missing {len(missing)} runs, e.g. {missing[:3]}; no summary", file=sys.stderr)
            return 1
    else:

        def run(name: str, seed: int, progress: RunProgress) -> dict[str, Any]:
            method, alpha, r = cells[name]
            profiles = [PROFILES / "base.toml", PROFILES / f"{method}.toml"]
            extra = overrides(alpha, r, args.cache_dir)
            return run_compact(name, seed, profiles, out, compact, extra=extra, progress=progress)

        runs = run_jobs(jobs, args.workers, run)
    summary = summarise(runs, args.seeds, args.r_seed)
    from report_fedmd import write_report

    write_report(summary, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
