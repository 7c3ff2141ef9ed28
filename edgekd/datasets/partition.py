"""Splitting a labelled training set into a server core set and client partitions.

Everything here is pure numpy and deterministic for a given ``seed`` (each function builds its
own ``np.random.default_rng(seed)``; no global random state is touched). Every function returns
**sorted** ``int64`` index arrays, so a partition is a set of rows of the training set and the
order of its rows carries no information (the :class:`~edgekd.datasets.BatchLoader` shuffles).

:func:`dirichlet_partition` re-implements the semantics of
``flwr_datasets.partitioner.DirichletPartitioner`` (per-class Dirichlet proportions, optional
self-balancing, resampling until every partition reaches ``min_partition_size``) directly on a
label array. We implement it ourselves rather than depending on ``flwr-datasets``, which would
pull in roughly 378 MB of ``pyarrow``/``pandas``/``datasets`` for a few lines of numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PARTITIONER_NAMES",
    "DataSplit",
    "class_histograms",
    "core_split",
    "dirichlet_partition",
    "fixed_size_partition",
    "iid_partition",
    "make_split",
    "public_private_split",
]

PARTITIONER_NAMES: tuple[str, ...] = ("iid", "dirichlet", "fixed")


def _check_labels(labels: np.ndarray) -> np.ndarray:
    """Return ``labels`` as a 1-D ``int64`` array, or raise ``ValueError``."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_num_partitions(num_partitions: int, num_samples: int) -> None:
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if num_partitions > num_samples:
        raise ValueError(
            f"num_partitions ({num_partitions}) must not exceed the number of samples "
            f"({num_samples})"
        )


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def iid_partition(num_samples: int, num_partitions: int, seed: int) -> list[np.ndarray]:
    """Split ``range(num_samples)`` uniformly at random into near-equal parts.

    Parameters
    ----------
    num_samples : int
        Number of samples to distribute.
    num_partitions : int
        Number of partitions; ``1 <= num_partitions <= num_samples``.
    seed : int
        Seed of the shuffle.

    Returns
    -------
    list[np.ndarray]
        ``num_partitions`` disjoint, sorted ``int64`` index arrays that together cover every
        index once; their sizes differ by at most one.

    Raises
    ------
    ValueError
        If ``num_samples < 0``, ``num_partitions < 1`` or ``num_partitions > num_samples``.
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    _check_num_partitions(num_partitions, num_samples)
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_samples).astype(np.int64)
    return [np.sort(part) for part in np.array_split(order, num_partitions)]


def fixed_size_partition(
    num_samples: int, num_partitions: int, size: int, seed: int
) -> list[np.ndarray]:
    """Give every partition ``size`` distinct rows drawn at random, whatever their number.

    Partition ``p`` draws with its own generator, ``default_rng([seed, p])``, so it holds the
    same rows for any ``num_partitions`` (the data per edge is fixed as edges are added);
    partitions may overlap one another (there can be more partitions than rows).

    Raises
    ------
    ValueError
        If ``num_partitions < 1`` or ``size`` is not in ``[1, num_samples]``.
    """
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if not 1 <= size <= num_samples:
        raise ValueError(f"partition-size must be in [1, {num_samples}], got {size}")
    return [
        np.sort(np.random.default_rng([seed, p]).choice(num_samples, size, replace=False))
        for p in range(num_partitions)
    ]


def _dirichlet_draw(
    labels: np.ndarray,
    classes: np.ndarray,
    num_partitions: int,
    alpha: float,
    self_balancing: bool,
    rng: np.random.Generator,
) -> list[list[np.ndarray]]:
    """One Dirichlet assignment of every sample to a partition (no size check)."""
    avg_size = labels.size / num_partitions
    chunks: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
    sizes = np.zeros(num_partitions, dtype=np.int64)
    concentration = np.full(num_partitions, alpha, dtype=np.float64)
    for k in classes:
        idx_k = np.flatnonzero(labels == k)
        rng.shuffle(idx_k)
        proportions = rng.dirichlet(concentration)
        if self_balancing:
            # Partitions already above the average size receive nothing more of this class.
            balanced = np.where(sizes > avg_size, 0.0, proportions)
            total = balanced.sum()
            if total > 0 and np.isfinite(total):
                proportions = balanced / total
        cut_points = (np.cumsum(proportions) * idx_k.size).astype(np.int64)[:-1]
        for pid, part in enumerate(np.split(idx_k, cut_points)):
            chunks[pid].append(part)
            sizes[pid] += part.size
    return chunks


def dirichlet_partition(
    labels: np.ndarray,
    num_partitions: int,
    alpha: float,
    *,
    min_partition_size: int = 10,
    seed: int = 42,
    self_balancing: bool = False,
    max_tries: int = 10,
) -> list[np.ndarray]:
    """Label-skewed partitioning with per-class Dirichlet proportions.

    For every class (in sorted order) proportions ``p ~ Dir(alpha * 1_P)`` over the ``P``
    partitions are drawn, the class's indices are shuffled and split at the cumulative
    proportions. With ``self_balancing`` the proportion of every partition that already holds
    more than ``len(labels) / P`` samples is zeroed (and the rest renormalised) before the
    split. If some partition ends with fewer than ``min_partition_size`` samples the whole
    assignment is drawn again, at most ``max_tries`` times. This mirrors
    ``flwr_datasets.partitioner.DirichletPartitioner``.

    Parameters
    ----------
    labels : np.ndarray
        1-D integer labels of the samples to partition.
    num_partitions : int
        Number of partitions ``P``; ``1 <= P <= len(labels)``.
    alpha : float
        Dirichlet concentration, ``> 0``. Small values (e.g. 0.1) give strongly skewed label
        distributions, large values (e.g. 100) nearly IID ones.
    min_partition_size : int, optional
        Smallest acceptable partition size, by default 10.
    seed : int, optional
        Seed of the Dirichlet draws and shuffles, by default 42.
    self_balancing : bool, optional
        Stop feeding partitions that are above the average size, by default False.
    max_tries : int, optional
        Number of complete draws before giving up, by default 10.

    Returns
    -------
    list[np.ndarray]
        ``P`` disjoint, sorted ``int64`` index arrays into ``labels`` covering every index.

    Raises
    ------
    ValueError
        On invalid arguments (``P < 1``, ``alpha <= 0``, more partitions than samples,
        ``min_partition_size * P > len(labels)``, ``max_tries < 1``), or when no draw within
        ``max_tries`` satisfied ``min_partition_size``.
    """
    labels = _check_labels(labels)
    num_samples = int(labels.size)
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    _check_num_partitions(num_partitions, num_samples)
    if min_partition_size < 0:
        raise ValueError(f"min_partition_size must be >= 0, got {min_partition_size}")
    if min_partition_size * num_partitions > num_samples:
        raise ValueError(
            f"min_partition_size ({min_partition_size}) * num_partitions ({num_partitions}) "
            f"= {min_partition_size * num_partitions} exceeds the number of samples "
            f"({num_samples})"
        )
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries}")

    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    smallest = -1
    for _ in range(max_tries):
        chunks = _dirichlet_draw(labels, classes, num_partitions, alpha, self_balancing, rng)
        parts = [np.sort(np.concatenate(c)).astype(np.int64, copy=False) for c in chunks]
        smallest = min(p.size for p in parts)
        if smallest >= min_partition_size:
            return parts
    raise ValueError(
        f"could not draw a Dirichlet partition with alpha={alpha}, "
        f"num_partitions={num_partitions} and min_partition_size={min_partition_size} in "
        f"{max_tries} tries (smallest partition size reached: {smallest}); increase alpha, "
        "lower min_partition_size or use fewer partitions"
    )


def _stratified_take(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Select ``round(fraction * N)`` indices, stratified by label (largest remainder)."""
    num_samples = labels.size
    total = round(fraction * num_samples)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * fraction
    take = np.floor(exact).astype(np.int64)
    remaining = total - int(take.sum())
    if remaining > 0:
        # Largest fractional part first; ties broken by class order (stable sort).
        order = np.argsort(-(exact - take), kind="stable")
        take[order[:remaining]] += 1
    chosen: list[np.ndarray] = []
    for k, n_k in zip(classes, take, strict=True):
        idx_k = np.flatnonzero(labels == k)
        rng.shuffle(idx_k)
        chosen.append(idx_k[:n_k])
    selected = np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)
    mask = np.ones(num_samples, dtype=bool)
    mask[selected] = False
    return selected.astype(np.int64), np.flatnonzero(mask).astype(np.int64)


