"""FedMD's server side of the scores exchange: check each client's scores, form the consensus.

A scores reply (``query.fedmd_scores``, :mod:`edgekd.protocol.fedmd`) with an error, a wrong
shape (classes or samples) or NaN/inf values is refused with the reason; the consensus is the
(weighted) mean of the accepted clients' logits (and representations, for LKD).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, Message

from edgekd.losses import consensus_logits
from edgekd.protocol import METRICS
from edgekd.protocol.fedmd import SCORES
from edgekd.strategies.common import error_reason

__all__ = ["ClientScores", "check_scores", "consensus", "consensus_diagnostics"]


@dataclass(frozen=True)
class ClientScores:
    """One client's validated reply to ``query.fedmd_scores``."""

    partition_id: int
    logits: np.ndarray
    representations: np.ndarray | None
    num_examples: int


def consensus(scores: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """The FedMD consensus: the (weighted) mean over clients of their score arrays.

    Parameters
    ----------
    scores : Sequence[np.ndarray]
        ``K >= 1`` arrays of the same shape, e.g. ``(N, C)`` logits or ``(N, r)``
        representations.
    weights : Sequence[float], optional
        Non-negative client weights (normalised to sum to 1); None is the plain mean.

    Returns
    -------
    np.ndarray
        ``float32`` array of the common shape.
    """
    stacked = torch.from_numpy(np.stack([np.asarray(s, dtype=np.float32) for s in scores]))
    flat = stacked.reshape(stacked.shape[0], stacked.shape[1], -1)
    mean = consensus_logits(flat, weights)
    return mean.reshape(stacked.shape[1:]).numpy()


def _array(record: ArrayRecord, key: str) -> np.ndarray:
    if key not in record:
        raise ValueError(f"reply has no {key!r} array")
    return record[key].numpy()


def check_scores(
    reply: Message,
    partition_id: int,
    num_samples: int,
    num_classes: int,
    representation_dim: int | None,
) -> ClientScores:
    """Validate a scores reply; raise ``ValueError`` saying why it must be left out.

    Parameters
    ----------
    reply : Message
        The reply to ``query.fedmd_scores``.
    partition_id : int
        The sender's partition.
    num_samples, num_classes : int
        The expected logits shape ``(N, C)``.
    representation_dim : int or None
        The expected representation width r, or None when representations are not needed.
    """
    reason = error_reason(reply)
    if reason is not None:
        raise ValueError(reason)
    content = reply.content
    if SCORES not in content.array_records:
        raise ValueError(f"reply has no {SCORES!r} record")
    record = content.array_records[SCORES]
    logits = _array(record, "logits")
    if logits.shape != (num_samples, num_classes):
        raise ValueError(
            f"logits have shape {logits.shape}, expected ({num_samples}, {num_classes})"
        )
    if not np.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf values")
    representations = None
    if representation_dim is not None:
        representations = _array(record, "representations")
        if representations.shape != (num_samples, representation_dim):
            raise ValueError(
                f"representations have shape {representations.shape}, expected "
                f"({num_samples}, {representation_dim})"
            )
        if not np.isfinite(representations).all():
            raise ValueError("representations contain NaN or inf values")
    num_examples = 0
    if METRICS in content.metric_records:
        num_examples = int(content.metric_records[METRICS].get("num-examples", 0))
    return ClientScores(partition_id, logits, representations, num_examples)


def consensus_diagnostics(
    scores: Sequence[ClientScores], consensus_logits: np.ndarray, labels: np.ndarray | None
) -> dict[str, float]:
    """How this round's consensus relates to the clients on the alignment images.

    ``consensus-agreement`` is the mean over clients of the fraction of images on which the
    client's top-1 class is the consensus's. When the public images carry labels of the private
    label space (``labels``, a ``"split"`` public pool), also ``consensus-acc`` (top-1 accuracy
    of the consensus) and ``client-acc-mean``/``client-acc-max`` (of the clients' own logits):
    a consensus below its clients teaches them something worse than what they know.
    """
    top = np.argmax(consensus_logits, axis=1)
    client_tops = [np.argmax(s.logits, axis=1) for s in scores]
    found = {"consensus-agreement": float(np.mean([np.mean(t == top) for t in client_tops]))}
    if labels is not None:
        accs = [float(np.mean(t == labels)) for t in client_tops]
        found["consensus-acc"] = float(np.mean(top == labels))
        found["client-acc-mean"] = float(np.mean(accs))
        found["client-acc-max"] = float(np.max(accs))
    return found
