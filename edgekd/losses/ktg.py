"""Knowledge transfer graph: gates, gated edge losses and the loss of every node.

Minami, Hirakawa, Yamashita and Fujiyoshi, "Knowledge Transfer Graph for Deep Collaborative
Learning" (ACCV 2020); official code https://github.com/somaminami/DCL (``lib/loss_func.py``,
``lib/trainer.py``, ``train.py``).

A graph of ``M`` nodes (models, possibly of different architectures) is a square
:class:`GateMatrix`: **row = target, column = source**, as the official ``losses[target][source]``
matrix. The diagonal gate ``(t, t)`` is node ``t``'s self edge, cross-entropy with the labels;
the gate ``(t, s)``, ``s != t``, is the edge ``s -> t``. Node ``t``'s loss is the sum over its
row::

    L_t = mean_n(G_tt(CE(z_t, y))_n) + sum_{s != t} T^2 * mean_n(G_ts(KL(p_s || p_t))_n)

with ``p = softmax(z / T)``, the source's logits detached (it teaches, it does not learn from
the edge), ``T = 1`` by default and the mean over *all* ``B`` samples of the batch, as in the
official code (its Correct gate multiplies by a 0/1 mask and then takes ``.mean()``, so a
masked sample still counts in the denominator). Gates (:class:`Gate`), per sample ``n``:

* Through ``T``: ``a -> a``;
* Cutoff ``X``: ``a -> 0`` -- the edge is not computed, so it passes no gradient;
* Linear ``L``: ``a -> (k / k_end) * a``, ``k`` the iteration, ``k_end`` the total;
* Correct ``C``: ``a -> [argmax z_s = y] * a``, only the samples the *source* classifies
  correctly. On the self edge the source is the label itself, always correct, so ``C`` acts
  as ``T`` there (as in the official code, whose self-edge source is the one-hot label).

A node whose incoming edges (its row, self edge included) are all Cutoff does not learn: it is a
fixed, pretrained teacher (:attr:`GateMatrix.fixed_nodes`). :func:`edge_weights` (the gates as
per-sample weights, shape ``(M, M, B)``) and :func:`gated_kl_loss` are the pieces a federated
server and its clients can share; :func:`graph_losses` combines them for central training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor

from edgekd.losses.checks import check_logits, check_matching_logits, check_temperature

__all__ = [
    "Gate",
    "GateMatrix",
    "GateMatrixError",
    "edge_weights",
    "gated_ce_loss",
    "gated_kl_loss",
    "graph_losses",
    "kl_per_sample",
    "linear_weight",
]


class Gate(Enum):
    """The gate of one edge; its value is its letter in the gate-matrix string."""

    THROUGH = "T"
    CUTOFF = "X"
    LINEAR = "L"
    CORRECT = "C"


_VALID = ", ".join(f"{g.value}={g.name.title()}" for g in Gate)


class GateMatrixError(ValueError):
    """A gate matrix that is not square, has the wrong size, an unknown letter or a node that
    has no path to anything."""


def _render(rows: Sequence[Sequence[Gate]]) -> str:
    return ";".join(",".join(g.value if isinstance(g, Gate) else str(g) for g in r) for r in rows)


@dataclass(frozen=True)
class GateMatrix:
    """The gates of a knowledge transfer graph, ``rows[target][source]``, validated.

    String grammar (:meth:`parse`, and ``str()`` gives it back)::

        matrix := row (";" row)*        one row per node, row t = the edges INTO node t
        row    := gate ("," gate)*      column s = the edge from source s (s = t: self edge)
        gate   := "T" | "X" | "L" | "C" Through, Cutoff, Linear, Correct

    Whitespace around gates and rows is ignored and letters are case-insensitive; ``str()``
    writes the canonical form (upper case, no spaces). Example, knowledge distillation from a
    fixed teacher 0 to a student 1: ``"X,X;T,T"``; deep mutual learning of 2 nodes: ``"T,T;T,T"``.

    Raises :class:`GateMatrixError` (a ``ValueError``) when the matrix is empty or not square,
    holds something that is not a gate, or has a node with **no path to anything**: every edge
    into it (its row, self edge included) and every edge out of it to another node (its column)
    is Cutoff, so the node neither learns (from the labels or another node) nor teaches -- it
    would not change any result. A node that only learns from the labels (independent training)
    or a fixed node that teaches someone is allowed.

    Attributes
    ----------
    rows : tuple[tuple[Gate, ...], ...]
        ``rows[t][s]`` is the gate of the edge ``s -> t``; ``rows[t][t]`` gates ``t``'s CE.
    """

    rows: tuple[tuple[Gate, ...], ...]

    def __post_init__(self) -> None:
        text = _render(self.rows)
        if not self.rows:
            raise GateMatrixError("gate matrix is empty: it needs at least one node")
        for t, row in enumerate(self.rows):
            if len(row) != len(self.rows):
                raise GateMatrixError(
                    f"gate matrix {text!r} is not square: row {t} has {len(row)} gates, "
                    f"expected {len(self.rows)} (one row and one column per node)"
                )
            for s, gate in enumerate(row):
                if not isinstance(gate, Gate):
                    raise GateMatrixError(
                        f"unknown gate {gate!r} at row {t}, column {s} of gate matrix "
                        f"{text!r}; valid gates: {_VALID}"
                    )
        for node in range(len(self.rows)):
            if self._isolated(node):
                raise GateMatrixError(
                    f"node {node} of gate matrix {text!r} has no path to anything: every edge "
                    f"into it (row {node}) and out of it (column {node}) is X (Cutoff), so it "
                    "neither learns nor teaches"
                )

    @classmethod
    def parse(cls, text: str, num_nodes: int | None = None) -> GateMatrix:
        """Read the gate-matrix string ``text`` (grammar in the class docstring).

        Parameters
        ----------
        text : str
            For example ``"T,C;L,T"``.
        num_nodes : int, optional
            The number of nodes (models) the matrix must have; not checked when ``None``.

        Raises
        ------
        GateMatrixError
            On an unknown letter, a matrix that is not square, a size other than
            ``num_nodes`` or a node with no path to anything; the message names the value.
        """
        letters = {g.value: g for g in Gate}
        rows: list[tuple[Gate, ...]] = []
        for t, row in enumerate(str(text).split(";")):
            gates = []
            for s, part in enumerate(row.split(",")):
                letter = part.strip().upper()
                if letter not in letters:
                    raise GateMatrixError(
                        f"unknown gate {part.strip()!r} at row {t}, column {s} of gate matrix "
                        f"{text!r}; valid gates: {_VALID}"
                    )
                gates.append(letters[letter])
            rows.append(tuple(gates))
        matrix = cls(tuple(rows))
        if num_nodes is not None and matrix.num_nodes != num_nodes:
            raise GateMatrixError(
                f"gate matrix {text!r} has {matrix.num_nodes} nodes, expected {num_nodes}"
            )
        return matrix

    def __str__(self) -> str:
        return _render(self.rows)

    @property
    def num_nodes(self) -> int:
        """The number of nodes ``M`` (rows, and columns)."""
        return len(self.rows)

    def gate(self, target: int, source: int) -> Gate:
        """The gate of the edge ``source -> target`` (the self edge when they are equal)."""
        return self.rows[target][source]

    @property
    def fixed_nodes(self) -> tuple[int, ...]:
        """Nodes whose incoming edges (self edge included) are all Cutoff: fixed teachers.

        They never learn; the official code loads pretrained weights into them.
        """
        return tuple(t for t, row in enumerate(self.rows) if all(g is Gate.CUTOFF for g in row))

    def _isolated(self, node: int) -> bool:
        incoming = self.rows[node]
        outgoing = [row[node] for t, row in enumerate(self.rows) if t != node]
        return all(g is Gate.CUTOFF for g in (*incoming, *outgoing))


def linear_weight(iteration: int, total_iterations: int) -> float:
    """The Linear gate's factor ``iteration / total_iterations`` (0 at 0, 1 at the end).

    Raises ``ValueError`` unless ``total_iterations >= 1`` and
    ``0 <= iteration <= total_iterations``.
    """
    if total_iterations < 1:
        raise ValueError(f"total_iterations must be >= 1, got {total_iterations}")
    if not 0 <= iteration <= total_iterations:
        raise ValueError(
            f"iteration must be in [0, total_iterations={total_iterations}], got {iteration}"
        )
    return iteration / total_iterations


def _check_batch(logits: Sequence[Tensor], labels: Tensor | None, num_nodes: int) -> None:
    if len(logits) != num_nodes:
        raise ValueError(f"got logits of {len(logits)} nodes for a {num_nodes}-node gate matrix")
    check_logits("logits[0]", logits[0])
    for i, z in enumerate(logits[1:], start=1):
        check_matching_logits(f"logits[{i}]", z, logits[0])
    if labels is not None and tuple(labels.shape) != (logits[0].shape[0],):
        raise ValueError(
            f"labels must have shape ({logits[0].shape[0]},), got {tuple(labels.shape)}"
        )


def edge_weights(
    logits: Sequence[Tensor],
    labels: Tensor | None,
    gates: GateMatrix,
    iteration: int,
    total_iterations: int,
) -> Tensor:
    """Every edge's gate as per-sample weights ``w[t, s, n]`` of shape ``(M, M, B)``.

    Through gives 1, Cutoff 0, Linear ``iteration / total_iterations`` and Correct 1 where the
    source ``s`` classifies sample ``n`` correctly, else 0 (1 on the self edge). A federated
    server can compute these on a shared batch and send each target its row.

    Parameters
    ----------
    logits : Sequence[Tensor]
        Each node's logits ``(B, C)`` on the same batch, in node order.
    labels : Tensor or None
        Labels ``(B,)``; needed only when an edge between two nodes has a Correct gate.
    gates : GateMatrix
        The graph, ``M`` nodes.
    iteration, total_iterations : int
        The Linear gate's ``k`` and ``k_end`` (:func:`linear_weight`).
    """
    _check_batch(logits, labels, gates.num_nodes)
    linear = linear_weight(iteration, total_iterations)
    batch = logits[0].shape[0]
    weights = logits[0].new_zeros((gates.num_nodes, gates.num_nodes, batch))
    for t, row in enumerate(gates.rows):
        for s, gate in enumerate(row):
            if gate is Gate.THROUGH or (gate is Gate.CORRECT and s == t):
                weights[t, s] = 1.0
            elif gate is Gate.LINEAR:
                weights[t, s] = linear
            elif gate is Gate.CORRECT:
                if labels is None:
                    raise ValueError(f"the Correct gate of edge {s} -> {t} needs labels")
                weights[t, s] = (logits[s].detach().argmax(dim=1) == labels).to(weights.dtype)
    return weights


def kl_per_sample(target_logits: Tensor, source_logits: Tensor, temperature: float) -> Tensor:
    """``KL(p_s || p_t)`` per sample, ``p = softmax(z / T)``, the source detached; ``(B,)``.

    The official code's ``sum_c p_s * log(p_s / p_t)``, computed from log-softmax (it adds
    ``1e-10`` inside the log instead).
    """
    t = check_temperature(temperature)
    check_logits("target_logits", target_logits)
    check_matching_logits("source_logits", source_logits, target_logits)
    return F.kl_div(
        F.log_softmax(target_logits / t, dim=1),
        F.log_softmax(source_logits.detach() / t, dim=1),
        log_target=True,
        reduction="none",
    ).sum(dim=1)


def _weighted_mean(per_sample: Tensor, weights: Tensor | None) -> Tensor:
    if weights is None:
        return per_sample.mean()
    if tuple(weights.shape) != tuple(per_sample.shape):
        raise ValueError(
            f"weights must have shape {tuple(per_sample.shape)}, got {tuple(weights.shape)}"
        )
    return (per_sample * weights.detach()).mean()


def gated_kl_loss(
    target_logits: Tensor,
    source_logits: Tensor,
    temperature: float = 1.0,
    weights: Tensor | None = None,
) -> Tensor:
    """One edge ``s -> t``: ``T^2 * mean_n(w_n * KL(p_s || p_t)_n)``, the source detached.

    The mean runs over all ``B`` samples, masked ones included (official code). Without
    ``weights`` (Through) this equals :func:`edgekd.losses.kd_kl_loss` with the source as
    the teacher.
    """
    kl = kl_per_sample(target_logits, source_logits, temperature)
    return _weighted_mean(kl, weights) * temperature * temperature


def gated_ce_loss(logits: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
    """The self edge: ``mean_n(w_n * CE(z_n, y_n))`` over all ``B`` samples, no temperature."""
    check_logits("logits", logits)
    return _weighted_mean(F.cross_entropy(logits, labels, reduction="none"), weights)


def graph_losses(
    logits: Sequence[Tensor],
    labels: Tensor,
    gates: GateMatrix,
    iteration: int,
    total_iterations: int,
    temperature: float = 1.0,
) -> list[Tensor]:
    """Each node's loss ``L_t``, the sum of its gated incoming edges (module docstring).

    Parameters
    ----------
    logits : Sequence[Tensor]
        Each node's logits ``(B, C)`` on the same batch, in node order. Sources are detached
        inside, so a node's loss has gradients only into its own logits.
    labels : Tensor
        Labels ``(B,)`` (int64).
    gates : GateMatrix
        The graph; ``len(logits)`` must equal ``gates.num_nodes``.
    iteration, total_iterations : int
        The Linear gate's ``k`` and ``k_end``: weight ``k / k_end`` (:func:`linear_weight`).
    temperature : float
        Softmax temperature ``T`` of the KL edges, by default 1 (official code).

    Returns
    -------
    list[Tensor]
        ``M`` scalar losses. A node whose edges are all Cutoff (a fixed node) gets a constant
        0 without gradient; Cutoff edges are never computed.
    """
    weights = edge_weights(logits, labels, gates, iteration, total_iterations)
    losses = []
    for t, row in enumerate(gates.rows):
        terms = []
        for s, gate in enumerate(row):
            if gate is Gate.CUTOFF:
                continue
            if s == t:
                terms.append(gated_ce_loss(logits[t], labels, weights[t, s]))
            else:
                terms.append(gated_kl_loss(logits[t], logits[s], temperature, weights[t, s]))
        losses.append(torch.stack(terms).sum() if terms else logits[t].new_zeros(()).detach())
    return losses
