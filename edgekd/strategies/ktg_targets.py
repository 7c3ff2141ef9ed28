"""The server side of a federated knowledge transfer graph: check logits, apply the graph.

Minami, Hirakawa, Yamashita and Fujiyoshi, "Knowledge Transfer Graph for Deep Collaborative
Learning" (ACCV 2020); official code https://github.com/somaminami/DCL. A logits reply
(``query.ktg_logits``, :mod:`edgekd.protocol.ktg`) with an error, a wrong shape or NaN/inf
values is refused with the reason (:func:`check_logits_reply`); :func:`graph_targets` turns
the accepted nodes' logits on the round's public batch into each learning node's gated
targets with :func:`edgekd.losses.ktg.edge_weights` (the same gates as central training, the
Linear gate's ``k / k_end`` counted in rounds).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Message

from edgekd.losses import consensus_logits
from edgekd.losses.ktg import Gate, GateMatrix, edge_weights, linear_weight
from edgekd.protocol.ktg import LOGITS
from edgekd.strategies.common import error_reason

__all__ = ["NodeTargets", "check_logits_reply", "graph_targets", "self_weight", "teachers"]


@dataclass(frozen=True)
class NodeTargets:
    """One learning node's incoming edges for a round (``K`` may be 0).

    Attributes
    ----------
    sources : tuple[int, ...]
        The source node of each target (``"mean-logits"``: every contributing source, one
        target).
    logits : np.ndarray
        ``float32 (K, N, C)``.
    weights : np.ndarray
        ``float32 (K, N)``: the per-sample gate of each target.
    """

    sources: tuple[int, ...]
    logits: np.ndarray
    weights: np.ndarray


def check_logits_reply(reply: Message, num_samples: int, num_classes: int) -> np.ndarray:
    """The logits of a ``query.ktg_logits`` reply; ``ValueError`` saying why it is refused."""
    reason = error_reason(reply)
    if reason is not None:
        raise ValueError(reason)
    content = reply.content
    if LOGITS not in content.array_records or "logits" not in content.array_records[LOGITS]:
        raise ValueError(f"reply has no {LOGITS!r} record with a 'logits' array")
    logits = content.array_records[LOGITS]["logits"].numpy()
    if logits.shape != (num_samples, num_classes):
        raise ValueError(
            f"logits have shape {logits.shape}, expected ({num_samples}, {num_classes})"
        )
    if not np.issubdtype(logits.dtype, np.floating) or not np.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf values (or are not floating point)")
    return logits.astype(np.float32, copy=False)


def teachers(gates: GateMatrix) -> tuple[int, ...]:
    """The nodes with an edge into another node that is not Cutoff (whose logits are needed)."""
    return tuple(
        s
        for s in range(gates.num_nodes)
        if any(gates.gate(t, s) is not Gate.CUTOFF for t in range(gates.num_nodes) if t != s)
    )


def self_weight(gates: GateMatrix, node: int, server_round: int, num_rounds: int) -> float:
    """The self edge's gate this round: 1 (T, C), ``round / num_rounds`` (L) or 0 (X)."""
    gate = gates.gate(node, node)
    if gate is Gate.LINEAR:
        return linear_weight(server_round, num_rounds)
    return 0.0 if gate is Gate.CUTOFF else 1.0


def graph_targets(
    logits: Mapping[int, np.ndarray],
    labels: np.ndarray | None,
    gates: GateMatrix,
    server_round: int,
    num_rounds: int,
    aggregate: str = "sum",
) -> dict[int, NodeTargets]:
    """Each learning node's gated targets from the accepted nodes' ``logits``.

    Parameters
    ----------
    logits : Mapping[int, np.ndarray]
        Node -> its ``(N, C)`` logits on the round's public batch; a node missing here (left
        out this round, or not asked) has its outgoing edges dropped.
    labels : np.ndarray or None
        The public batch's labels in the clients' label space; needed by Correct gates.
    gates : GateMatrix
        The graph.
    server_round, num_rounds : int
        The Linear gate's ``k`` and ``k_end``.
    aggregate : {"sum", "mean-logits"}
        ``"sum"``: one target per incoming edge. ``"mean-logits"``: one target, the per-sample
        gate-weighted mean of the sources' logits ``sum_s w_s z_s / sum_s w_s`` (the plain
        mean, as FedMD's :func:`edgekd.losses.consensus_logits`, when every weight is 1),
        weighted by the mean gate ``mean_s w_s``.

    Returns
    -------
    dict[int, NodeTargets]
        For every node that is not fixed (:attr:`GateMatrix.fixed_nodes`).
    """
    shape = next(iter(logits.values())).shape if logits else (0, 0)
    batch = [
        torch.from_numpy(logits.get(n, np.zeros(shape, np.float32))) for n in range(gates.num_nodes)
    ]
    label_tensor = None if labels is None else torch.from_numpy(np.asarray(labels, np.int64))
    weights = edge_weights(batch, label_tensor, gates, server_round, num_rounds).numpy()
    targets = {}
    for t in range(gates.num_nodes):
        if t in gates.fixed_nodes:
            continue
        sources = tuple(s for s in sorted(logits) if s != t and gates.gate(t, s) is not Gate.CUTOFF)
        z = np.stack([logits[s] for s in sources]) if sources else np.zeros((0, *shape), np.float32)
        w = weights[t, list(sources)] if sources else np.zeros((0, shape[0]), np.float32)
        if aggregate == "mean-logits" and sources:
            z, w = _mean_target(z, w)
        targets[t] = NodeTargets(sources, z.astype(np.float32), w.astype(np.float32))
    return targets


def _mean_target(z: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One target: the gate-weighted mean of ``z (K, N, C)``, weighted by the mean gate."""
    if np.all(w == 1.0):
        return consensus_logits(torch.from_numpy(z)).numpy()[None], w[:1]
    total = w.sum(axis=0)
    mean = (w[..., None] * z).sum(axis=0) / np.where(total > 0, total, 1.0)[:, None]
    return mean[None], w.mean(axis=0)[None]
