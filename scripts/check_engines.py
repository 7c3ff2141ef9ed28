"""Check that the in-process runner gives the simulation engine's numbers for a profile.

Runs the same profiles, overrides and seed once through ``python -m edgekd.launch`` (Flower's
simulation engine: SuperLink, Ray virtual clients) and once through ``python -m edgekd.local``
(the same ServerApp and ClientApp code with messages delivered in-process), and compares the
per-round test accuracy. Writes ``<out>/engine_check.json``.

    python scripts/check_engines.py                      # cloned distillation, CPP, short
    python scripts/check_engines.py --profiles simulations/fedmd/base.toml \
        simulations/fedmd/KD.toml --overrides "num-server-rounds=2" \
        --metrics private-acc-mean uniform-acc-mean --out results/fedmd
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from repro_common import ROOT, load_rows

CD = ROOT / "simulations" / "cloned-distillation"


def curves(run_dir: Path, metrics: list[str]) -> list[float] | dict[str, list[float]]:
    """Per-round values of ``metrics`` (one metric: its list, as older checks recorded it)."""
    rows = load_rows(run_dir)
    values = {m: [float(r[m]) for r in rows if r.get(m) is not None] for m in metrics}
    return values[metrics[0]] if len(metrics) == 1 else values


def main() -> int:
    """Run both engines, compare, write the JSON; exit 1 when they differ."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--profiles", nargs="+", type=Path, default=[CD / "base.toml", CD / "CPP.toml"]
    )
    parser.add_argument(
        "--overrides",
        default="num-server-rounds=3 local-epochs=2 cd-core-epochs=4 cd-distill-epochs=2",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--metrics", nargs="+", default=["test-acc"], help="per-round metrics.json keys compared"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "cloned_distillation")
    args = parser.parse_args()
    configs = [arg for p in args.profiles for arg in ("--run-config", str(p))]
    configs += ["--run-config", f"{args.overrides} seed={args.seed}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        local_dir = Path(tmp) / "local"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "edgekd.local",
                str(ROOT),
                *configs,
                "--out-dir",
                str(local_dir),
            ],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        sim_root = Path(tmp) / "sim"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "edgekd.launch",
                str(ROOT),
                *configs,
                "--run-config",
                f"output-dir='{sim_root}'",
            ],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        (sim_dir,) = [p for p in sim_root.iterdir() if (p / "metrics.json").exists()]
        local, simulation = curves(local_dir, args.metrics), curves(sim_dir, args.metrics)
    result = {
        "profiles": [str(p.relative_to(ROOT)) for p in args.profiles],
        "overrides": args.overrides,
        "seed": args.seed,
        "metrics": args.metrics,
        "local": local,
        "simulation": simulation,
        "identical": local == simulation,
    }
    (args.out / "engine_check.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
