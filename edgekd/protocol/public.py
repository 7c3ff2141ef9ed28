"""Public data both sides of a public-data method derive from the run config (FedMD, KTG).

Public data is never sent: a server and its clients name rows of the same **public pool** by
index, each loading the pool from the run config (:func:`public_pool`). Two sources:

* ``"split"``: the stratified ``fraction`` of the training set (the core split of
  :func:`edgekd.experiment.experiment_split`), labelled in the clients' label space and taken
  out of the private partitions (:func:`private_config`);
* ``"npz:<path>"``: ``x_train`` followed by ``x_test`` of another npz data set of the same image
  shape (e.g. CIFAR-100 images as unlabelled transfer data for CIFAR-10 clients); the private
  partitions are then those of the run config.

Used by :mod:`edgekd.protocol.fedmd` and :mod:`edgekd.protocol.ktg`; each names its own keys
(``fedmd-public-source``, ``ktg-public-source``) through ``prefix``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgekd.config import ExperimentConfig
from edgekd.datasets import default_padding, load_dataset, to_tensors
from edgekd.experiment import TensorData, core_data, experiment_split, load_bundle

__all__ = [
    "PublicPool",
    "check_public_source",
    "private_config",
    "public_labels_in_private_space",
    "public_npz_path",
    "public_pool",
    "public_pool_size",
]


def check_public_source(source: str, fraction: float, prefix: str = "") -> None:
    """Raise ``ValueError`` naming the key (``<prefix>public-source``/``-fraction``) when bad."""
    if source != "split" and not source.startswith("npz:"):
        raise ValueError(f"{prefix}public-source must be 'split' or 'npz:<path>', got {source!r}")
    if source == "split" and not 0.0 < fraction < 1.0:
        raise ValueError(f"{prefix}public-fraction must be in (0, 1), got {fraction}")


def public_labels_in_private_space(source: str) -> bool:
    """Whether the pool's labels are the clients' classes (only the ``"split"`` source)."""
    return source == "split"


def private_config(cfg: ExperimentConfig, source: str, fraction: float) -> ExperimentConfig:
    """The experiment config whose partitions are the clients' private data.

    In ``"split"`` mode the public set is the stratified core split of size ``fraction`` and
    the partitions are drawn from the rest; with ``"npz:<path>"`` the partitions are those of
    ``cfg``.
    """
    if source == "split":
        return cfg.replace(core_fraction=fraction)
    return cfg


def public_npz_path(source: str) -> Path:
    """The file of an ``"npz:<path>"`` public source (relative to the working directory)."""
    path = Path(source.removeprefix("npz:")).expanduser()
    if not path.is_absolute():
        path = path.resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"public data {source!r}: file {path} not found (relative paths are "
            "resolved against the working directory; give an absolute path under flwr run)"
        )
    return path


@dataclass(frozen=True)
class PublicPool:
    """The public data: normalised images, their own labels and number of classes."""

    data: TensorData
    num_classes: int


def public_pool_size(cfg: ExperimentConfig, source: str, fraction: float) -> int:
    """Number of rows of the public pool (what the indices of the protocol run over)."""
    check_public_source(source, fraction)
    if source == "split":
        return len(experiment_split(private_config(cfg, source, fraction)).core)
    aux = load_dataset("npz", npz_path=public_npz_path(source))
    return len(aux.y_train) + len(aux.y_test)


@lru_cache(maxsize=8)
def public_pool(cfg: ExperimentConfig, source: str, fraction: float) -> PublicPool:
    """Load the public pool; index ``i`` of the protocol is row ``i`` of ``pool.data``.

    Parameters
    ----------
    cfg : ExperimentConfig
        The run's config (the private dataset).
    source : str
        ``"split"`` or ``"npz:<path>"`` (module docstring).
    fraction : float
        Public share in ``"split"`` mode, in ``(0, 1)``.

    Returns
    -------
    PublicPool
        Images normalised with the private data set's statistics, and their labels.
    """
    check_public_source(source, fraction)
    if source == "split":
        public_cfg = private_config(cfg, source, fraction)
        return PublicPool(core_data(public_cfg), load_bundle(cfg).num_classes)
    private = load_bundle(cfg)
    aux = load_dataset("npz", npz_path=public_npz_path(source))
    if aux.x_train.shape[1:] != private.x_train.shape[1:]:
        raise ValueError(
            f"public data {source!r} has images of shape {aux.x_train.shape[1:]}, "
            f"but the private data set has {private.x_train.shape[1:]}"
        )
    x = np.concatenate([aux.x_train, aux.x_test])
    y = np.concatenate([aux.y_train, aux.y_test])
    xt, yt = to_tensors(x, y, private.mean, private.std, normalize=cfg.normalize)
    return PublicPool(TensorData(xt, yt, default_padding(private.image_size)), aux.num_classes)
