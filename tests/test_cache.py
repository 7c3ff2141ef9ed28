"""Tests for edgekd.cache: keys, hits, the disabled cache and safe loading."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch

from edgekd.cache import CACHE_VERSION, TrainingCache, run_description, state_digest


def _result() -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    return {
        "state": {"w": torch.randn(3, 4, generator=generator), "n": torch.tensor(7)},
        "loss": 0.25,
    }


class _Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict[str, Any]:
        self.calls += 1
        return _result()


def test_hit_returns_bit_identical_tensors_without_computing(tmp_path: Path) -> None:
    """The second look-up loads the stored result, bit for bit, and does not compute."""
    cache = TrainingCache(str(tmp_path))
    compute = _Counter()
    first = cache.get_or_compute("edge", {"a": 1}, compute)
    second = cache.get_or_compute("edge", {"a": 1}, compute)
    assert compute.calls == 1
    for name in first["state"]:
        stored, loaded = first["state"][name], second["state"][name]
        assert loaded.dtype == stored.dtype
        assert torch.equal(loaded.view(-1).view(torch.uint8), stored.view(-1).view(torch.uint8))
    assert second["loss"] == 0.25
    assert len(list((tmp_path / "edge").glob("*.pt"))) == 1


def test_key_changes_with_each_field() -> None:
    """Changing any one field of a description, or the version, changes the key."""
    base = {"seed": 0, "lr": 0.1, "schedule": [1, 2], "received": "abc"}
    key = TrainingCache.key(base)
    variants = [
        {**base, "seed": 1},
        {**base, "lr": 0.2},
        {**base, "schedule": [2, 1]},
        {**base, "received": "abd"},
        {**base, "extra": None},
    ]
    keys = {TrainingCache.key(v) for v in variants}
    assert key not in keys and len(keys) == len(variants)
    assert TrainingCache.key(dict(reversed(list(base.items())))) == key
    with mock.patch("edgekd.cache.CACHE_VERSION", CACHE_VERSION + 1):
        assert TrainingCache.key(base) != key


def test_disabled_cache_computes_every_time(tmp_path: Path) -> None:
    """With an empty directory the cache is off: every call computes, nothing is written."""
    cache = TrainingCache("")
    compute = _Counter()
    assert not cache.enabled
    cache.get_or_compute("edge", {"a": 1}, compute)
    cache.get_or_compute("edge", {"a": 1}, compute)
    assert compute.calls == 2


def test_loading_uses_weights_only(tmp_path: Path) -> None:
    """Stored results are loaded with torch.load(weights_only=True): no code runs on load."""
    cache = TrainingCache(str(tmp_path))
    cache.get_or_compute("edge", {"a": 1}, _result)
    with mock.patch("edgekd.cache.torch.load", wraps=torch.load) as load:
        cache.get_or_compute("edge", {"a": 1}, _result)
    load.assert_called_once()
    assert load.call_args.kwargs["weights_only"] is True


def test_state_digest_sees_names_dtypes_shapes_and_bytes() -> None:
    """The digest changes with a tensor's name, dtype, size, shape or one value."""
    state = {"w": torch.arange(6, dtype=torch.float32)}
    digest = state_digest(state)
    assert state_digest({"w": torch.arange(6, dtype=torch.float32)}) == digest
    changed = [
        {"v": torch.arange(6, dtype=torch.float32)},
        {"w": torch.arange(6, dtype=torch.float64)},
        {"w": torch.arange(7, dtype=torch.float32)},
        {"w": torch.tensor([0.0, 1, 2, 3, 4, 6])},
    ]
    assert digest not in {state_digest(s) for s in changed}
    assert state_digest({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}) != digest
    assert state_digest({"w": torch.tensor(5)}) != state_digest({"w": torch.tensor([5])})


@dataclass(frozen=True)
class _Config:
    seed: int
    lr: float
    output_dir: str
    cache_dir: str
    client_threads: int
    strategy_plugins: str


def test_run_description_drops_fields_that_do_not_decide_results() -> None:
    """Output and cache folders, threads and plugins are not part of the description."""
    cfg = _Config(
        seed=1, lr=0.1, output_dir="o", cache_dir="c", client_threads=2, strategy_plugins=""
    )
    assert run_description(cfg) == {"seed": 1, "lr": 0.1}
    assert run_description(cfg, exclude=("lr",)) == {"seed": 1}


@pytest.mark.parametrize("kind", ["edge", "phase0"])
def test_results_are_stored_per_kind(tmp_path: Path, kind: str) -> None:
    """A result lives under directory/<kind>/<key>.pt."""
    cache = TrainingCache(str(tmp_path))
    cache.get_or_compute(kind, {"a": 1}, _result)
    assert (tmp_path / kind / f"{TrainingCache.key({'a': 1})}.pt").is_file()


def test_run_description_leaves_out_a_new_field_at_its_neutral_value() -> None:
    """partition-size 0 (its default, which changes nothing) is not in the description, so
    cache entries written before the field existed stay valid; any other value is."""
    from edgekd.config import ExperimentConfig

    assert "partition_size" not in run_description(ExperimentConfig())
    fixed = ExperimentConfig(partitioner="fixed", partition_size=16)
    assert run_description(fixed)["partition_size"] == 16
