"""Tests for the asynchronous cloned-distillation strategy with real Flower messages."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Message

from edgekd.clients.app import app as client_app
from edgekd.inprocess import InProcessGrid
from edgekd.runner import run_experiment
from edgekd.strategies.async_cloned_distillation import AsyncConfig, staleness_weight


def _run_config(tiny_npz: Path, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "strategy": "async-cloned-distillation",
        "dataset": "npz",
        "npz-path": str(tiny_npz),
        "core-fraction": 0.25,
        "num-partitions": 3,
        "num-server-rounds": 3,
        "cd-variant": "CPM",
        "cd-memory-size": 2,
        "cd-core-epochs": 1,
        "cd-distill-epochs": 1,
        "local-epochs": 1,
        "batch-size": 16,
        "async-round-wait": 0.0,
        "output-dir": str(tmp_path),
        **extra,
    }


def _late_first_edge(pulls: int) -> Any:
    """delay_pulls hook: the round-1 train message stays unanswered for ``pulls`` pulls."""

    def delay(message: Message) -> int:
        return pulls if message.metadata.group_id == "1" else 0

    return delay


def _run(tiny_npz: Path, tmp_path: Path, pulls: int, **extra: Any) -> tuple[list, list]:
    run_config = _run_config(tiny_npz, tmp_path, **extra)
    grid = InProcessGrid(client_app, run_config, num_nodes=3, delay_pulls=_late_first_edge(pulls))
    run_experiment(grid, run_config, tmp_path / "run")
    teachers = json.loads((tmp_path / "run" / "teachers.json").read_text())
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())
    return teachers, rows


def test_staleness_weight_by_hand() -> None:
    """Constant weighting is 1; polynomial is (1 + staleness)^-alpha."""
    assert staleness_weight(3, "constant", 0.5) == 1.0
    assert staleness_weight(0, "polynomial", 0.5) == 1.0
    assert math.isclose(staleness_weight(2, "polynomial", 0.5), 3**-0.5)
    with pytest.raises(ValueError, match="-1"):
        staleness_weight(-1, "constant", 0.5)


@pytest.mark.parametrize(
    ("key", "value"),
    [("async-late-policy", "maybe"), ("async-final-policy", "hope"), ("async-round-wait", -1.0)],
)
def test_bad_async_config_names_value(key: str, value: object) -> None:
    """Bad async settings raise a ValueError naming the key and value."""
    with pytest.raises(ValueError, match=key):
        AsyncConfig.from_run_config({key: value})


def test_late_reply_is_distilled_rounds_after_dispatch(tiny_npz: Path, tmp_path: Path) -> None:
    """A reply held back for 2 pulls is consumed in round 3 with staleness 2 and distilled."""
    teachers, rows = _run(tiny_npz, tmp_path, pulls=2)
    late = [t for t in teachers if t["edge"] == 0]
    assert len(late) == 1
    assert late[0]["dispatch-round"] == 1 and late[0]["consumed-round"] == 3
    assert late[0]["staleness"] == 2 and late[0]["status"] == "ok"
    on_time = [t for t in teachers if t["edge"] != 0]
    assert [t["staleness"] for t in on_time] == [0, 0]
    by_round = {r["round"]: r for r in rows}
    assert by_round[1]["used-count"] == 0  # the server moved on without edge 0
    assert by_round[1]["test-acc"] == by_round[0]["test-acc"]
    assert by_round[3]["used-count"] == 2 and by_round[3]["max-staleness"] == 2


def test_polynomial_weighting_applied_to_late_teacher(tiny_npz: Path, tmp_path: Path) -> None:
    """The late teacher's recorded weight is (1 + 2)^-1 under alpha = 1."""
    teachers, _ = _run(
        tiny_npz,
        tmp_path,
        pulls=2,
        **{"async-staleness-weighting": "polynomial", "async-staleness-alpha": 1.0},
    )
    late = next(t for t in teachers if t["edge"] == 0)
    assert math.isclose(late["teacher-weight"], 1 / 3)


def test_discard_policy_drops_late_reply(tiny_npz: Path, tmp_path: Path) -> None:
    """With async-late-policy=discard the late reply is recorded as discarded, not distilled."""
    teachers, rows = _run(tiny_npz, tmp_path, pulls=2, **{"async-late-policy": "discard"})
    late = next(t for t in teachers if t["edge"] == 0)
    assert late["status"] == "discarded: late" and late["staleness"] == 2
    assert {r["round"]: r for r in rows}[3]["used-count"] == 1


