"""Message format of cloud-edge distillation with confidence offloading.

Paper: "An Efficient and Robust Cloud-Based Deep Learning With Knowledge Distillation",
https://doi.org/10.1109/TCC.2022.3160129 (Algorithm 1, Eq. 33-34).

The ServerApp is the cloud; each edge ClientApp runs the distilled student on its own local
data stream (the node's data, in a fixed order) and sends the cloud only the samples it is not
confident about. One offloading exchange per threshold ``sigma``, in two messages:

1. ``query.ce_offload`` (:data:`OFFLOAD_TYPE`), cloud -> edge:

   - ``content["arrays"]``: the student's ``state_dict`` (the edge's model);
   - ``content["config"]``: ``sigma`` (float in ``[0, 1]``).

   Reply, edge -> cloud:

   - ``content["offload"]``: :class:`flwr.app.ArrayRecord` with ``images``, the offloaded
     samples as ``uint8`` ``(n, H, W, C)`` (the raw pixels, no normalisation), and
     ``indices``, their ``int64`` positions in the edge's stream (:func:`offload_record`);
   - ``content["metrics"]``: ``partition-id``, ``num-examples`` (stream length N),
     ``offloaded`` (n), ``offload-bytes`` (bytes of ``images``), ``edge-correct`` (the
     student's correct answers on all N) and ``edge-correct-kept`` (on the N - n kept ones).

   A sample is offloaded when the student's top-1 minus top-2 probability is below ``sigma``
   (:func:`edgekd.metrics.offload_mask`: ``sigma = 0`` never, ``sigma = 1`` always).

2. ``query.ce_answer`` (:data:`ANSWER_TYPE`), cloud -> edge, only to edges that offloaded:

   - ``content["answer"]``: ``indices`` (as received) and ``predictions``, the teacher's
     ``int64`` classes for them (:func:`answer_record`);
   - ``content["config"]``: ``sigma``.

   Reply: ``content["metrics"]`` with ``partition-id``, ``answered`` (n) and
   ``cloud-correct`` (the teacher's correct answers among them, scored by the edge against
   its own labels: labels never travel).

System accuracy = (edge-correct-kept + cloud-correct) / N; edge-only accuracy =
edge-correct / N; cloud-only accuracy = system accuracy at ``sigma = 1``.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, MessageType

__all__ = [
    "ANSWER",
    "ANSWERED",
    "ANSWER_RECORD",
    "ANSWER_TYPE",
    "CLOUD_CORRECT",
    "EDGE_CORRECT",
    "EDGE_CORRECT_KEPT",
    "IMAGES",
    "INDICES",
    "OFFLOAD",
    "OFFLOADED",
    "OFFLOAD_BYTES",
    "OFFLOAD_RECORD",
    "OFFLOAD_TYPE",
    "PREDICTIONS",
    "SIGMA",
    "answer_record",
    "offload_record",
    "read_answer",
    "read_offload",
]

OFFLOAD = "ce_offload"
ANSWER = "ce_answer"
OFFLOAD_TYPE = f"{MessageType.QUERY}.{OFFLOAD}"
ANSWER_TYPE = f"{MessageType.QUERY}.{ANSWER}"
OFFLOAD_RECORD = "offload"
ANSWER_RECORD = "answer"
SIGMA = "sigma"
IMAGES = "images"
INDICES = "indices"
PREDICTIONS = "predictions"
OFFLOADED = "offloaded"
OFFLOAD_BYTES = "offload-bytes"
EDGE_CORRECT = "edge-correct"
EDGE_CORRECT_KEPT = "edge-correct-kept"
ANSWERED = "answered"
CLOUD_CORRECT = "cloud-correct"


def _int64(name: str, values: np.ndarray) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D integer array, got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array, dtype=np.int64)


def offload_record(images: np.ndarray, indices: np.ndarray) -> ArrayRecord:
    """The edge's offload payload: ``uint8`` images ``(n, H, W, C)`` and their stream indices."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (n, H, W, C), got {images.dtype} {images.shape}")
    idx = _int64("indices", indices)
    if len(idx) != len(images):
        raise ValueError(f"{len(images)} images but {len(idx)} indices")
    return ArrayRecord({IMAGES: Array(np.ascontiguousarray(images)), INDICES: Array(idx)})


def read_offload(record: ArrayRecord) -> tuple[np.ndarray, np.ndarray]:
    """``(images, indices)`` of an offload payload, checked as :func:`offload_record` does."""
    images = record[IMAGES].numpy()
    indices = record[INDICES].numpy()
    offload_record(images, indices)
    return images, indices.astype(np.int64)


def answer_record(indices: np.ndarray, predictions: np.ndarray) -> ArrayRecord:
    """The cloud's answers: the offloaded indices and the teacher's predicted classes."""
    idx = _int64("indices", indices)
    pred = _int64("predictions", predictions)
    if len(idx) != len(pred):
        raise ValueError(f"{len(idx)} indices but {len(pred)} predictions")
    return ArrayRecord({INDICES: Array(idx), PREDICTIONS: Array(pred)})


def read_answer(record: ArrayRecord) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, predictions)`` of the cloud's answer."""
    indices, predictions = record[INDICES].numpy(), record[PREDICTIONS].numpy()
    answer_record(indices, predictions)
    return indices.astype(np.int64), predictions.astype(np.int64)
