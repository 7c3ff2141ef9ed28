"""Phase 0 of cloned distillation: train a model on the server's core data (cached).

The core data never leaves the server; the core model (and, for the I-variants, the
independent model) is trained on it with a cosine schedule before the first round. An
identical earlier run's result is reused from ``cache-dir`` (:mod:`edgekd.cache`), bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch

from edgekd.cache import TrainingCache, run_description, state_digest
from edgekd.config import ExperimentConfig
from edgekd.experiment import TensorData
from edgekd.training import evaluate, train_supervised

__all__ = ["train_on_core"]


def train_on_core(
    model: torch.nn.Module,
    core: TensorData,
    config: ExperimentConfig,
    *,
    epochs: int,
    lr: float,
    seed: int,
    flip: bool,
    progress: str = "Phase 0",
) -> float:
    """Train ``model`` in place on ``core`` for ``epochs`` (cosine from ``lr``); its accuracy.

    ``batch-size``, ``momentum``, ``weight-decay`` and ``augment`` come from ``config``; with
    ``epochs == 0`` the model is only evaluated. Loaded from ``cache-dir`` when an identical
    run (same config, schedule, seed and initial weights) stored it. ``progress`` names the
    stage shown by :func:`edgekd.progress.stage`.
    """
    if epochs == 0:
        return evaluate(model, core.x, core.y).accuracy
    description = {
        "config": run_description(config),
        "core-epochs": epochs,
        "core-lr": lr,
        "seed": seed,
        "initial": state_digest(model.state_dict()),
    }

    def train() -> dict[str, Any]:
        result = train_supervised(
            model,
            core.x,
            core.y,
            epochs=epochs,
            batch_size=config.batch_size,
            lr=lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            seed=seed,
            augment=config.augment,
            padding=core.padding,
            flip=flip,
            lr_schedule="cosine",
            progress=progress,
        )
        return {"state": model.state_dict(), "accuracy": result.accuracy}

    stored = TrainingCache(config.cache_dir).get_or_compute("phase0", description, train)
    model.load_state_dict(stored["state"])
    return float(stored["accuracy"])
