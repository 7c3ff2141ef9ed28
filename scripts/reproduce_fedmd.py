"""Regenerate results/fedmd/: CE, KD and LKD at two Dirichlet alphas, an r sweep, FedAvg.

CPU-scale version of the comparison in the "Latent Space Distillation" slides (FedMD with a
representation layer): 6 CIFAR-10-head clients of three architecture families (cnn, resnet8,
vgg8), CIFAR-100-head images as public transfer and alignment data. Every run is one profile of
simulations/fedmd/ executed by ``python -m edgekd.local`` (the ServerApp logic, the ClientApp
and real Flower messages in one process, 1 torch thread), ``--workers`` runs side by side.
Finished runs are kept and skipped when the script is started again. Then summary.json,
README.md (tables; text after the ``<!-- discussion -->`` marker is kept) and accuracy.png.

    python scripts/reproduce_fedmd.py --workers 2          # the full table: 22 runs of ~2 min
    python scripts/reproduce_fedmd.py --seeds 0 --alphas 0.1 --r-sweep --fedavg-seeds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "simulations" / "fedmd"
METHODS = ["CE", "KD", "LKD"]
DEFAULT_R = 64
SLIDES = {  # "Comparison with SOTA" slide: CIFAR-10 clients, CIFAR-100 transfer set
    "private": {"CE": 0.634, "KD": 0.631, "CRD": 0.655, "LPD": 0.391, "LKD": 0.674},
    "uniform": {"CE": 0.492, "KD": 0.551, "CRD": 0.530, "LPD": 0.183, "LKD": 0.544},
}
MARKER = "<!-- discussion -->"


def run_name(method: str, alpha: float, seed: int, r: int = DEFAULT_R) -> str:
    """Directory name of one run under ``<out>/runs``."""
    suffix = "" if r == DEFAULT_R else f"-r{r}"
    return f"{method}-alpha{alpha:g}-seed{seed}{suffix}"


def alpha_key(alpha: float) -> str:
    """Key of one alpha's block in summary.json: ``"alpha=0.1"``, ``"alpha=1.0"``."""
    return f"alpha={float(alpha)!r}"


