"""Tests for edgekd.datasets.loading (tiny, self-made data only; no download)."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torchvision

from edgekd.datasets import DATASET_NAMES, DataBundle, load_dataset, loading


def _images(num: int, seed: int) -> np.ndarray:
    """Random uint8 HWC 32x32 RGB images."""
    return np.random.default_rng(seed).integers(0, 256, (num, 32, 32, 3), dtype=np.uint8)


def _dump(path: Path, entry: dict) -> None:
    with path.open("wb") as handle:
        pickle.dump(entry, handle)


def _encode(entry: dict[str, object], bytes_keys: bool) -> dict:
    return {k.encode("ascii") if bytes_keys else k: v for k, v in entry.items()}


def _batch(x: np.ndarray, y: np.ndarray, label_key: str, bytes_keys: bool) -> dict:
    """A batch dict in the official layout: (N, 3072) uint8 row-major CHW plus labels."""
    data = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)
    return _encode({"data": data, label_key: [int(v) for v in y]}, bytes_keys)


def _write_cifar10(
    root: Path, per_batch: int = 4, num_test: int = 5, bytes_keys: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Write a tiny cifar-10-batches-py directory; return the arrays written."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    x_train = _images(5 * per_batch, seed=1)
    y_train = np.arange(5 * per_batch, dtype=np.int64) % 10
    x_test = _images(num_test, seed=2)
    y_test = (np.arange(num_test, dtype=np.int64) * 3) % 10
    for i in range(5):
        rows = slice(i * per_batch, (i + 1) * per_batch)
        _dump(
            folder / f"data_batch_{i + 1}",
            _batch(x_train[rows], y_train[rows], "labels", bytes_keys),
        )
    _dump(folder / "test_batch", _batch(x_test, y_test, "labels", bytes_keys))
    names = [f"class{i}" for i in range(10)]
    _dump(folder / "batches.meta", _encode({"label_names": names}, bytes_keys))
    return x_train, y_train, x_test, y_test


def _write_cifar100(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Write a tiny cifar-100-python directory; return the arrays written."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    x_train, x_test = _images(12, seed=3), _images(6, seed=4)
    y_train = np.array([0, 5, 99, 42, 17, 3, 3, 80, 61, 7, 0, 98], dtype=np.int64)
    y_test = np.array([1, 2, 99, 50, 4, 0], dtype=np.int64)
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        entry = _batch(x, y, "fine_labels", bytes_keys=False)
        entry["coarse_labels"] = [int(v) // 5 for v in y]
        _dump(folder / name, entry)
    _dump(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    return x_train, y_train, x_test, y_test


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _assert_round_trip(
    bundle: DataBundle, arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
) -> None:
    x_train, y_train, x_test, y_test = arrays
    assert bundle.x_train.dtype == np.uint8
    assert bundle.y_train.dtype == np.int64
    np.testing.assert_array_equal(bundle.x_train, x_train)
    np.testing.assert_array_equal(bundle.y_train, y_train)
    np.testing.assert_array_equal(bundle.x_test, x_test)
    np.testing.assert_array_equal(bundle.y_test, y_test)


def _accept_files_as_official(monkeypatch: pytest.MonkeyPatch, cls: type, folder: Path) -> None:
    """Make torchvision's md5 list (the official sums) match the files written in ``folder``."""
    train_list = [[name, _md5(folder / name)] for name, _ in cls.train_list]
    test_list = [[name, _md5(folder / name)] for name, _ in cls.test_list]
    meta = {**cls.meta, "md5": _md5(folder / cls.meta["filename"])}
    monkeypatch.setattr(cls, "train_list", train_list)
    monkeypatch.setattr(cls, "test_list", test_list)
    monkeypatch.setattr(cls, "meta", meta)


