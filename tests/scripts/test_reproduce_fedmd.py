"""scripts/reproduce_fedmd.py: paired differences per alpha and test, and the generated README."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture
def fedmd() -> Iterator[ModuleType]:
    sys.path.insert(0, str(SCRIPTS))
    try:
        yield importlib.import_module("reproduce_fedmd")
    finally:
        sys.path.remove(str(SCRIPTS))
        for name in ("reproduce_fedmd", "report_fedmd", "repro_common"):
            sys.modules.pop(name, None)


def _run(private: list[float], uniform: list[float], agreement: float | None) -> dict[str, Any]:
    return {
        "private": private,
        "uniform": uniform,
        "private_std": 0.1,
        "uniform_std": 0.05,
        "uniform_by_model": {"cnn": uniform[-1], "resnet8": uniform[-1]},
        "bytes": [1000.0, 3000.0],
        "seconds": 60.0,
        "consensus-agreement": [agreement, agreement],
        "consensus-acc": [None, None],
        "client-acc-mean": [None, None],
        "client-acc-max": [None, None],
    }


def _runs(fedmd: ModuleType, seeds: list[int]) -> dict[tuple[str, int], dict[str, Any]]:
    """KD = CE + 0.01 * (seed + 1) on both tests; LKD = CE - 0.02 on the private test."""
    runs = {}
    for alpha in fedmd.ALPHAS:
        for seed in seeds:
            base = 0.5 + 0.01 * seed
            runs[(fedmd.run_name("CE", alpha), seed)] = _run([0.4, base], [0.2, base / 2], None)
            kd = base + 0.01 * (seed + 1)
            runs[(fedmd.run_name("KD", alpha), seed)] = _run(
                [0.4, kd], [0.2, base / 2 + 0.01 * (seed + 1)], 0.8
            )
            runs[(fedmd.run_name("LKD", alpha), seed)] = _run(
                [0.4, base - 0.02], [0.2, base / 2], 0.7
            )
            runs[(fedmd.run_name("FedAvg", alpha), seed)] = _run([0.3, 0.3], [0.3, 0.3], None)
    for r in fedmd.R_SWEEP:
        runs.setdefault(
            (fedmd.run_name("LKD", fedmd.ALPHAS[0], r), 0), _run([0.4, 0.45], [0.2, 0.21], 0.7)
        )
    return runs


def test_paired_differences_are_per_alpha_and_test_with_hand_computed_means(
    fedmd: ModuleType,
) -> None:
    seeds = [0, 1, 2, 3, 4]
    summary = fedmd.summarise(_runs(fedmd, seeds), seeds, 0)
    kd_ce = summary["paired"]["KD-CE alpha=0.1 private"]
    assert kd_ce["mean"] == pytest.approx(0.03)  # mean of 0.01 .. 0.05
    assert kd_ce["n"] == 5 and kd_ce["verdict"] == "holds" and not kd_ce["slides_claim"]
    lkd_ce = summary["paired"]["LKD-CE alpha=1.0 private"]
    assert lkd_ce["mean"] == pytest.approx(-0.02) and lkd_ce["slides_claim"]
    # constant differences have a zero-width interval: the verdict still follows the sign
    assert lkd_ce["verdict"] == "does not hold"
    assert summary["paired"]["KD-CE alpha=0.1 uniform"]["slides_claim"]
    assert summary["paired"]["CE-round0 alpha=0.1 private"]["mean"] == pytest.approx(0.12)
    assert summary["seeds"] == seeds
    block = summary["alpha=0.1"]
    assert block["KD"]["consensus_agreement"] == pytest.approx(0.8)
    assert block["CE"]["consensus_agreement"] is None
    assert block["KD"]["bytes_per_round"] == pytest.approx(2000.0)
    assert summary["r_sweep"]["runs"]["r=16"] == {"private": 0.45, "uniform": 0.21}


def test_report_writes_the_verdicts_computed_into_the_readme(
    fedmd: ModuleType, tmp_path: Path
) -> None:
    seeds = [0, 1, 2]
    summary = fedmd.summarise(_runs(fedmd, seeds), seeds, 0)
    report = importlib.import_module("report_fedmd")
    report.write_report(summary, tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "| LKD-CE alpha=0.1 private | -0.0200 |" in text
    assert json.loads((tmp_path / "summary.json").read_text())["seeds"] == seeds
    assert (tmp_path / "accuracy.png").stat().st_size > 0
