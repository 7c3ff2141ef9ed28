"""Loading image classification datasets into memory as :class:`DataBundle` objects.

Supported names (:data:`DATASET_NAMES`):

``"digits"``
    The default, embedded data set that needs no download: scikit-learn's ``load_digits()``
    (1,797 real 8x8 handwritten digits with 17 grey levels), scaled to ``uint8`` 0..255 and
    split 80/20 into train/test by a fixed, seeded (seed 0), stratified split.
``"cifar10"`` / ``"cifar100"``
    Read through ``torchvision.datasets.CIFAR10`` / ``CIFAR100`` from
    ``<data_dir>/cifar-10-batches-py`` / ``<data_dir>/cifar-100-python`` (the extracted
    official python archives). ``data_dir`` defaults to ``~/.cache/edgekd/data``. Nothing is
    downloaded unless ``download=True``. These files are pickles, and unpickling can run code:
    every file's md5 is checked against the official one (torchvision's list) before anything
    is unpickled, and a file that fails is refused with an error naming it and the expected
    md5. A subset of CIFAR belongs in an ``.npz``.
``"npz"``
    A numpy ``.npz`` archive with ``x_train, y_train, x_test, y_test`` (images ``(N, H, W, C)``
    or ``(N, H, W)`` ``uint8``, integer labels), read with ``allow_pickle=False``: an archive
    holding an object array is refused.

Loaded bundles are cached per process (clients call :func:`load_dataset` on every message);
their arrays are marked read-only so that the shared cached copy cannot be modified by
accident; index or copy them before changing them in place.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DATASET_NAMES", "DEFAULT_DATA_DIR", "DataBundle", "load_dataset"]

DATASET_NAMES: tuple[str, ...] = ("cifar10", "cifar100", "digits", "npz")

#: Where CIFAR is looked for when ``data_dir`` is empty or ``None``.
DEFAULT_DATA_DIR: Path = Path("~/.cache/edgekd/data")

_DIGITS_TEST_FRACTION = 0.2
_DIGITS_SPLIT_SEED = 0
_NPZ_KEYS: tuple[str, ...] = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True, eq=False)
class DataBundle:
    """An in-memory image classification data set.

    Attributes
    ----------
    name : str
        Data set name, e.g. ``"cifar10"`` or ``"npz:<file stem>"``.
    x_train : np.ndarray
        Training images, ``(N, H, W, C)`` ``uint8``.
    y_train : np.ndarray
        Training labels, ``(N,)`` ``int64``.
    x_test : np.ndarray
        Test images, ``(M, H, W, C)`` ``uint8``.
    y_test : np.ndarray
        Test labels, ``(M,)`` ``int64``.
    num_classes : int
        Number of classes; labels lie in ``[0, num_classes)``.
    mean : tuple[float, ...]
        Per-channel mean of ``x_train`` in ``[0, 1]`` pixel units.
    std : tuple[float, ...]
        Per-channel (population) standard deviation of ``x_train`` in ``[0, 1]`` pixel units.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def in_channels(self) -> int:
        """Number of image channels ``C``."""
        return int(self.x_train.shape[3])

    @property
    def image_size(self) -> int:
        """Image height ``H`` (the images are assumed square)."""
        return int(self.x_train.shape[1])


