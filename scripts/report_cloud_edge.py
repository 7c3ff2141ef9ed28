"""Write results/cloud_edge/README.md and cloud_edge.png from the committed JSON.

Every number in the README is computed here from ``summary.json`` (itself computed by
``reproduce_cloud_edge.py`` from ``compact/``); nothing is typed by hand except the paper's
figures, which are quoted as such.

    python scripts/report_cloud_edge.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from repro_common import ROOT, bars_per_seed, paired_table, pct

OUT = ROOT / "results" / "cloud_edge"

PAPER_TABLE1 = {  # CIFAR-100, ResNet110 -> ResNet20, top-1 % (teacher 73.15)
    "ST": 63.40,
    "AT": 70.21,
    "FSP": 66.10,  # "Gram" in the paper
    "NMD-linear": 71.92,
}
PAPER_OFFLOAD_02 = {"NMD-linear": 0.29, "AT": 0.36, "FSP": 0.32}  # Fig. 5, sigma = 0.2

HEADER = """# Cloud-edge distillation (NMD, calibration, confidence offloading) at CPU scale

Paper: "An Efficient and Robust Cloud-Based Deep Learning With Knowledge Distillation"
(IEEE TCC 2023, https://doi.org/10.1109/TCC.2022.3160129): Table 1 (student accuracy per
loss), Table 2 (seconds per epoch), Fig. 5 (offloading at a threshold sigma).

Regenerate (missing runs are run, finished ones read back from `compact/`):

```bash
python scripts/reproduce_cloud_edge.py --workers 2    # 6 losses x 5 seeds
python scripts/reproduce_cloud_edge.py --report-only  # summary.json, this README, the plot
```

Protocol (`simulations/cloud-edge/base.toml` + one loss file): `../shared/data/cifar10_head.npz`
(5,170 train / 1,017 test CIFAR-10 images). The cloud (ServerApp) holds half of the training
images as its labelled core split, 20 % of which is held out as the validation split that picks
the checkpoint (lowest validation ECE among the epochs within 0.01 of the best validation
accuracy, Algorithm 1); 4 IID edges hold the other half as their local streams. The teacher is
a resnet20 trained 30 epochs once per seed (cached, so every loss of a seed distils the same
teacher); the student a resnet8 distilled 25 epochs (cosine from lr 0.1, batch 64, SGD
momentum 0.9). The paper's ResNet110 -> ResNet20 on CIFAR-100 is out of reach on 2 CPU cores;
this size keeps the table near an hour there. Losses: CE (labels only), ST (Hinton KD:
CE + t^2 KL, t = 4), AT (ST + attention transfer per stage, weight 1000), FSP ("Gram" in the
paper: ST + FSP matrices of consecutive stages, weight 50), NMD (ST + per-stage manifold
distances, lambda = 4, 2, 1, d = 8) with the linear (PCA) and the LTSA manifold (k = 12). The
loss weights are the baselines' published defaults and the profiles' values; none was tuned on
the test set. Engine: `python -m edgekd.local` (the ServerApp logic, the ClientApp and real
Flower messages in one process), 1 torch thread per run, two runs side by side, on a 2-core
CPU VM (no GPU was lent). Seconds per epoch depend on the machine's load: the CE and ST runs,
first made while other experiments shared the cores, were run again two at a time on an
otherwise idle machine, as every other loss was; their accuracies, ECEs and sweeps equalled the
first runs' to the last digit, so only the timings changed.

