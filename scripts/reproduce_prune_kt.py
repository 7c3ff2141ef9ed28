"""Regenerate results/prune_kt/: compression table, 9 + 1 incremental learning, unseen classes.

Paper: K. Zhao, Y. Chen and M. Zhao, "Enabling Deep Learning on Edge Devices through Filter
Pruning and Knowledge Transfer", 2022, https://arxiv.org/abs/2201.10947 (Tables 1-2, 4, 7).

Two jobs per seed on ``../shared/data/cifar10_head.npz``, each leaving a compact JSON in
``compact/`` (finished jobs are skipped, so the table can be built in several sittings):

* ``incremental`` runs **through Flower**: ``simulations/prune-kt/base.toml`` +
  ``nine-plus-one.toml`` executed by ``python -m edgekd.local`` (the ServerApp logic, the
  ClientApp and real Flower messages in one process). The cloud trains a resnet20 on classes
  0-8 of its core half, prunes it with P = 0.9 and trains the student from scratch; the edge
  learns class 9 by layer-wise transfer (with KT) and, as the baseline, by the same steps with
  the label term only (without KT), and reports old/new test accuracy.
* ``central`` runs in-process without Flower (this script, ``--job central``), with the
  library functions the strategy and the ClientApp use (:mod:`edgekd.prune_kt_training`,
  :mod:`edgekd.pruning`): a resnet20 teacher on all 10 classes; for P in {1.0, 0.9, 0.8, 0.7}
  the activation-pruned student and an L1-norm-pruned student of at most the same parameters
  (Li et al.), both trained from scratch (compression table); then the unseen-classes task:
  the P = 0.9 student trained on 2 labelled classes (seed s: classes 2s mod 10 and 2s + 1 mod
  10) learns the other 8 from unlabelled images by layer-wise transfer (J1 + J_b) or by
  FitNet-style hints (each group's last block regresses the teacher's through a 1x1
  convolution, no output term), scored on the 8 classes' test images (10-way).

``summary.json``: ``seeds``; ``teacher``; ``compression`` keyed "1.0" ... "0.7" (``params``,
``ratio``, ``test_acc_mean``, ``l1_params``, ``l1_test_acc_mean``, per-seed values);
``incremental.with_kt`` / ``without_kt`` / ``before`` (``old_acc_mean``, ``new_acc_mean``,
``mean_acc_mean`` = accuracy on all 10 classes' test images); ``unseen`` (``with_kt_acc_mean``,
``fitnet_acc_mean``, ``independent_acc_mean``); ``paired`` differences over seeds with 95 %
t-intervals. ``report_prune_kt.py`` writes the README from it.

Size (pilot, 1 torch thread, nice 19 on a loaded 2-core VM): resnet20 4.9 ms per training
image-epoch, a pruned one-block-per-group student 1.4 ms, a transfer step 2.7 ms. Per seed:
central ~ 15 x 5,170 x 4.9 ms (teacher) + 8 students x 8 x 5,170 x 1.4 ms + ~80 s (unseen)
~ 16.5 min; incremental ~ 3.5 min; 5 seeds on 2 workers ~ 50 min (less on idle cores).

    python scripts/reproduce_prune_kt.py --workers 2            # seeds 0-4
    python scripts/reproduce_prune_kt.py --report-only          # summary only
    python scripts/reproduce_prune_kt.py --seeds 0 --out /tmp/smoke --smoke   # minutes
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from repro_common import (
    ROOT,
    RunProgress,
    load_compacts,
    paired,
    run_compact,
    run_jobs,
    table_parser,
)

PROFILES = ROOT / "simulations" / "prune-kt"
NPZ = "../shared/data/cifar10_head.npz"
THRESHOLDS = (1.0, 0.9, 0.8, 0.7)
JOBS = ("central", "incremental")


@dataclass(frozen=True)
class Central:
    """Settings of the central job (the profiles hold the Flower job's)."""

    teacher_depth: int = 20
    teacher_epochs: int = 15
    student_epochs: int = 8
    lr: float = 0.1
    transfer_epochs: int = 3
    transfer_lr: float = 0.05
    batch_size: int = 64
    stat_images: int = 128
    unseen_threshold: float = 0.9


SMOKE = Central(teacher_epochs=1, student_epochs=1, transfer_epochs=1)
SMOKE_EXTRA = ["pk-teacher-epochs=1", "pk-student-epochs=1", "pk-transfer-epochs=1"]


def _accuracy(model: Any, x: Any, y: Any) -> float:
    from edgekd.training import predict_logits

    return float((predict_logits(model, x).argmax(1) == y).float().mean())


def _unseen(teacher: Any, spec: Any, data: dict[str, Any], seed: int, s: Central) -> dict:
    """The unseen-classes task on one seed (see the module docstring)."""
    import torch

    from edgekd.prune_kt_training import Schedule, fitnet_transfer, train_pruned, transfer
    from edgekd.seeds import derive_seed

    x, y, xt, yt = data["x"], data["y"], data["xt"], data["yt"]
    labelled = [(2 * seed) % 10, (2 * seed + 1) % 10]
    seen, seen_test = torch.isin(y, torch.tensor(labelled)), torch.isin(yt, torch.tensor(labelled))
    base_schedule = data["schedule"](s.student_epochs, s.lr, "pk-student", 1)
    student = train_pruned(
        spec,
        10,
        x[seen],
        y[seen],
        base_schedule,
        init_seed=derive_seed("pk-init", seed, member=1),
        progress="labelled",
    )
    kt_schedule = Schedule(
        s.transfer_epochs,
        s.batch_size,
        s.transfer_lr,
        0.9,
        5e-4,
        derive_seed("pk-edge", seed),
        data["augment"],
    )
    with_kt, fitnet = copy.deepcopy(student), copy.deepcopy(student)
    transfer(with_kt, teacher, x[~seen], None, kt_schedule, progress="unseen KT")
    fitnet_transfer(fitnet, teacher, x[~seen], kt_schedule)
    test = (xt[~seen_test], yt[~seen_test])
    return {
        "labelled": labelled,
        "independent_acc": _accuracy(student, *test),
        "with_kt_acc": _accuracy(with_kt, *test),
        "fitnet_acc": _accuracy(fitnet, *test),
        "teacher_acc": _accuracy(teacher, *test),
    }


def central_data(seed: int, npz: str, s: Central) -> dict[str, Any]:
    """The central jobs' tensors (``x, y, xt, yt``), ``augment`` and ``schedule(epochs, lr,
    stream, member)``, the seeded SGD schedule of one training step."""
    import torch

    from edgekd.datasets import default_padding, load_dataset, to_tensors
    from edgekd.prune_kt_training import Schedule
    from edgekd.seeds import derive_seed

    torch.set_num_threads(1)
    bundle = load_dataset("npz", npz_path=npz)
    x, y = to_tensors(bundle.x_train, bundle.y_train, bundle.mean, bundle.std)
    xt, yt = to_tensors(bundle.x_test, bundle.y_test, bundle.mean, bundle.std)
    size = bundle.image_size
    augment = (("augment", True), ("padding", default_padding(size)), ("flip", size >= 16))

    def schedule(epochs: int, lr: float, stream: str, member: int = 0) -> Schedule:
        return Schedule(
            epochs, s.batch_size, lr, 0.9, 5e-4, derive_seed(stream, seed, member=member), augment
        )

    return {"x": x, "y": y, "xt": xt, "yt": yt, "schedule": schedule, "augment": augment}


def central_teacher(seed: int, data: dict[str, Any], s: Central) -> Any:
    """The seed's resnet teacher on all 10 classes of the training images."""
    from edgekd.models.pruned_resnet import resnet_spec
    from edgekd.prune_kt_training import train_pruned
    from edgekd.seeds import derive_seed

    return train_pruned(
        resnet_spec(s.teacher_depth),
        10,
        data["x"],
        data["y"],
        data["schedule"](s.teacher_epochs, s.lr, "pk-teacher"),
        init_seed=derive_seed("pk-init", seed),
        progress="teacher",
    )


def central_job(seed: int, npz: str, s: Central) -> dict[str, Any]:
    """Compression table and unseen classes for one seed, in-process (1 torch thread)."""
    import numpy as np
    import torch

    from edgekd.models.pruned_resnet import count_resnet_parameters, resnet_spec
    from edgekd.prune_kt_training import edge_specs, train_pruned
    from edgekd.pruning import l1_norm_spec
    from edgekd.seeds import derive_seed

    data = central_data(seed, npz, s)
    x, y, xt, yt, schedule = data["x"], data["y"], data["xt"], data["yt"], data["schedule"]
    teacher = central_teacher(seed, data, s)
    t_params = count_resnet_parameters(resnet_spec(s.teacher_depth), 10)
    order = np.random.default_rng(derive_seed("pk-stats", seed)).permutation(len(y))
    specs, errors = edge_specs(teacher, x[torch.as_tensor(order[: s.stat_images])], THRESHOLDS)
    compression: dict[str, Any] = {}
    for threshold, spec in specs.items():
        params = count_resnet_parameters(spec, 10)
        l1 = l1_norm_spec(teacher, params, num_classes=10)
        row: dict[str, Any] = {
            "params": params,
            "ratio": t_params / params,
            "widths": spec.conv_widths(),
            "l1_widths": l1.conv_widths(),
            "l1_params": count_resnet_parameters(l1, 10),
        }
        for key, which in (("test_acc", spec), ("l1_test_acc", l1)):
            model = train_pruned(
                which,
                10,
                x,
                y,
                schedule(s.student_epochs, s.lr, "pk-student", round(1000 * threshold)),
                init_seed=derive_seed("pk-init", seed, member=1),
                progress=key,
            )
            row[key] = _accuracy(model, xt, yt)
        compression[f"{threshold:.1f}"] = row
    unseen = _unseen(teacher, specs[s.unseen_threshold], data, seed, s)
    return {
        "teacher": {"params": t_params, "test_acc": _accuracy(teacher, xt, yt)},
        "compression": compression,
        "errors": {f"{p:.1f}": e for p, e in errors.items()},
        "unseen": unseen,
        "settings": asdict(s),
    }


def run_central(seed: int, out: Path, npz: str, smoke: bool, progress: RunProgress) -> dict:
    """The central job of ``seed`` in a subprocess (1 thread) unless its compact JSON exists."""
    path = out / "compact" / f"central-seed{seed}.json"
    if path.exists():
        progress.skipped()
        return json.loads(path.read_text())
    started = time.monotonic()
    log_dir = out / "runs" / f"central-seed{seed}"
    log_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        __file__,
        "--job",
        "central",
        "--seeds",
        str(seed),
        "--out",
        str(out),
        "--npz",
        npz,
        *(["--smoke"] if smoke else []),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "EDGEKD_PROGRESS": "log"}
    with (log_dir / "log.txt").open("w") as log:
        code = subprocess.run(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False
        ).returncode
    if code != 0:
        raise RuntimeError(f"central seed {seed} failed (exit {code}); see {log_dir}/log.txt")
    progress.finished(f"central-seed{seed}", time.monotonic() - started)
    return json.loads(path.read_text())


