"""Compare two runs' metrics.json value by value (timings excepted): are they digit-identical?

    python scripts/compare_runs.py RUN_A/metrics.json RUN_B/metrics.json [--json OUT --note TEXT]

Prints how many numeric per-round values were compared and how many differ (the first few
named); exits 1 when any differs or the runs have different numbers of rounds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

TIMING_MARKS = ("elapsed", "seconds", "-s")


def differences(a: list[dict], b: list[dict]) -> tuple[int, list[str]]:
    """(values compared, descriptions of the differing ones)."""
    compared, differ = 0, []
    for row_a, row_b in zip(a, b, strict=True):
        for key, value in row_a.items():
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if not numeric or any(mark in key for mark in TIMING_MARKS):
                continue
            compared += 1
            other = row_b.get(key)
            both_nan = isinstance(other, float) and math.isnan(value) and math.isnan(other)
            if other != value and not both_nan:
                differ.append(f"round {row_a.get('round')} {key}: {value} vs {other}")
    return compared, differ


def main() -> int:
    """Compare the two files named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--json", type=Path, help="also write the comparison to this file")
    parser.add_argument("--note", default="", help="what the two runs are (kept in --json)")
    args = parser.parse_args()
    a, b = (json.loads(p.read_text()) for p in (args.a, args.b))
    if len(a) != len(b):
        print(f"different numbers of rounds: {len(a)} vs {len(b)}")
        return 1
    compared, differ = differences(a, b)
    print("\n".join(differ[:5]))
    print(f"{compared} values compared, {len(differ)} differ; {len(a)} rounds")
    if args.json:
        record = {
            "note": args.note,
            "rounds": len(a),
            "compared": compared,
            "differ": len(differ),
            "identical": not differ,
            "test_acc": {"a": [r.get("test-acc") for r in a], "b": [r.get("test-acc") for r in b]},
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
