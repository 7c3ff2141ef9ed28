"""Tests for cloud-edge distillation with confidence offloading (strategy, client, protocol)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Message

from edgekd.clients.app import app as real_client_app
from edgekd.cloud_edge_training import (
    StudentLoss,
    distil_student,
    select_checkpoint,
    student_objective,
)
from edgekd.config import ExperimentConfig
from edgekd.experiment import client_data, experiment_split, load_bundle
from edgekd.inprocess import InProcessGrid
from edgekd.metrics import offload_mask
from edgekd.models import build_model
from edgekd.protocol.cloud_edge import ANSWER_TYPE, OFFLOAD_RECORD, OFFLOAD_TYPE, read_offload
from edgekd.runner import run_experiment
from edgekd.strategies.cloud_edge import CloudEdge, sweep_order
from edgekd.strategies.cloud_edge_config import CloudEdgeConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run_config(npz: Path, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "strategy": "cloud-edge",
        "dataset": "npz",
        "npz-path": str(npz),
        "model": "resnet8",
        "core-fraction": 0.25,
        "num-partitions": 2,
        "batch-size": 16,
        "output-dir": str(tmp_path),
        "ce-teacher-model": "resnet8",
        "ce-teacher-epochs": 2,
        "ce-distill-epochs": 2,
        "ce-loss": "nmd",
        "ce-manifold": "ltsa",
        "ce-manifold-dim": 3,
        "ce-neighbors": 6,
        "ce-sigmas": "0,0.3",
        **overrides,
    }


def test_select_checkpoint_rule() -> None:
    """Lowest ECE among accuracies within the tolerance of the best; ties go to the later."""
    acc = [0.50, 0.80, 0.79, 0.70, 0.80]
    ece = [0.01, 0.20, 0.05, 0.02, 0.20]
    assert select_checkpoint(acc, ece, 0.0) == 4  # 1 and 4 tie on ECE: the later
    assert select_checkpoint(acc, ece, 0.01) == 2
    assert select_checkpoint(acc, ece, 0.1) == 3  # 0.70 is exactly 0.80 - 0.1: included
    assert select_checkpoint(acc, ece, 1.0) == 0
    with pytest.raises(ValueError, match="tolerance"):
        select_checkpoint(acc, ece, 2.0)


def test_sweep_order_puts_cloud_only_first() -> None:
    """sigma = 1 runs first (it measures cloud-only accuracy), the rest ascending."""
    assert sweep_order((0.3, 0.0, 1.0, 0.1)) == [1.0, 0.0, 0.1, 0.3]


@pytest.mark.parametrize("name", ["ce", "st", "at", "fsp", "nmd"])
def test_student_objective_is_finite_and_spares_the_teacher(name: str) -> None:
    """Every loss gives a finite value with a student gradient and none in the teacher."""
    torch.manual_seed(0)
    student, teacher = build_model("resnet8", 4), build_model("resnet8", 4)
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    loss, logits = student_objective(
        StudentLoss(name=name, dim=2, neighbors=4), student, teacher, x, y
    )
    loss.backward()
    assert torch.isfinite(loss) and logits.shape == (6, 4)
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_round_trip_offload_figures_match_a_hand_count(tiny_npz: Path, tmp_path: Path) -> None:
    """The recorded offload figures equal a hand count with the same student and teacher.

    Prepare: a cloud-edge run on the tiny npz (2 edges of 60 images, core 40) with NMD-LTSA.
    Execute: the strategy on the in-process grid with the real ClientApp (real messages).
    Assert: for each sigma and edge, the offloaded count, bytes, edge/cloud/system accuracy
    equal those computed here from the student that was sent and the cloud's teacher; only
    the offloaded samples travel, as the edge's raw uint8 pixels; sigma = 0 sends nothing
    and its system accuracy is the edge's; sigma = 1 sends everything (cloud-only accuracy).
    """
    # an untrained teacher, so that cloud and edge answers differ and the counts tell them apart
    run_config = _run_config(tiny_npz, tmp_path, **{"ce-teacher-epochs": 0, "ce-sigmas": "0,0.05"})
    cfg = ExperimentConfig.from_run_config(run_config)
    strategy = CloudEdge(cfg, CloudEdgeConfig.from_run_config(run_config))
    grid = InProcessGrid(real_client_app, run_config, num_nodes=2)
    replies: list[Message] = []
    send_and_receive = grid.send_and_receive

    def recording(messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        got = list(send_and_receive(messages, timeout=timeout))
        replies.extend(got)
        return got

    grid.send_and_receive = recording  # type: ignore[method-assign]
    strategy.start(grid, initial_arrays=None)

    bundle, split = load_bundle(cfg), experiment_split(cfg)
    sent = [m for m in grid.delivered if m.metadata.message_type == OFFLOAD_TYPE]
    assert len(sent) == 2 * 3  # 2 edges x sigmas (1, 0, 0.05)
    state = sent[0].content.array_records["arrays"].to_torch_state_dict()
    assert all(torch.equal(state[k], v) for k, v in strategy.student.state_dict().items())
    rows = {row["sigma"]: row for row in strategy.sweep}
    assert list(rows) == [1.0, 0.0, 0.05]
    cloud_total = 0
    for sigma, row in rows.items():
        n = offloaded = edge_correct = system_correct = 0
        for pid in range(2):
            data = client_data(cfg, pid)
            with torch.no_grad():
                strategy.student.eval()
                probs = torch.softmax(strategy.student(data.x), 1)
                teacher_pred = strategy.teacher(data.x).argmax(1)
            mask = offload_mask(probs, sigma)
            edge_ok = probs.argmax(1) == data.y
            system_ok = torch.where(mask, teacher_pred == data.y, edge_ok)
            edge = row["edges"][str(pid)]
            assert edge["status"] == "ok"
            assert edge["offloaded"] == int(mask.sum())
            assert edge["offload-bytes"] == int(mask.sum()) * 8 * 8 * 3
            assert edge["edge-correct"] == int(edge_ok.sum())
            assert edge["edge-correct-kept"] + edge["cloud-correct"] == int(system_ok.sum())
            n, offloaded = n + len(data), offloaded + int(mask.sum())
            edge_correct += int(edge_ok.sum())
            system_correct += int(system_ok.sum())
            if sigma == 1.0:
                cloud_total += int((teacher_pred == data.y).sum())
        assert row["num-examples"] == n == 120
        assert row["offloaded"] == offloaded
        assert row["offload-rate"] == pytest.approx(offloaded / n)
        assert row["edge-acc"] == pytest.approx(edge_correct / n)
        assert row["system-acc"] == pytest.approx(system_correct / n)
        assert row["cloud-acc"] == pytest.approx(cloud_total / n)
    assert 0 < rows[0.05]["offloaded"] < 120  # the threshold splits the stream
    assert rows[1.0]["cloud-acc"] != rows[1.0]["edge-acc"]
    assert rows[0.0]["offloaded"] == 0 and rows[0.0]["system-acc"] == rows[0.0]["edge-acc"]
    assert rows[1.0]["offload-rate"] == 1.0 and rows[1.0]["system-acc"] == rows[1.0]["cloud-acc"]

    offload_replies = [m for m in replies if m.metadata.message_type == OFFLOAD_TYPE]
    assert len(offload_replies) == 6
    for reply in offload_replies:
        images, indices = read_offload(reply.content[OFFLOAD_RECORD])
        pid = int(reply.content["metrics"]["partition-id"])
        raw = bundle.x_train[split.partitions[pid]]
        assert images.dtype == np.uint8 and np.array_equal(images, raw[indices])
    answers = [m for m in grid.delivered if m.metadata.message_type == ANSWER_TYPE]
    sizes = [len(read_offload(r.content[OFFLOAD_RECORD])[1]) for r in offload_replies]
    assert len(answers) == sum(1 for size in sizes if size)


def test_run_experiment_records_the_sweep(tiny_npz: Path, tmp_path: Path) -> None:
    """Through the runner, 4 Dirichlet edges: cloud_edge.json holds the cloud figures and one
    row per sigma with every edge's figures; the edges' streams are the non-core images."""
    overrides = {
        "ce-loss": "st",
        "ce-sigmas": "0.2",
        "ce-distill-epochs": 1,
        "num-partitions": 4,
        "partitioner": "dirichlet",
        "dirichlet-alpha": 0.5,
    }
    run_config = _run_config(tiny_npz, tmp_path, **overrides)
    grid = InProcessGrid(real_client_app, run_config, num_nodes=4)
    run_experiment(grid, run_config, tmp_path / "run")
    report = json.loads((tmp_path / "run" / "cloud_edge.json").read_text())
    assert [row["sigma"] for row in report["sweep"]] == [1.0, 0.2]
    for row in report["sweep"]:
        assert sorted(row["edges"]) == ["0", "1", "2", "3"]
        assert all(edge["status"] == "ok" for edge in row["edges"].values())
        sizes = [edge["num-examples"] for edge in row["edges"].values()]
        assert sum(sizes) == row["num-examples"] == 120  # 160 images, core 25 %
        assert len(set(sizes)) > 1  # Dirichlet: unequal streams
    assert report["cloud"]["selected-epoch"] == 1
    assert 0 <= report["cloud"]["student-test-selected"]["ece"] <= 1
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [r["round"] for r in rows] == [1, 2]
    assert all("system-acc" in r and "test-acc" in r for r in rows)


def test_diverging_training_fails_loudly() -> None:
    """A non-finite student loss stops the distillation with an error naming the loss."""
    torch.manual_seed(0)
    student, teacher = build_model("resnet8", 4), build_model("resnet8", 4)
    x, y = torch.randn(8, 3, 8, 8), torch.tensor([0, 1, 2, 3] * 2)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="'st' student loss became nan in epoch 1"):
        distil_student(
            student,
            teacher,
            (x, y),
            (x, y),
            loss=StudentLoss(name="st"),
            epochs=1,
            batch_size=8,
            lr=0.1,
        )


def test_feature_losses_need_stage_features(tiny_npz: Path, tmp_path: Path) -> None:
    """A feature loss with a model without forward_stages fails at construction, naming it."""
    run_config = _run_config(tiny_npz, tmp_path, model="cnn", **{"ce-loss": "at"})
    cfg = ExperimentConfig.from_run_config(run_config)
    with pytest.raises(ValueError, match=r"ce-loss 'at' needs per-stage features.*student"):
        CloudEdge(cfg, CloudEdgeConfig.from_run_config(run_config))
    st_config = {**run_config, "ce-loss": "st"}
    CloudEdge(cfg, CloudEdgeConfig.from_run_config(st_config))  # ST needs logits only


def test_a_failing_edge_is_left_out_with_its_reason(tiny_npz: Path, tmp_path: Path) -> None:
    """An edge whose data is missing answers with errors: its reason is recorded and the
    figures come from the other edge alone."""
    run_config = _run_config(tiny_npz, tmp_path, **{"ce-loss": "st", "ce-sigmas": "0"})
    cfg = ExperimentConfig.from_run_config(run_config)
    strategy = CloudEdge(cfg, CloudEdgeConfig.from_run_config(run_config))
    broken = {"partition-id": 1, "num-partitions": 2, "npz-path": str(tmp_path / "none.npz")}
    grid = InProcessGrid(
        real_client_app,
        run_config,
        num_nodes=2,
        node_configs=[{"partition-id": 0, "num-partitions": 2}, broken],
    )
    strategy.start(grid, initial_arrays=None)
    for row in strategy.sweep:
        assert row["edges-ok"] == 1 and row["num-examples"] == len(client_data(cfg, 0))
        failed = [e for label, e in row["edges"].items() if label != "0"]
        assert len(failed) == 1 and "cannot load this node's data" in failed[0]["status"]
