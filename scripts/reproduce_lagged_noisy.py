"""Regenerate results/lagged_noisy/: Fig. 7 (a late edge) and Fig. 8 (noisy edges), paired.

Both experiments use the cloned-distillation table's protocol (simulations/cloned-distillation/
base.toml), so their references are that table's runs (results/cloned_distillation/compact/):

- Fig. 7: CEM for 2 rounds, strategy ``async-cloned-distillation``. *Normal* is the table's CEM
  after round 2, *late used* a run where edge 0 answers after edge 1 was distilled (its models
  distilled on arrival, staleness 2), *late omitted* the same run before the late reply arrived
  (discarding it leaves that core untouched). Two check runs on seed 0 (``lag-normal``,
  ``lag-late-omitted``) confirm both identities digit for digit. The control is the table's
  no-teacher control after round 2.
- Fig. 8: CPM with partitions 3 and 6 corrupted; the corruption and the detection threshold
  come from scripts/calibrate_noisy.py (calibration seeds, never the reporting ones). *Clean*
  is the table's CPM (a clean flagging run is CPM digit for digit), *no detection* flags only,
  *detection* rejects suspect edges.

Every run is executed by ``python -m edgekd.local`` (the lag runs with ``--workers 2``: the
ClientApp in background threads, so a late edge really sleeps while the server goes on);
finished runs leave a compact JSON in ``compact/`` and are skipped when started again.

    python scripts/reproduce_lagged_noisy.py --parallel 6     # seeds 0-4, lag and noisy
    python scripts/reproduce_lagged_noisy.py --report-only    # tables only
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from repro_common import (
    ROOT,
    RunProgress,
    compact_run,
    final_stats,
    load_compacts,
    paired,
    run_compact,
    run_jobs,
    table_parser,
)

CD = ROOT / "simulations" / "cloned-distillation"
LN = ROOT / "simulations" / "lagged-noisy"
TABLE = ROOT / "results" / "cloned_distillation" / "compact"
LAG = {"late-used": "lag-late-used", "late-used-polynomial": "lag-late-used-polynomial"}
LAG_CHECKS = {"normal": "lag-normal", "late-omitted": "lag-late-omitted"}
NOISY = {
    "no-detection": "noisy-no-detection",
    "detection": "noisy-detection",
    "exclude": "noisy-exclude",
}
TEACHER_KEYS = (
    "edge",
    "dispatch-round",
    "consumed-round",
    "staleness",
    "status",
    "teacher-weight",
    "teacher-acc-mean",
    "teacher-ensemble-acc",
    "core-acc-before",
    "core-acc-after",
)
PAPER = {"normal": 64.25, "late_used": 63.37, "late_omitted": 62.65}


def chain(name: str) -> list[Path]:
    """The profile files of a lag or noisy case, in order."""
    if name.startswith("lag-"):
        return [CD / "base.toml", CD / "CEM.toml", LN / "lag.toml", LN / f"{name}.toml"]
    return [CD / "base.toml", CD / "CPM.toml", LN / "noisy.toml", LN / f"{name}.toml"]


def compact_with_teachers(run_dir: Path) -> dict[str, Any]:
    """The compact run plus each teacher's record (``teachers.json``), when the run has one."""
    compact = compact_run(run_dir)
    teachers_path = run_dir / "teachers.json"
    if teachers_path.exists():
        compact["teachers"] = [
            {k: t[k] for k in TEACHER_KEYS if k in t} for t in json.loads(teachers_path.read_text())
        ]
    return compact


def run_one(
    name: str, seed: int, out: Path, extra: list[str], progress: RunProgress | None = None
) -> dict[str, Any]:
    """Run profile ``name`` with ``seed`` unless its compact JSON exists; the compact run."""
    workers = 2 if name.startswith("lag-") else 0
    return run_compact(
        name,
        seed,
        chain(name),
        out,
        compact_with_teachers,
        extra=extra,
        workers=workers,
        progress=progress,
    )


def check_calibration(out: Path) -> dict[str, Any]:
    """noisy.toml must carry the corruption and threshold that calibration.json chose."""
    calibration = json.loads((out / "calibration.json").read_text())
    profile = tomllib.loads((LN / "noisy.toml").read_text())
    expected = {
        "sim-noise-mode": calibration["chosen"]["mode"],
        "sim-noise-p": calibration["chosen"]["p"],
        "cd-detect-threshold": calibration["threshold"]["chosen"],
    }
    wrong = {k: (profile.get(k), v) for k, v in expected.items() if profile.get(k) != v}
    if wrong:
        raise SystemExit(f"simulations/lagged-noisy/noisy.toml disagrees with calibration: {wrong}")
    return calibration


