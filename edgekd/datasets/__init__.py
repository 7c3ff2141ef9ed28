"""Data sets, partitioning among clients, and tensor batching for edgekd.

* :mod:`edgekd.datasets.loading`: :func:`load_dataset` returns a cached :class:`DataBundle`
  (``digits`` embedded, ``cifar10``/``cifar100`` from disk, or any ``.npz`` archive).
* :mod:`edgekd.datasets.partition`: IID, Dirichlet and fixed-size client partitions, the server core
  set and public/private splits (pure numpy, seeded).
* :mod:`edgekd.datasets.transforms`: numpy -> tensor conversion, batch augmentation and the
  in-memory :class:`BatchLoader`.
"""

from edgekd.datasets.loading import DATASET_NAMES, DEFAULT_DATA_DIR, DataBundle, load_dataset
from edgekd.datasets.partition import (
    PARTITIONER_NAMES,
    DataSplit,
    class_histograms,
    core_split,
    dirichlet_partition,
    fixed_size_partition,
    iid_partition,
    make_split,
    public_private_split,
)
from edgekd.datasets.transforms import BatchLoader, augment_batch, default_padding, to_tensors

__all__ = [
    "DATASET_NAMES",
    "DEFAULT_DATA_DIR",
    "PARTITIONER_NAMES",
    "BatchLoader",
    "DataBundle",
    "DataSplit",
    "augment_batch",
    "class_histograms",
    "core_split",
    "default_padding",
    "dirichlet_partition",
    "fixed_size_partition",
    "iid_partition",
    "load_dataset",
    "make_split",
    "public_private_split",
    "to_tensors",
]
