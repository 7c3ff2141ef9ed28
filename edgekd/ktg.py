"""Central training of a knowledge transfer graph: every node on the same batch, in step.

Minami, Hirakawa, Yamashita and Fujiyoshi, "Knowledge Transfer Graph for Deep Collaborative
Learning" (ACCV 2020); official code https://github.com/somaminami/DCL (``lib/trainer.py``).
The graph, its gates and the loss of every node live in :mod:`edgekd.losses.ktg`, which a
federated strategy can share; this module only loops over batches.

Per batch (the paper's Algorithm 1): every node sees the same images, each node's loss is
:func:`~edgekd.losses.ktg.graph_losses` (sources detached, so a node's gradient comes only
from its own loss), and all learning nodes step together, one SGD optimizer each. Fixed nodes
(all incoming edges Cutoff) are put in eval mode, run without gradient and never stepped: load
their pretrained weights before calling :func:`train_graph`.

:func:`train_node` is one node's side of the *federated* graph (:mod:`edgekd.protocol.ktg`):
its self edge on its private data and its incoming edges as fixed targets on a public batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgekd.datasets import BatchLoader
from edgekd.losses.ktg import GateMatrix, gated_kl_loss, graph_losses
from edgekd.progress import Stage, stage
from edgekd.training import (
    EpochStats,
    evaluate,
    make_lr_scheduler,
    make_optimizer,
    optimizer_step,
)

__all__ = ["EdgeTargets", "GateMatrix", "GraphEpoch", "NodeRound", "train_graph", "train_node"]


@dataclass(frozen=True)
class GraphEpoch:
    """One epoch of graph training, one value per node (in node order).

    Attributes
    ----------
    train_loss : tuple[float, ...]
        Mean over the epoch's batches (weighted by batch size) of each node's graph loss;
        0 for fixed nodes.
    train_accuracy : tuple[float, ...]
        Accuracy of each node's training-batch predictions during the epoch.
    val_accuracy : tuple[float, ...] or None
        Accuracy of each node on the validation set after the epoch (eval mode), ``None``
        without a validation set.
    """

    train_loss: tuple[float, ...]
    train_accuracy: tuple[float, ...]
    val_accuracy: tuple[float, ...] | None


def _check_inputs(
    models: Sequence[nn.Module],
    x: Tensor,
    gates: GateMatrix,
    epochs: int,
    x_val: Tensor | None,
    y_val: Tensor | None,
) -> None:
    if len(models) != gates.num_nodes:
        raise ValueError(
            f"got {len(models)} models for gate matrix {str(gates)!r} of {gates.num_nodes} nodes"
        )
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if len(x) == 0:
        raise ValueError("cannot train on an empty dataset (0 examples)")
    if (x_val is None) != (y_val is None):
        raise ValueError("x_val and y_val must be given together")


def train_graph(
    models: Sequence[nn.Module],
    x: Tensor,
    y: Tensor,
    gates: GateMatrix,
    *,
    epochs: int,
    batch_size: int,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    temperature: float = 1.0,
    seed: int = 0,
    augment: bool = False,
    lr_schedule: str = "constant",
    x_val: Tensor | None = None,
    y_val: Tensor | None = None,
    progress: str = "graph training",
    on_epoch: Callable[[int, GraphEpoch], None] | None = None,
) -> list[GraphEpoch]:
    """Train the learning nodes of ``gates`` together, in place; one :class:`GraphEpoch` each.

    Parameters
    ----------
    models : Sequence[nn.Module]
        One model per node, in node order, all giving logits ``(B, C)`` of the same classes.
        Fixed nodes (:attr:`GateMatrix.fixed_nodes`) must already hold their trained weights.
    x, y : Tensor
        Training inputs ``(N, ...)`` and int64 labels ``(N,)``.
    gates : GateMatrix
        The graph (row = target, column = source).
    epochs, batch_size : int
        ``epochs == 0`` trains nothing (empty history). The Linear gate's ``k`` counts steps from 1
        to ``k_end = epochs * batches per epoch`` (official code: weight 1 at the last step).
    lr, momentum, weight_decay : float
        SGD of :func:`edgekd.training.make_optimizer`, one optimizer per learning node.
    temperature : float
        Softmax temperature of the KL edges, by default 1 (official code).
    seed : int
        Seeds the batch order and the augmentation; with models built under the same seed,
        two calls give identical results.
    augment : bool
        Random crop and flip of :class:`edgekd.datasets.BatchLoader`, by default False.
    lr_schedule : {"constant", "cosine"}
        Per-step schedule of :func:`edgekd.training.make_lr_scheduler`.
    x_val, y_val : Tensor, optional
        A validation set: each node's accuracy on it is recorded after every epoch.
    progress : str
        Name of the :func:`edgekd.progress.stage` that reports the batches.
    on_epoch : Callable[[int, GraphEpoch], None], optional
        Called after every epoch with its number (from 1) and its record, before the next
        epoch starts: a hyper-parameter search reports there (and may stop the training by
        raising, as Ray Tune does for a trial its scheduler stops).
    """
    _check_inputs(models, x, gates, epochs, x_val, y_val)
    fixed = set(gates.fixed_nodes)
    learners = [i for i in range(gates.num_nodes) if i not in fixed]
    loader = BatchLoader(x, y, batch_size, shuffle=True, seed=seed, augment=augment)
    total = max(1, epochs * len(loader))
    optimizers = {i: make_optimizer(models[i], lr, momentum, weight_decay) for i in learners}
    schedulers = {i: make_lr_scheduler(o, lr_schedule, total) for i, o in optimizers.items()}
    history = []
    with stage(progress, total=epochs * len(loader), unit="batches") as bar:
        for epoch in range(epochs):
            done = epoch * len(loader)
            stats = _train_epoch(
                models, loader, gates, optimizers, schedulers, done, total, bar, temperature
            )
            val = None
            if x_val is not None and y_val is not None:
                val = tuple(evaluate(m, x_val, y_val).accuracy for m in models)
            record = GraphEpoch(
                tuple(s.loss_sum / max(s.seen, 1) for s in stats),
                tuple(s.correct / max(s.seen, 1) for s in stats),
                val,
            )
            history.append(record)
            if on_epoch is not None:
                on_epoch(epoch + 1, record)
    return history


def _train_epoch(
    models: Sequence[nn.Module],
    loader: BatchLoader,
    gates: GateMatrix,
    optimizers: dict[int, torch.optim.Optimizer],
    schedulers: dict[int, torch.optim.lr_scheduler.LRScheduler],
    done: int,
    total: int,
    bar: Stage,
    temperature: float,
) -> list[EpochStats]:
    """One pass over ``loader``; ``done`` of the ``total`` optimizer steps came before it."""
    stats = [EpochStats() for _ in models]
    for i, model in enumerate(models):
        model.train(i in optimizers)
    for step, (xb, yb) in enumerate(loader, start=done + 1):
        logits = []
        for i, model in enumerate(models):
            with torch.set_grad_enabled(i in optimizers):
                logits.append(model(xb))
        losses = graph_losses(logits, yb, gates, step, total, temperature)
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        torch.stack([losses[i] for i in optimizers]).sum().backward()
        for i, optimizer in optimizers.items():
            optimizer.step()
            schedulers[i].step()
        for i, stat in enumerate(stats):
            stat.add(losses[i], logits[i], yb)
        bar.advance()
    return stats


@dataclass(frozen=True)
class EdgeTargets:
    """A node's incoming edges in a federated round: fixed source logits on public images.

    Attributes
    ----------
    x : Tensor
        The public images ``(N, ...)``, normalised like the private data.
    logits : Tensor
        ``(K, N, C)``: source ``k``'s logits on image ``n``.
    weights : Tensor
        ``(K, N)``: the gate of edge ``k`` on image ``n`` (:func:`edgekd.losses.ktg.edge_weights`).
    """

    x: Tensor
    logits: Tensor
    weights: Tensor

    def __post_init__(self) -> None:
        k, n = self.weights.shape if self.weights.dim() == 2 else (-1, -1)
        if self.logits.dim() != 3 or tuple(self.logits.shape[:2]) != (k, n) or len(self.x) != n:
            raise ValueError(
                f"targets need logits (K, N, C), weights (K, N) and N images, got logits "
                f"{tuple(self.logits.shape)}, weights {tuple(self.weights.shape)}, "
                f"{len(self.x)} images"
            )


@dataclass(frozen=True)
class NodeRound:
    """One node's training in one federated round (means over the last epoch's steps).

    ``ce_loss``/``kd_loss`` are NaN when the self edge or the incoming edges are off;
    ``accuracy`` is of the private batches (NaN without the self edge).
    """

    loss: float
    ce_loss: float
    kd_loss: float
    accuracy: float
    num_examples: int


def _cycle(loader: BatchLoader) -> Iterator[tuple[Tensor, Tensor]]:
    while True:
        yield from loader


def train_node(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    targets: EdgeTargets | None,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    seed: int = 0,
    public_seed: int = 1,
    augment: bool = False,
    padding: int = 4,
    flip: bool = True,
    lr_schedule: str = "constant",
    self_weight: float = 1.0,
    temperature: float = 1.0,
    progress: str = "ktg node training",
) -> NodeRound:
    """Train ``model`` in place on its self edge and its incoming edges (federated KTG).

    Every step takes the next private batch ``(x_b, y_b)`` (as
    :func:`edgekd.training.train_supervised`: same loader, optimizer and schedule) and, with
    ``targets``, the next public batch ``P`` (cycled, shuffled by ``public_seed``, never
    augmented: the targets belong to the plain images); the loss is::

        self_weight * CE(f(x_b), y_b) + sum_k T^2 * mean_{n in P}(w_kn * KL(p_kn || p(n)))

    Without targets and with ``self_weight == 1`` the steps are exactly those of
    ``train_supervised`` with the same arguments (independent local training, bit for bit).
    A step with no term (``self_weight == 0`` and no targets) trains nothing.

    Parameters
    ----------
    model : nn.Module
        The node's model (modified in place).
    x, y : Tensor
        The private data ``(N, C, H, W)`` and int64 labels; one epoch is one pass over it.
    targets : EdgeTargets or None
        The incoming edges of this round; None (or ``K == 0``) for none.
    epochs, batch_size, lr, momentum, weight_decay, seed, augment, padding, flip, lr_schedule
        The local schedule, as :func:`edgekd.training.train_supervised`.
    public_seed : int
        Seed of the public-batch order.
    self_weight : float
        The self edge's gate (0 = Cutoff).
    temperature : float
        Softmax temperature of the KL edges.
    progress : str
        Name of the :func:`edgekd.progress.stage`.
    """
    if len(x) == 0:
        raise ValueError("cannot train on an empty dataset (0 examples)")
    if targets is not None and len(targets.logits) == 0:
        targets = None
    nan = float("nan")
    if epochs == 0 or (self_weight == 0 and targets is None):
        return NodeRound(nan, nan, nan, nan, len(x))
    loader = BatchLoader(
        x, y, batch_size, shuffle=True, seed=seed, augment=augment, padding=padding, flip=flip
    )
    public = None
    if targets is not None:
        index = torch.arange(len(targets.x))
        public = _cycle(BatchLoader(targets.x, index, batch_size, shuffle=True, seed=public_seed))
    optimizer = make_optimizer(model, lr, momentum, weight_decay)
    scheduler = make_lr_scheduler(optimizer, lr_schedule, epochs * len(loader))
    model.train()
    sums = {"ce": EpochStats(), "kd": 0.0, "loss": 0.0}
    with stage(progress, total=epochs * len(loader), unit="batches") as bar:
        for _ in range(epochs):
            sums = {"ce": EpochStats(), "kd": 0.0, "loss": 0.0}
            for xb, yb in loader:
                loss = _node_loss(model, xb, yb, targets, public, self_weight, temperature, sums)
                optimizer_step(optimizer, scheduler, loss)
                sums["loss"] += float(loss.detach()) * len(yb)
                bar.advance()
    return _node_round(sums, len(x), self_weight > 0, targets is not None)


def _node_loss(
    model: nn.Module,
    xb: Tensor,
    yb: Tensor,
    targets: EdgeTargets | None,
    public: Iterator[tuple[Tensor, Tensor]] | None,
    self_weight: float,
    temperature: float,
    sums: dict[str, Any],
) -> Tensor:
    """One step's loss; adds the terms to ``sums`` (CE stats, KD sum weighted by batch size)."""
    loss: Tensor | None = None
    if self_weight > 0:
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        sums["ce"].add(loss, logits, yb)
        if self_weight != 1.0:
            loss = self_weight * loss
    if targets is not None and public is not None:
        xp, ip = next(public)
        zp = model(xp)
        kd = torch.stack(
            [
                gated_kl_loss(zp, targets.logits[k][ip], temperature, targets.weights[k][ip])
                for k in range(len(targets.logits))
            ]
        ).sum()
        sums["kd"] += float(kd.detach()) * len(yb)
        loss = kd if loss is None else loss + kd
    assert loss is not None
    return loss


def _node_round(sums: dict[str, Any], num_examples: int, with_ce: bool, with_kd: bool) -> NodeRound:
    """Means per example of the last epoch (every epoch passes over the ``num_examples``)."""
    ce: EpochStats = sums["ce"]
    nan = float("nan")
    return NodeRound(
        loss=sums["loss"] / num_examples,
        ce_loss=ce.loss_sum / max(ce.seen, 1) if with_ce else nan,
        kd_loss=sums["kd"] / num_examples if with_kd else nan,
        accuracy=ce.correct / max(ce.seen, 1) if with_ce else nan,
        num_examples=num_examples,
    )