def test_outstanding_after_last_round_dropped(tiny_npz: Path, tmp_path: Path) -> None:
    """With final-policy drop, a reply still outstanding after the last round is reported."""
    teachers, rows = _run(
        tiny_npz,
        tmp_path,
        pulls=10**6,
        **{"async-final-policy": "drop", "num-server-rounds": 2},
    )
    dropped = [t for t in teachers if t["status"].startswith("dropped")]
    assert [t["edge"] for t in dropped] == [0]
    assert rows[-1]["phase"] == "drain" and rows[-1]["dropped-count"] == 1
    assert all(math.isfinite(r["test-acc"]) for r in rows)


def test_edge_deadline_abandons_reply(tiny_npz: Path, tmp_path: Path) -> None:
    """A reply past async-edge-deadline is abandoned and never distilled."""
    teachers, _ = _run(tiny_npz, tmp_path, pulls=10**6, **{"async-edge-deadline": 0.0})
    abandoned = [t for t in teachers if t["status"] == "abandoned: deadline"]
    assert 0 in [t["edge"] for t in abandoned]
    assert not [t for t in teachers if t["edge"] == 0 and t["status"] == "ok"]


def test_threaded_grid_real_sleep_makes_edge_late(tiny_npz: Path, tmp_path: Path) -> None:
    """A ClientApp that really sleeps (sim-lag-edges) is consumed after later rounds."""
    run_config = _run_config(
        tiny_npz,
        tmp_path,
        **{"sim-lag-edges": "0:3", "async-round-wait": 1.0, "async-poll-interval": 0.05},
    )
    grid = InProcessGrid(client_app, run_config, num_nodes=3, workers=2)
    try:
        run_experiment(grid, run_config, tmp_path / "run")
    finally:
        grid.shutdown()
    teachers = json.loads((tmp_path / "run" / "teachers.json").read_text())
    late = next(t for t in teachers if t["edge"] == 0)
    assert late["status"] == "ok" and late["staleness"] >= 1


class _CrashError(Exception):
    """Stands for the server dying right after a checkpoint."""


def test_outstanding_reply_is_checkpointed_and_re_sent_on_resume(
    tiny_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round 1's edge is late when the server dies after round 1's checkpoint: the checkpoint
    records its work as to be re-sent, and the resumed run re-sends it and uses the reply.

    Prepare: round 1's reply held back for 100 pulls; the checkpoint writer raising after
    writing round 1 (an in-process crash between rounds).
    Execute: run_experiment until the crash; run_experiment(resume=True) on a fresh grid.
    Assert: the checkpoint lists edge 0 of round 1 to be re-sent with its arrays; after the
    resume, teachers.json has edge 0 dispatched in round 1, consumed in round 2 (ok).
    """
    from edgekd import runner
    from edgekd.checkpoint import load_checkpoint, write_checkpoint

    def crash_after_round_1(run_dir: Path, payload: dict[str, Any]) -> Path:
        path = write_checkpoint(run_dir, payload)
        if payload["round"] == 1:
            raise _CrashError
        return path

    run_config = _run_config(tiny_npz, tmp_path)
    monkeypatch.setattr(runner, "write_checkpoint", crash_after_round_1)
    grid = InProcessGrid(client_app, run_config, num_nodes=3, delay_pulls=_late_first_edge(100))
    with pytest.raises(_CrashError):
        run_experiment(grid, run_config, tmp_path / "run")
    outstanding = load_checkpoint(tmp_path / "run")["strategy"]["to-be-re-sent"]
    assert [(o["server-round"], o["edge"]) for o in outstanding] == [(1, 0)]
    assert outstanding[0]["arrays"] and outstanding[0]["config"]["server-round"] == 1
    monkeypatch.setattr(runner, "write_checkpoint", write_checkpoint)
    grid = InProcessGrid(client_app, run_config, num_nodes=3)
    run_experiment(grid, run_config, tmp_path / "run", resume=True)
    teachers = json.loads((tmp_path / "run" / "teachers.json").read_text())
    edge0 = [t for t in teachers if t["edge"] == 0]
    assert [(t["dispatch-round"], t["consumed-round"], t["status"]) for t in edge0] == [
        (1, 2, "ok")
    ]
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [row["round"] for row in rows] == [0, 1, 2, 3]
