"""Class-incremental split: the cloud learns the old classes, each edge adds one new class.

Paper: K. Zhao, Y. Chen and M. Zhao, "Enabling Deep Learning on Edge Devices through Filter
Pruning and Knowledge Transfer", 2022, https://arxiv.org/abs/2201.10947 (section 5.2.1, the
"9 + 1 categories" incremental task), made federated: one new class per edge.

The split (pure numpy, seeded; server and edges compute it alike, no data travels):

* ``new_classes = (n_0, ..., n_{E-1})``: edge ``i``'s new class, distinct, one per edge. The
  *old* classes are all the others (:func:`old_classes`, ascending); the cloud's teacher and
  students are trained on them only.
* Cloud: the core split's images of old classes (:func:`cloud_indices`); every new class is left
  out, so no edge's new class is ever seen by the cloud.
* Edge ``i`` (:func:`edge_indices`): *every* non-core image of its new class ``n_i`` (a new class
  lives on exactly one edge; the other edges never see it) plus its own IID partition's
  old-class images, of which a seeded fraction ``old_fraction`` is kept (0: the edge holds its
  new class only, the paper's setting; 1: all its old-class images).
* Outputs (:func:`local_labels`): the old classes in ascending order are outputs
  ``0 .. len(old) - 1``; an edge's new class is output ``len(old)``, appended to the student's
  classifier on the edge.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "check_new_classes",
    "cloud_indices",
    "edge_indices",
    "edge_selection",
    "local_labels",
    "old_classes",
]


def check_new_classes(new_classes: Sequence[int], num_classes: int) -> tuple[int, ...]:
    """The new classes as a tuple; ``ValueError`` unless distinct labels in ``[0, C)`` that
    leave at least 2 old classes."""
    values = tuple(int(c) for c in new_classes)
    if not values or len(set(values)) != len(values):
        raise ValueError(f"new classes must be distinct, one per edge, got {values!r}")
    bad = [c for c in values if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"new classes {bad} are not labels of this {num_classes}-class data set")
    if num_classes - len(values) < 2:
        raise ValueError(
            f"{len(values)} new classes leave {num_classes - len(values)} old class(es) of "
            f"{num_classes}: the cloud needs at least 2"
        )
    return values


def old_classes(num_classes: int, new_classes: Sequence[int]) -> tuple[int, ...]:
    """The classes the cloud trains on: all but the new ones, ascending."""
    new = set(check_new_classes(new_classes, num_classes))
    return tuple(c for c in range(num_classes) if c not in new)


def local_labels(
    labels: np.ndarray, old: Sequence[int], new_class: int | None = None
) -> np.ndarray:
    """Dataset labels -> output indices: old class ``old[k]`` -> ``k``, ``new_class`` ->
    ``len(old)``, any other label -> ``-1``."""
    table = {int(c): k for k, c in enumerate(old)}
    if new_class is not None:
        table[int(new_class)] = len(old)
    return np.array([table.get(int(c), -1) for c in np.asarray(labels)], dtype=np.int64)


def cloud_indices(labels: np.ndarray, core: np.ndarray, new_classes: Sequence[int]) -> np.ndarray:
    """The core indices whose label is not a new class (the cloud's training data)."""
    core = np.asarray(core, dtype=np.int64)
    return core[~np.isin(np.asarray(labels)[core], list(new_classes))]


def edge_selection(
    labels: np.ndarray,
    old_pool: np.ndarray,
    new_pool: np.ndarray,
    *,
    old: Sequence[int],
    new_class: int,
    old_fraction: float,
    seed: int,
) -> np.ndarray:
    """Sorted indices: every ``new_pool`` index of ``new_class`` plus a seeded
    ``old_fraction`` (rounded) of the ``old_pool`` indices of old classes."""
    if not 0.0 <= old_fraction <= 1.0:
        raise ValueError(f"old_fraction must be in [0, 1], got {old_fraction!r}")
    labels = np.asarray(labels)
    new_pool = np.asarray(new_pool, dtype=np.int64)
    old_pool = np.asarray(old_pool, dtype=np.int64)
    new = new_pool[labels[new_pool] == new_class]
    candidates = old_pool[np.isin(labels[old_pool], list(old))]
    keep = round(old_fraction * len(candidates))
    chosen = np.random.default_rng(seed).choice(candidates, size=keep, replace=False)
    return np.sort(np.concatenate([new, chosen.astype(np.int64)]))


def edge_indices(
    labels: np.ndarray,
    core: np.ndarray,
    partitions: Sequence[np.ndarray],
    partition_id: int,
    *,
    old: Sequence[int],
    new_class: int,
    old_fraction: float,
    seed: int,
) -> np.ndarray:
    """Edge ``partition_id``'s training indices (see the module docstring): every non-core
    image of ``new_class`` and ``old_fraction`` of its IID partition's ``old``-class images.

    ``partitions`` are the IID partitions of the non-core images.
    """
    if not 0 <= partition_id < len(partitions):
        raise ValueError(f"partition {partition_id} is not one of {len(partitions)} partitions")
    labels = np.asarray(labels)
    rest = np.setdiff1d(np.arange(len(labels)), np.asarray(core, dtype=np.int64))
    return edge_selection(
        labels,
        partitions[partition_id],
        rest,
        old=old,
        new_class=new_class,
        old_fraction=old_fraction,
        seed=seed,
    )