Claims are **paired differences** over the seeds (same seed = same split and same teacher)
with a 95 % t-interval; the verdict reads "A beats B": *holds* (interval above 0), *does not
hold* (below 0), *unresolved* (contains 0). One seed's accuracy on 1,017 test images has a
binomial standard error of about 0.015.
"""


def loss_table(summary: dict[str, Any]) -> list[str]:
    """Table 1 and Table 2 at CPU scale: one row per loss."""
    losses = summary["losses"]
    st_seconds = losses["ST"]["seconds_per_epoch"]["mean"] if "ST" in losses else None
    lines = [
        "## Students per loss (Table 1, Table 2)",
        "",
        "Mean ± std over the seeds, in %; ECE in %; seconds per distillation epoch on one thread "
        "(teacher forward included) and their ratio to ST. Paper: Table 1's CIFAR-100 accuracy.",
        "",
        "| loss | test acc (selected) | test acc (last) | ECE selected | ECE last | "
        "s / epoch | × ST | paper Table 1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, entry in losses.items():
        seconds = entry["seconds_per_epoch"]["mean"]
        ratio = f"{seconds / st_seconds:.2f}" if st_seconds else "n/a"
        paper = PAPER_TABLE1.get(name)
        lines.append(
            f"| {name} | {pct(entry['student_acc']['mean'])} ± "
            f"{pct(entry['student_acc']['std'])} | {pct(entry['student_acc_last']['mean'])} | "
            f"{pct(entry['ece_selected']['mean'])} | {pct(entry['ece_last']['mean'])} | "
            f"{seconds:.2f} | {ratio} | {'—' if paper is None else f'{paper:.2f}'} |"
        )
    teacher = next(iter(losses.values()))["teacher_acc"]
    lines += [
        "",
        f"Teacher (resnet20): {pct(teacher['mean'])} ± {pct(teacher['std'])} % test accuracy. "
        "NMD-linear / ST seconds per epoch, the mean of the per-seed ratios: "
        + (f"{ratio:.2f}" if (ratio := summary["seconds_per_epoch_ratio_nmd_st"]) else "n/a")
        + " (paper, Table 2: 88 s / 72 s = 1.22; goal ≤ 1.3).",
        "",
    ]
    return lines


def claims_table(summary: dict[str, Any]) -> list[str]:
    """The paired orderings of Table 1."""
    title = "Paper orderings (paired, selected-checkpoint test accuracy)"
    return [*paired_table(summary["paired"], title), ""]


def sweep_section(summary: dict[str, Any]) -> list[str]:
    """Fig. 5 and the offloading goal: the sigma sweep of NMD-linear, the rate at 0.2 per loss."""
    lines = [
        "## Confidence offloading (Fig. 5, Algorithm 1)",
        "",
        "An edge answers a sample itself unless the student's top-1 − top-2 probability margin "
        "is below sigma; then the sample travels (as uint8) to the cloud's teacher. Offload rate "
        "= fraction sent (1 − Eq. 35's recall rate); accuracies on the edges' 2,585 stream "
        "images, mean over seeds, in %. Recovered = (system − edge) / (cloud − edge), the share "
        "of the edge-to-cloud gap the offloading closes.",
        "",
        "| sigma | offload rate | edge only | cloud only | system | recovered |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in summary["sigma_sweep"]:
        lines.append(
            f"| {row['sigma']:g} | {pct(row['offload_rate'])} | {pct(row['edge_acc'])} | "
            f"{pct(row['cloud_acc'])} | {pct(row['system_acc'])} | "
            f"{pct(row.get('recovered'))} |"
        )
    goal = summary["offload_goal"]
    verdict = "met" if goal["met"] else "not met"
    lines += [
        "",
        f"Goal (at an offload rate ≤ 30 % the system recovers ≥ half of the gap): **{verdict}**; "
        f"best sigma with offload ≤ 30 %: {goal['sigma']} (offload {pct(goal['offload_rate'])} "
        f"%, recovered {pct(goal['recovered'])} %).",
        "",
        "Offload rate at sigma = 0.2 per loss (paper, Fig. 5, CIFAR-100: NMD 29 %, AT 36 %, "
        "Gram 32 %):",
        "",
        "| loss | offload at 0.2 | system at 0.2 | paper |",
        "| --- | --- | --- | --- |",
    ]
    for name, rows in summary["sigma_sweep_by_loss"].items():
        row = next(r for r in rows if r["sigma"] == 0.2)
        paper = PAPER_OFFLOAD_02.get(name)
        lines.append(
            f"| {name} | {pct(row['offload_rate'])} | {pct(row['system_acc'])} | "
            f"{'—' if paper is None else pct(paper)} |"
        )
    return [*lines, ""]


def plot(summary: dict[str, Any], out: Path) -> None:
    """cloud_edge.png: accuracy per loss (per seed) and system accuracy against offload rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = summary["losses"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    bars_per_seed(
        left,
        {name: entry["student_acc"]["per_seed"] for name, entry in losses.items()},
        "student test accuracy (selected checkpoint)",
        "Table 1 at CPU scale (resnet20 -> resnet8)",
    )
    for name, rows in summary["sigma_sweep_by_loss"].items():
        right.plot(
            [r["offload_rate"] for r in rows],
            [r["system_acc"] for r in rows],
            marker=".",
            label=name,
        )
    right.axvline(0.3, color="grey", ls=":")
    right.set_xlabel("offload rate (sigma = 0 ... 1)")
    right.set_ylabel("system accuracy on the edges' streams")
    right.set_title("Fig. 5 at CPU scale")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "cloud_edge.png", dpi=110)
    plt.close(fig)


