"""What controls forgetting in 9 + 1 incremental learning? A sweep on calibration seeds.

Paper: K. Zhao, Y. Chen and M. Zhao, "Enabling Deep Learning on Edge Devices through Filter
Pruning and Knowledge Transfer", 2022, https://arxiv.org/abs/2201.10947 (Table 4).

The edge holds images of its new class only (as in the paper), so nothing in the loss bounds the
new output on old-class images: the label term ``lambda3 J3`` pushes it up on every input the
edge sees, while ``J1`` (the teacher's old logits) and ``J_b`` (its block maps) only hold the
old outputs and features in place on those same images. This script measures how the balance
of the terms and the length of the transfer trade new-class accuracy against old-class
retention, with and without the teacher, on calibration seeds that are never reporting seeds.
Every point is the reproduction's own Flower job (``simulations/prune-kt/base.toml`` +
``nine-plus-one.toml``, ``python -m edgekd.local``) with ``pk-transfer-epochs`` and
``pk-lambdas`` overridden; the cloud's teacher and student are trained once per seed
(``cache-dir``) and shared by every point.

    python scripts/sweep_prune_kt.py                 # writes results/prune_kt/sweep.json
    python scripts/sweep_prune_kt.py --report-only   # the table from sweep.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from repro_common import RunProgress, pct, run_compact, run_jobs, table_parser
from reproduce_prune_kt import (
    NPZ,
    PROFILES,
    Central,
    central_data,
    central_teacher,
    compact_incremental,
)

EPOCHS = (1, 3)
LAMBDAS = ("1,1,1", "1,1,0.3", "1,1,0.1", "1,0,1", "1,0,0.3", "1,0,0.1", "10,0,0.3", "1,1,0.03")
# (transfer epochs, lambdas, transfer lr, dependent student); lr 0.05 = the profile's
POINTS: tuple[tuple[int, str, float, bool], ...] = (
    *(
        (3, lam, lr, dep)
        for dep in (True, False)
        for lr in (0.01, 0.05)
        for lam in ("1,1,1", "1,1,0.3", "1,0,1")
        if dep or lr != 0.05
    ),
    *((e, lam, 0.05, False) for e in EPOCHS for lam in LAMBDAS),
)
# unseen classes: (transfer epochs, transfer lr, lambda1, lambda2)
UNSEEN = (
    (3, 0.05, 1.0, 1.0),
    (10, 0.05, 1.0, 1.0),
    (3, 0.2, 1.0, 1.0),
    (3, 0.05, 10.0, 1.0),
    (10, 0.2, 1.0, 1.0),
    (3, 0.05, 1.0, 0.0),
)


def point_name(epochs: int, lambdas: str, lr: float = 0.05, dependent: bool = False) -> str:
    """The compact name of one sweep point."""
    name = f"e{epochs}-l{lambdas.replace(',', '_')}"
    return name + (f"-lr{lr:g}" if lr != 0.05 else "") + ("-dep" if dependent else "")


def summarise(runs: dict[tuple[str, int], dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Per point: old / new / mean accuracy with and without KT, averaged over seeds."""
    points = []
    for epochs, lambdas, lr, dependent in POINTS:
        name = point_name(epochs, lambdas, lr, dependent)
        got = [runs[(name, s)] for s in seeds if (name, s) in runs]
        if not got:
            continue
        row: dict[str, Any] = {
            "epochs": epochs,
            "lambdas": lambdas,
            "lr": lr,
            "dependent_student": dependent,
            "seeds": len(got),
        }
        for case in ("before", "with_kt", "without_kt"):
            for key in ("old_acc", "new_acc", "mean_acc"):
                row[f"{case}_{key}"] = statistics.fmean(r[case][key] for r in got)
        points.append(row)
    return {
        "calibration_seeds": seeds,
        "points": points,
        "setup": {
            "flower": "simulations/prune-kt/base.toml + nine-plus-one.toml via python -m "
            "edgekd.local, pk-transfer-epochs and pk-lambdas overridden",
            "accuracy": "old = the 9 old classes' test images, new = class 9's, mean = all",
        },
    }