def compact_incremental(run_dir: Path) -> dict[str, Any]:
    """The 9 + 1 figures of one Flower run (the edge's report and the cloud's)."""
    report = json.loads((run_dir / "prune_kt.json").read_text())
    (edge,) = report["edges"].values()
    if edge["status"] != "ok":
        raise RuntimeError(f"{run_dir.name}: the edge did not complete: {edge['status']}")
    n_old, n_new = edge["test-old"], edge["test-new"]
    figures: dict[str, Any] = {"test_old": n_old, "test_new": n_new}
    for name, suffix in (("before", "before"), ("with_kt", "after"), ("without_kt", "without-kt")):
        old, new = edge[f"old-acc-{suffix}"], edge[f"new-acc-{suffix}"]
        figures[name] = {
            "old_acc": old,
            "new_acc": new,
            "mean_acc": (old * n_old + new * n_new) / (n_old + n_new),
        }
    (student,) = report["cloud"]["students"].values()
    figures["cloud"] = {
        "teacher_test_acc_old": report["cloud"]["teacher"]["test-acc-old"],
        "student_test_acc_old": student["test-acc-old"],
        "student_params": student["params"],
        "ratio": student["ratio"],
    }
    figures["transfer_seconds"] = edge["transfer-seconds"]
    return figures


