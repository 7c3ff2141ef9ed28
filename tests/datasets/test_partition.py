"""Tests for edgekd.datasets.partition."""

from __future__ import annotations

import re

import numpy as np
import pytest

from edgekd.datasets import (
    DataSplit,
    class_histograms,
    core_split,
    dirichlet_partition,
    fixed_size_partition,
    iid_partition,
    make_split,
    public_private_split,
)


def _labels(num_samples: int = 1000, num_classes: int = 10, seed: int = 0) -> np.ndarray:
    """Balanced labels in a random order."""
    labels = np.arange(num_samples) % num_classes
    return np.random.default_rng(seed).permutation(labels).astype(np.int64)


def _assert_disjoint_cover(parts: list[np.ndarray], num_samples: int) -> None:
    joined = np.concatenate(parts)
    assert joined.dtype == np.int64
    assert joined.size == num_samples
    np.testing.assert_array_equal(np.sort(joined), np.arange(num_samples))


def _mean_tv_distance(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> float:
    """Mean total-variation distance between partition and global label distributions."""
    hist = class_histograms(labels, parts, num_classes).astype(np.float64)
    local = hist / hist.sum(axis=1, keepdims=True)
    global_dist = np.bincount(labels, minlength=num_classes) / labels.size
    return float(np.mean(0.5 * np.abs(local - global_dist).sum(axis=1)))


def test_iid_partition_disjoint_cover_and_balanced() -> None:
    """IID partitions are disjoint, cover every index and differ in size by at most one."""
    parts = iid_partition(103, 10, seed=1)
    assert len(parts) == 10
    _assert_disjoint_cover(parts, 103)
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert all(np.all(np.diff(p) > 0) for p in parts)


def test_iid_partition_deterministic_per_seed() -> None:
    """The same seed gives the same IID partitions, another seed different ones."""
    a = iid_partition(200, 4, seed=3)
    b = iid_partition(200, 4, seed=3)
    c = iid_partition(200, 4, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_iid_partition_rejects_bad_counts() -> None:
    """IID partitioning rejects zero partitions and more partitions than samples."""
    with pytest.raises(ValueError, match="0"):
        iid_partition(10, 0, seed=0)
    with pytest.raises(ValueError, match="11"):
        iid_partition(10, 11, seed=0)


def test_dirichlet_partition_disjoint_and_cover() -> None:
    """Dirichlet partitions are disjoint and cover every index exactly once."""
    labels = _labels()
    parts = dirichlet_partition(labels, 8, alpha=0.5, seed=0)
    assert len(parts) == 8
    _assert_disjoint_cover(parts, labels.size)


def test_dirichlet_partition_deterministic_per_seed() -> None:
    """The same seed reproduces the Dirichlet partitions; a different seed changes them."""
    labels = _labels()
    a = dirichlet_partition(labels, 5, alpha=0.5, seed=7)
    b = dirichlet_partition(labels, 5, alpha=0.5, seed=7)
    c = dirichlet_partition(labels, 5, alpha=0.5, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_dirichlet_partition_honours_min_size() -> None:
    """Every Dirichlet partition has at least min_partition_size samples."""
    labels = _labels()
    for seed in range(5):
        parts = dirichlet_partition(labels, 10, alpha=0.3, min_partition_size=20, seed=seed)
        assert min(p.size for p in parts) >= 20


def test_dirichlet_small_alpha_gives_more_label_skew() -> None:
    """alpha=0.1 yields clearly more label skew (mean TV distance) than alpha=100."""
    labels = _labels(2000)
    skewed = dirichlet_partition(labels, 10, alpha=0.1, min_partition_size=5, seed=0)
    uniform = dirichlet_partition(labels, 10, alpha=100.0, min_partition_size=5, seed=0)
    tv_skewed = _mean_tv_distance(labels, skewed, 10)
    tv_uniform = _mean_tv_distance(labels, uniform, 10)
    assert tv_uniform < 0.15
    assert tv_skewed > 0.5
    assert tv_skewed > 3 * tv_uniform


def test_dirichlet_self_balancing_is_valid_partition() -> None:
    """Self-balancing still gives a deterministic, disjoint, covering partition."""
    labels = _labels()
    a = dirichlet_partition(labels, 6, alpha=0.3, self_balancing=True, seed=2)
    b = dirichlet_partition(labels, 6, alpha=0.3, self_balancing=True, seed=2)
    _assert_disjoint_cover(a, labels.size)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("alpha", [0.0, -0.5])
def test_dirichlet_rejects_non_positive_alpha(alpha: float) -> None:
    """alpha <= 0 raises ValueError whose message contains the value."""
    with pytest.raises(ValueError, match=f"alpha.*{re.escape(str(alpha))}"):
        dirichlet_partition(_labels(), 4, alpha=alpha)


def test_dirichlet_rejects_too_many_partitions() -> None:
    """More partitions than samples raises ValueError naming both numbers."""
    with pytest.raises(ValueError, match=r"num_partitions \(20\).*\(10\)"):
        dirichlet_partition(np.arange(10) % 2, 20, alpha=1.0, min_partition_size=0)


def test_dirichlet_rejects_zero_partitions() -> None:
    """num_partitions < 1 raises ValueError naming the value."""
    with pytest.raises(ValueError, match="num_partitions must be >= 1, got 0"):
        dirichlet_partition(_labels(), 0, alpha=1.0)


def test_dirichlet_rejects_infeasible_min_size() -> None:
    """min_partition_size * num_partitions > num_samples raises ValueError naming the values."""
    with pytest.raises(ValueError, match=r"min_partition_size \(30\).*num_partitions \(4\)"):
        dirichlet_partition(_labels(100), 4, alpha=1.0, min_partition_size=30)


def test_dirichlet_gives_up_after_bounded_tries() -> None:
    """An unattainable min size raises ValueError after max_tries, reporting the smallest size."""
    labels = _labels(200)
    with pytest.raises(ValueError, match="smallest partition size reached") as info:
        dirichlet_partition(labels, 10, alpha=0.01, min_partition_size=20, seed=0, max_tries=3)
    message = str(info.value)
    assert "alpha=0.01" in message
    assert "num_partitions=10" in message
    assert "min_partition_size=20" in message


def test_core_split_stratified_disjoint_and_sized() -> None:
    """core_split returns round(f*N) stratified, disjoint indices that cover with the rest."""
    labels = np.repeat(np.arange(5), [100, 200, 300, 50, 350])
    core, rest = core_split(labels, 0.1, seed=0)
    assert core.size == 100
    _assert_disjoint_cover([core, rest], labels.size)
    np.testing.assert_array_equal(np.bincount(labels[core]), [10, 20, 30, 5, 35])


def test_core_split_uneven_rounding_keeps_total() -> None:
    """With fractional per-class shares the core still has round(f*N) samples, each class
    within one of its proportional share."""
    labels = _labels(997, num_classes=7)
    core, rest = core_split(labels, 0.13, seed=5)
    assert core.size == round(0.13 * 997)
    _assert_disjoint_cover([core, rest], 997)
    counts = np.bincount(labels[core], minlength=7)
    expected = np.bincount(labels, minlength=7) * 0.13
    assert np.all(np.abs(counts - expected) < 1)


def test_core_split_zero_fraction_and_bounds() -> None:
    """core_fraction 0 gives an empty core; values outside [0, 1) are rejected."""
    labels = _labels(50)
    core, rest = core_split(labels, 0.0, seed=0)
    assert core.size == 0
    np.testing.assert_array_equal(rest, np.arange(50))
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=re.escape(str(bad))):
            core_split(labels, bad, seed=0)


def test_core_split_deterministic() -> None:
    """core_split is reproducible per seed and changes with the seed."""
    labels = _labels(500)
    a, _ = core_split(labels, 0.2, seed=1)
    b, _ = core_split(labels, 0.2, seed=1)
    c, _ = core_split(labels, 0.2, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_public_private_split_disjoint_and_cover() -> None:
    """public_private_split is disjoint, covers every index and has the requested size."""
    public, private = public_private_split(250, 0.2, seed=0)
    assert public.size == 50
    _assert_disjoint_cover([public, private], 250)
    with pytest.raises(ValueError, match=r"1\.5"):
        public_private_split(250, 1.5, seed=0)


def test_class_histograms_hand_computed() -> None:
    """class_histograms matches a hand-computed count on a tiny example."""
    labels = np.array([0, 1, 1, 2, 0, 2, 2])
    parts = [np.array([0, 1, 2]), np.array([3, 5, 6]), np.array([4])]
    hist = class_histograms(labels, parts, 4)
    expected = np.array([[1, 2, 0, 0], [0, 0, 3, 0], [1, 0, 0, 0]])
    assert hist.dtype == np.int64
    np.testing.assert_array_equal(hist, expected)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        class_histograms(labels, parts, 2)


def test_make_split_excludes_core_from_partitions() -> None:
    """make_split keeps the core out of every partition and covers the training set."""
    labels = _labels(600)
    for partitioner in ("iid", "dirichlet"):
        split = make_split(
            labels, num_partitions=5, partitioner=partitioner, core_fraction=0.1, seed=3
        )
        assert isinstance(split, DataSplit)
        assert split.core.size == 60
        assert split.num_partitions == 5
        for part in split.partitions:
            assert np.intersect1d(part, split.core).size == 0
        _assert_disjoint_cover([split.core, *split.partitions], labels.size)
        hist = split.histograms(labels, 10)
        assert hist.shape == (5, 10)
        assert hist.sum() == 540


def test_make_split_without_core_matches_partitioner() -> None:
    """Without a core, make_split('iid') equals iid_partition with the same seed."""
    labels = _labels(100)
    split = make_split(labels, num_partitions=4, seed=9)
    assert split.core.size == 0
    expected = iid_partition(100, 4, seed=9)
    assert all(np.array_equal(a, b) for a, b in zip(split.partitions, expected, strict=True))


def test_make_split_unknown_partitioner() -> None:
    """An unknown partitioner raises ValueError listing the valid ones."""
    with pytest.raises(ValueError, match="iid, dirichlet") as info:
        make_split(_labels(100), num_partitions=2, partitioner="shards")
    assert "shards" in str(info.value)


def test_fixed_size_partition_keeps_each_edge_data_as_edges_are_added() -> None:
    """Every partition has exactly ``size`` distinct rows, the same ones for 10 or 1,000
    partitions (its own seeded draw), and there may be more partitions than rows."""
    ten = fixed_size_partition(50, 10, 8, seed=4)
    thousand = fixed_size_partition(50, 1000, 8, seed=4)
    assert all(len(p) == 8 and len(np.unique(p)) == 8 for p in thousand)
    assert all(np.array_equal(a, b) for a, b in zip(ten, thousand[:10], strict=True))
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in ten)
    assert not np.array_equal(ten[0], ten[1])
    with pytest.raises(ValueError, match=r"partition-size must be in \[1, 50\], got 51"):
        fixed_size_partition(50, 3, 51, seed=0)


def test_make_split_fixed_draws_from_outside_the_core() -> None:
    """make_split('fixed') keeps the core out and gives every edge partition_size rows."""
    labels = _labels(600)
    split = make_split(
        labels, num_partitions=700, partitioner="fixed", partition_size=5, core_fraction=0.1
    )
    assert split.core.size == 60 and split.num_partitions == 700
    for part in split.partitions:
        assert part.size == 5 and np.intersect1d(part, split.core).size == 0
