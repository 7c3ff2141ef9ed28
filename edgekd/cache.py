"""On-disk cache of deterministic training results, for experiments that repeat work.

Reproductions run many variants of one seed: every cloned-distillation variant trains the
same Phase-0 core, and the independent variants (IPP, IPM, IEP) send edges the same
independent model in the same round, so the edges train the same thing. Training here is
deterministic for a given input (seeded batch order and augmentation, no global RNG), so a
result keyed by *everything that determines it* can be stored once and loaded by the next run
bit for bit. The cache is off unless the run config sets ``cache-dir``.

A key is the SHA-256 of a JSON description (config values, seeds, schedule) plus, where a
model is trained from received weights, a digest of those weights. ``CACHE_VERSION`` is part of
every key: bump it when the training code changes what a given input produces.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

__all__ = ["CACHE_VERSION", "TrainingCache", "run_description", "state_digest"]

CACHE_VERSION = 1

T = TypeVar("T")


#: Fields added after caches were written, with the value that changes nothing: left out of
#: the description at that value, so that earlier runs' cache entries stay valid.
_NEUTRAL_NEW_FIELDS: dict[str, Any] = {"partition_size": 0}


def run_description(config: Any, *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of a config dataclass that decide a training result (JSON-ready)."""
    skip = {"output_dir", "cache_dir", "client_threads", "strategy_plugins", *exclude}
    return {
        k: v
        for k, v in dataclasses.asdict(config).items()
        if k not in skip and not (k in _NEUTRAL_NEW_FIELDS and v == _NEUTRAL_NEW_FIELDS[k])
    }


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict's tensors."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        tensor = tensor.reshape(-1)
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


class TrainingCache:
    """Results stored under ``directory/<kind>/<key>.pt``; a no-op when ``directory`` is empty.

    Parameters
    ----------
    directory : str
        The cache folder (created on first write); ``""`` disables the cache.
    """

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory).expanduser() if directory else None

    @property
    def enabled(self) -> bool:
        """Whether results are stored and looked up."""
        return self.directory is not None

    @staticmethod
    def key(description: Mapping[str, Any]) -> str:
        """The cache key of ``description`` (JSON-serialisable values)."""
        text = json.dumps({"version": CACHE_VERSION, **description}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def get_or_compute(
        self, kind: str, description: Mapping[str, Any], compute: Callable[[], T]
    ) -> T:
        """Load the stored result for ``description``, or compute, store and return it.

        Values are what ``torch.load(weights_only=True)`` accepts: tensors, numbers, strings
        and dicts/lists of them (a state dict and its metrics), so loading runs no code.
        """
        if self.directory is None:
            return compute()
        path = self.directory / kind / f"{self.key(description)}.pt"
        if path.exists():
            return torch.load(path, weights_only=True)
        value = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(handle)
        torch.save(value, tmp)
        os.replace(tmp, path)
        return value