def test_cifar10_loads_through_torchvision_when_checksums_match(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With md5 sums that match the files, torchvision's reader gives the arrays, HWC."""
    arrays = _write_cifar10(tmp_path, bytes_keys=False)
    _accept_files_as_official(
        monkeypatch, torchvision.datasets.CIFAR10, tmp_path / "cifar-10-batches-py"
    )
    bundle = load_dataset("cifar10", data_dir=str(tmp_path))
    _assert_round_trip(bundle, arrays)
    assert bundle.name == "cifar10"
    assert bundle.num_classes == 10
    assert bundle.x_train.shape == (20, 32, 32, 3)
    assert bundle.in_channels == 3
    assert bundle.image_size == 32
    x = arrays[0].astype(np.float64) / 255.0
    np.testing.assert_allclose(bundle.mean, x.mean(axis=(0, 1, 2)), rtol=1e-10)
    np.testing.assert_allclose(bundle.std, x.std(axis=(0, 1, 2)), rtol=1e-10)


def test_cifar100_loads_with_fine_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny CIFAR-100 (fine labels) whose sums match loads exactly with 100 classes."""
    arrays = _write_cifar100(tmp_path)
    _accept_files_as_official(
        monkeypatch, torchvision.datasets.CIFAR100, tmp_path / "cifar-100-python"
    )
    bundle = load_dataset("cifar100", data_dir=tmp_path)
    _assert_round_trip(bundle, arrays)
    assert bundle.num_classes == 100
    assert bundle.name == "cifar100"


class _Tripwire:
    """Unpickling this object creates ``marker``: the detectable side effect of a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def test_cifar_file_with_wrong_md5_is_refused_and_never_unpickled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch file that fails the md5 check raises one error naming it and the expected md5.

    The file is a pickle whose unpickling would create a marker file, and ``pickle.load`` is
    watched too: neither may happen.
    """
    _write_cifar10(tmp_path, bytes_keys=False)
    folder = tmp_path / "cifar-10-batches-py"
    _accept_files_as_official(monkeypatch, torchvision.datasets.CIFAR10, folder)
    marker = tmp_path / "unpickled"
    _dump(folder / "data_batch_2", {"data": _Tripwire(marker)})  # now fails its md5
    expected = dict(torchvision.datasets.CIFAR10.train_list)["data_batch_2"]
    loads: list[object] = []
    real_load = pickle.load
    monkeypatch.setattr(pickle, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    with pytest.raises(ValueError) as info:
        load_dataset("cifar10", data_dir=tmp_path)
    message = str(info.value)
    assert str(folder / "data_batch_2") in message
    assert f"expected {expected}" in message
    assert _md5(folder / "data_batch_2") in message
    assert not marker.exists()
    assert loads == []
    pickle.loads((folder / "data_batch_2").read_bytes())  # the tripwire does work
    assert marker.exists()


def test_cifar_subset_with_unofficial_sums_is_refused(tmp_path: Path) -> None:
    """Files that are not the official CIFAR files (e.g. a subset) are refused, not read."""
    _write_cifar100(tmp_path)
    with pytest.raises(ValueError, match=r"cifar-100-python/train failed the integrity check"):
        load_dataset("cifar100", data_dir=tmp_path)


def test_cifar_empty_data_dir_gives_clear_error(tmp_path: Path) -> None:
    """An existing but empty data dir raises FileNotFoundError naming the dir and folder."""
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("cifar10", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "cifar-10-batches-py" in message
    assert "download" in message
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_dataset("cifar100", data_dir=tmp_path / "does-not-exist")


def test_cifar_incomplete_folder_names_missing_files(tmp_path: Path) -> None:
    """A CIFAR folder lacking a batch file raises FileNotFoundError naming that file."""
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_npz_round_trip_and_cache(tmp_path: Path) -> None:
    """An npz archive loads exactly; equivalent arguments return the cached bundle."""
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (30, 16, 16, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    y_train = rng.integers(0, 5, 30).astype(np.int32)
    y_test = np.full(10, 6, dtype=np.int64)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    bundle = load_dataset("npz", npz_path=path)
    _assert_round_trip(bundle, (x_train, y_train, x_test, y_test))
    assert bundle.name == "npz:tiny"
    assert bundle.num_classes == 7
    assert len(bundle.mean) == len(bundle.std) == 3
    assert load_dataset("NPZ", npz_path=str(path)) is bundle
    assert not bundle.x_train.flags.writeable


def test_npz_grayscale_is_expanded(tmp_path: Path) -> None:
    """(N, H, W) grayscale images are accepted and get a channel axis of size 1."""
    x = np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8)
    path = tmp_path / "gray.npz"
    np.savez(path, x_train=x, y_train=np.arange(4), x_test=x[:2], y_test=np.arange(2))
    bundle = load_dataset("npz", npz_path=path)
    assert bundle.x_train.shape == (4, 8, 8, 1)
    assert bundle.in_channels == 1
    np.testing.assert_array_equal(bundle.x_train[..., 0], x)


def test_npz_missing_key(tmp_path: Path) -> None:
    """An archive without y_test raises ValueError naming the key and the path."""
    path = tmp_path / "partial.npz"
    x = np.zeros((2, 4, 4, 1), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=np.zeros(2, dtype=np.int64), x_test=x)
    with pytest.raises(ValueError, match="y_test") as info:
        load_dataset("npz", npz_path=path)
    assert str(path) in str(info.value)


def test_npz_missing_file_and_path(tmp_path: Path) -> None:
    """A missing npz file raises FileNotFoundError naming it; no path raises ValueError."""
    path = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match=r"nope\.npz"):
        load_dataset("npz", npz_path=path)
    with pytest.raises(ValueError, match="npz_path"):
        load_dataset("npz", npz_path="")


@pytest.mark.parametrize(
    ("x_train", "y_train", "match"),
    [
        (np.zeros((2, 4, 4, 1), dtype=np.float32), np.zeros(2, dtype=np.int64), "float32"),
        (np.zeros((2, 4), dtype=np.uint8), np.zeros(2, dtype=np.int64), r"\(2, 4\)"),
        (np.zeros((2, 4, 4, 1), dtype=np.uint8), np.zeros(3, dtype=np.int64), "3 labels"),
        (np.zeros((2, 4, 4, 1), dtype=np.uint8), np.array([0, -1]), "-1"),
        (np.zeros((2, 4, 4, 1), dtype=np.uint8), np.array([0.0, 1.0]), "float64"),
    ],
)
def test_npz_validates_arrays(
    tmp_path: Path, x_train: np.ndarray, y_train: np.ndarray, match: str
) -> None:
    """Malformed images or labels raise ValueError naming the bad value."""
    path = tmp_path / "bad.npz"
    x_test = np.zeros((1, 4, 4, 1), dtype=np.uint8)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=np.zeros(1, int))
    with pytest.raises(ValueError, match=match):
        load_dataset("npz", npz_path=path)


def test_npz_with_object_array_is_refused(tmp_path: Path) -> None:
    """An npz holding an object array (a pickle inside) is refused, naming key and file."""
    path = tmp_path / "objects.npz"
    x = np.zeros((2, 4, 4, 1), dtype=np.uint8)
    labels = np.array([_Tripwire(tmp_path / "unpickled"), 1], dtype=object)
    np.savez(path, x_train=x, y_train=labels, x_test=x, y_test=np.zeros(2, int))
    with pytest.raises(ValueError, match=r"y_train in .*objects\.npz is an object array"):
        load_dataset("npz", npz_path=path)
    assert not (tmp_path / "unpickled").exists()


def test_digits_embedded_dataset() -> None:
    """digits loads 8x8x1 uint8 images, 10 classes, a stratified 80/20 split of all 1797."""
    from sklearn.datasets import load_digits

    bundle = load_dataset("digits")
    assert bundle.name == "digits"
    assert bundle.num_classes == 10
    assert bundle.x_train.shape[1:] == (8, 8, 1)
    assert bundle.x_train.dtype == np.uint8
    assert bundle.x_train.shape[0] + bundle.x_test.shape[0] == 1797
    assert bundle.x_test.shape[0] == pytest.approx(0.2 * 1797, abs=10)
    assert bundle.x_train.max() == 255
    assert set(np.unique(bundle.y_test)) == set(range(10))
    # Train and test together are exactly the original samples (a partition, no overlap).
    digits = load_digits()
    original = np.rint(digits.images * 255 / 16).astype(np.uint8).reshape(1797, -1)
    original_rows = np.column_stack([original, digits.target])
    rows = np.vstack(
        [
            np.column_stack([bundle.x_train.reshape(-1, 64), bundle.y_train]),
            np.column_stack([bundle.x_test.reshape(-1, 64), bundle.y_test]),
        ]
    )
    np.testing.assert_array_equal(
        rows[np.lexsort(rows.T)], original_rows[np.lexsort(original_rows.T)]
    )
    # Stratified: every class has about 20% of its samples in the test split.
    test_share = np.bincount(bundle.y_test, minlength=10) / np.bincount(digits.target)
    np.testing.assert_allclose(test_share, 0.2, atol=0.01)


def test_digits_split_is_deterministic() -> None:
    """The digits split does not depend on the cache: rebuilding it gives the same arrays."""
    cached = load_dataset("digits")
    fresh = loading.build_digits()
    np.testing.assert_array_equal(cached.x_train, fresh.x_train)
    np.testing.assert_array_equal(cached.y_test, fresh.y_test)
    assert load_dataset(" Digits ") is cached


def test_unknown_dataset_name_lists_valid_names() -> None:
    """An unknown name raises ValueError naming it and listing every valid name."""
    with pytest.raises(ValueError, match="mnist") as info:
        load_dataset("mnist")
    for name in DATASET_NAMES:
        assert name in str(info.value)
