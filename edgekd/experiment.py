"""The data and model of one experiment, derived deterministically from its config.

Server and clients each call these functions with the same :class:`ExperimentConfig`, so they
agree on the split (core part, edge partitions) without ever sending data: the split is a pure
function of the labels and ``partition-seed``. Results are cached per process because a
ClientApp is called once per message.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from edgekd.config import ExperimentConfig
from edgekd.datasets import (
    DATASET_NAMES,
    PARTITIONER_NAMES,
    DataBundle,
    DataSplit,
    default_padding,
    load_dataset,
    make_split,
    to_tensors,
)
from edgekd.models import EdgeKDModel, build_model, list_models

__all__ = [
    "TensorData",
    "build_experiment_model",
    "client_data",
    "core_data",
    "experiment_split",
    "load_bundle",
    "test_data",
    "validate_names",
]


@dataclass(frozen=True)
class TensorData:
    """Normalised inputs and labels ready for training, plus augmentation settings."""

    x: torch.Tensor
    y: torch.Tensor
    padding: int

    def __len__(self) -> int:
        """Number of examples."""
        return len(self.y)


def validate_names(cfg: ExperimentConfig) -> None:
    """Fail early, before any training, on an unknown dataset, model or partitioner name."""
    if cfg.dataset not in DATASET_NAMES:
        raise ValueError(
            f"unknown dataset {cfg.dataset!r}; valid datasets: {', '.join(DATASET_NAMES)}"
        )
    if cfg.model not in list_models():
        raise ValueError(f"unknown model {cfg.model!r}; valid models: {', '.join(list_models())}")
    if cfg.partitioner not in PARTITIONER_NAMES:
        raise ValueError(
            f"unknown partitioner {cfg.partitioner!r}; valid: {', '.join(PARTITIONER_NAMES)}"
        )
    if cfg.partitioner == "fixed" and cfg.partition_size < 1:
        raise ValueError(f"partitioner 'fixed' needs partition-size >= 1, got {cfg.partition_size}")


def load_bundle(cfg: ExperimentConfig) -> DataBundle:
    """Load the dataset named by ``cfg`` (cached by :func:`edgekd.datasets.load_dataset`)."""
    return load_dataset(
        cfg.dataset,
        data_dir=cfg.data_dir or None,
        npz_path=Path(cfg.npz_path).expanduser() if cfg.npz_path else None,
        download=cfg.download,
    )


@lru_cache(maxsize=8)
def _split(cfg: ExperimentConfig) -> DataSplit:
    bundle = load_bundle(cfg)
    return make_split(
        bundle.y_train,
        num_partitions=cfg.num_partitions,
        partitioner=cfg.partitioner,
        alpha=cfg.dirichlet_alpha,
        min_partition_size=cfg.min_partition_size,
        core_fraction=cfg.core_fraction,
        seed=cfg.partition_seed,
        partition_size=cfg.partition_size,
    )


def experiment_split(cfg: ExperimentConfig) -> DataSplit:
    """The core indices and edge partitions (indices into the training set) of ``cfg``."""
    return _split(cfg)


def _tensors(cfg: ExperimentConfig, x: np.ndarray, y: np.ndarray) -> TensorData:
    bundle = load_bundle(cfg)
    xt, yt = to_tensors(x, y, bundle.mean, bundle.std, normalize=cfg.normalize)
    return TensorData(xt, yt, default_padding(bundle.image_size))


@lru_cache(maxsize=64)
def client_data(cfg: ExperimentConfig, partition_id: int) -> TensorData:
    """The training data of edge/client ``partition_id``."""
    if not 0 <= partition_id < cfg.num_partitions:
        raise ValueError(
            f"partition-id {partition_id} is out of range for num-partitions {cfg.num_partitions}"
        )
    bundle = load_bundle(cfg)
    idx = experiment_split(cfg).partitions[partition_id]
    return _tensors(cfg, bundle.x_train[idx], bundle.y_train[idx])


@lru_cache(maxsize=4)
def core_data(cfg: ExperimentConfig) -> TensorData:
    """The server-held core training data (empty when ``core-fraction`` is 0)."""
    bundle = load_bundle(cfg)
    idx = experiment_split(cfg).core
    return _tensors(cfg, bundle.x_train[idx], bundle.y_train[idx])


@lru_cache(maxsize=4)
def test_data(cfg: ExperimentConfig) -> TensorData:
    """The held-out test split (the uniform global test set)."""
    bundle = load_bundle(cfg)
    return _tensors(cfg, bundle.x_test, bundle.y_test)


def build_experiment_model(
    cfg: ExperimentConfig, *, seed: int | None = None, name: str | None = None
) -> EdgeKDModel:
    """Build ``cfg.model`` (or ``name``) for the dataset's classes and channels.

    ``seed`` makes the initialisation reproducible (independent-KD baselines use another seed).
    """
    bundle = load_bundle(cfg)
    if seed is None:
        return build_model(name or cfg.model, bundle.num_classes, bundle.in_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(name or cfg.model, bundle.num_classes, bundle.in_channels)
