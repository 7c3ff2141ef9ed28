"""Tests for the cloud-edge handlers (query.ce_offload, query.ce_answer) of the ClientApp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from edgekd.clients.app import app
from edgekd.config import ExperimentConfig
from edgekd.datasets import load_dataset, to_tensors
from edgekd.experiment import build_experiment_model, client_data
from edgekd.metrics import offload_mask
from edgekd.protocol.cloud_edge import (
    ANSWER_RECORD,
    ANSWER_TYPE,
    OFFLOAD_RECORD,
    OFFLOAD_TYPE,
    answer_record,
    read_offload,
)
from edgekd.training import predict_logits


def _context(npz: Path, node_config: dict[str, object]) -> Context:
    run_config = {
        "dataset": "npz",
        "npz-path": str(npz),
        "model": "resnet8",
        "num-partitions": 2,
        "batch-size": 16,
    }
    return Context(
        run_id=1, node_id=11, node_config=node_config, state=RecordDict(), run_config=run_config
    )


def _offload(context: Context, sigma: float, arrays: ArrayRecord) -> Message:
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"sigma": sigma})})
    return app(Message(content=content, dst_node_id=11, message_type=OFFLOAD_TYPE), context)


def test_own_data_node_offloads_its_own_pixels(tiny_npz: Path, tmp_path: Path) -> None:
    """A SuperNode with its own npz (node config npz-path) sends its own raw uint8 images."""
    rng = np.random.default_rng(1)
    own_x = rng.integers(0, 256, size=(30, 8, 8, 3)).astype(np.uint8)
    own_y = rng.integers(0, 4, size=30).astype(np.int64)
    own = tmp_path / "own.npz"
    np.savez(own, x_train=own_x, y_train=own_y, x_test=own_x[:5], y_test=own_y[:5])
    context = _context(tiny_npz, {"partition-id": 0, "num-partitions": 2, "npz-path": str(own)})
    cfg = ExperimentConfig.from_run_config(context.run_config)
    student = build_experiment_model(cfg, seed=0)
    reply = _offload(context, 0.3, ArrayRecord(student.state_dict()))
    assert not reply.has_error(), reply.error
    images, indices = read_offload(reply.content[OFFLOAD_RECORD])
    bundle = load_dataset("npz", npz_path=own)
    x, _ = to_tensors(bundle.x_train, bundle.y_train, bundle.mean, bundle.std)
    probs = torch.softmax(predict_logits(student, x), 1)
    expected = np.flatnonzero(offload_mask(probs, 0.3).numpy())
    assert indices.tolist() == expected.tolist()
    assert np.array_equal(images, own_x[expected])
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == 30 and metrics["offloaded"] == len(expected)
    assert metrics["offload-bytes"] == len(expected) * 8 * 8 * 3


def test_answer_counts_correct_cloud_predictions(tiny_npz: Path) -> None:
    """query.ce_answer scores the cloud's predictions against the node's labels; indices
    outside the node's stream are refused (Flower turns the exception into an error reply)."""
    context = _context(tiny_npz, {"partition-id": 1, "num-partitions": 2})
    cfg = ExperimentConfig.from_run_config(context.run_config)
    labels = client_data(cfg, 1).y.numpy()
    indices = np.array([0, 3, 5])
    predictions = labels[indices].copy()
    predictions[1] = (predictions[1] + 1) % 4  # one wrong answer
    content = RecordDict(
        {ANSWER_RECORD: answer_record(indices, predictions), "config": ConfigRecord({"sigma": 0.1})}
    )
    reply = app(Message(content=content, dst_node_id=11, message_type=ANSWER_TYPE), context)
    assert not reply.has_error(), reply.error
    assert reply.content["metrics"]["answered"] == 3
    assert reply.content["metrics"]["cloud-correct"] == 2
    bad = RecordDict({ANSWER_RECORD: answer_record(np.array([10_000]), np.array([0]))})
    with pytest.raises(ValueError, match="outside this node's stream of 80 samples"):
        app(Message(content=bad, dst_node_id=11, message_type=ANSWER_TYPE), context)
