"""Edge handlers of cloud-edge distillation: run the student, offload the unsure samples.

Paper: "An Efficient and Robust Cloud-Based Deep Learning With Knowledge Distillation",
https://doi.org/10.1109/TCC.2022.3160129 (Algorithm 1, lines 5-11).

``query.ce_offload`` runs the received student on this node's data stream and sends the cloud
the samples whose top-1 minus top-2 probability is below ``sigma`` (raw ``uint8`` pixels and
their positions); ``query.ce_answer`` scores the cloud's answers against the node's own labels.
Message format: :mod:`edgekd.protocol.cloud_edge`. The same handlers run in simulation and on
a ``flower-supernode``.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edgekd.clients.node import model_for_arrays, node_data, node_experiment, node_images
from edgekd.config import config_value
from edgekd.metrics import offload_mask
from edgekd.protocol.cloud_edge import (
    ANSWER,
    ANSWER_RECORD,
    ANSWERED,
    CLOUD_CORRECT,
    EDGE_CORRECT,
    EDGE_CORRECT_KEPT,
    OFFLOAD,
    OFFLOAD_BYTES,
    OFFLOAD_RECORD,
    OFFLOADED,
    SIGMA,
    offload_record,
    read_answer,
)
from edgekd.protocol.common import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, PARTITION_ID
from edgekd.training import predict_logits, set_torch_threads

__all__ = ["answer", "offload", "register"]


def offload(msg: Message, context: Context) -> Message:
    """``query.ce_offload``: classify the local stream, send the low-margin samples."""
    cfg, partition_id = node_experiment(context)
    set_torch_threads(cfg.client_threads)
    sigma = config_value(msg.content[CONFIG], SIGMA, 0.0, float)
    data = node_data(context, cfg, partition_id)
    state = msg.content[ARRAYS].to_torch_state_dict()
    student = model_for_arrays(cfg, state, data)
    student.load_state_dict(state, strict=True)
    probs = torch.softmax(predict_logits(student, data.x), dim=1)
    mask = offload_mask(probs, sigma)
    correct = probs.argmax(1) == data.y
    indices = np.flatnonzero(mask.numpy())
    images = node_images(context, cfg, partition_id)[indices]
    metrics = MetricRecord(
        {
            PARTITION_ID: partition_id,
            NUM_EXAMPLES: len(data),
            OFFLOADED: len(indices),
            OFFLOAD_BYTES: int(images.nbytes),
            EDGE_CORRECT: int(correct.sum()),
            EDGE_CORRECT_KEPT: int((correct & ~mask).sum()),
        }
    )
    content = RecordDict({OFFLOAD_RECORD: offload_record(images, indices), METRICS: metrics})
    return Message(content=content, reply_to=msg)


def answer(msg: Message, context: Context) -> Message:
    """``query.ce_answer``: count the cloud's correct answers on the offloaded samples."""
    cfg, partition_id = node_experiment(context)
    data = node_data(context, cfg, partition_id)
    indices, predictions = read_answer(msg.content[ANSWER_RECORD])
    if len(indices) and (indices.min() < 0 or indices.max() >= len(data)):
        raise ValueError(f"answer indices outside this node's stream of {len(data)} samples")
    labels = data.y.numpy()[indices]
    metrics = MetricRecord(
        {
            PARTITION_ID: partition_id,
            ANSWERED: len(indices),
            CLOUD_CORRECT: int((predictions == labels).sum()),
        }
    )
    return Message(content=RecordDict({METRICS: metrics}), reply_to=msg)


def register(app: ClientApp) -> None:
    """Register ``query.ce_offload`` and ``query.ce_answer`` on ``app``."""
    app.query(OFFLOAD)(offload)
    app.query(ANSWER)(answer)