def reading(summary: dict[str, Any]) -> list[str]:
    """What the table says, each figure read from the summary."""
    pairs = summary["paired"]
    needed = ("NMD-ST", "ST-CE", "teacher-CE")
    if not all(k in pairs for k in needed):
        return []
    nmd, st, lead = (pairs[k] for k in needed)
    losses = summary["losses"]
    lower = sum(e["ece_selected"]["mean"] < e["ece_last"]["mean"] for e in losses.values())
    ce_ece = losses["CE"]["ece_selected"]["mean"]
    worse = sum(e["ece_selected"]["mean"] > ce_ece for e in losses.values())
    half = (nmd["ci95"][1] - nmd["ci95"][0]) / 2
    room = lead["mean"] - st["mean"]
    ratio = summary["seconds_per_epoch_ratio_nmd_st"]
    goal = summary["offload_goal"]
    return [
        "## Reading",
        "",
        f"- **NMD against ST: {nmd['verdict']}** ({nmd['mean']:+.4f}, 95 % CI "
        f"[{nmd['ci95'][0]:+.4f}, {nmd['ci95'][1]:+.4f}], n = {nmd['n']}). The factor that "
        f"bounds it is measured here: the resnet20 teacher is only {100 * lead['mean']:.1f} "
        f"points ahead of a resnet8 trained on the labels alone (teacher − CE, "
        f"{lead['verdict']}), ST already takes {100 * st['mean']:.1f} of them (ST − CE, "
        f"{st['verdict']}), which leaves {100 * room:.1f} points for any feature term to add "
        "if a student does not pass its teacher, less than the interval's half-width of "
        f"{100 * half:.1f} points at this number of seeds. With 2,068 labelled images a deeper "
        "teacher barely beats a small student; the paper distils a ResNet110 (73.15 % on "
        "CIFAR-100) into a ResNet20.",
        f"- **Cost: NMD-linear / ST = {ratio:.2f}** seconds per distillation epoch (paper: "
        "1.22; goal ≤ 1.3). The manifold terms cost one N x N Gram matrix and one "
        "eigendecomposition (PCA) or one neighbourhood alignment (LTSA) per stage and batch.",
        *[
            f"- **{name}: does not hold** ({entry['mean']:+.4f}). Not explained by a "
            "measurement here; a hypothesis: the baseline's loss weight, taken from its paper "
            "and not tuned for a resnet8 on 2,068 images, outweighs the label term."
            for name, entry in pairs.items()
            if entry["verdict"] == "does not hold"
        ],
        f"- **Calibration**: the checkpoint rule (lowest validation ECE near the best "
        f"validation accuracy) gives a lower mean test ECE than the last epoch for {lower} of "
        f"{len(losses)} losses; {worse} of the {len(losses) - 1} distilled students have a "
        "higher selected ECE than the label-trained CE student.",
        f"- **Offloading goal {'met' if goal['met'] else 'not met'}**: at sigma = "
        f"{goal['sigma']} the edges send {pct(goal['offload_rate'])} % of their samples and the "
        f"system closes {pct(goal['recovered'])} % of the edge-to-cloud gap. The gap itself is "
        "small for the same reason as above.",
        "",
    ]


def write_report(summary: dict[str, Any], out: Path) -> None:
    """README.md and the plot (only once every loss has all its seeds)."""
    lines = [HEADER, f"Seeds: {summary['seeds']}.", ""]
    if summary["missing"]:
        lines += [f"Not yet complete: {', '.join(summary['missing'])} (runs missing).", ""]
    else:
        plot(summary, out)
    if summary["losses"]:
        lines += loss_table(summary) + claims_table(summary) + reading(summary)
    if summary["sigma_sweep"]:
        lines += [*sweep_section(summary), "![cloud-edge](cloud_edge.png)", ""]
    discussion = out / "discussion.md"
    if discussion.exists():
        lines.append(discussion.read_text())
    (out / "README.md").write_text("\n".join(lines))


if __name__ == "__main__":
    write_report(json.loads((OUT / "summary.json").read_text()), OUT)
    sys.exit(0)
