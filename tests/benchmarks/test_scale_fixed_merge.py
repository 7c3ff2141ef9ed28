"""benchmarks/scale_fixed.py --merge: re-measured points replace their old runs, the rest stay."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def scale_fixed() -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("scale_fixed")
    finally:
        sys.path.remove(str(BENCHMARKS))
        sys.modules.pop("scale_fixed", None)
        sys.modules.pop("common", None)


def _data(command: str, per_edge: int, runs: list[tuple[str, int]]) -> dict:
    return {
        "command": command,
        "date": "2026-12-01",
        "machine": {"load_average_at_start": [0.1, 0.1, 0.1]},
        "settings": {
            "per_edge": per_edge,
            "data": "d.npz",
            "model": "cnn",
            "partitioner": "fixed",
            "rounds": 3,
            "timeout_s": 420.0,
        },
        "runs": [{"strategy": s, "edges": e, "round_s_median": 1.0} for s, e in runs],
    }


def test_merge_keeps_other_points_and_records_sittings(scale_fixed: ModuleType) -> None:
    old = _data("old", 32, [("fedavg", 10), ("fedavg", 1000), ("fedavg", 10000)])
    new = {**_data("new", 32, []), "sittings": [{"command": "new", "rounds": 6}]}
    args = argparse.Namespace(strategies=["fedavg"], edges=[10, 1000], out=Path("x.json"))
    result = scale_fixed.merged(old, new, args)
    assert [(r["edges"], r["sitting"]) for r in result["runs"]] == [(10000, 0)]
    assert [s["command"] for s in result["sittings"]] == ["old", "new"]
    assert result["sittings"][0]["rounds"] == 3


def test_merge_refuses_other_settings(scale_fixed: ModuleType) -> None:
    old = _data("old", 16, [("fedavg", 10)])
    new = {**_data("new", 32, []), "sittings": []}
    args = argparse.Namespace(strategies=["fedavg"], edges=[10], out=Path("x.json"))
    with pytest.raises(SystemExit, match="per_edge"):
        scale_fixed.merged(old, new, args)
