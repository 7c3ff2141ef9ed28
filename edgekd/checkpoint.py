"""A run's checkpoint: written atomically after every round, read back by ``--resume``.

After every complete round the server (:mod:`edgekd.runner`) writes ``checkpoint.pt`` into
the run's folder: the round number, the run config, the global/core model, the strategy's
own state (``checkpoint_state()``), the recorded metrics and the RNG states (Python's
``random``, numpy's global generator, torch's). It is written to a temporary file and moved
over the old one with ``os.replace``, so a run killed at any moment leaves the last complete
round's checkpoint, never a torn one. It is read with ``torch.load(weights_only=True)``:
tensors, numbers, strings, lists and dicts only, nothing that runs code.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT",
    "IGNORED_KEYS",
    "KILL_HOOK",
    "check_same_config",
    "load_checkpoint",
    "restore_rng",
    "rng_state",
    "write_checkpoint",
]

CHECKPOINT = "checkpoint.pt"
FORMAT = 1
#: Run-config keys that may differ between a run and its resumption.
IGNORED_KEYS = frozenset({"resume-dir", "output-dir"})
#: Test hook: ``EDGEKD_KILL_AFTER_CHECKPOINT=N`` SIGKILLs the process right after the
#: checkpoint of round N is in place (a crash between rounds, for the resume tests).
KILL_HOOK = "EDGEKD_KILL_AFTER_CHECKPOINT"


def rng_state() -> dict[str, Any]:
    """The global RNG states of Python, numpy and torch, as plain values and tensors."""
    version, words, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": [version, list(words), gauss],
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set the global RNG states saved by :func:`rng_state`."""
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


def write_checkpoint(run_dir: Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` to ``run_dir/checkpoint.pt`` atomically (temporary file + replace)."""
    path = Path(run_dir) / CHECKPOINT
    temporary = path.with_name(f".{CHECKPOINT}.tmp")
    with temporary.open("wb") as handle:
        torch.save({"format": FORMAT, **payload}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    if os.environ.get(KILL_HOOK, "") == str(payload.get("round")):
        os.kill(os.getpid(), signal.SIGKILL)
    return path


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """The checkpoint of ``run_dir``; ``FileNotFoundError`` naming the folder when none."""
    folder = Path(run_dir).expanduser().resolve()
    path = folder / CHECKPOINT
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot resume: {folder} is not a folder")
    if not path.is_file():
        raise FileNotFoundError(
            f"cannot resume: no checkpoint in {folder} (expected {CHECKPOINT}, written after "
            "every complete round; none is written before round 1 ends, nor for a strategy "
            "that cannot resume, e.g. fedmd, whose clients keep their models on the nodes)"
        )
    state = torch.load(path, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"cannot resume: {path} is not an edgekd checkpoint (format {FORMAT})")
    return state


def check_same_config(
    saved: Mapping[str, Any], current: Mapping[str, Any], run_dir: str | Path
) -> None:
    """Refuse to resume with another run config: one ``ValueError`` naming every difference."""
    keys = sorted((set(saved) | set(current)) - IGNORED_KEYS)
    missing = object()
    differences = [
        f"{key} = {_show(saved.get(key, missing))} in the checkpoint, "
        f"{_show(current.get(key, missing))} now"
        for key in keys
        if saved.get(key, missing) != current.get(key, missing)
    ]
    if differences:
        raise ValueError(
            f"cannot resume {run_dir}: its checkpoint was made by a different config: "
            + "; ".join(differences)
        )


def _show(value: Any) -> str:
    return "(absent)" if not isinstance(value, str | int | float | bool) else repr(value)
