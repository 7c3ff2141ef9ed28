"""Bad input fails in ServerApp preparation, before any training, naming the bad value."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgekd.runner import prepare_run


def _npz_config(tiny_npz: Path, **extra: object) -> dict[str, object]:
    return {"dataset": "npz", "npz-path": str(tiny_npz), **extra}


@pytest.mark.parametrize(
    ("overrides", "error", "fragment"),
    [
        ({"dataset": "imagenet"}, ValueError, "unknown dataset 'imagenet'.*digits"),
        ({"model": "resnet7"}, ValueError, "unknown model 'resnet7'.*resnet20"),
        ({"strategy": "fedfoo"}, ValueError, "unknown strategy 'fedfoo'.*fedavg"),
        ({"partitioner": "zipf"}, ValueError, "unknown partitioner 'zipf'"),
        ({"partitioner": "dirichlet", "dirichlet-alpha": -0.5}, ValueError, "-0.5"),
        ({"num-partitions": 5000}, ValueError, "5000"),
    ],
)
def test_bad_names_and_values(
    tmp_path: Path, overrides: dict[str, object], error: type, fragment: str
) -> None:
    """Unknown names and impossible partitions raise one clear error naming the value."""
    with pytest.raises(error, match=fragment):
        prepare_run(overrides, tmp_path / "out")
    assert not (tmp_path / "out" / "metrics.csv").exists()


def test_npz_missing_key(tmp_path: Path) -> None:
    """An npz without y_test names the missing key."""
    path = tmp_path / "broken.npz"
    x = np.zeros((10, 8, 8, 3), np.uint8)
    np.savez(path, x_train=x, y_train=np.zeros(10, np.int64), x_test=x)
    with pytest.raises(ValueError, match="y_test"):
        prepare_run({"dataset": "npz", "npz-path": str(path)}, tmp_path / "out")


def test_empty_cifar_dir(tmp_path: Path) -> None:
    """An empty CIFAR data directory names the directory it looked in."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=str(empty)):
        prepare_run({"dataset": "cifar10", "data-dir": str(empty)}, tmp_path / "out")


def test_histograms_saved(tiny_npz: Path, tmp_path: Path) -> None:
    """Per-partition class histograms and the core split are saved with the results."""
    run_config = _npz_config(
        tiny_npz,
        **{
            "num-partitions": 3,
            "core-fraction": 0.25,
            "partitioner": "dirichlet",
            "dirichlet-alpha": 0.3,
            "min-partition-size": 5,
        },
    )
    cfg, recorder = prepare_run(run_config, tmp_path / "out")
    saved = json.loads((recorder.out_dir / "partitions.json").read_text())
    assert len(saved["histograms"]) == 3
    assert saved["core_size"] == 40  # 25 % of 160 training images
    assert sum(saved["partition_sizes"]) + saved["core_size"] == 160
    assert [sum(h) for h in saved["histograms"]] == saved["partition_sizes"]
    assert cfg.core_fraction == 0.25
