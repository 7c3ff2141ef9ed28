"""Write results/lagged_noisy/README.md, lagged.png and noisy.png from the committed JSON.

Every number in the README is computed here from ``summary.json`` and ``calibration.json``;
nothing is typed by hand.

    python scripts/report_lagged_noisy.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from repro_common import ROOT, bars_per_seed, paired_table

OUT = ROOT / "results" / "lagged_noisy"

HEADER = """# Lagged and noisy edges (Sec. 5.2 of the cloned-distillation paper) at CPU scale

Regenerate (missing runs are run, finished ones read back from `compact/`):

```bash
python scripts/calibrate_noisy.py                     # calibration seeds: corruption, threshold
python scripts/reproduce_lagged_noisy.py --parallel 7 # reporting seeds 0-4
python scripts/reproduce_lagged_noisy.py --report-only
```

Both experiments share the cloned-distillation table's protocol
(`simulations/cloned-distillation/base.toml`: `cifar10_head`, 1 core part + 9 IID edge parts of
517 images, resnet8, Phase 0 = 20 epochs, edges 20 epochs from lr 0.05, Phase 2 = 10 epochs of
CE + t²·KL on 4 cached views, t = 4), so their references are that table's runs
(`results/cloned_distillation/compact/`), on the same reporting seeds: the same seed gives the
same Phase 0 and the same split. The **control** is that table's no-teacher control (Phase 2's
schedule, CE only). Runs: `python -m edgekd.local` (ServerApp logic, ClientApp and Flower
messages in one process; `results/cloned_distillation/engine_check.json` compares it with the
simulation engine), on a 2-core CPU VM (no GPU was lent), 1 torch thread per run.