def _channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of ``uint8`` HWC images, in ``[0, 1]`` units."""
    channels = x.shape[3]
    total = np.zeros(channels, dtype=np.float64)
    total_sq = np.zeros(channels, dtype=np.float64)
    for start in range(0, x.shape[0], chunk):
        block = x[start : start + chunk].astype(np.float64) / 255.0
        total += block.sum(axis=(0, 1, 2))
        total_sq += np.square(block).sum(axis=(0, 1, 2))
    count = float(x.shape[0] * x.shape[1] * x.shape[2])
    mean = total / count
    var = np.maximum(total_sq / count - np.square(mean), 0.0)
    return tuple(float(v) for v in mean), tuple(float(v) for v in np.sqrt(var))


def _make_bundle(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
) -> DataBundle:
    arrays = [
        np.ascontiguousarray(x_train, dtype=np.uint8),
        np.ascontiguousarray(y_train, dtype=np.int64),
        np.ascontiguousarray(x_test, dtype=np.uint8),
        np.ascontiguousarray(y_test, dtype=np.int64),
    ]
    for arr in arrays:
        arr.setflags(write=False)
    mean, std = _channel_stats(arrays[0])
    return DataBundle(name, *arrays, num_classes=num_classes, mean=mean, std=std)


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------


def _stratified_test_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return sorted ``(train_idx, test_idx)``; each class split ``round(n_k * fraction)``."""
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for k in np.unique(labels):
        idx_k = np.flatnonzero(labels == k)
        rng.shuffle(idx_k)
        n_test = round(idx_k.size * test_fraction)
        test.append(idx_k[:n_test])
        train.append(idx_k[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def build_digits() -> DataBundle:
    """Build the digits bundle from scikit-learn, uncached (:func:`load_dataset` caches it)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.float64)  # (1797, 8, 8), values 0..16
    x = np.rint(images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
    y = np.asarray(digits.target, dtype=np.int64)
    train_idx, test_idx = _stratified_test_split(y, _DIGITS_TEST_FRACTION, _DIGITS_SPLIT_SEED)
    return _make_bundle("digits", x[train_idx], y[train_idx], x[test_idx], y[test_idx], 10)


# --------------------------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------------------------


def _check_npz_images(key: str, x: np.ndarray, path: Path) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(
            f"{key} in {path} must have shape (N, H, W, C) or (N, H, W), got {x.shape}"
        )
    if x.dtype != np.uint8:
        raise ValueError(f"{key} in {path} must have dtype uint8, got {x.dtype}")
    return x


def _check_npz_labels(key: str, y: np.ndarray, num_images: int, path: Path) -> np.ndarray:
    if y.ndim != 1:
        raise ValueError(f"{key} in {path} must be 1-D, got shape {y.shape}")
    if y.shape[0] != num_images:
        raise ValueError(
            f"{key} in {path} has {y.shape[0]} labels but there are {num_images} images"
        )
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{key} in {path} must hold integers, got dtype {y.dtype}")
    if y.size and int(y.min()) < 0:
        raise ValueError(f"{key} in {path} must be non-negative, got minimum {int(y.min())}")
    return y.astype(np.int64)


def _npz_array(archive: Any, key: str, path: Path) -> np.ndarray:
    """Read one array with pickling off; an object array (a pickle inside) is refused."""
    try:
        return np.asarray(archive[key])
    except ValueError as err:
        if "allow_pickle" not in str(err):
            raise ValueError(f"{key} in {path} cannot be read: {err}") from err
        raise ValueError(
            f"{key} in {path} is an object array (stored as a pickle), refused: an npz data "
            "set must hold plain numeric arrays; it is read with allow_pickle=False"
        ) from err


def _load_npz(path: Path) -> DataBundle:
    if not path.is_file():
        raise FileNotFoundError(f"npz data set file not found: {path}")
    with np.load(path, allow_pickle=False) as archive:
        missing = [key for key in _NPZ_KEYS if key not in archive.files]
        if missing:
            raise ValueError(
                f"npz data set {path} is missing key(s) {', '.join(missing)}; "
                f"it must hold {', '.join(_NPZ_KEYS)}"
            )
        data = {key: _npz_array(archive, key, path) for key in _NPZ_KEYS}
    x_train = _check_npz_images("x_train", data["x_train"], path)
    x_test = _check_npz_images("x_test", data["x_test"], path)
    if x_train.shape[0] == 0:
        raise ValueError(f"x_train in {path} holds no images")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"x_train and x_test in {path} differ in image shape: "
            f"{x_train.shape[1:]} vs {x_test.shape[1:]}"
        )
    y_train = _check_npz_labels("y_train", data["y_train"], x_train.shape[0], path)
    y_test = _check_npz_labels("y_test", data["y_test"], x_test.shape[0], path)
    num_classes = int(max(y_train.max(), y_test.max(initial=0))) + 1
    return _make_bundle(f"npz:{path.stem}", x_train, y_train, x_test, y_test, num_classes)


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CifarSpec:
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int


_CIFAR_SPECS: dict[str, _CifarSpec] = {
    "cifar10": _CifarSpec(
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        label_key="labels",
        num_classes=10,
    ),
    "cifar100": _CifarSpec(
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        label_key="fine_labels",
        num_classes=100,
    ),
}


def _cifar_missing_message(name: str, root: Path, spec: _CifarSpec, missing: list[str]) -> str:
    return (
        f"{name} not found: looked in data directory {root} for the folder "
        f"{spec.folder!r} (missing: {', '.join(missing)}). Provide it by passing "
        f"download=True (run config: download = true) when online, or by copying the "
        f"extracted official CIFAR python archive there so that {root / spec.folder} exists."
    )


def _md5(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _expected_md5s(tv_class: Any) -> list[tuple[str, str]]:
    """``(file name, md5)`` of every file torchvision reads, the meta file included."""
    listed = [(str(n), str(m)) for n, m in list(tv_class.train_list) + list(tv_class.test_list)]
    return [*listed, (str(tv_class.meta["filename"]), str(tv_class.meta["md5"]))]


def _check_cifar_integrity(name: str, folder: Path, tv_class: Any) -> None:
    """Refuse, before anything is unpickled, a CIFAR file whose md5 is not the official one.

    CIFAR's python files are pickles: unpickling a file of unknown origin can run any code,
    so a file that fails the check is never read past its checksum.
    """
    for file_name, expected in _expected_md5s(tv_class):
        actual = _md5(folder / file_name)
        if actual != expected:
            raise ValueError(
                f"{name} file {folder / file_name} failed the integrity check: md5 "
                f"{actual}, expected {expected} (the official {name} file); it is refused "
                "and was not unpickled. Replace it with the official file, or convert your "
                'subset to an .npz (dataset = "npz").'
            )


def _load_cifar(name: str, root: Path, download: bool) -> DataBundle:
    from torchvision import datasets as tv_datasets

    spec = _CIFAR_SPECS[name]
    tv_class = tv_datasets.CIFAR10 if name == "cifar10" else tv_datasets.CIFAR100
    folder = root / spec.folder
    missing = [f for f, _ in _expected_md5s(tv_class) if not (folder / f).is_file()]
    if missing:
        message = _cifar_missing_message(name, root, spec, missing)
        if not download:
            raise FileNotFoundError(message)
        try:
            tv_class(root=str(root), train=True, download=True)
        except (OSError, RuntimeError, ValueError) as err:
            raise FileNotFoundError(f"{message} The download failed: {err}") from err
    _check_cifar_integrity(name, folder, tv_class)
    train = tv_class(root=str(root), train=True, download=False)
    test = tv_class(root=str(root), train=False, download=False)
    x_train, y_train = np.asarray(train.data), np.asarray(train.targets, dtype=np.int64)
    x_test, y_test = np.asarray(test.data), np.asarray(test.targets, dtype=np.int64)
    return _make_bundle(name, x_train, y_train, x_test, y_test, spec.num_classes)


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _load_cached(
    name: str, data_dir: str | None, npz_path: str | None, download: bool, _stamp: object
) -> DataBundle:
    if name == "digits":
        return build_digits()
    if name == "npz":
        assert npz_path is not None
        return _load_npz(Path(npz_path))
    assert data_dir is not None
    return _load_cifar(name, Path(data_dir), download)


def _resolve(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    npz_path: str | Path | None = None,
    download: bool = False,
) -> DataBundle:
    """Load a data set into memory (cached per process).

    Parameters
    ----------
    name : str
        One of :data:`DATASET_NAMES`: ``"cifar10"``, ``"cifar100"``, ``"digits"``, ``"npz"``
        (case-insensitive).
    data_dir : str | Path | None, optional
        Directory holding ``cifar-10-batches-py`` / ``cifar-100-python`` (CIFAR only). Empty
        or ``None`` means ``~/.cache/edgekd/data``.
    npz_path : str | Path | None, optional
        Path of the ``.npz`` archive; required for ``"npz"``, ignored otherwise.
    download : bool, optional
        Let torchvision download CIFAR when it is missing, by default False.

    Returns
    -------
    DataBundle
        The data set; the same (read-only) object is returned for repeated calls with
        equivalent arguments.

    Raises
    ------
    ValueError
        For an unknown ``name``, a missing ``npz_path`` for ``"npz"``, or an archive with
        missing keys or malformed arrays.
    FileNotFoundError
        When the CIFAR files or the ``.npz`` file are not there (and, for CIFAR, cannot be
        downloaded).
    """
    key = str(name).strip().lower()
    if key not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    if key == "digits":
        return _load_cached("digits", None, None, False, None)
    if key == "npz":
        if npz_path is None or str(npz_path).strip() == "":
            raise ValueError("dataset 'npz' needs npz_path, got an empty path")
        path = _resolve(npz_path)
        stamp: object = None
        if path.is_file():
            stat = path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)  # reload when the file changes
        return _load_cached("npz", None, str(path), False, stamp)
    root = DEFAULT_DATA_DIR if data_dir is None or str(data_dir).strip() == "" else data_dir
    return _load_cached(key, str(_resolve(root)), None, bool(download), None)
