"""Pilot of the cloned-distillation protocol on a calibration seed (never a reporting seed).

Edges train ``--local-epochs`` (default 20, from the initial high learning rate, as the paper
keeps the ResNet schedule for edge and core). For each Phase-2 schedule (``epochs@lr``) the
pilot runs CPP and the no-teacher control on the calibration seed, and records per round the
teacher's and the core's test accuracy. The schedule the table uses is the one whose CPP run
keeps most of its teachers' knowledge over the control (largest mean CPP - control over the
last three rounds) on this seed. Writes ``pilot.json`` and prints a table.

    python scripts/pilot_cloned_distillation.py --workers 2 --cache-dir /tmp/edgekd-cache
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from repro_common import ROOT, compact_run, run_profile

PROFILES = ROOT / "simulations" / "cloned-distillation"


def main() -> int:
    """Run the pilot grid, then write pilot.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=100, help="calibration seed")
    parser.add_argument("--local-epochs", type=int, default=20)
    parser.add_argument("--schedules", nargs="+", default=["4@0.05", "10@0.05", "10@0.02"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache-dir", default="")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "cloned_distillation")
    args = parser.parse_args()
    jobs = []
    for schedule in args.schedules:
        epochs, lr = schedule.split("@")
        extra = [
            f"local-epochs={args.local_epochs}",
            f"cd-distill-epochs={int(epochs)}",
            f"cd-distill-lr={float(lr)}",
            f"cache-dir='{args.cache_dir}'",
        ]
        for variant in ("CPP", "control"):
            tag = f"pilot-{variant}-e{args.local_epochs}-d{epochs}at{lr}-seed{args.seed}"
            jobs.append((schedule, variant, tag, [*extra, f"cd-variant='{variant}'"]))
    with ThreadPoolExecutor(args.workers) as pool:
        futures = {
            (schedule, variant): pool.submit(
                run_profile, PROFILES / "CPP.toml", args.seed, args.out / "runs" / tag, extra
            )
            for schedule, variant, tag, extra in jobs
        }
        runs = {key: compact_run(future.result()) for key, future in futures.items()}
    result: dict[str, object] = {
        "seed": args.seed,
        "seeds": [args.seed],
        "local_epochs": args.local_epochs,
        "schedules": args.schedules,
    }
    rows = []
    for schedule in args.schedules:
        cpp, control = runs[(schedule, "CPP")], runs[(schedule, "control")]
        gain = [a - b for a, b in zip(cpp["test_acc"], control["test_acc"], strict=True)]
        teacher_minus_core = [
            t - c for t, c in zip(cpp["teacher_acc_mean"], cpp["core_acc_before"], strict=True)
        ]
        entry = {
            "CPP": cpp,
            "control": control,
            "cpp_minus_control_last3": statistics.fmean(gain[-3:]),
            "teacher_minus_core_mean": statistics.fmean(teacher_minus_core),
            "cpp_round_swing": statistics.fmean(
                abs(a - b) for a, b in zip(cpp["test_acc"][1:], cpp["test_acc"][2:], strict=False)
            ),
        }
        result[schedule] = entry
        rows.append(
            f"| {schedule} | {cpp['test_acc'][-1]:.4f} | {control['test_acc'][-1]:.4f} "
            f"| {entry['cpp_minus_control_last3']:+.4f} | {entry['teacher_minus_core_mean']:+.4f} "
            f"| {entry['cpp_round_swing']:.4f} |"
        )
    best = max(args.schedules, key=lambda s: result[s]["cpp_minus_control_last3"])  # type: ignore[index]
    result["chosen"] = best
    (args.out / "pilot.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        "| Phase 2 (epochs@lr) | CPP final | control final | CPP − control (last 3) "
        "| teacher − core | CPP round swing |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    print(f"chosen: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