def _stats(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "per_seed": values,
    }


def _compression(central: list[dict[str, Any]]) -> dict[str, Any]:
    table = {}
    for key in (f"{p:.1f}" for p in THRESHOLDS):
        rows = [run["compression"][key] for run in central if key in run["compression"]]
        if len(rows) != len(central):
            continue
        acc, l1 = _stats([r["test_acc"] for r in rows]), _stats([r["l1_test_acc"] for r in rows])
        table[key] = {
            "params": statistics.fmean(r["params"] for r in rows),
            "ratio": statistics.fmean(r["ratio"] for r in rows),
            "test_acc_mean": acc["mean"],
            "test_acc_std": acc["std"],
            "l1_params": statistics.fmean(r["l1_params"] for r in rows),
            "l1_test_acc_mean": l1["mean"],
            "l1_test_acc_std": l1["std"],
            "per_seed": {
                "params": [r["params"] for r in rows],
                "test_acc": acc["per_seed"],
                "l1_test_acc": l1["per_seed"],
            },
        }
    return table


def _incremental(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"threshold": 0.9, "old_classes": 9, "new_class": 9}
    for name in ("before", "with_kt", "without_kt"):
        out[name] = {
            f"{k}_mean": statistics.fmean(r[name][k] for r in runs)
            for k in ("old_acc", "new_acc", "mean_acc")
        }
        out[name]["per_seed"] = [r[name] for r in runs]
    out["cloud"] = {k: statistics.fmean(r["cloud"][k] for r in runs) for k in runs[0]["cloud"]}
    return out


