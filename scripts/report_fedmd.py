"""Write results/fedmd/README.md and accuracy.png from the committed JSON.

Every number is computed from ``summary.json`` (written by ``reproduce_fedmd.py`` from
``compact/``), ``ablation.json`` (``ablate_fedmd.py``) and ``engine_check.json``
(``check_engines.py``); only the slides' figures are typed, quoted as such.
``discussion.md``, when present, is appended as it is.

    python scripts/reproduce_fedmd.py --report-only
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from repro_common import paired_table

METHODS = ["CE", "KD", "LKD", "FedAvg"]
TESTS = ("private", "uniform")
SLIDES = {  # "Comparison with SOTA" slide: CIFAR-10 clients, CIFAR-100 transfer set
    "private": {"CE": 0.634, "KD": 0.631, "CRD": 0.655, "LPD": 0.391, "LKD": 0.674},
    "uniform": {"CE": 0.492, "KD": 0.551, "CRD": 0.530, "LPD": 0.183, "LKD": 0.544},
}

HEADER = """# FedMD latent distillation at CPU scale

Method: FedMD (Li & Wang, "FedMD: Heterogenous Federated Learning via Model Distillation",
2019; code https://github.com/diogenes0319/FedMD_clean) with the representation layer of the
"Latent Space Distillation" slides (LKD). Regenerate (missing runs are run, finished ones read
back from `compact/`):

```bash
python scripts/ablate_fedmd.py --seeds 100 101   # calibration seeds: why digesting hurts
python scripts/reproduce_fedmd.py --workers 2    # reporting seeds 0-4 -> compact/, summary.json
python scripts/check_engines.py --out results/fedmd --overrides "num-server-rounds=2" \\
    --profiles simulations/fedmd/base.toml simulations/fedmd/KD.toml \\
    --metrics private-acc-mean uniform-acc-mean
python scripts/reproduce_fedmd.py --report-only  # this README and accuracy.png
```

Claims are **paired differences** (same seed = same Dirichlet split, same transfer learning,
same alignment subsets) of the final mean client accuracy over the reporting seeds, with a
95 % t-interval; the verdict reads "A beats B": *holds* (interval above 0), *does not hold*
(below 0), *unresolved* (contains 0). Private test = each client's own label distribution drawn
from the test split; uniform = the whole test split (1,017 images).
"""


def _cell(entry: dict[str, Any] | None, test: str) -> str:
    if entry is None:
        return "—"
    return f"{entry[f'{test}_acc_mean']:.3f} ± {entry[f'{test}_acc_std']:.3f}"


def alpha_blocks(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``alpha=...`` blocks of the summary, in order."""
    return {k: v for k, v in summary.items() if k.startswith("alpha=")}


def method_tables(summary: dict[str, Any]) -> list[str]:
    """Final accuracy per method, alpha and test, beside the slides; after transfer; bytes."""
    blocks = alpha_blocks(summary)
    alphas = [k.split("=")[1] for k in blocks]
    lines = []
    for test in TESTS:
        lines += [
            f"**{test.capitalize()} test** (final round; mean ± std over seeds of the mean over "
            "6 clients)",
            "",
            "| method | " + " | ".join(f"α={a}" for a in alphas) + " | slides |",
            "| --- | " + " | ".join("---" for _ in alphas) + " | --- |",
        ]
        for method in [*METHODS, "CRD", "LPD"]:
            cells = [_cell(block.get(method), test) for block in blocks.values()]
            slide = SLIDES[test].get(method)
            lines.append(
                f"| {method} | " + " | ".join(cells) + f" | {'—' if slide is None else slide} |"
            )
        lines.append("")
    lines += [
        "**After transfer learning only** (round 0 of the same runs; private / uniform)",
        "",
        "| method | " + " | ".join(f"α={a}" for a in alphas) + " |",
        "| --- | " + " | ".join("---" for _ in alphas) + " |",
    ]
    for method in METHODS:
        cells = [
            f"{b[method]['after_transfer']['private']:.3f} / "
            f"{b[method]['after_transfer']['uniform']:.3f}"
            for b in blocks.values()
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "**Communication and consensus** (bytes per round, both directions, all clients; "
        "agreement = share of alignment images where a client's top-1 is the consensus's, "
        "mean over clients, rounds and seeds; run time of one run: KD and LKD load the "
        "transfer learning that the seed's CE run computed and cached)",
        "",
        "| method | α | bytes / round | consensus agreement | seconds / run |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, block in blocks.items():
        for method in METHODS:
            entry = block[method]
            agreement = entry.get("consensus_agreement")
            lines.append(
                f"| {method} | {key.split('=')[1]} | {entry['bytes_per_round'] / 1e3:,.0f} kB | "
                f"{'—' if agreement is None else f'{agreement:.3f}'} | {entry['seconds']:.0f} |"
            )
    return [*lines, ""]


def claims_table(summary: dict[str, Any]) -> list[str]:
    """Every paired difference: the slides' orderings, the other pairs, the rounds' gains."""
    pairs = summary["paired"]
    claimed = {k: v for k, v in pairs.items() if v.get("slides_claim")}
    rounds = {k: v for k, v in pairs.items() if "round0" in k}
    others = {k: v for k, v in pairs.items() if k not in claimed and k not in rounds}
    return [
        *paired_table(claimed, "The slides' orderings, paired"),
        "",
        *paired_table(others, "Every other pair"),
        "",
        *paired_table(rounds, "What the rounds add to transfer learning (final − round 0)"),
        "",
    ]


def ablation_section(ablation: dict[str, Any]) -> list[str]:
    """The calibration-seed ablation: one factor at a time, read against CE."""
    lines = [
        "## Why digesting the consensus lowered accuracy: the ablation",
        "",
        f"`python scripts/ablate_fedmd.py`, calibration seeds {ablation['calibration_seeds']} "
        f"(never reporting seeds), α = {ablation['alpha']}. Each setting is base + one method + "
        "the overrides shown; it is read against CE under the same transfer learning "
        '("− CE", mean over the calibration seeds). Consensus accuracy is measured only where '
        "the public pool is labelled (split).",
        "",
        "| setting | overrides | private | − CE | uniform | − CE | agreement | consensus acc "
        "| client acc (mean / max) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def fmt(value: float | None) -> str:
        return "—" if value is None else f"{value:.3f}"

    for name, e in ablation["settings"].items():
        overrides = ", ".join(f"{k}={v}" for k, v in e["overrides"].items()) or "—"
        lines.append(
            f"| {name} | {overrides} | {e['private_final']:.3f} | {e['private_minus_ce']:+.3f} | "
            f"{e['uniform_final']:.3f} | {e['uniform_minus_ce']:+.3f} | "
            f"{fmt(e['consensus-agreement'])} | {fmt(e['consensus-acc'])} | "
            f"{fmt(e['client-acc-mean'])} / {fmt(e['client-acc-max'])} |"
        )
    return [*lines, ""]


def engine_section(check: dict[str, Any]) -> list[str]:
    """Whether the in-process runner gave the simulation engine's numbers."""
    return [
        "## Engine",
        "",
        f"The table's runs use `python -m edgekd.local` (the ServerApp logic, the ClientApp and "
        f"real Flower messages in one process). `engine_check.json`: profiles "
        f"{check['profiles']}, overrides `{check['overrides']}`, seed {check['seed']}, metrics "
        f"{check.get('metrics', ['test-acc'])}, through Flower's simulation engine (Ray) and "
        f"through `edgekd.local`: identical = **{check['identical']}**.",
        "",
    ]


def reading_section(summary: dict[str, Any], ablation: dict[str, Any] | None) -> list[str]:
    """What the tables say, with every figure computed from the JSON."""
    pairs = summary["paired"]
    lines = ["## Reading", ""]
    for key, block in alpha_blocks(summary).items():
        claims = [(k, v) for k, v in pairs.items() if v.get("slides_claim") and key in k]
        held = [
            f"{k.split(' ')[0]} ({k.split(' ')[2]})" for k, v in claims if v["verdict"] == "holds"
        ]
        lines.append(
            f"- **{key}**: of the slides' {len(claims)} orderings, {len(held)} hold "
            f"({', '.join(held) or 'none'}). CE {block['CE']['private_acc_mean']:.3f} private / "
            f"{block['CE']['uniform_acc_mean']:.3f} uniform; KD "
            f"{block['KD']['private_acc_mean']:.3f} / {block['KD']['uniform_acc_mean']:.3f}; LKD "
            f"{block['LKD']['private_acc_mean']:.3f} / {block['LKD']['uniform_acc_mean']:.3f}; "
            f"FedAvg {block['FedAvg']['private_acc_mean']:.3f} / "
            f"{block['FedAvg']['uniform_acc_mean']:.3f}."
        )
    if ablation is not None:
        settings = ablation["settings"]
        best = max(
            (n for n in settings if not n.startswith("CE")),
            key=lambda n: settings[n]["uniform_minus_ce"],
        )
        worst = min(
            (n for n in settings if not n.startswith("CE")),
            key=lambda n: settings[n]["private_minus_ce"],
        )
        lines.append(
            f"- **Ablation.** The setting that helps the uniform test most against its CE is "
            f"{best} ({settings[best]['uniform_minus_ce']:+.3f}); the one that costs the private "
            f"test most is {worst} ({settings[worst]['private_minus_ce']:+.3f})."
        )
    sweep = summary.get("r_sweep", {})
    if sweep.get("runs"):
        values = ", ".join(
            f"{r}: {v['private']:.3f} / {v['uniform']:.3f}" for r, v in sweep["runs"].items()
        )
        lines.append(
            f"- **r sweep** ({sweep['method']}, α={sweep['alpha']}, one seed ({sweep['seed']}): "
            f"a direction, not a claim), private / uniform: {values}."
        )
    return [*lines, ""]


def plot(summary: dict[str, Any], path: Path) -> None:
    """Mean private/uniform accuracy per round, one panel per alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    blocks = alpha_blocks(summary)
    fig, axes = plt.subplots(1, len(blocks), figsize=(5.5 * len(blocks), 4), squeeze=False)
    for ax, (key, block) in zip(axes[0], blocks.items(), strict=True):
        for method in METHODS:
            stats = block[method]
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
        ax.set_title(f"Dirichlet {key.replace('alpha', 'α')}")
        ax.set_xlabel("round (0 = after transfer learning)")
        ax.set_ylabel("mean client accuracy (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(summary: dict[str, Any], out: Path) -> None:
    """summary.json, README.md and accuracy.png."""
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    setup = summary["setup"]
    ablation_path, check_path = out / "ablation.json", out / "engine_check.json"
    ablation = json.loads(ablation_path.read_text()) if ablation_path.exists() else None
    lines = [
        HEADER,
        f"Setup: {setup['data']}; {setup['clients']}; {setup['schedule']}. Accuracy: "
        f"{setup['accuracy']}. Reporting seeds: {summary['seeds']}. Made on a 2-core CPU VM "
        "(no GPU was lent), 1 torch thread per run, two runs side by side.",
        "",
        *method_tables(summary),
        "![accuracy per round](accuracy.png)",
        "",
        *claims_table(summary),
    ]
    if ablation is not None:
        lines += ablation_section(ablation)
    if check_path.exists():
        lines += engine_section(json.loads(check_path.read_text()))
    lines += reading_section(summary, ablation)
    plot(summary, out / "accuracy.png")
    discussion = out / "discussion.md"
    if discussion.exists():
        lines.append(discussion.read_text())
    (out / "README.md").write_text("\n".join(lines))