def table(summary: dict[str, Any]) -> list[str]:
    """The sweep as a Markdown table."""
    lines = [
        f"Calibration seeds {summary['calibration_seeds']} (never reporting seeds). "
        "Old / new test accuracy (%) after the transfer.",
        "",
        "| student | transfer epochs | lr | λ1, λ2, λ3 | with KT: old | with KT: new "
        "| without KT: old | without KT: new |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in summary["points"]:
        lines.append(
            f"| {'dependent' if p['dependent_student'] else 'independent'} | {p['epochs']} | "
            f"{p['lr']:g} | {p['lambdas']} | {pct(p['with_kt_old_acc'])} | "
            f"{pct(p['with_kt_new_acc'])} | {pct(p['without_kt_old_acc'])} | "
            f"{pct(p['without_kt_new_acc'])} |"
        )
    return lines


def unseen_sweep(seed: int, npz: str, out: Path) -> dict[str, Any]:
    """The unseen-classes task of the reproduction on one calibration seed, one teacher and
    one 2-class student, every point of ``UNSEEN`` transferring from a copy of the student."""
    import copy

    import torch
    from reproduce_prune_kt import _accuracy

    from edgekd.prune_kt_training import edge_specs, train_pruned, transfer
    from edgekd.seeds import derive_seed

    path = out / f"unseen-seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    s = Central()
    data = central_data(seed, npz, s)
    x, y, xt, yt, schedule = data["x"], data["y"], data["xt"], data["yt"], data["schedule"]
    teacher = central_teacher(seed, data, s)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    specs, _ = edge_specs(teacher, x[order[: s.stat_images]], (s.unseen_threshold,))
    labelled = [(2 * seed) % 10, (2 * seed + 1) % 10]
    seen, seen_test = torch.isin(y, torch.tensor(labelled)), torch.isin(yt, torch.tensor(labelled))
    student = train_pruned(
        specs[s.unseen_threshold],
        10,
        x[seen],
        y[seen],
        schedule(s.student_epochs, s.lr, "pk-student", 1),
        init_seed=derive_seed("pk-init", seed, member=1),
        progress="labelled",
    )
    test = (xt[~seen_test], yt[~seen_test])
    rows = []
    for epochs, lr, l1, l2 in UNSEEN:
        model = copy.deepcopy(student)
        transfer(
            model,
            teacher,
            x[~seen],
            None,
            schedule(epochs, lr, "pk-edge"),
            lambdas=(l1, l2, 0.0),
            progress="unseen KT",
        )
        rows.append(
            {
                "epochs": epochs,
                "lr": lr,
                "lambda1": l1,
                "lambda2": l2,
                "with_kt_acc": _accuracy(model, *test),
            }
        )
        print(rows[-1], flush=True)
    result = {
        "seed": seed,
        "labelled": labelled,
        "teacher_acc": _accuracy(teacher, *test),
        "independent_acc": _accuracy(student, *test),
        "points": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result) + "\n")
    return result


def main() -> int:
    """Run the missing points, then write sweep.json and print the table."""
    parser = table_parser(__doc__, "prune_kt", seeds=(100,), workers=1)
    parser.add_argument("--npz", default=NPZ)
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "edgekd" / "pk"))
    parser.add_argument("--part", choices=["incremental", "unseen"], default="incremental")
    args = parser.parse_args()
    if args.part == "unseen":
        results = [unseen_sweep(seed, args.npz, args.out / "sweep") for seed in args.seeds]
        (args.out / "sweep_unseen.json").write_text(json.dumps(results, indent=2) + "\n")
        return 0
    out: Path = args.out / "sweep"
    extra_base = [f"npz-path='{args.npz}'", f"cache-dir='{args.cache_dir}'"]
    profiles = [PROFILES / "base.toml", PROFILES / "nine-plus-one.toml"]
    points = {point_name(*point): point for point in POINTS}

    def run(name: str, seed: int, progress: RunProgress) -> dict[str, Any]:
        epochs, lambdas, lr, dependent = points[name]
        extra = [
            *extra_base,
            f"pk-transfer-epochs={epochs}",
            f"pk-lambdas='{lambdas}'",
            f"pk-transfer-lr={lr}",
            f"pk-dependent-student={str(dependent).lower()}",
        ]
        return run_compact(
            name, seed, profiles, out, compact_incremental, extra=extra, progress=progress
        )

    jobs = [(name, seed) for seed in args.seeds for name in points]
    if args.report_only:
        from repro_common import load_compacts

        runs = load_compacts(out)
    else:
        runs = run_jobs(jobs, args.workers, run)
    summary = summarise(runs, args.seeds)
    (args.out / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(table(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
