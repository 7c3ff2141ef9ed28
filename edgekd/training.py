"""Pure training and evaluation functions shared by clients and server-side strategies.

Nothing here knows about Flower: these functions take a model and tensors and return numbers,
so the same code runs inside a ClientApp, inside a strategy at the server, and in plain loops
(benchmarks, tests).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.datasets import BatchLoader
from edgekd.losses import prox_term
from edgekd.progress import stage
from edgekd.seeds import derive_seed

__all__ = [
    "LABEL_NOISES",
    "LR_SCHEDULES",
    "EpochStats",
    "EvalResult",
    "TrainResult",
    "cosine_factor",
    "cpu_share_threads",
    "evaluate",
    "make_lr_scheduler",
    "make_optimizer",
    "optimizer_step",
    "predict_logits",
    "set_torch_threads",
    "train_supervised",
]


@dataclass(frozen=True)
class TrainResult:
    """Mean loss and accuracy over the last epoch, and the number of examples seen per epoch."""

    loss: float
    accuracy: float
    num_examples: int


@dataclass
class EpochStats:
    """Running sums of one epoch: loss times batch size, correct predictions, examples."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Count one batch's mean ``loss`` and the ``logits``' correct predictions."""
        self.loss_sum += float(loss.detach()) * len(labels)
        self.correct += int((logits.detach().argmax(1) == labels).sum())
        self.seen += len(labels)

    def result(self, num_examples: int) -> TrainResult:
        """Mean loss and accuracy over the batches added so far."""
        seen = max(self.seen, 1)
        return TrainResult(self.loss_sum / seen, self.correct / seen, num_examples)


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss: torch.Tensor,
) -> None:
    """One SGD step on ``loss``, then the learning rate of the next step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()


@dataclass(frozen=True)
class EvalResult:
    """Mean cross-entropy loss and accuracy of a model on a labelled set."""

    loss: float
    accuracy: float
    num_examples: int


def cpu_share_threads() -> int:
    """Return the number of CPU cores this process was given.

    Ray sets ``OMP_NUM_THREADS`` to a virtual client's ``num-cpus``; elsewhere the process's
    CPU affinity is used. Torch threads beyond this share oversubscribe the cores.
    """
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def set_torch_threads(num_threads: int = 0) -> int:
    """Set torch's intra-op threads (``0`` follows :func:`cpu_share_threads`); return it."""
    threads = num_threads if num_threads > 0 else cpu_share_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def make_optimizer(
    model: nn.Module, lr: float, momentum: float, weight_decay: float
) -> torch.optim.SGD:
    """SGD with Nesterov-free momentum, as in the CIFAR ResNet schedule of He et al. 2016."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


LR_SCHEDULES = ("constant", "cosine")
LABEL_NOISES = ("none", "shuffle", "flip", "pair")


def cosine_factor(step: int, total_steps: int) -> float:
    """Cosine annealing to 0: ``0.5 * (1 + cos(pi * step / total_steps))`` (1 at step 0)."""
    return 0.5 * (1.0 + math.cos(math.pi * step / max(1, total_steps)))


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step learning rates, ``schedule`` in :data:`LR_SCHEDULES`; call ``step()`` per step.

    Step ``k`` (0-based, before the ``k``-th ``scheduler.step()``) trains at ``lr`` for
    ``"constant"`` and at ``lr * cosine_factor(k, total_steps)`` for ``"cosine"``.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {schedule!r}")
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_factor(step, total_steps)
    )


def train_supervised(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    seed: int = 0,
    augment: bool = False,
    padding: int = 4,
    flip: bool = True,
    lr_schedule: str = "constant",
    proximal_mu: float = 0.0,
    global_params: Sequence[torch.Tensor] | None = None,
    label_noise: str = "none",
    label_noise_p: float = 0.0,
    progress: str = "training",
) -> TrainResult:
    """Train ``model`` in place with cross-entropy (plus an optional FedProx term).

    Parameters
    ----------
    model : nn.Module
        The model to train (modified in place).
    x, y : torch.Tensor
        Normalised inputs (N, C, H, W) and int64 labels (N,).
    epochs, batch_size, lr, momentum, weight_decay : training schedule
        ``epochs == 0`` returns the current model's loss and accuracy without training.
    seed : int
        Seeds the batch order and the augmentation; two calls that differ only in ``seed``
        differ only in batch sampling (the cloned perturbation ensemble relies on it).
    augment, padding, flip : data augmentation (random crop with padding, horizontal flip).
    lr_schedule : {"constant", "cosine"}
        Per-step learning-rate schedule starting at ``lr``.
    proximal_mu : float
        FedProx proximal weight; needs ``global_params`` when positive.
    global_params : Sequence[torch.Tensor], optional
        Parameters of the received global model for the proximal term.
    label_noise : {"none", "shuffle", "flip", "pair"}
        Corrupt the training data of a noisy edge: with probability ``label_noise_p`` per
        batch, "shuffle" permutes the batch's input-label pairs (the cloned-distillation
        paper's protocol), "flip" replaces every label by a random other class, "pair" maps
        class c to class c + 1 (mod C), the systematic "pair flipping" noise of Han et al.,
        "Co-teaching", NeurIPS 2018.
    label_noise_p : float
        Per-batch corruption probability.
    progress : str
        Name of the stage shown by :func:`edgekd.progress.stage` (a bar with its ETA in a
        terminal, one log line at the end elsewhere), by default ``"training"``.
    """
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
    if len(x) == 0:
        raise ValueError("cannot train on an empty dataset (0 examples)")
    if proximal_mu > 0 and global_params is None:
        raise ValueError(f"proximal_mu={proximal_mu} needs global_params")
    if label_noise not in LABEL_NOISES:
        raise ValueError(f"label_noise must be one of {LABEL_NOISES}, got {label_noise!r}")
    if not 0.0 <= label_noise_p <= 1.0:
        raise ValueError(f"label_noise_p must be in [0, 1], got {label_noise_p}")
    noise = torch.Generator().manual_seed(derive_seed("label-noise", seed))
    if epochs == 0:
        result = evaluate(model, x, y, batch_size=128)
        return TrainResult(result.loss, result.accuracy, len(x))
    loader = BatchLoader(
        x, y, batch_size, shuffle=True, seed=seed, augment=augment, padding=padding, flip=flip
    )
    optimizer = make_optimizer(model, lr, momentum, weight_decay)
    scheduler = make_lr_scheduler(optimizer, lr_schedule, epochs * len(loader))
    model.train()
    stats = EpochStats()
    with stage(progress, total=epochs * len(loader), unit="batches") as bar:
        for _ in range(epochs):
            stats = EpochStats()
            for xb, yb in loader:
                logits = model(xb)
                if label_noise != "none" and float(torch.rand(1, generator=noise)) < label_noise_p:
                    yb = _corrupt(yb, label_noise, logits.shape[1], noise)
                loss = F.cross_entropy(logits, yb)
                if proximal_mu > 0 and global_params is not None:
                    loss = loss + prox_term(model, global_params, proximal_mu)
                optimizer_step(optimizer, scheduler, loss)
                stats.add(loss, logits, yb)
                bar.advance()
    return stats.result(len(x))


def _corrupt(
    labels: torch.Tensor, mode: str, num_classes: int, generator: torch.Generator
) -> torch.Tensor:
    if mode == "shuffle":
        return labels[torch.randperm(len(labels), generator=generator)]
    if mode == "pair":
        return (labels + 1) % num_classes
    offsets = torch.randint(1, num_classes, labels.shape, generator=generator)
    return (labels + offsets) % num_classes


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Logits of ``model`` (eval mode, no grad) for every row of ``x``."""
    was_training = model.training
    model.eval()
    outs = [model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    model.train(was_training)
    if not outs:
        return torch.empty(0)
    return torch.cat(outs)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128
) -> EvalResult:
    """Cross-entropy loss and accuracy of ``model`` on ``(x, y)`` in eval mode."""
    if len(x) == 0:
        raise ValueError("cannot evaluate on an empty dataset (0 examples)")
    logits = predict_logits(model, x, batch_size)
    loss = float(F.cross_entropy(logits, y))
    accuracy = float((logits.argmax(1) == y).float().mean())
    return EvalResult(loss, accuracy, len(x))