def late_is_late(run: dict[str, Any]) -> bool:
    """Edge 0's reply was consumed after round 2 (staleness 2), edge 1's on time."""
    by_edge = {t["edge"]: t for t in run.get("teachers", [])}
    return by_edge.get(0, {}).get("staleness") == 2 and by_edge.get(1, {}).get("staleness") == 0


def table_run(name: str, seed: int) -> dict[str, Any]:
    """A compact run of the cloned-distillation table."""
    return json.loads((TABLE / f"{name}-seed{seed}.json").read_text())


def lag_summary(runs: dict[tuple[str, int], dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Fig. 7: per-case accuracies, paired orderings, the identity checks."""
    late = [runs[("lag-late-used", s)] for s in seeds]
    bad = [run["seed"] for run in late if not late_is_late(run)]
    if bad:
        raise SystemExit(f"lag runs where edge 0 was not late as designed: seeds {bad}")
    cases = {
        "normal": [table_run("CEM", s)["test_acc"][2] for s in seeds],
        "late_used": [run["test_acc"][-1] for run in late],
        "late_omitted": [run["test_acc"][2] for run in late],
        "late_used_polynomial": [
            runs[("lag-late-used-polynomial", s)]["test_acc"][-1] for s in seeds
        ],
        "control": [table_run("control", s)["test_acc"][2] for s in seeds],
    }
    checks = {}
    for case, name in LAG_CHECKS.items():
        check = runs.get((name, seeds[0]))
        derived = cases[case.replace("-", "_")][0]
        if check is not None:
            checks[name] = {
                "seed": seeds[0],
                "run": check["test_acc"][-1],
                "derived": derived,
                "identical": check["test_acc"][-1] == derived,
            }
    pairs = [
        ("normal", "late_used"),
        ("late_used", "late_omitted"),
        ("normal", "late_omitted"),
        ("late_used_polynomial", "late_used"),
    ]
    pairs += [(c, "control") for c in cases if c != "control"]
    staleness = [
        [t.get("staleness") for t in run["teachers"] if t.get("status") == "ok"] for run in late
    ]
    late_teacher = [next(t for t in run["teachers"] if t.get("staleness") == 2) for run in late]
    return {
        **{c: final_stats(v, seeds) for c, v in cases.items()},
        "late_teacher_minus_core": [
            t["teacher-acc-mean"] - t["core-acc-before"] for t in late_teacher
        ],
        "late_teacher_acc": [t["teacher-acc-mean"] for t in late_teacher],
        "paired": {f"{a}-{b}": paired(cases[a], cases[b]) for a, b in pairs},
        "checks": checks,
        "staleness": staleness,
        "curves": {"late_used": [run["test_acc"] for run in late]},
    }


def detection_counts(runs: list[dict[str, Any]], noisy_edges: set[int]) -> dict[str, Any]:
    """Suspect decisions against ground truth (the corrupted partitions) over every edge."""
    counts = {"tp": 0, "fn": 0, "fp": 0, "tn": 0}
    for run in runs:
        for edge, suspect in zip(run["edge"], run["suspect"], strict=True):
            corrupted = int(edge) in noisy_edges
            counts[("tp" if suspect else "fn") if corrupted else ("fp" if suspect else "tn")] += 1
    return {
        "detection_rate": counts["tp"] / max(1, counts["tp"] + counts["fn"]),
        "false_positive_rate": counts["fp"] / max(1, counts["fp"] + counts["tn"]),
        "detector_counts": counts,
    }


def noisy_summary(
    runs: dict[tuple[str, int], dict[str, Any]], seeds: list[int], calibration: dict[str, Any]
) -> dict[str, Any]:
    """Fig. 8: clean (the table's CPM), no detection, detection, control; paired; detector."""
    groups = {
        "clean": [table_run("CPM", s) for s in seeds],
        "no_detection": [runs[("noisy-no-detection", s)] for s in seeds],
        "detection": [runs[("noisy-detection", s)] for s in seeds],
        "control": [table_run("control", s) for s in seeds],
    }
    if all(("noisy-exclude", s) in runs for s in seeds):
        groups["exclude"] = [runs[("noisy-exclude", s)] for s in seeds]
    finals = {case: [run["test_acc"][-1] for run in group] for case, group in groups.items()}
    profile = tomllib.loads((LN / "noisy-no-detection.toml").read_text())
    noisy_edges = {int(e) for e in str(profile["sim-noisy-edges"]).split(",")}
    pairs = [("clean", "no_detection"), ("detection", "no_detection"), ("clean", "detection")]
    pairs += [(c, "control") for c in ("clean", "no_detection", "detection")]
    if "exclude" in groups:
        pairs += [
            ("exclude", "no_detection"),
            ("exclude", "detection"),
            ("clean", "exclude"),
            ("exclude", "control"),
        ]
    summary: dict[str, Any] = {
        case: final_stats(finals[case], seeds)
        | {
            "min_acc_mean": sum(min(r["test_acc"]) for r in group) / len(group),
            "curve_mean": [
                sum(v) / len(v) for v in zip(*(r["test_acc"] for r in group), strict=True)
            ],
        }
        for case, group in groups.items()
    }
    summary["detection"] |= detection_counts(
        groups["no_detection"] + groups["detection"], noisy_edges
    ) | {
        "counted_over": "every returned edge of the no-detection and detection runs of the "
        "reporting seeds; ground truth: partitions 3 and 6 are corrupted"
    }
    return {
        **summary,
        "paired": {f"{a}-{b}": paired(finals[a], finals[b]) for a, b in pairs},
        "damage": paired(finals["clean"], finals["no_detection"]),
        "recovery": paired(finals["detection"], finals["no_detection"]),
        **(
            {"recovery_exclude": paired(finals["exclude"], finals["no_detection"])}
            if "exclude" in finals
            else {}
        ),
        "corruption": calibration["chosen"],
        "threshold": calibration["threshold"]["chosen"],
        "calibration_seeds": calibration["calibration_seeds"],
    }


def main() -> int:
    """Run what is missing, then write summary.json, the README and the plots."""
    parser = table_parser(__doc__, "lagged_noisy", workers=None, cache=True)
    parser.add_argument("--parts", nargs="+", default=["lag", "noisy"], choices=["lag", "noisy"])
    parser.add_argument("--parallel", type=int, default=6)
    args = parser.parse_args()
    out: Path = args.out
    calibration = check_calibration(out) if "noisy" in args.parts else None
    jobs = []
    if "lag" in args.parts:
        # the late-used runs first: the checks and the polynomial runs reuse their edges' cache
        jobs += [("lag-late-used", s) for s in args.seeds]
        jobs += [(n, args.seeds[0]) for n in LAG_CHECKS.values()]
        jobs += [("lag-late-used-polynomial", s) for s in args.seeds]
    if "noisy" in args.parts:
        jobs += [(n, s) for s in args.seeds for n in NOISY.values()]
    if args.report_only:
        runs = load_compacts(out)
    else:
        extra = [f"cache-dir='{args.cache_dir}'"]
        runs = run_jobs(jobs, args.parallel, lambda n, s, p: run_one(n, s, out, extra, p))
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if "lag" in args.parts:
        summary["lagged"] = lag_summary(runs, args.seeds)
    if "noisy" in args.parts and calibration is not None:
        summary["noisy"] = noisy_summary(runs, args.seeds, calibration)
        summary["calibration_seeds"] = calibration["calibration_seeds"]
    summary["paired"] = {
        f"{part}/{name}": entry
        for part in ("lagged", "noisy")
        for name, entry in summary.get(part, {}).get("paired", {}).items()
    }
    summary["seeds"] = args.seeds
    summary["setup"] = {
        "data": "../shared/data/cifar10_head.npz (5,170 train / 1,017 test CIFAR-10)",
        "protocol": "simulations/cloned-distillation/base.toml (the cloned-distillation table's)",
        "engine": "python -m edgekd.local (in-process; results/cloned_distillation/"
        "engine_check.json)",
        "accuracy": "core test accuracy, as a fraction",
        "paired": "A-B = A minus B per seed; 95 % t-interval; verdict on the claim A > B",
    }
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    from report_lagged_noisy import write_report

    write_report(summary, out, PAPER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