Claims are **paired differences** of the core's test accuracy over the reporting seeds with a
95 % t-interval; the verdict reads "A beats B": *holds* (interval above 0), *does not hold*
(below 0), *unresolved* (contains 0). One seed's accuracy on 1,017 test images has a binomial
standard error of about 0.015.
"""


def mean(values: list[float]) -> float:
    """Arithmetic mean."""
    return sum(values) / len(values)


def lag_section(lag: dict[str, Any], paper: dict[str, float]) -> list[str]:
    """Fig. 7: the cases, the identity checks and the paired orderings."""
    lines = [
        "## (a) Fig. 7: one core, two edges, one of them late",
        "",
        "CEM (P = 3 clones, memory M = 3), 2 rounds, strategy `async-cloned-distillation`. "
        "Rounds 1 and 2 meet partitions 0 and 1. In the late runs the ClientApp of partition 0 "
        "replies 1,800 s after its training; the server moves on after round 1, distils "
        "partition 1 in round 2 and handles partition 0's reply when it arrives (staleness 2). "
        "*Normal* = the cloned-distillation table's CEM after round 2; *late omitted* = the late "
        "run's core before the late reply (discarding it leaves that core as it is); the two "
        "identities are checked by separate runs on one seed (below).",
        "",
        "| case | accuracy (mean) | per seed | paper (CIFAR-100) |",
        "| --- | --- | --- | --- |",
    ]
    for case in ("normal", "late_used", "late_omitted", "late_used_polynomial", "control"):
        values = lag[case]["per_seed"]
        lines.append(
            f"| {case} | {mean(values):.4f} | {', '.join(f'{v:.3f}' for v in values)} "
            f"| {f'{paper[case]:.2f} %' if case in paper else '—'} |"
        )
    gaps = lag["late_teacher_minus_core"]
    lines += [
        "",
        f"Staleness of the used late teachers per seed: {lag['staleness']}. When it arrives, "
        "the late edge is ahead of the core by (mean test accuracy of its clones − the core's) "
        f"{', '.join(f'{g:+.4f}' for g in gaps)} (mean {mean(gaps):+.4f}): what a late teacher "
        "can still add.",
        "",
    ]
    for name, check in lag["checks"].items():
        lines.append(
            f"- Check `{name}` (seed {check['seed']}): its own run {check['run']:.4f}, derived "
            f"{check['derived']:.4f}, identical = **{check['identical']}**."
        )
    return [*lines, "", *paired_table(lag["paired"]), ""]


def noisy_section(noisy: dict[str, Any], calibration: dict[str, Any]) -> list[str]:
    """Fig. 8: calibration, the cases, damage, recovery and the detector."""
    chosen = calibration["chosen"]
    lines = [
        "## (b) Fig. 8: noisy edges at rounds 4 and 7",
        "",
        "CPM (memory M = 3), 9 rounds; the edges met in rounds 4 and 7 (partitions 3 and 6) "
        "train on corrupted data. The detector scores a returned edge by its models' accuracy "
        "on the core data and calls it suspect below *threshold* × the median score of the "
        "edges accepted so far. *No detection* only flags; *detection* rejects suspect edges "
        "(the core is not touched: the round's Phase 2 is skipped)"
        + (
            "; *exclude* leaves only the suspect edge's teachers out and still runs the "
            "round's Phase 2 on the memory"
            if "exclude" in noisy
            else ""
        )
        + ". *Clean* = the table's CPM.",
        "",
        f"**Calibration** (`calibration.json`, seeds {calibration['calibration_seeds']}, never "
        f"the reporting seeds). Rule: {calibration['rule']}. Clean CPM on the sweep seed: "
        f"{calibration['clean_final']:.4f}.",
        "",
        "| corruption | final acc | damage (clean − noisy) |",
        "| --- | --- | --- |",
    ]
    for c in calibration["candidates"]:
        lines.append(f"| {c['mode']}, p = {c['p']} | {c['final']:.4f} | {c['damage']:+.4f} |")
    threshold = calibration["threshold"]
    lines += [
        "",
        f"Chosen: **{chosen['mode']}, p = {chosen['p']}**; threshold **{threshold['chosen']}** "
        f"(detection − false-positive rate {threshold['best_youden']:.3f} on the calibration "
        f"runs, best for thresholds {threshold['tied'][0]} to {threshold['tied'][-1]}; the middle "
        "is kept).",
        "",
        "| case | final acc (mean) | per seed | lowest accuracy on the way (mean) |",
        "| --- | --- | --- | --- |",
    ]
    for case in ("clean", "no_detection", "detection", "exclude", "control"):
        if case not in noisy:
            continue
        entry = noisy[case]
        values = entry["per_seed"]
        lines.append(
            f"| {case} | {mean(values):.4f} | {', '.join(f'{v:.3f}' for v in values)} "
            f"| {entry['min_acc_mean']:.4f} |"
        )
    detection = noisy["detection"]
    counts = detection["detector_counts"]
    lines += [
        "",
        f"**Detector on the reporting seeds**: detection rate {detection['detection_rate']:.3f} "
        f"({counts['tp']} / {counts['tp'] + counts['fn']}), false-positive rate "
        f"{detection['false_positive_rate']:.3f} ({counts['fp']} / {counts['fp'] + counts['tn']})"
        f", {detection['counted_over']}.",
        "",
        *paired_table(noisy["paired"]),
        "",
    ]
    return lines


def plot(summary: dict[str, Any], out: Path) -> None:
    """lagged.png (per-case accuracies) and noisy.png (mean curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "lagged" in summary:
        lag = summary["lagged"]
        cases = ["control", "late_omitted", "late_used", "late_used_polynomial", "normal"]
        fig, ax = plt.subplots(figsize=(6.5, 4))
        bars_per_seed(
            ax,
            {case.replace("_", "\n"): lag[case]["per_seed"] for case in cases},
            "core test accuracy after the edges (per seed, mean bar)",
            "",
        )
        ax.set_title("Fig. 7 at CPU scale: a late edge (CEM, 2 edges)")
        fig.tight_layout()
        fig.savefig(out / "lagged.png", dpi=110)
        plt.close(fig)
    if "noisy" in summary:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for case in ("clean", "no_detection", "detection", "exclude", "control"):
            if case not in summary["noisy"]:
                continue
            curve = summary["noisy"][case]["curve_mean"]
            ax.plot(range(len(curve)), curve, marker=".", label=case)
        for noisy_round in (4, 7):
            ax.axvline(noisy_round, color="grey", ls=":")
        ax.set_xlabel("round (dotted: corrupted edges); 0 = after Phase 0")
        ax.set_ylabel("core test accuracy (mean over seeds)")
        ax.set_title("Fig. 8 at CPU scale: noisy edges (CPM)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "noisy.png", dpi=110)
        plt.close(fig)


def write_report(summary: dict[str, Any], out: Path, paper: dict[str, float]) -> None:
    """README.md and the plots."""
    plot(summary, out)
    lines = [HEADER, f"Reporting seeds: {summary['seeds']}.", ""]
    if "lagged" in summary:
        lines += [*lag_section(summary["lagged"], paper), "![lagged](lagged.png)", ""]
    if "noisy" in summary:
        calibration = json.loads((out / "calibration.json").read_text())
        lines += [*noisy_section(summary["noisy"], calibration), "![noisy](noisy.png)", ""]
    discussion = out / "discussion.md"
    if discussion.exists():
        lines += [discussion.read_text()]
    (out / "README.md").write_text("\n".join(lines))


if __name__ == "__main__":
    from reproduce_lagged_noisy import PAPER

    write_report(json.loads((OUT / "summary.json").read_text()), OUT, PAPER)
    sys.exit(0)
