"""Tests for edgekd.progress: one log line per stage off a terminal, bars on one, ETA sums."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
import torch

from edgekd.distillation import distill, make_distill_pool, pool_logits
from edgekd.models import build_model
from edgekd.progress import eta_seconds, finish_time, progress_mode, stage
from edgekd.training import train_supervised


def _stage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("edgekd: ")]


def _tiny_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(40, 1, 8, 8, generator=generator), torch.arange(40) % 4


def test_log_mode_writes_one_line_per_stage_with_its_name(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, one_torch_thread: None
) -> None:
    """Off a terminal, a training and a distillation each log exactly one line at their end:
    the stage's name, steps done of total and the elapsed seconds (no line per batch)."""
    monkeypatch.setenv("EDGEKD_PROGRESS", "log")
    x, y = _tiny_data()
    model = build_model("cnn", 4, 1)
    with caplog.at_level(logging.INFO, logger="flwr"):
        train_supervised(model, x, y, epochs=3, batch_size=8, lr=0.01, progress="Phase 0: core")
        pool = make_distill_pool(x, y)
        distill(
            model,
            pool,
            pool_logits([build_model("cnn", 4, 1)], pool),
            epochs=2,
            batch_size=16,
            lr=0.01,
            temperature=4.0,
            progress="distillation (round 7)",
        )
    lines = _stage_lines(caplog)
    assert len(lines) == 2
    assert lines[0].startswith("edgekd: Phase 0: core: 15/15 batches in ")
    assert lines[1].startswith("edgekd: distillation (round 7): 6/6 batches in ")
    assert all(line.endswith("s") for line in lines)


def test_off_mode_is_silent_and_bad_mode_is_refused(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EDGEKD_PROGRESS=off writes nothing; an unknown mode is an error naming the variable."""
    monkeypatch.setenv("EDGEKD_PROGRESS", "off")
    with caplog.at_level(logging.INFO, logger="flwr"), stage("quiet", total=3) as bar:
        bar.advance(3)
    assert _stage_lines(caplog) == []
    monkeypatch.setenv("EDGEKD_PROGRESS", "loud")
    with pytest.raises(ValueError, match="EDGEKD_PROGRESS must be one of bar, log, off"):
        progress_mode()


def test_mode_follows_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without EDGEKD_PROGRESS: a bar when standard error is a TTY, log lines otherwise."""
    monkeypatch.delenv("EDGEKD_PROGRESS", raising=False)
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert progress_mode() == "bar"
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert progress_mode() == "log"


def test_bar_mode_nests_stages_and_still_logs_their_end(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a terminal, nested stages share one live display, closed with the outer stage."""
    monkeypatch.setenv("EDGEKD_PROGRESS", "bar")
    from edgekd import progress

    with caplog.at_level(logging.INFO, logger="flwr"), stage("rounds", total=2) as rounds:
        for _ in range(2):
            with stage("inner", total=4) as inner:
                inner.advance(4)
            rounds.advance()
        assert progress._Bars._progress is not None
    assert progress._Bars._progress is None
    assert [line.split(":")[1].strip() for line in _stage_lines(caplog)] == [
        "inner",
        "inner",
        "rounds",
    ]


def test_eta_on_hand_computed_values() -> None:
    """2 of 10 runs done in 30 s: 8 left at 15 s each = 120 s; 60 s with 2 workers."""
    assert eta_seconds(2, 10, 30.0) == pytest.approx(120.0)
    assert eta_seconds(2, 10, 30.0, parallel=2) == pytest.approx(60.0)
    assert eta_seconds(3, 4, 9.0) == pytest.approx(3.0)
    assert eta_seconds(0, 10, 5.0) is None
    assert eta_seconds(10, 10, 50.0) == 0.0
    with pytest.raises(ValueError, match="parallel >= 1"):
        eta_seconds(1, 2, 3.0, parallel=0)


def test_finish_time_adds_the_eta_to_now() -> None:
    """09:58:30 UTC plus 150 s is 10:01; an unknown ETA reads "?"."""
    now = datetime(2026, 12, 2, 9, 58, 30, tzinfo=UTC)
    assert finish_time(150.0, now=now) == "10:01"
    assert finish_time(None, now=now) == "?"
