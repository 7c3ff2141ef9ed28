"""Tests for edgekd.experiment: the split and tensors both sides derive from the config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd import experiment
from edgekd.config import ExperimentConfig
from edgekd.experiment import (
    build_experiment_model,
    client_data,
    core_data,
    experiment_split,
    validate_names,
)


def _cfg(tiny_npz: Path, **changes: object) -> ExperimentConfig:
    return ExperimentConfig(dataset="npz", npz_path=str(tiny_npz), num_partitions=3, **changes)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("dataset", "imagenet", "unknown dataset 'imagenet'; valid datasets"),
        ("model", "gpt", "unknown model 'gpt'; valid models"),
        ("partitioner", "shards", "unknown partitioner 'shards'"),
    ],
)
def test_validate_names_lists_the_valid_ones(field: str, value: str, message: str) -> None:
    """An unknown dataset, model or partitioner fails before any data is loaded, naming it."""
    cfg = ExperimentConfig(**{field: value}, npz_path="x.npz")
    with pytest.raises(ValueError, match=message):
        validate_names(cfg)


def test_split_is_a_disjoint_cover_and_repeats(tiny_npz: Path) -> None:
    """Core and partitions are disjoint, cover the training set, and are the same each time.

    Prepare: the tiny npz (160 training images), 3 partitions and a 25 % core.
    Execute: experiment_split twice (the second from an equal, separately built config).
    Assert: disjoint index sets whose union is 0..159; core of 40; equal splits.
    """
    cfg = _cfg(tiny_npz, core_fraction=0.25)
    split = experiment_split(cfg)
    parts = [set(p.tolist()) for p in split.partitions]
    core = set(split.core.tolist())
    assert len(core) == 40
    everything = core.union(*parts)
    assert everything == set(range(160))
    assert sum(len(p) for p in parts) + len(core) == 160
    again = experiment_split(_cfg(tiny_npz, core_fraction=0.25))
    assert np.array_equal(again.core, split.core)
    assert all(
        np.array_equal(a, b) for a, b in zip(again.partitions, split.partitions, strict=True)
    )


def test_tensors_follow_the_split(tiny_npz: Path) -> None:
    """client_data, core_data and test_data have the sizes of their index sets, NCHW floats.

    Prepare: 3 partitions, no core.
    Execute: the three accessors.
    Assert: sizes match the split, core is empty, test has 40 images; a bad partition id
    names num-partitions.
    """
    cfg = _cfg(tiny_npz)
    split = experiment_split(cfg)
    for pid in range(3):
        data = client_data(cfg, pid)
        assert len(data) == len(split.partitions[pid])
        assert data.x.dtype == torch.float32 and data.x.shape[1:] == (3, 8, 8)
    assert len(core_data(cfg)) == 0
    assert len(experiment.test_data(cfg)) == 40
    with pytest.raises(ValueError, match="partition-id 3 is out of range for num-partitions 3"):
        client_data(cfg, 3)


def test_seeded_models_repeat_and_differ_by_seed(tiny_npz: Path) -> None:
    """build_experiment_model with a seed is reproducible; another seed gives other weights."""
    cfg = _cfg(tiny_npz)
    a, b = build_experiment_model(cfg, seed=1), build_experiment_model(cfg, seed=1)
    c = build_experiment_model(cfg, seed=2)
    first = next(iter(a.state_dict()))
    assert torch.equal(a.state_dict()[first], b.state_dict()[first])
    assert not torch.equal(a.state_dict()[first], c.state_dict()[first])
    assert a(experiment.test_data(cfg).x[:2]).shape == (2, 4)