def core_split(
    labels: np.ndarray, core_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split off the server-held core set (cloned distillation).

    The core set has ``round(core_fraction * N)`` samples with every class represented in
    proportion to its frequency (largest-remainder rounding). In the cloned-distillation
    setting the server keeps one of ten equal parts, i.e. ``core_fraction=0.1``.

    Parameters
    ----------
    labels : np.ndarray
        1-D integer labels of the training set.
    core_fraction : float
        Fraction of samples in the core set, in ``[0, 1)``; 0 gives an empty core.
    seed : int
        Seed of the per-class shuffles.

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        ``(core_indices, rest_indices)``: disjoint, sorted ``int64`` arrays covering
        ``range(len(labels))``.

    Raises
    ------
    ValueError
        If ``core_fraction`` is outside ``[0, 1)`` or ``labels`` is not 1-D integer.
    """
    labels = _check_labels(labels)
    _check_fraction("core_fraction", core_fraction)
    return _stratified_take(labels, core_fraction, np.random.default_rng(seed))


def public_private_split(
    num_samples: int, public_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random split into public (alignment) and private data for FedMD-style methods.

    Parameters
    ----------
    num_samples : int
        Number of samples.
    public_fraction : float
        Fraction of samples that become public, in ``[0, 1)``.
    seed : int
        Seed of the shuffle.

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        ``(public_indices, private_indices)``: disjoint, sorted ``int64`` arrays covering
        ``range(num_samples)``; the public part has ``round(public_fraction * num_samples)``
        elements.

    Raises
    ------
    ValueError
        If ``num_samples < 0`` or ``public_fraction`` is outside ``[0, 1)``.
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    _check_fraction("public_fraction", public_fraction)
    order = np.random.default_rng(seed).permutation(num_samples).astype(np.int64)
    num_public = round(public_fraction * num_samples)
    return np.sort(order[:num_public]), np.sort(order[num_public:])


def class_histograms(
    labels: np.ndarray, partitions: Sequence[np.ndarray], num_classes: int
) -> np.ndarray:
    """Count the samples of every class in every partition.

    Parameters
    ----------
    labels : np.ndarray
        1-D integer labels in ``[0, num_classes)``.
    partitions : Sequence[np.ndarray]
        Index arrays into ``labels``.
    num_classes : int
        Number of classes ``C``.

    Returns
    -------
    np.ndarray
        ``(P, C)`` ``int64`` array; entry ``[p, c]`` counts samples of class ``c`` in
        partition ``p``.

    Raises
    ------
    ValueError
        If ``num_classes < 1`` or a label is outside ``[0, num_classes)``.
    """
    labels = _check_labels(labels)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]"
        )
    hist = np.zeros((len(partitions), num_classes), dtype=np.int64)
    for p, idx in enumerate(partitions):
        hist[p] = np.bincount(labels[np.asarray(idx, dtype=np.int64)], minlength=num_classes)
    return hist


@dataclass(frozen=True, eq=False)
class DataSplit:
    """How the training set is divided among the server core set and the clients.

    Attributes
    ----------
    core : np.ndarray
        Sorted indices (into the training set) of the server-held core set; may be empty.
    partitions : tuple[np.ndarray, ...]
        Sorted indices (into the training set) of every client's partition; disjoint from
        ``core`` and, but for the ``"fixed"`` partitioner, from each other.
    """

    core: np.ndarray
    partitions: tuple[np.ndarray, ...]

    @property
    def num_partitions(self) -> int:
        """Number of client partitions."""
        return len(self.partitions)

    def histograms(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """Per-partition class counts, see :func:`class_histograms`.

        Parameters
        ----------
        labels : np.ndarray
            Labels of the full training set.
        num_classes : int
            Number of classes.

        Returns
        -------
        np.ndarray
            ``(num_partitions, num_classes)`` ``int64`` counts.
        """
        return class_histograms(labels, self.partitions, num_classes)


def make_split(
    labels: np.ndarray,
    *,
    num_partitions: int,
    partitioner: str = "iid",
    alpha: float = 0.5,
    min_partition_size: int = 10,
    core_fraction: float = 0.0,
    seed: int = 42,
    partition_size: int = 0,
) -> DataSplit:
    """Split off the core set, then partition the rest among the clients.

    Parameters
    ----------
    labels : np.ndarray
        1-D integer labels of the full training set.
    num_partitions : int
        Number of client partitions.
    partitioner : str, optional
        ``"iid"`` (:func:`iid_partition`), ``"dirichlet"`` (:func:`dirichlet_partition`) or
        ``"fixed"`` (:func:`fixed_size_partition`), by default ``"iid"``.
    alpha : float, optional
        Dirichlet concentration (``"dirichlet"`` only), by default 0.5.
    min_partition_size : int, optional
        Minimum partition size (``"dirichlet"`` only), by default 10.
    core_fraction : float, optional
        Fraction of the training set held by the server (:func:`core_split`), by default 0.
    seed : int, optional
        Seed of both the core split and the partitioning, by default 42.
    partition_size : int, optional
        Rows per partition (``"fixed"`` only).

    Returns
    -------
    DataSplit
        Core and partition indices into the full training set.

    Raises
    ------
    ValueError
        For an unknown ``partitioner`` or any invalid argument of the underlying functions.
    """
    key = partitioner.strip().lower()
    if key not in PARTITIONER_NAMES:
        raise ValueError(
            f"unknown partitioner {partitioner!r}; valid partitioners: "
            f"{', '.join(PARTITIONER_NAMES)}"
        )
    labels = _check_labels(labels)
    core, rest = core_split(labels, core_fraction, seed)
    if key == "iid":
        local = iid_partition(rest.size, num_partitions, seed)
    elif key == "fixed":
        local = fixed_size_partition(rest.size, num_partitions, partition_size, seed)
    else:
        local = dirichlet_partition(
            labels[rest],
            num_partitions,
            alpha,
            min_partition_size=min_partition_size,
            seed=seed,
        )
    # ``rest`` is sorted and local indices are sorted, so the mapped arrays stay sorted.
    return DataSplit(core=core, partitions=tuple(rest[idx] for idx in local))