def _paired(central: list[dict], incremental: list[dict]) -> dict[str, Any]:
    pairs: dict[str, Any] = {}
    for key in (f"{p:.1f}" for p in THRESHOLDS):
        if central and all(key in run["compression"] for run in central):
            rows = [run["compression"][key] for run in central]
            pairs[f"activation-L1 (P={key})"] = paired(
                [r["test_acc"] for r in rows], [r["l1_test_acc"] for r in rows]
            )
    if central:
        unseen = [run["unseen"] for run in central]
        pairs["KT-FitNet (unseen)"] = paired(
            [u["with_kt_acc"] for u in unseen], [u["fitnet_acc"] for u in unseen]
        )
        pairs["KT-independent (unseen)"] = paired(
            [u["with_kt_acc"] for u in unseen], [u["independent_acc"] for u in unseen]
        )
    for key in ("old_acc", "new_acc", "mean_acc") if incremental else ():
        pairs[f"KT-withoutKT ({key})"] = paired(
            [r["with_kt"][key] for r in incremental], [r["without_kt"][key] for r in incremental]
        )
    return pairs


def summarise(runs: dict[tuple[str, int], dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """summary.json (see the module docstring); a part is left out until all seeds are in."""
    central = [runs[("central", s)] for s in seeds if ("central", s) in runs]
    central = central if len(central) == len(seeds) else []
    incremental = [runs[("incremental", s)] for s in seeds if ("incremental", s) in runs]
    incremental = incremental if len(incremental) == len(seeds) else []
    summary: dict[str, Any] = {
        "seeds": seeds,
        "missing": [
            name for name, got in (("central", central), ("incremental", incremental)) if not got
        ],
    }
    if central:
        summary["teacher"] = {
            "params": central[0]["teacher"]["params"],
            **_stats([c["teacher"]["test_acc"] for c in central]),
        }
        summary["compression"] = _compression(central)
        unseen = [c["unseen"] for c in central]
        summary["unseen"] = {
            f"{k}_mean": statistics.fmean(u[k] for u in unseen)
            for k in ("with_kt_acc", "fitnet_acc", "independent_acc", "teacher_acc")
        }
        summary["unseen"]["per_seed"] = unseen
    if incremental:
        summary["incremental"] = _incremental(incremental)
    summary["paired"] = _paired(central, incremental)
    summary["setup"] = {
        "data": f"{NPZ} (5,170 train / 1,017 test CIFAR-10)",
        "flower": "incremental: simulations/prune-kt/base.toml + nine-plus-one.toml via "
        "python -m edgekd.local (real Flower messages); central: in-process, no Flower",
        "central": asdict(Central()),
        "paired": "A-B = A minus B per seed; 95 % t-interval; verdict on the claim A > B",
    }
    return summary


def main() -> int:
    """Run what is missing, then write summary.json and the README."""
    parser = table_parser(__doc__, "prune_kt")
    parser.add_argument("--jobs", nargs="+", default=list(JOBS), choices=JOBS)
    parser.add_argument("--npz", default=NPZ)
    parser.add_argument("--smoke", action="store_true", help="1-epoch everything (a check)")
    parser.add_argument("--extra", nargs="*", default=[], help="key=value run-config overrides")
    parser.add_argument("--job", choices=["central"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    out: Path = args.out
    settings = SMOKE if args.smoke else Central()
    if args.job == "central":  # one seed, called by run_central in a subprocess
        result = {
            "name": "central",
            "seed": args.seeds[0],
            **central_job(args.seeds[0], args.npz, settings),
        }
        (out / "compact").mkdir(parents=True, exist_ok=True)
        path = out / "compact" / f"central-seed{args.seeds[0]}.json"
        path.write_text(json.dumps(result) + "\n")
        return 0
    extra = [f"npz-path='{args.npz}'", *(SMOKE_EXTRA if args.smoke else []), *args.extra]
    profiles = [PROFILES / "base.toml", PROFILES / "nine-plus-one.toml"]

    def run(name: str, seed: int, progress: RunProgress) -> dict[str, Any]:
        if name == "central":
            return run_central(seed, out, args.npz, args.smoke, progress)
        return run_compact(
            name, seed, profiles, out, compact_incremental, extra=extra, progress=progress
        )

    jobs = [(name, seed) for name in args.jobs for seed in args.seeds]
    runs = load_compacts(out) if args.report_only else run_jobs(jobs, args.workers, run)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summarise(runs, args.seeds), indent=2) + "\n")
    from report_prune_kt import write_report

    write_report(json.loads((out / "summary.json").read_text()), out)
    print(f"wrote {out / 'summary.json'} and {out / 'README.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