def run_one(method: str, alpha: float, seed: int, r: int, out: Path, extra: list[str]) -> Path:
    """Run profile ``method`` with ``alpha``, ``seed`` and ``r`` unless already done."""
    run_dir = out / "runs" / run_name(method, alpha, seed, r)
    if (run_dir / "summary.json").exists():
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = [f"seed={seed} dirichlet-alpha={alpha} fedmd-representation-dim={r}", *extra]
    command = [
        sys.executable,
        "-m",
        "edgekd.local",
        str(ROOT),
        "--run-config",
        str(PROFILES / "base.toml"),
        "--run-config",
        str(PROFILES / f"{method}.toml"),
        *[arg for pair in overrides for arg in ("--run-config", pair)],
        "--out-dir",
        str(run_dir),
        "--threads",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.monotonic()
    with (run_dir / "log.txt").open("w") as log:
        code = subprocess.run(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False
        ).returncode
    if code != 0:
        raise RuntimeError(f"{run_dir.name} failed (exit {code}); see {run_dir / 'log.txt'}")
    print(
        f"[{time.strftime('%H:%M:%S')}] {run_dir.name}: done in {time.monotonic() - started:.0f}s",
        flush=True,
    )
    return run_dir


def load_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Per-round rows of a run (round 0 = after transfer learning)."""
    return json.loads((run_dir / "metrics.json").read_text())


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(runs: list[Path], seeds: list[int]) -> dict[str, Any]:
    """Final-round accuracies of one method at one alpha, over ``seeds``."""
    rows = [load_rows(run) for run in runs]
    finals = [r[-1] for r in rows]
    private = [float(f["private-acc-mean"]) for f in finals]
    uniform = [float(f["uniform-acc-mean"]) for f in finals]
    private_mean, private_std = _stats(private)
    uniform_mean, uniform_std = _stats(uniform)
    collab = [row for r in rows for row in r if row["round"] > 0]
    return {
        "private_acc_mean": private_mean,
        "private_acc_std": private_std,
        "uniform_acc_mean": uniform_mean,
        "uniform_acc_std": uniform_std,
        "seeds": seeds,
        "per_seed": {"private": private, "uniform": uniform},
        "client_spread": {  # std over clients, mean over seeds
            "private": statistics.fmean(float(f["private-acc-std"]) for f in finals),
            "uniform": statistics.fmean(float(f["uniform-acc-std"]) for f in finals),
        },
        "after_transfer": {  # round 0: transfer learning only
            "private": statistics.fmean(float(r[0]["private-acc-mean"]) for r in rows),
            "uniform": statistics.fmean(float(r[0]["uniform-acc-mean"]) for r in rows),
        },
        "by_model_uniform": {
            model: statistics.fmean(float(f["uniform-acc-by-model"][model]) for f in finals)
            for model in finals[0]["uniform-acc-by-model"]
        },
        "bytes_per_round": statistics.fmean(
            float(row["bytes-sent"]) + float(row["bytes-received"]) for row in collab
        ),
        "curve_private": [
            statistics.fmean(float(r[i]["private-acc-mean"]) for r in rows)
            for i in range(len(rows[0]))
        ],
        "curve_uniform": [
            statistics.fmean(float(r[i]["uniform-acc-mean"]) for r in rows)
            for i in range(len(rows[0]))
        ],
        "seconds": statistics.fmean(float(r[-1]["elapsed-s"]) for r in rows),
    }


def _cell(stats: dict[str, Any] | None, key: str) -> str:
    if stats is None:
        return "—"
    return f"{stats[f'{key}_acc_mean']:.3f} ± {stats[f'{key}_acc_std']:.3f}"


def tables(summary: dict[str, Any], alphas: list[float]) -> str:
    """Markdown tables: main comparison beside the slides, r sweep, communication."""
    methods = [*METHODS, "CRD", "LPD", "FedAvg"]
    lines = []
    for key, title in [("private", "Private test"), ("uniform", "Uniform test")]:
        header = " | ".join(f"ours α={a:g}" for a in alphas)
        lines += [
            f"**{title}** (final round, mean ± std over seeds of the mean over 6 clients)",
            "",
            f"| method | {header} | slides |",
            "| --- | " + " | ".join("---" for _ in alphas) + " | --- |",
        ]
        for method in methods:
            cells = [_cell(summary[alpha_key(a)].get(method), key) for a in alphas]
            slide = SLIDES[key].get(method)
            slide_text = f"{slide:.3f}" if slide is not None else "—"
            if all(c == "—" for c in cells) and slide is None:
                continue
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {slide_text} |")
        lines.append("")
    lines += [
        "**After transfer learning only** (round 0, same runs; private / uniform)",
        "",
        "| method | " + " | ".join(f"α={a:g}" for a in alphas) + " |",
        "| --- | " + " | ".join("---" for _ in alphas) + " |",
    ]
    for method in [*METHODS, "FedAvg"]:
        cells = []
        for a in alphas:
            stats = summary[alpha_key(a)].get(method)
            cells.append(
                "—"
                if stats is None
                else f"{stats['after_transfer']['private']:.3f} / "
                f"{stats['after_transfer']['uniform']:.3f}"
            )
        if any(c != "—" for c in cells):
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("")
    sweep = summary.get("r_sweep", {})
    if sweep.get("runs"):
        lines += [
            f"**r sweep** (LKD, α={sweep['alpha']:g}, seed {sweep['seed']}; perception "
            "outputs: cnn 128, resnet8 64, vgg8 128)",
            "",
            "| r | private | uniform |",
            "| --- | --- | --- |",
        ]
        for r, stats in sorted(sweep["runs"].items(), key=lambda kv: int(kv[0].split("=")[1])):
            lines.append(f"| {r.split('=')[1]} | {stats['private']:.3f} | {stats['uniform']:.3f} |")
        lines.append("")
    lines += [
        "**Communication** (payload bytes per round, both directions, all 6 clients; "
        "mean over rounds and seeds)",
        "",
        "| method | " + " | ".join(f"α={a:g}" for a in alphas) + " |",
        "| --- | " + " | ".join("---" for _ in alphas) + " |",
    ]
    for method in [*METHODS, "FedAvg"]:
        cells = []
        for a in alphas:
            stats = summary[alpha_key(a)].get(method)
            cells.append("—" if stats is None else f"{stats['bytes_per_round'] / 1e3:,.0f} kB")
        if any(c != "—" for c in cells):
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], alphas: list[float], path: Path) -> None:
    """Mean private/uniform accuracy per round, one panel per alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(alphas), figsize=(5.5 * len(alphas), 4), squeeze=False)
    for ax, alpha in zip(axes[0], alphas, strict=True):
        for method, stats in summary[alpha_key(alpha)].items():
            rounds = range(len(stats["curve_private"]))
            (line,) = ax.plot(rounds, stats["curve_private"], marker=".", label=f"{method} private")
            ax.plot(
                rounds,
                stats["curve_uniform"],
                "--",
                marker=".",
                color=line.get_color(),
                label=f"{method} uniform",
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"Dirichlet α={alpha:g}")
        ax.set_xlabel("round (0 = after transfer learning)")
        ax.set_ylabel("mean client accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_readme(out: Path, summary: dict[str, Any], alphas: list[float], command: str) -> None:
    """README.md: generated tables, then any kept discussion after the marker."""
    readme = out / "README.md"
    kept = ""
    if readme.exists() and MARKER in readme.read_text():
        kept = readme.read_text().split(MARKER, 1)[1]
    setup = summary["setup"]
    generated = (
        "# FedMD latent distillation at CPU scale\n\n"
        f"Generated by `{command}` (seeds {setup['seeds']}, profiles "
        "`simulations/fedmd/base.toml` + `<method>.toml`). Setup: "
        f"{setup['data']}; {setup['clients']}; {setup['schedule']}.\n\n"
        f"{tables(summary, alphas)}\n"
        "![accuracy per round](accuracy.png)\n\n"
    )
    readme.write_text(generated + MARKER + (kept or "\n"))


def main() -> int:
    """Run everything that is missing, then aggregate."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--r-sweep", type=int, nargs="*", default=[16, 64, 256])
    parser.add_argument("--fedavg-seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "fedmd")
    parser.add_argument(
        "--extra", nargs="*", default=[], help="extra 'key=value' overrides for every run"
    )
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    sweep_alpha, sweep_seed = args.alphas[0], args.seeds[0]
    jobs = [(m, a, s, DEFAULT_R) for a in args.alphas for s in args.seeds for m in args.methods]
    jobs += [("LKD", sweep_alpha, sweep_seed, r) for r in args.r_sweep]
    jobs += [("FedAvg", a, s, DEFAULT_R) for s in args.fedavg_seeds for a in args.alphas]
    jobs = list(dict.fromkeys(jobs))
    print(f"{len(jobs)} runs, {args.workers} at a time", flush=True)
    with ThreadPoolExecutor(args.workers) as pool:
        for future in [pool.submit(run_one, *job, out, args.extra) for job in jobs]:
            future.result()

    def runs(method: str, alpha: float, seeds: list[int]) -> list[Path]:
        return [out / "runs" / run_name(method, alpha, s) for s in seeds]

    summary: dict[str, Any] = {}
    for alpha in args.alphas:
        block = {m: aggregate(runs(m, alpha, args.seeds), args.seeds) for m in args.methods}
        if args.fedavg_seeds:
            block["FedAvg"] = aggregate(runs("FedAvg", alpha, args.fedavg_seeds), args.fedavg_seeds)
            block["FedAvg"]["note"] = "one architecture (resnet8) for all clients; weights travel"
        summary[alpha_key(alpha)] = block
    sweep: dict[str, Any] = {"method": "LKD", "alpha": sweep_alpha, "seed": sweep_seed, "runs": {}}
    for r in args.r_sweep:
        final = load_rows(out / "runs" / run_name("LKD", sweep_alpha, sweep_seed, r))[-1]
        sweep["runs"][f"r={r}"] = {
            "private": float(final["private-acc-mean"]),
            "uniform": float(final["uniform-acc-mean"]),
        }
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
        f"({profile['fedmd-revisit-epochs']} epoch)",
        "seeds": args.seeds,
        "extra_overrides": args.extra,
        "accuracy": "final round; mean over clients, then mean/std over seeds; private test = "
        f"{profile['fedmd-private-test-size']} test images drawn with each client's label "
        "distribution; uniform = the whole test split",
        "profile": profile,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(
        {k: v for k, v in summary.items() if k.startswith("alpha=")},
        args.alphas,
        out / "accuracy.png",
    )
    command = "python scripts/reproduce_fedmd.py " + " ".join(sys.argv[1:])
    write_readme(out, summary, args.alphas, command.strip())
    print(tables(summary, args.alphas))
    print(f"seeds {args.seeds}; command: {command.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
