"""What ``flwr run`` spends packing this app, with and without the launcher's staged copy.

``flwr run APP`` builds the app's FAB from every file below APP (Flower's ``collect_files``
walks and resolves them all, then filters). With the README's set-up the ``.venv`` lives in the
app directory, so that walk dominates. ``python -m edgekd.launch`` first copies what can go
into the FAB to a staging directory (:func:`edgekd.launch.stage_app`) and packs that instead.

Each repeat, in one process: (a) Flower's ``build_fab_from_disk(ROOT)``; (b) ``stage_app``
into a fresh temporary directory plus ``build_fab_from_disk`` of it. Both FABs are compared
member by member (``.info`` metadata aside).

    python benchmarks/fab_staging.py --repeats 3     # writes benchmarks/fab_staging.json
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

from common import HERE, ROOT, machine, summary, today, write_json


def _members(fab: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(fab)) as archive:
        return {n: archive.read(n) for n in archive.namelist() if not n.startswith(".info/")}


def main(argv: list[str] | None = None) -> int:
    """Time both ways of packing ROOT; write ``fab_staging.json``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "fab_staging.json")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", DeprecationWarning)  # pathspec's "gitwildmatch" notice
    from flwr.cli.build import build_fab_from_disk

    from edgekd.launch import stage_app

    walked = sum(len(files) for _, _, files in os.walk(ROOT, followlinks=False))
    direct, staged, same = [], [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        fab_direct = build_fab_from_disk(ROOT)
        direct.append(time.perf_counter() - started)
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            copy = stage_app(ROOT, Path(tmp) / "app")
            fab_staged = build_fab_from_disk(copy)
            staged.append(time.perf_counter() - started)
            copied = sum(len(files) for _, _, files in os.walk(copy))
        same.append(_members(fab_direct) == _members(fab_staged))
    result = {
        "command": "python benchmarks/fab_staging.py " + " ".join(sys.argv[1:]),
        "date": today(),
        "machine": machine(),
        "files_below_app": walked,
        "files_staged": copied,
        "fab_members": len(_members(fab_direct)),
        "direct_s": summary(direct),
        "staged_s": summary(staged),
        "speedup": summary([d / s for d, s in zip(direct, staged, strict=True)]),
        "same_fab": all(same),
    }
    write_json(args.out, result)
    print(
        f"{walked} files below the app, {copied} staged; direct {result['direct_s']['median']:.2f}"
        f" s, staged {result['staged_s']['median']:.2f} s; same FAB: {result['same_fab']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
