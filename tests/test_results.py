"""Tests for edgekd.results: the per-round CSV/JSON files and the accuracy plot."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from edgekd.results import RunRecorder, plot_accuracy


def test_rounds_merge_and_files_are_rewritten_every_round(tmp_path: Path) -> None:
    """Two writes to one round merge (later keys win); both files hold every round so far.

    Prepare: a recorder in a new directory.
    Execute: log round 1 twice (second write overrides one key), then round 0.
    Assert: metrics.json has rounds 0, 1 in order with the merged values after each write.
    """
    recorder = RunRecorder(tmp_path / "run")
    recorder.log_round(1, {"a": 1.0, "b": 2})
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == [
        {"round": 1, "a": 1.0, "b": 2}
    ]
    recorder.log_round(1, {"b": 3, "c": "ok"})
    recorder.log_round(0, {"a": 0.5})
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert rows == [{"round": 0, "a": 0.5}, {"round": 1, "a": 1.0, "b": 3, "c": "ok"}]


def test_csv_has_scalar_columns_only_in_first_seen_order(tmp_path: Path) -> None:
    """Lists and dicts go to JSON only; CSV columns are the scalar keys in first-seen order.

    Prepare: round 0 with a scalar; round 1 with a list, a dict, a string and a new scalar.
    Execute: log both rounds.
    Assert: CSV header round, x, status, y; the list/dict are in metrics.json only.
    """
    recorder = RunRecorder(tmp_path)
    recorder.log_round(0, {"x": 0.1})
    recorder.log_round(1, {"x": 0.2, "accs": [0.1, 0.2], "by": {"m": 1}, "status": "ok", "y": 3})
    with (tmp_path / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["round", "x", "status", "y"]
    assert rows[1] == {"round": "1", "x": "0.2", "status": "ok", "y": "3"}
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved[1]["accs"] == [0.1, 0.2] and saved[1]["by"] == {"m": 1}


def test_non_finite_values_and_arrays_become_json(tmp_path: Path) -> None:
    """NaN/inf become null, numpy values become plain numbers, dict keys become strings.

    Prepare: metrics with NaN, inf, a numpy array and an int-keyed dict.
    Execute: log_round and save_json.
    Assert: the files parse as strict JSON with null, lists and string keys.
    """
    recorder = RunRecorder(tmp_path)
    metrics = {"nan": math.nan, "inf": math.inf, "arr": np.array([1, 2]), "d": {3: math.nan}}
    recorder.log_round(2, metrics)
    path = recorder.save_json("extra.json", metrics)
    for text in ((tmp_path / "metrics.json").read_text(), path.read_text()):
        assert "NaN" not in text and "Infinity" not in text
    assert json.loads(path.read_text()) == {
        "nan": None,
        "inf": None,
        "arr": [1, 2],
        "d": {"3": None},
    }


def test_plot_draws_the_accuracy_keys_or_nothing(tmp_path: Path) -> None:
    """The plot draws the recorder's accuracy keys; with none of them present, no file.

    Prepare: one recorder with test-acc values, one with only other metrics.
    Execute: plot() on both; plot_accuracy with a custom key.
    Assert: a PNG for the first and for the custom key; None and no file for the second.
    """
    with_acc = RunRecorder(tmp_path / "a")
    with_acc.log_round(0, {"test-acc": 0.1})
    with_acc.log_round(1, {"test-acc": 0.4})
    png = with_acc.plot("title")
    assert png is not None and png.read_bytes().startswith(b"\x89PNG")
    without = RunRecorder(tmp_path / "b", accuracy_keys=("uniform-acc-mean",))
    without.log_round(0, {"test-acc": 0.1})
    assert without.plot() is None
    assert not (tmp_path / "b" / "accuracy.png").exists()
    custom = plot_accuracy([{"round": 0, "k": 0.5}], tmp_path / "k.png", keys=("k",))
    assert custom == tmp_path / "k.png" and custom.stat().st_size > 0
